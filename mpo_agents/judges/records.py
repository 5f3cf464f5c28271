"""The judge call log: one JSON line per attempt, so every score can be traced back to the exact exchange."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpo_agents.rundir import append_line, open_appended, read_jsonl


@dataclass(frozen=True)
class CallRecord:
    """One attempt of one judge call. Holds no credentials by construction: there is no field for them."""

    timestamp: str  # ISO 8601, UTC, when the attempt started
    role: str  # "judge", "meta_judge", ...
    model: str
    api: str  # "chat" or "completion"
    attempt: int  # 1-based; 0: no request was sent (a cache hit, or a prompt too long for the context)
    temperature: float  # raised above the configured value on a retry after an unparseable reply
    messages: list[dict[str, str]] | None  # chat API
    prompt: str | None  # completion API
    reply: str | None
    finish_reason: str | None
    error: str | None  # None on success; else a kind such as "timeout", "rate_limited", "unparseable"
    error_detail: str | None
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)  # whatever the caller passed: iteration, node, ...
    cached: bool = False  # served from the run's judgment cache: no request was sent
    cost_usd: float = 0.0  # LiteLLM's price of this attempt; 0 for unpriced (local) models
    served_by: str | None = None  # a routed role's answering deployment (model at endpoint); None otherwise


_FIELDS = tuple(spec.name for spec in dataclasses.fields(CallRecord))


def as_dict(record: CallRecord) -> dict[str, Any]:
    """A record's fields as a dict for its JSON line. Shallow: `dataclasses.asdict` deep-copies the messages
    and metadata first, which cost more than encoding them."""
    return {name: getattr(record, name) for name in _FIELDS}


class CallLog:
    """Appends records to a JSONL file; safe to share between threads and asyncio tasks.

    Each line is written whole under a lock, so another process (or a crash) sees whole lines only; `read` skips
    a last line cut short by a kill mid-write, and the next process's first write removes it. The file stays
    open between writes (opening it per record cost more than the rest of our layer's work per judge call) and
    is closed by `close` or with the log. A write the disk refuses raises StorageError.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: Any = None

    def write(self, record: CallRecord | dict[str, Any]) -> None:
        data = as_dict(record) if isinstance(record, CallRecord) else record
        with self._lock:
            if self._file is None or self._file.closed:
                self._file = open_appended(self.path)
            append_line(self._file, data)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """All records of a log file, skipping a last line cut short by a crash."""
        return read_jsonl(path, torn_tail_ok=True)
