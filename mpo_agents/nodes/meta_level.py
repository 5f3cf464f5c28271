"""Meta-level nodes in the graph: each configured plug-in wrapped as a node, and `rubric_commit`, where a
proposed rubric is accepted, rejected or edited (by the nodes' verdicts, or by a person with `review`).

A plug-in that raises or returns something that is not a `Decision` is recorded with its name in
`meta_levels.jsonl` and in the iteration's metrics; the run goes on as if it had returned nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from mpo_agents.context import RunContext
from mpo_agents.errors import RubricRejected
from mpo_agents.plugins.api import SCHEDULE_KNOBS, Decision, MetaNode, MetaView
from mpo_agents.rubrics import RubricVersion, diff_rubrics, validate_rewrite
from mpo_agents.rundir import append_jsonl
from mpo_agents.state import MPOState

logger = logging.getLogger(__name__)
LOG_FILE = "meta_levels.jsonl"


def knob(ctx: RunContext, state: MPOState, name: str) -> int:
    """A schedule knob as a meta-level node last set it, else as configured."""
    return int(state.get("schedule", {}).get(name, getattr(ctx.config.schedule, name)))


def meta_level_node(node: MetaNode):
    """The graph node that runs one plug-in and turns its decision into a state update."""

    async def run(state: MPOState, runtime: Runtime[RunContext]) -> dict:
        ctx = runtime.context
        iteration = state["iteration"]
        proposal = state.get("proposal")
        view = MetaView(
            context=ctx,
            iteration=iteration,
            rubric=RubricVersion.from_state(state["rubric"]),
            proposal=RubricVersion.from_state(proposal) if proposal else None,
            batch=list(state.get("batch", [])),
            window_paths=list(state.get("window", [])),
            decisions=[d for d in state.get("decisions", []) if d["iteration"] == iteration],
        )
        entry: dict[str, Any] = {"iteration": iteration, "node": node.name, "stage": node.stage}
        try:
            decision = _checked(await node(view), node)
        except Exception as exc:  # noqa: BLE001 - a plug-in must never take the run down; it is named instead
            logger.warning("meta-level node %s failed: %s", node.name, exc)
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
            _log(ctx, entry)
            metrics = {**state.get("metrics", {}), f"{node.name}_failed": 1}
            return {"decisions": [*state.get("decisions", []), entry], "metrics": metrics}
        if decision is None:
            entry["verdict"] = None
            _log(ctx, entry)
            return {"decisions": [*state.get("decisions", []), entry]}
        entry.update(
            verdict=decision.verdict,
            reason=decision.reason,
            rubric_text=decision.rubric_text,
            schedule=decision.schedule,
            alarm=decision.alarm,
            trigger_meta=decision.trigger_meta,
            evidence=decision.evidence,
            details=decision.details,
        )
        _log(ctx, entry)
        update: dict[str, Any] = {"decisions": [*state.get("decisions", []), entry]}
        metrics = {f"{node.name}_{key}": value for key, value in decision.metrics.items()}
        if decision.alarm:
            alarm = {"iteration": iteration, "node": node.name, "message": decision.alarm}
            update["alarms"] = [*state.get("alarms", []), {**alarm, "evidence": decision.evidence}]
            metrics[f"{node.name}_alarm"] = 1
        if decision.trigger_meta:
            update["meta_requested"] = True
        if decision.schedule:
            update["schedule"] = {**state.get("schedule", {}), **decision.schedule}
        if metrics:
            update["metrics"] = {**state.get("metrics", {}), **metrics}
        return update

    run.__name__ = node.name
    return run


def _checked(decision: Any, node: MetaNode) -> Decision | None:
    """The decision if it is one this node may make; anything else raises, naming what was wrong."""
    if decision is None:
        return None
    if not isinstance(decision, Decision):
        raise TypeError(
            f"returned {type(decision).__name__} {str(decision)[:80]!r}, expected a Decision or None"
        )
    if decision.verdict not in (None, "accept", "reject", "edit"):
        raise ValueError(f"verdict {decision.verdict!r} is not accept, reject or edit")
    if decision.verdict is not None and node.stage != "after_rewrite":
        raise ValueError(f"gave verdict {decision.verdict!r}, but only after_rewrite nodes decide on rubrics")
    if decision.verdict == "edit" and not (decision.rubric_text or "").strip():
        raise ValueError("gave verdict 'edit' without rubric_text")
    if decision.trigger_meta and node.stage != "after_score":
        raise ValueError("asked for a meta step, but only after_score nodes can start one")
    for name, value in decision.schedule.items():
        if name not in SCHEDULE_KNOBS:
            raise ValueError(f"set schedule knob {name!r}; only {', '.join(SCHEDULE_KNOBS)} may be set")
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < (0 if name == "meta_every" else 1)
        ):
            raise ValueError(f"set {name} to {value!r}; it must be a whole number (meta_samples at least 1)")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in decision.metrics.values()):
        raise ValueError("returned metrics that are not numbers")
    json.dumps(dataclasses.asdict(decision))  # details must be serialisable: they go to the log and state
    return decision


def _log(ctx: RunContext, entry: dict[str, Any]) -> None:
    append_jsonl(ctx.run_dir.root / LOG_FILE, entry)


async def rubric_commit(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Decide on the meta step's proposal: the nodes' verdicts (any reject wins, then the last edit, else
    accept), then a person's with `review`, who sees the diff, the evidence and the verdicts."""
    ctx = runtime.context
    iteration = state["iteration"]
    done = {"proposal": None, "meta_requested": False, "alarms": []}
    proposal = state.get("proposal")
    if not proposal:
        return done
    current = RubricVersion.from_state(state["rubric"])
    new = RubricVersion.from_state(proposal)
    mine = [
        d
        for d in state.get("decisions", [])
        if d["iteration"] == iteration and d["stage"] == "after_rewrite" and "error" not in d
    ]
    rejects = [d for d in mine if d.get("verdict") == "reject"]
    edits = [d for d in mine if d.get("verdict") == "edit"]
    failed = [d["node"] for d in state.get("decisions", []) if d["iteration"] == iteration and "error" in d]
    if rejects:
        outcome, text, by = "reject", None, [d["node"] for d in rejects]
    elif edits:
        outcome, text, by = "edit", edits[-1]["rubric_text"], [edits[-1]["node"]]
    else:
        outcome, text, by = "accept", None, [d["node"] for d in mine if d.get("verdict") == "accept"]
    reasons = "; ".join(
        f"{d['node']}: {d.get('reason') or d.get('verdict')}" for d in (rejects or edits or mine)
    )
    review = ctx.config.review
    if review is True or (review == "on_objection" and (rejects or edits or failed)):
        answer = interrupt(
            {
                "iteration": iteration,
                "current_version": current.version,
                "proposed_version": new.version,
                "diff": diff_rubrics(current, new),
                "proposal": new.full_text(),
                "evidence": new.evidence,
                "decisions": mine,
                "failed_nodes": failed,
                "suggested": outcome,
                "suggested_text": text,
            }
        )
        outcome, text, by, reasons = _human(answer)
    metrics = dict(state.get("metrics", {}))
    if outcome == "edit":
        try:
            new = _edited(ctx, current, new, text or "")
        except RubricRejected as exc:
            outcome, reasons = "reject", f"the edit by {', '.join(by)} is not a valid rubric: {exc}"
    if outcome == "reject":
        ctx.rubrics.log_rejection(iteration, f"rejected by {', '.join(by)}: {reasons}", new.full_text())
        return {**done, "metrics": {**metrics, "rubric_rewrite_accepted": 0}}
    verb = "edited" if outcome == "edit" else "accepted"
    if by:
        new = dataclasses.replace(
            new, review=f"{verb} by {', '.join(by)}" + (f": {reasons}" if reasons else "")
        )
    ctx.rubrics.save(new)
    metrics.update(rubric_rewrite_accepted=1, rubric_items=new.items, rubric_tokens=new.tokens)
    return {**done, "rubric": new.to_state(), "metrics": metrics}


