"""An example task for mpo-agents in a package of its own: the policy writes a haiku on a topic, the judge is a
poetry teacher, and a poem of more than three lines is no haiku (scored without asking the judge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from mpo_agents.tasks import GuardResult, Task

HERE = Path(__file__).resolve().parent


class HaikuWriting(Task):
    name: ClassVar[str] = "haiku_writing"  # the entry point's name, and the folder of its prompt files
    # The prompt files (prompts/haiku_writing/<role>.md) and the data come from this package; roles it does not
    # ship (the judge and meta-judge prompts) come from mpo-agents' own `_common` prompts.
    default_prompts_dir: ClassVar[Path] = HERE / "prompts"
    default_data_dir: ClassVar[Path] = HERE / "data"
    default_data_file: ClassVar[str] = "haiku_topics.jsonl"
    prompt_field: ClassVar[str] = "topic"
    required_fields: ClassVar[tuple[str, ...]] = ("topic",)
    default_guard_score: ClassVar[float] = 0.0
    max_lines: ClassVar[int] = 3

    def record_variables(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"topic": record["topic"]}

    def guard(self, record: dict[str, Any], completion: str) -> GuardResult | None:
        lines = [line for line in completion.splitlines() if line.strip()]
        if len(lines) > self.max_lines:
            return GuardResult(self.guard_score, f"{len(lines)} lines; a haiku has {self.max_lines}")
        return None
