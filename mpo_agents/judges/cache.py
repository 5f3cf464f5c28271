"""A persistent judgment cache: a judge reply that parsed, stored in the run directory under a key of
everything that decides the reply (model, API, the full prompt, which holds the rubric version's text and the
completion, temperature, token limit, stop sequences). A repeated judgment costs no request, also after
`mpo resume` or in a later process.

Why not LiteLLM's cache: `litellm.cache` is one process-wide setting that caches every response, failures and
unparseable replies included; this one belongs to one run directory and keeps only judgments we could use.
SQLite (standard library) gives atomic, crash-safe writes shared by both judge roles. It runs in WAL mode with
`synchronous=NORMAL`: a write is a few microseconds instead of an fsync per judgment (which, on the event loop,
held up every other judge call); a process crash loses nothing, a power cut at worst the last judgments, which
are then asked again. On an event loop, `store` commits the judgments stored in one turn of the loop together
(one WAL commit, not one each) and returns once they are committed. `checkpoint` (called when a judge client
closes, i.e. at the end of every run or command) folds the WAL back into the one file, so a finished run
directory can be copied file by file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpo_agents.rundir import writing

CACHE_FILE = "judge_cache.sqlite"


def cache_key(
    model: str, api: str, messages: list[dict[str, str]], temperature: float, max_tokens: int, stop: Any
) -> str:
    material = json.dumps(
        {
            "model": model,
            "api": api,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "stop": stop,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


_STORE = "INSERT OR REPLACE INTO judgments (key, reply) VALUES (?, ?)"


@dataclass
class _Batch:
    """Judgments stored during one turn of an event loop, and the calls waiting for their commit."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class JudgmentCache:
    """key -> reply text. Safe to share between threads and asyncio tasks (each operation is one short
    statement under a lock; an LLM call is thousands of times slower)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self.hits = 0
        self.misses = 0
        self._batches: dict[asyncio.AbstractEventLoop, _Batch] = {}

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM judgments WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return row[0]

    def put(self, key: str, reply: str) -> None:
        with self._lock, writing(self.path):
            self._db.execute(_STORE, (key, reply))

    async def store(self, key: str, reply: str) -> None:
        """`put` for a coroutine: returns once the judgment is committed, together with the others stored
        in the same turn of the event loop (a commit costs more than the rows it writes). A failed commit
        raises in every caller of its batch."""
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            batch = self._batches[loop] = _Batch()
            loop.call_soon(self._commit, loop)  # after every task that is ready in this turn
        batch.rows.append((key, reply))
        waiter = loop.create_future()
        batch.waiters.append(waiter)
        await waiter

    def _commit(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._batches.pop(loop)
        error: BaseException | None = None
        try:
            with self._lock, writing(self.path):
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(_STORE, batch.rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # a failed COMMIT may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
        except Exception as exc:  # noqa: BLE001 - handed to the waiting calls, which raise it
            error = exc
        for waiter in batch.waiters:
            if waiter.done():  # its call was cancelled
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def checkpoint(self) -> None:
        """Move every committed judgment from the write-ahead log into the database file itself."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
