"""Fault tolerance: the same batch judged through the full judge layer against a healthy judge server and
against one where 20% of requests fail (HTTP 500 and 429, timeouts, garbage, empty and truncated replies).
With retries the faulty run must end with exactly the healthy run's scores; what the faults cost is the
slowdown, printed last as `faulty over healthy: X` (wall time ratio, same process, same batch).

    python benchmarks/bench_judge_faults.py [--judgments 128] [--concurrency 32] [--fault-rate 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from judge_bench import bench_config, essay_batch, judge_server_process

from mpo_agents.judges.build import judge_panel
from mpo_agents.judges.records import CallLog
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.tasks import build_task

FAULT_KINDS = "500,429,timeout,garbage,empty,truncated"


def judge_batch(url: str, args: argparse.Namespace, calls: Path) -> tuple[float, list]:
    """One pass over the batch with fresh clients and no cache; returns (seconds, scored samples)."""
    config = bench_config(
        url,
        args.concurrency,
        cache=False,
        timeout=args.timeout,
        retries=args.retries,
        retry_backoff=0.05,
        retry_backoff_max=0.5,
    )
    task = build_task(config.task)
    rubric = task.initial_rubric().to_state()
    records, samples = essay_batch(task, args.judgments)
    panel = judge_panel(config, os.environ, None, call_log=CallLog(calls), cache=None)
    scorer = Scorer(task, panel, config)

    async def go() -> tuple[float, list]:
        try:
            started = time.perf_counter()
            scored = await asyncio.gather(*(scorer.score(rubric, r, s, 1) for r, s in zip(records, samples)))
            return time.perf_counter() - started, scored
        finally:
            await panel.aclose()

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judgments", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument(
        "--timeout", type=float, default=1.0, help="judge.timeout; a 'timeout' fault costs this"
    )
    parser.add_argument("--retries", type=int, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        with judge_server_process(0.2) as url:
            judge_batch(url, args, Path(scratch) / "warm-up.jsonl")  # imports, connection pools
            healthy_time, healthy = judge_batch(url, args, Path(scratch) / "healthy.jsonl")
        fault_args = ("--fault-rate", str(args.fault_rate), "--faults", FAULT_KINDS, "--timeout-sleep", "5")
        with judge_server_process(0.2, *fault_args) as url:
            faulty_time, faulty = judge_batch(url, args, Path(scratch) / "faulty.jsonl")
        attempts = CallLog.read(Path(scratch) / "faulty.jsonl")

    errors = Counter(record["error"] for record in attempts if record["error"])
    failed = [s["key"] for s in faulty if s["status"] != "scored"]
    same = [s["score"] for s in faulty] == [s["score"] for s in healthy]
    print(f"judgments: {args.judgments}, concurrency {args.concurrency}, server latency 200 ms")
    print(f"healthy: {healthy_time:.3f} s, all scored: {all(s['status'] == 'scored' for s in healthy)}")
    print(
        f"faulty ({args.fault_rate:.0%} of requests): {faulty_time:.3f} s, {len(attempts)} attempts, "
        f"failed attempts by kind: {dict(sorted(errors.items()))}"
    )
    print(f"judgments still failed after retries: {len(failed)}")
    print(f"scores equal to the healthy run: {same}")
    print(f"faulty over healthy: {faulty_time / healthy_time:.3f}")
    if not same:
        raise SystemExit("the faulty run's scores differ from the healthy run's")


if __name__ == "__main__":
    main()
