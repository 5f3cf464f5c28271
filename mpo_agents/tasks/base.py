"""What a task plugs into the loop: its data, its policy prompt, what its judge sees, and its reward guards."""

from __future__ import annotations

import random
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from mpo_agents.bundled import EXAMPLE_DATA_DIR
from mpo_agents.config import TaskConfig
from mpo_agents.errors import ConfigError, RubricRejected
from mpo_agents.prompts import DEFAULT_PROMPTS_DIR, load_prompt
from mpo_agents.rubrics import RubricVersion, parse_rubric
from mpo_agents.tasks.data import (
    PromptBudget,
    PromptLengths,
    Row,
    fields_problem,
    fit_prompt_lengths,
    read_rows,
    shape_problem,
    unusable_records_error,
)

INITIAL_RUBRIC = "rubrics/initial.md"  # in the task's prompt folder, beside the fixed baselines


@dataclass
class GuardResult:
    """A deterministic verdict reached without the judge (e.g. a missing verdict tag)."""

    score: float
    reason: str


@dataclass
class Task:
    """Base task: subclasses set the class attributes and override the hooks that differ."""

    name: ClassVar[str]
    default_data_file: ClassVar[str]
    # Where the task's own files are when the config names none: `default_data_dir / default_data_file` and
    # `default_prompts_dir / name / <role>.md`. A task in a package of its own points these into its package.
    default_data_dir: ClassVar[Path] = EXAMPLE_DATA_DIR
    default_prompts_dir: ClassVar[Path] = DEFAULT_PROMPTS_DIR
    prompt_field: ClassVar[str] = "prompt"
    # Fields a record must have (after `normalize_record`); named in the error when one is missing or empty.
    required_fields: ClassVar[tuple[str, ...]] = ("prompt",)
    # How the meta-judge looks at the window: one rubric for the task, rewritten from per-sample analyses that
    # are merged ("merge"), or one guideline per cluster of prompts, rewritten independently ("per_cluster").
    meta_style: ClassVar[Literal["merge", "per_cluster"]] = "merge"
    default_guard_score: ClassVar[float] = 0.0
    default_min_reasoning_words: ClassVar[int] = 0
    # The scorer the judge scores this task's completions with (mpo_agents/scoring/scorers.py), when the task
    # has its own way of judging (math: "plan_then_execute"); None uses the one `scoring.mode` names.
    judge_scorer: ClassVar[str | None] = None
    # The record field holding a reference answer the judge and the meta-judge may compare with (math: the
    # worked solution); None when the task has none.
    reference_field: ClassVar[str | None] = None
    config: TaskConfig
    records: list[dict[str, Any]] = field(default_factory=list)
    # How the run's prompts measure against the policy's limit; None when they were not measured.
    prompt_lengths: PromptLengths | None = field(default=None, init=False)

    # False builds the task's prompts and rules without reading its data (what `mpo eval` needs).
    load_data: InitVar[bool] = True
    # The policy's prompt limit and token count (a run passes it); None leaves prompts unmeasured (scoring and
    # evaluation commands, which cut prompts as the policy does).
    prompt_budget: InitVar[PromptBudget | None] = None

    def __post_init__(self, load_data: bool, prompt_budget: PromptBudget | None) -> None:
        if not load_data:
            return
        located = self.checked_records()
        if prompt_budget is not None:
            located, self.prompt_lengths = fit_prompt_lengths(
                located, self.policy_conversation, prompt_budget, self.config.long_prompts
            )
        self.records = self.prepare_records([record for _, record in located])
        random.Random(self.config.shuffle_seed).shuffle(self.records)

    # -- data ---------------------------------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.config.data_path or self.default_data_dir / self.default_data_file)

    def load_records(self) -> list[dict[str, Any]]:
        """The usable records in file order, cut to `task.max_prompts` (see `checked_records`)."""
        return [record for _, record in self.checked_records()]

    def checked_records(self) -> list[tuple[str, dict[str, Any]]]:
        """Each usable record with where it is ("line 7", "row index 6"), in file order, cut to `task.max_prompts`.
        Every line or row is checked first; one ConfigError names all the unusable ones."""
        path = self.data_path
        located, problems = [], []
        for row in read_rows(path, self.config.split):
            record, problem = self._checked(row)
            if problem is not None:
                problems.append(f"{row.where} {problem}")
            elif record is not None:
                located.append((row.where, record))
        if problems:
            raise unusable_records_error(path, problems, self.name, self.required_fields)
        if self.config.max_prompts:
            located = located[: self.config.max_prompts]
        if not located:
            raise ConfigError(f"task.data_path: {path} holds no usable records for task {self.name}")
        return located

    def _checked(self, row: Row) -> tuple[dict[str, Any] | None, str | None]:
        """(normalised record or None if the task skips it, problem or None)."""
        problem = row.problem or shape_problem(row.value)
        if problem is not None:
            return None, problem
        record = self.normalize_record(dict(row.value))
        return record, None if record is None else self.record_problem(record)

    def normalize_record(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Map a row in the dataset's own field names to what the task reads; None skips the row. Add a field
        only when its source is there, so that a missing field is told apart from an empty one."""
        return record

    def record_problem(self, record: dict[str, Any] | None) -> str | None:
        """Why a normalised record cannot be used ("has no 'prompt' field", "has an empty 'prompt' field"), or
        None; a row the task skips lacks every field."""
        return fields_problem(record if record is not None else {}, self.required_fields)

    def prepare_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Whatever the task derives from the whole set of records (math: clusters). Records come normalised."""
        return records

    def batch(self, iteration: int, size: int) -> list[dict[str, Any]]:
        """The prompts of an iteration: consecutive records of the shuffled list, wrapping around (deterministic,
        so a resumed iteration sees the same prompts)."""
        start = (iteration - 1) * size
        return [self.records[(start + offset) % len(self.records)] for offset in range(size)]

    # -- prompts ------------------------------------------------------------------------------------------
    @property
    def prompts_dir(self) -> Path:
        return self.config.prompts_dir or self.default_prompts_dir

    def prompt(self, role: str, api: str = "chat"):
        return load_prompt(self.name, role, api, self.prompts_dir)

    def initial_rubric_text(self) -> str:
        path = self.config.initial_rubric or self.prompts_dir / self.name / INITIAL_RUBRIC
        if not Path(path).is_file():
            moved = Path(path).parent.parent / "initial_rubric.md"
            hint = (
                f" (the task's starting rubric moved from {moved.name} to {INITIAL_RUBRIC})"
                if moved.is_file()
                else ""
            )
            raise ConfigError(f"task.initial_rubric: {path} does not exist{hint}")
        return Path(path).read_text(encoding="utf-8").strip()

    def initial_rubric(self) -> RubricVersion:
        """Version 0: the task's criteria (or, with `task.initial_rubric`, a user's file, e.g. a baseline)."""
        text = self.initial_rubric_text()
        try:
            rubric, _ = parse_rubric(text)
        except RubricRejected as exc:
            source = self.config.initial_rubric or f"prompts/{self.name}/{INITIAL_RUBRIC}"
            raise ConfigError(f"task.initial_rubric: {source} is not a rubric: {exc}") from exc
        return RubricVersion.of(rubric, version=0, parent=None, iteration=0)

    def reference_of(self, record: dict[str, Any]) -> str | None:
        """The record's reference answer (`reference_field`), for the judge and the meta-judge; None if none."""
        return record.get(self.reference_field) if self.reference_field else None

    def evaluation_reference(self, record: dict[str, Any]) -> str | None:
        """What `mpo eval` compares a test response with (summary, gold verdict, gold answer); None if nothing."""
        return None

    def record_variables(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record's own fields that the task's prompt files use."""
        return {"prompt": record[self.prompt_field]}

    def prompt_variables(self, record: dict[str, Any]) -> dict[str, Any]:
        """Variables every prompt of this task may use about one record: the record's fields, plus the judge's
        persona, the task instruction and the rendered input block, each from the task's prompt files."""
        variables = self.record_variables(record)
        return {
            **variables,
            **self.framing(),
            "task_input": self.prompt("task_input").render(**variables).messages[0]["content"],
        }

    def framing(self) -> dict[str, str]:
        """The judge's persona and the task instruction, the same for every record (meta prompts use them)."""
        return {
            role: self.prompt(role).render().messages[0]["content"]
            for role in ("persona", "task_instruction")
        }

    def policy_conversation(self, record: dict[str, Any]) -> list[dict[str, str]]:
        return self.prompt("policy").render(**self.record_variables(record)).messages

    def prompt_text(self, record: dict[str, Any]) -> str:
        """A short human-readable form of the record's prompt, for sample files and the meta-judge."""
        return str(record[self.prompt_field])

    def cluster_of(self, record: dict[str, Any]) -> str | None:
        """The guideline group a record belongs to (tasks with `meta_style = "per_cluster"`)."""
        return None

    # -- reward guards ------------------------------------------------------------------------------------
    @property
    def guard_score(self) -> float:
        return self.default_guard_score if self.config.guard_score is None else self.config.guard_score

    @property
    def min_reasoning_words(self) -> int:
        configured = self.config.min_reasoning_words
        return self.default_min_reasoning_words if configured is None else configured

    def guard(self, record: dict[str, Any], completion: str) -> GuardResult | None:
        """A score decided without the judge, or None to ask the judge."""
        return None

    def exact_match_score(self, record: dict[str, Any], completion: str) -> GuardResult | None:
        """A score from comparing the answer with the gold answer, for tasks that have one; None otherwise."""
        return None
