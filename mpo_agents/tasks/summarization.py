"""Summarization (BillSum): the policy summarises a US Congressional or California bill; the judge is a
government official checking faithfulness and concision."""

from __future__ import annotations

from typing import Any, ClassVar

from mpo_agents.tasks.base import Task


class Summarization(Task):
    name: ClassVar[str] = "summarization"
    default_data_file: ClassVar[str] = "billsum_sample.jsonl"
    prompt_field: ClassVar[str] = "text"
    required_fields: ClassVar[tuple[str, ...]] = ("text",)
    word_limit: ClassVar[int] = 400  # the paper's prompt asks for fewer than 400 words

    def normalize_record(self, record: dict[str, Any]) -> dict[str, Any] | None:
        # The cleaned BillSum release names its fields clean_text / clean_summary; prefer the cleaned text.
        normalized = dict(record)
        for name, sources in (("text", ("clean_text", "text")), ("summary", ("clean_summary", "summary"))):
            present = [record[source] for source in sources if source in record]
            if present:  # else left out, so that a missing text is reported as missing, not as empty
                normalized[name] = next((value for value in present if value), present[0])
        return normalized

    def evaluation_reference(self, record: dict[str, Any]) -> str | None:
        return record.get("summary") or None

    def record_variables(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"text": record["text"], "word_limit": self.word_limit}

    def prompt_text(self, record: dict[str, Any]) -> str:
        return str(record.get("title") or record["text"][:300])
