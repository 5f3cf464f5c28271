"""The judgment cache: the same batch judged twice through the full judge layer (Scorer, JudgeClient,
LiteLLM, the call log) against a local OpenAI-compatible server with 200 ms latency per request.

The second pass must send 0 requests; printed last: `second pass over first: X` (wall time ratio, same
process, same batch).

    python benchmarks/bench_judge_cache.py [--judgments 128] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from judge_bench import (  # sets up the environment and the repository on sys.path
    API_KEY,
    bench_config,
    essay_batch,
)

from mpo_agents.judges.cache import JudgmentCache
from mpo_agents.judges.client import JudgeClient
from mpo_agents.judges.records import CallLog
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.tasks import build_task
from tests.support.judge_server import JudgeServer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judgments", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, JudgeServer(latency=0.2) as server:
        config = bench_config(server.url, args.concurrency, retries=1)
        task = build_task(config.task)
        rubric = task.initial_rubric().to_state()
        records, samples = essay_batch(task, args.judgments)
        cache = JudgmentCache(Path(scratch) / "judge_cache.sqlite")
        judge = JudgeClient(
            "judge",
            config.judge,
            api_base=server.url,
            api_key=API_KEY,
            call_log=CallLog(Path(scratch) / "calls.jsonl"),
            cache=cache,
        )
        scorer = Scorer(task, judge, config)

        async def one_pass() -> tuple[float, list]:
            started = time.perf_counter()
            scored = await asyncio.gather(*(scorer.score(rubric, r, s, 1) for r, s in zip(records, samples)))
            return time.perf_counter() - started, scored

        async def both():
            try:
                await judge.complete([{"role": "user", "content": "warm-up"}], metadata={"node": "warm-up"})
                server.reset()
                first_time, first = await one_pass()
                first_requests = server.counts["requests"]
                second_time, second = await one_pass()
                return first_time, first, first_requests, second_time, second, server.counts["requests"]
            finally:
                await judge.aclose()

        first_time, first, first_requests, second_time, second, total = asyncio.run(both())
    assert [s["score"] for s in first] == [s["score"] for s in second], "cached scores differ"
    print(f"judgments per pass: {len(records)}, concurrency {args.concurrency}, server latency 200 ms")
    print(f"first pass: {first_requests} requests, {first_time:.3f} s")
    print(f"second pass: {total - first_requests} requests, {second_time:.3f} s")
    print(f"second pass over first: {second_time / first_time:.4f}")


if __name__ == "__main__":
    main()
