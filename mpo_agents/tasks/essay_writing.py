"""Essay writing: the policy writes an essay or story for a writing prompt; the judge is an English instructor."""

from __future__ import annotations

from typing import Any, ClassVar

from mpo_agents.tasks.base import Task


class EssayWriting(Task):
    name: ClassVar[str] = "essay_writing"
    default_data_file: ClassVar[str] = "essay_prompts.jsonl"
    word_limit: ClassVar[int] = 350  # the paper's prompt asks for at most 350 words

    def record_variables(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": record["prompt"], "word_limit": self.word_limit}