def _human(answer: Any) -> tuple[str, str | None, list[str], str]:
    """A reviewer's resume value: {"decision": accept|reject|edit, "text": ..., "note": ..., "reviewer": ...}."""
    if not isinstance(answer, dict) or answer.get("decision") not in ("accept", "reject", "edit"):
        raise ValueError(f"a review must resume with decision accept, reject or edit, got {answer!r}")
    who = str(answer.get("reviewer") or "human review")
    return answer["decision"], answer.get("text"), [who], str(answer.get("note") or "")


def _edited(ctx: RunContext, current: RubricVersion, proposal: RubricVersion, text: str) -> RubricVersion:
    """The proposal with its text replaced by an edit, checked like any rewrite."""
    if proposal.kind == "guidelines":
        return dataclasses.replace(proposal, text=text.strip())
    limits = ctx.config.rubric
    rubric, _ = validate_rewrite(
        text,
        previous=current.parsed(),
        samples=[],
        max_words=limits.max_words,
        max_items=limits.max_items,
        copy_run_words=limits.copy_run_words,
    )
    return RubricVersion.of(
        rubric,
        version=proposal.version,
        parent=proposal.parent,
        iteration=proposal.iteration,
        origin=f"{proposal.origin}+edit",
        evidence=proposal.evidence,
    )
