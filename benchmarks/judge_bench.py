"""What the judge benchmarks share: the test judge server in its own process (as a real endpoint would be, so
it does not compete with the client for one interpreter lock), a batch of pending essay samples, and a Scorer
on the full judge layer (JudgeClient, LiteLLM, call log, cache)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "support"
sys.path.insert(0, str(REPO))

import httpx

from mpo_agents.config import MPOConfig
from mpo_agents.state import ScoredSample
from mpo_agents.tasks import Task

API_KEY = "sk-bench"


@contextmanager
def judge_server_process(latency: float, *extra: str) -> Iterator[str]:
    """`tests/support/judge_server.py` on a free loopback port in a subprocess; yields its /v1 URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(TESTS / "judge_server.py"), "--port", str(port), "--latency", str(latency)]
    with tempfile.TemporaryFile(mode="w+") as log:  # the server's own output, shown only if it fails to start
        process = subprocess.Popen([*command, *extra], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(
                            f"the benchmark judge server did not start:\n{log.read()}"
                        ) from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            process.wait(timeout=10)


def bench_config(url: str, concurrency: int, **judge: Any) -> MPOConfig:
    """Holistic scoring of the essay task by one judge at `url` (key in $BENCH_JUDGE_KEY)."""
    os.environ["BENCH_JUDGE_KEY"] = API_KEY
    return MPOConfig.model_validate(
        {
            "judge": {
                "model": "openai/bench-judge",
                "api_base": url,
                "api_key_env": "BENCH_JUDGE_KEY",
                "max_concurrency": concurrency,
                **judge,
            },
            "scoring": {"mode": "holistic"},
        }
    )


def essay_batch(task: Task, count: int) -> tuple[list[dict[str, Any]], list[ScoredSample]]:
    """`count` (record, pending sample) pairs; completions differ, and some use the judge's keyword."""
    records = [task.records[i % len(task.records)] for i in range(count)]
    samples: list[ScoredSample] = [
        {
            "key": f"s{i}",
            "prompt_index": i,
            "prompt": task.prompt_text(record),
            "truncated": False,
            "completion": f"Essay {i}: " + "a good point. " * (i % 6) + record["prompt"][:60],
            "score": None,
            "reward": None,
            "status": "pending",
            "rationale": "",
            "rubric_version": 0,
        }
        for i, record in enumerate(records)
    ]
    return records, samples
