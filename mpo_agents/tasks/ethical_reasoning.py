"""Ethical reasoning (Scruples anecdotes): the policy judges the author's action and ends with a verdict tag;
the judge is a moral philosopher who grades the reasoning (it never sees the gold label)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from mpo_agents.tasks.base import GuardResult, Task

VERDICT = re.compile(r"<verdict>\s*(RIGHT|WRONG)\s*</verdict>", re.IGNORECASE)
_WORD = re.compile(r"\b\w+\b")


def verdict_of(response: str) -> str | None:
    """The policy's verdict: the last well-formed tag."""
    found = VERDICT.findall(response)
    return found[-1].upper() if found else None


class EthicalReasoning(Task):
    name: ClassVar[str] = "ethical_reasoning"
    default_data_file: ClassVar[str] = "scruples_anecdotes_sample.jsonl"
    prompt_field: ClassVar[str] = "title"
    required_fields: ClassVar[tuple[str, ...]] = ("title", "text", "action", "gold_verdict")
    word_limit: ClassVar[int] = 300  # the paper's prompt asks for at most 300 words
    default_guard_score: ClassVar[float] = -10.0  # the paper's floor for a missing verdict or thin reasoning
    default_min_reasoning_words: ClassVar[int] = 30

    def normalize_record(self, record: dict[str, Any]) -> dict[str, Any] | None:
        # Scruples rows with no binarized label (INFO: "more information needed") have no right answer; the
        # paper's loader skips them, as it skips rows without a title, text or action.
        label = str(record.get("binarized_label") or record.get("label") or "").upper()
        if label not in ("RIGHT", "WRONG"):
            return None
        action = record.get("action")
        description = action.get("description") if isinstance(action, dict) else action
        if not (record.get("title") and record.get("text") and description):
            return None
        return {**record, "action": description, "gold_verdict": label}

    def evaluation_reference(self, record: dict[str, Any]) -> str | None:
        return record["gold_verdict"]

    def record_variables(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "title": record["title"],
            "text": record["text"],
            "action": record["action"],
            "word_limit": self.word_limit,
        }

    def guard(self, record: dict[str, Any], completion: str) -> GuardResult | None:
        if verdict_of(completion) is None:
            return GuardResult(
                self.guard_score, "no <verdict>RIGHT</verdict> or <verdict>WRONG</verdict> tag"
            )
        reasoning_words = len(_WORD.findall(VERDICT.sub(" ", completion)))
        if reasoning_words < self.min_reasoning_words:
            return GuardResult(
                self.guard_score,
                f"reasoning of {reasoning_words} words, fewer than {self.min_reasoning_words}",
            )
        return None
