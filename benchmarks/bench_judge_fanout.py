"""Fan-out: 256 judgments through the full judge layer (Scorer, routing, cache lookup and write, LiteLLM,
parsing, call log and records) against a local OpenAI-compatible server that answers after 200 ms, with
concurrency 32, so the ideal wall time is 256 / 32 x 0.2 s = 1.6 s. Two baselines send the very same requests
(same bodies, same concurrency) in the same process: bare `litellm.acompletion`, and plain asyncio + httpx.

The last line is `layer over bare litellm: X`, what our layer adds to LiteLLM itself (target: X <= 1.10).
`over raw httpx` and `over ideal` come before it, for reference: their old targets (1.15 and 1.30) are
retired, as bare LiteLLM alone takes 1.15-1.28x raw httpx on a 2-core machine. Each side is the median of
`--rounds` alternating rounds after a warm-up, since the machine is noisy.

    python benchmarks/bench_judge_fanout.py [--judgments 256] [--concurrency 32] [--rounds 3] [--deployments 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from judge_bench import API_KEY, bench_config, essay_batch, judge_server_process

from mpo_agents.judges.build import judge_panel
from mpo_agents.judges.cache import JudgmentCache
from mpo_agents.judges.records import CallLog
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.tasks import build_task

LATENCY = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judgments", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--deployments", type=int, default=1, help="list the server this many times behind the Router"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, judge_server_process(LATENCY) as url:
        extra = [{"model": "openai/bench-judge", "api_base": url, "api_key_env": "BENCH_JUDGE_KEY"}]
        config = bench_config(url, args.concurrency, deployments=extra * (args.deployments - 1))
        task = build_task(config.task)
        rubric = task.initial_rubric().to_state()
        records, samples = essay_batch(task, args.judgments)

        async def ours(round_number: int) -> float:
            # A fresh cache file per round: every judgment is a miss that is looked up, sent and stored.
            cache = JudgmentCache(Path(scratch) / f"cache-{round_number}.sqlite")
            panel = judge_panel(
                config,
                os.environ,
                None,
                call_log=CallLog(Path(scratch) / f"calls-{round_number}.jsonl"),
                cache=cache,
            )
            scorer = Scorer(task, panel, config)
            try:
                started = time.perf_counter()
                scored = await asyncio.gather(
                    *(scorer.score(rubric, r, s, 1) for r, s in zip(records, samples))
                )
                elapsed = time.perf_counter() - started
            finally:
                await panel.aclose()
            assert all(s["status"] == "scored" for s in scored), "a judgment failed"
            return elapsed

        async def raw(payloads: list[bytes]) -> float:
            gate = asyncio.Semaphore(args.concurrency)
            headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
            limits = httpx.Limits(max_connections=args.concurrency)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

                async def one(body: bytes) -> str:
                    async with gate:
                        response = await client.post("/chat/completions", content=body, headers=headers)
                        response.raise_for_status()
                        return response.json()["choices"][0]["message"]["content"]

                started = time.perf_counter()
                await asyncio.gather(*(one(body) for body in payloads))
                return time.perf_counter() - started

        def payloads() -> list[bytes]:
            """The exact requests our layer sent in the warm-up round, as its call log recorded them."""
            import json

            return [
                json.dumps(
                    {
                        "model": "bench-judge",
                        "messages": record["messages"],
                        "temperature": record["temperature"],
                        "max_tokens": config.judge.max_tokens,
                    }
                ).encode()
                for record in CallLog.read(Path(scratch) / "calls-0.jsonl")
            ]

        async def bare(payloads: list[bytes]) -> float:
            """The same requests through `litellm.acompletion` alone: what LiteLLM itself costs here."""
            import json

            from mpo_agents.litellm_import import import_litellm

            litellm = import_litellm()  # as the judge client imports it (keep-alive below the server's)
            gate = asyncio.Semaphore(args.concurrency)

            async def one(body: bytes) -> str:
                request = json.loads(body)
                async with gate:
                    response = await litellm.acompletion(
                        model=f"openai/{request.pop('model')}",
                        api_base=url,
                        api_key=API_KEY,
                        max_retries=0,
                        **request,
                    )
                    return response.choices[0].message.content

            started = time.perf_counter()
            await asyncio.gather(*(one(body) for body in payloads))
            return time.perf_counter() - started

        async def run() -> tuple[list[float], list[float], list[float]]:
            await ours(0)  # warm-up: imports, connection pools; its call log gives the baselines' requests
            bodies_ = payloads()
            assert len(bodies_) == args.judgments, "the warm-up round did not send one request per judgment"
            await raw(bodies_)
            await bare(bodies_)
            our_times, raw_times, bare_times = [], [], []
            for round_number in range(1, args.rounds + 1):
                raw_times.append(await raw(bodies_))
                bare_times.append(await bare(bodies_))
                our_times.append(await ours(round_number))
            return our_times, raw_times, bare_times

        our_times, raw_times, bare_times = asyncio.run(run())

    ideal = args.judgments / args.concurrency * LATENCY
    ours_s, raw_s = statistics.median(our_times), statistics.median(raw_times)
    print(
        f"judgments: {args.judgments}, concurrency {args.concurrency}, latency {LATENCY * 1000:.0f} ms, "
        f"deployments {args.deployments}, ideal {ideal:.2f} s"
    )
    print(f"raw httpx rounds: {', '.join(f'{t:.3f}' for t in raw_times)} s")
    print(f"bare litellm.acompletion rounds: {', '.join(f'{t:.3f}' for t in bare_times)} s")
    print(f"judge layer rounds: {', '.join(f'{t:.3f}' for t in our_times)} s")
    print(f"bare litellm over raw httpx: {statistics.median(bare_times) / raw_s:.3f}")
    print(f"over raw httpx: {ours_s / raw_s:.3f}")
    print(f"over ideal: {ours_s / ideal:.3f}")
    print(f"layer over bare litellm: {ours_s / statistics.median(bare_times):.3f}")  # the target: last


if __name__ == "__main__":
    main()
