"""What a task plugs into the loop: its data, its policy prompt, what its judge sees, and its reward guards."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mpo_agents.config import TaskConfig
from mpo_agents.errors import ConfigError
from mpo_agents.prompts import DEFAULT_PROMPTS_DIR, load_prompt

EXAMPLES_DATA_DIR = Path(__file__).resolve().parents[2] / "examples" / "data"


@dataclass
class GuardResult:
    """A deterministic verdict reached without the judge (e.g. a missing answer tag) — issue-5 tasks use it."""

    score: float
    reason: str


@dataclass
class Task:
    """Base task: subclasses set the class attributes and override the hooks that differ."""

    name: ClassVar[str]
    default_data_file: ClassVar[str]
    prompt_field: ClassVar[str] = "prompt"
    config: TaskConfig
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.records = self.load_records()
        random.Random(self.config.shuffle_seed).shuffle(self.records)

    # -- data ---------------------------------------------------------------------------------------------
    def load_records(self) -> list[dict[str, Any]]:
        path = self.config.data_path or EXAMPLES_DATA_DIR / self.default_data_file
        if not Path(path).is_file():
            raise ConfigError(
                f"task.data_path: {path} does not exist (a JSONL file with a '{self.prompt_field}' field)"
            )
        records = []
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"task.data_path: {path} line {number} is not JSON: {exc.msg}") from exc
            if not str(record.get(self.prompt_field, "")).strip():
                raise ConfigError(f"task.data_path: {path} line {number} has no '{self.prompt_field}' field")
            records.append(record)
        if self.config.max_prompts:
            records = records[: self.config.max_prompts]
        if not records:
            raise ConfigError(f"task.data_path: {path} holds no records")
        return records

    def batch(self, iteration: int, size: int) -> list[dict[str, Any]]:
        """The prompts of an iteration: consecutive records of the shuffled list, wrapping around (deterministic,
        so a resumed iteration sees the same prompts)."""
        start = (iteration - 1) * size
        return [self.records[(start + offset) % len(self.records)] for offset in range(size)]

    # -- prompts ------------------------------------------------------------------------------------------
    @property
    def prompts_dir(self) -> Path:
        return self.config.prompts_dir or DEFAULT_PROMPTS_DIR

    def initial_rubric_text(self) -> str:
        path = self.config.initial_rubric or self.prompts_dir / self.name / "initial_rubric.md"
        if not Path(path).is_file():
            raise ConfigError(f"task.initial_rubric: {path} does not exist")
        return Path(path).read_text(encoding="utf-8").strip()

    def prompt_variables(self, record: dict[str, Any]) -> dict[str, Any]:
        """Variables every prompt of this task may use about one record."""
        return {"prompt": record[self.prompt_field]}

    def policy_conversation(self, record: dict[str, Any]) -> list[dict[str, str]]:
        return (
            load_prompt(self.name, "policy", "chat", self.prompts_dir)
            .render(**self.prompt_variables(record))
            .messages
        )

    def prompt_text(self, record: dict[str, Any]) -> str:
        """A short human-readable form of the record's prompt, for sample files and the meta-judge."""
        return str(record[self.prompt_field])

    # -- reward guards ------------------------------------------------------------------------------------
    def guard(self, record: dict[str, Any], completion: str) -> GuardResult | None:
        """A score decided without the judge, or None to ask the judge. Essays have none."""
        return None
