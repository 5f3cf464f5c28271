"""A JudgeClient pointed at the scripted judge server, and one call with it, as the judge tests use them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mpo_agents.config import JudgeConfig
from mpo_agents.judges import CallLog, JudgeClient, JudgeResult, parse_score

API_KEY = "sk-test-Zq81-never-in-logs"
MESSAGES = [
    {"role": "system", "content": "Grade the response from 0 to 5. Reply with <score>N</score>."},
    {"role": "user", "content": "<response>A good essay, good structure, good ending.</response>"},
]  # the server's keyword rule ("good") scores this 3


def score_0_5(reply: str) -> float | None:
    """A reply's score on the 0-5 scale of MESSAGES, or None."""
    return parse_score(reply, 0, 5)


def make_client(server: Any, tmp_path: Path, **overrides: Any) -> JudgeClient:
    """A client of `server` (a JudgeServer) that logs to `tmp_path/judge_calls.jsonl`; `overrides` are
    JudgeConfig fields."""
    settings: dict[str, Any] = {
        "model": "hosted_vllm/test-judge",
        # Generous: a process's first call spends ~0.4-1 s in LiteLLM's lazy imports, inside the timed call.
        # Tests of timeouts set their own small value.
        "timeout": 5.0,
        "retries": 2,
        "retry_backoff": 0.01,
        "retry_backoff_max": 0.05,
        "max_concurrency": 4,
    }
    settings.update(overrides)
    return JudgeClient(
        "judge",
        JudgeConfig(**settings),
        api_base=server.url,
        api_key=API_KEY,
        call_log=CallLog(tmp_path / "judge_calls.jsonl"),
    )


def judge(client: JudgeClient, **kwargs: Any) -> JudgeResult[float]:
    """One call in a fresh event loop, as a synchronous caller would make it."""

    async def call() -> JudgeResult[float]:
        try:
            return await client.complete(MESSAGES, parse=score_0_5, **kwargs)
        finally:
            await client.aclose()

    return asyncio.run(call())


def log_lines(tmp_path: Path) -> list[dict[str, Any]]:
    """The call log of the clients `make_client` built with this `tmp_path`."""
    return CallLog.read(tmp_path / "judge_calls.jsonl")
