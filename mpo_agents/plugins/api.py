"""What a meta-level node sees (`MetaView`, and for a prompt's buffer `BufferView`) and what it may return
(`Decision`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from mpo_agents.buffers import PromptRubric
from mpo_agents.judges.records import CallLog
from mpo_agents.meta.window import window_samples
from mpo_agents.rubrics import RubricVersion
from mpo_agents.state import ScoredSample

if TYPE_CHECKING:
    from mpo_agents.context import RunContext

Stage = Literal["after_score", "after_rewrite"]
Verdict = Literal["accept", "reject", "edit"]
# The schedule knobs a node may adjust for the rest of the run (it cannot touch anything else).
SCHEDULE_KNOBS = ("meta_every", "meta_samples")


@dataclass
class Decision:
    """A meta-level node's answer; every field is optional.

    verdict: on a proposed rubric (after_rewrite only): accept it, reject it (the parent stays in force), or
        edit it (`rubric_text` replaces the proposal). A reject from any node wins over accepts and edits.
    reason: one line for the run log, the lineage and a reviewer.
    schedule: new values for `meta_every` / `meta_samples` from now on.
    alarm: raise an alarm with this message (logged, shown to the meta-judge with `evidence`).
    trigger_meta: start a meta step at this iteration even if the schedule does not call for one.
    evidence: sample keys the meta-judge should look at first (alarm hits).
    metrics: numbers for metrics.jsonl, prefixed with the node's name.
    details: anything else worth keeping in meta_levels.jsonl (score maps, an audit's text, ...).
    """

    verdict: Verdict | None = None
    reason: str = ""
    rubric_text: str | None = None
    schedule: dict[str, int] = field(default_factory=dict)
    alarm: str | None = None
    trigger_meta: bool = False
    evidence: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetaView:
    """Read access to the run for a meta-level node. Treat everything here as read-only: a node changes the
    run only through the `Decision` it returns."""

    context: RunContext  # the judges (for re-scoring, audits), the task, the config, the run directory
    iteration: int
    rubric: RubricVersion  # the rubric in force
    proposal: RubricVersion | None  # the meta-judge's proposed next version (after_rewrite), else None
    batch: list[ScoredSample]  # this iteration's scored samples
    window_paths: list[str]  # sample files the meta-judge draws from (since its last step)
    decisions: list[dict[str, Any]]  # what the nodes before this one decided in this step

    @property
    def config(self):
        return self.context.config

    @cached_property
    def history(self) -> list[RubricVersion]:
        """Every stored rubric version, oldest first."""
        return self.context.rubrics.versions()

    @cached_property
    def window(self) -> list[ScoredSample]:
        return window_samples(self.context.run_dir, self.window_paths)

    @cached_property
    def metrics_history(self) -> list[dict[str, Any]]:
        """One row per finished iteration (metrics.jsonl)."""
        return self.context.run_dir.metrics()

    def judge_calls(self, role: str = "judge") -> list[dict[str, Any]]:
        """The call log of a judge role: every attempt, with prompt, reply, error and metadata."""
        path = self.context.run_dir.calls_path(role)
        return CallLog.read(path) if path.exists() else []


@dataclass
class BufferView:
    """A proposed change to one prompt's buffer (`rubric.scope: prompt`), for a node that gates buffers."""

    context: RunContext
    iteration: int
    record: dict[str, Any]  # the prompt's record
    buffer: PromptRubric  # in force
    proposal: PromptRubric  # its next version: items pruned, added, evicted (`proposal.changes`)

    @property
    def config(self):
        return self.context.config


@runtime_checkable
class BufferGate(Protocol):
    """A meta-level node that also decides on buffer changes: `accept` or `reject` (the buffer stays as it is);
    None when it has nothing to say (e.g. no anchors for this prompt)."""

    name: str

    async def check_buffer(self, view: BufferView) -> Decision | None: ...


@runtime_checkable
class MetaNode(Protocol):
    name: str
    stage: Stage

    async def __call__(self, view: MetaView) -> Decision | None: ...
