"""The pipelined loop against the synchronous one and against TRL's GRPOTrainer, with a judge that takes time.

All three sides train the quickstart's policy (SmolLM2-135M-Instruct by default) on the same prompts: 2
prompts x 4 completions of 48 new tokens per step, scored per criterion under a 3-criterion rubric, so 24
judge calls per batch. The judge is the scripted test server (tests/support/judge_server.py) in a process of
its own, as a remote endpoint would be: every reply takes `--latency` seconds (default 1.0) and it serves
`--concurrency` requests at once (default 4), the rest queue. That is 6 rounds of 1 s, ~6 s per batch: about
as long as sampling the batch (4.8-6.6 s on this machine's 2 cores; both are printed, as `rollout_seconds` and
`judge_seconds`).

- synchronous: `schedule.pipeline: off`; an iteration samples, waits for the judge, updates.
- pipelined: `schedule.pipeline: one_step`; the judge scores batch t+1 while the policy updates on batch t and
  samples batch t+2.
- TRL: one `GRPOTrainer.train()` step whose async reward function sends the batch's 24 calls to the same judge
  through LiteLLM, all at once, and sums each completion's criterion scores.

Each MPO turn runs `--steps` + 2 iterations and times the steady-state ones: from the end of one update to the
end of the next, the first update (warm-up) and the last iteration (the pipelined loop samples nothing in its
last iteration) left out, so neither side's timed span holds a checkpoint. A TRL turn runs `--steps` + 1
steps, its first left out. This machine's speed drifts by 20-30% over minutes, so each side runs twice, in the
mirrored order synchronous, pipelined, TRL, TRL, pipelined, synchronous, and the medians are over both turns,
after an unmeasured warm-up run (see `main`). TRL runs on a thread that ends with its turn, as our policy runs
on a thread of its own that ends with the run (see bench_iteration.py for why). Printed last: `pipelined over
synchronous`, `visible judge wait` (the share of the pipelined run's judge time that its loop spent waiting in
judge_collect) and `pipelined over TRL`.

    python benchmarks/bench_pipeline.py [--model smollm2-135m|DIR] [--steps 2] [--latency 1.0]
        [--concurrency 4] [--sides off,one_step,trl] [--once] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import itertools

import httpx
from loop_bench import loop_overrides, node_seconds, trl_trainer, update_end_times

from mpo_agents.config import load_config
from mpo_agents.policy import allocator, logprob_tiles
from mpo_agents.prompts import load_prompt
from mpo_agents.runner import new_run_dir

# Three criteria the scripted judge scores by counting the word "good", each clipped to its range.
RUBRIC = (
    "Criterion 1: The essay argues its point clearly. (0-5 points)\n"
    "Criterion 2: The essay's paragraphs build on each other. (0-5 points)\n"
    "Criterion 3: The essay ends with a conclusion that follows. (0-5 points)\n"
)
CRITERIA = [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in RUBRIC.splitlines()]


def overrides(args: argparse.Namespace, url: str, iterations: int, rubric: Path, *extra: str) -> list[str]:
    run = loop_overrides(args.model, args.tokens, url, iterations, args.generations, args.prompts)
    return [
        *run,
        "scoring.mode=per_item",
        f"task.initial_rubric={rubric}",
        "output.checkpoint_every=1000",  # only the last iteration's checkpoint, outside the timed span
        f"judge.max_concurrency={args.prompts * args.generations * len(CRITERIA)}",  # a batch at once, as TRL
        *extra,
        *args.set,
    ]


def time_mpo(
    args: argparse.Namespace, url: str, workdir: Path, rubric: Path, pipeline: str
) -> tuple[list[float], list[dict]]:
    """Seconds of each timed iteration (update end to update end, see the module docstring) and the metrics of
    the iterations they end."""
    iterations = args.steps + 2
    config = load_config(None, overrides(args, url, iterations, rubric, f"schedule.pipeline={pipeline}"))
    run_dir = new_run_dir(config, workdir / f"mpo-{pipeline}")
    ends = update_end_times(config, run_dir, {"BENCH_KEY": "x"})
    breakdown = node_seconds(run_dir.root)
    print(
        f"MPO {pipeline} per-node median seconds:",
        {node: round(statistics.median(v), 2) for node, v in breakdown.items()},
        flush=True,
    )
    timed = [b - a for a, b in itertools.pairwise(ends[: args.steps + 1])]
    metrics = [m for m in run_dir.metrics() if 2 <= m["iteration"] <= args.steps + 1]
    return timed, metrics


def time_trl(args: argparse.Namespace, url: str, workdir: Path, rubric: Path) -> list[float]:
    from datasets import Dataset

    from mpo_agents.judges.injection import as_judge_data
    from mpo_agents.litellm_import import import_litellm
    from mpo_agents.tasks import build_task

    litellm = import_litellm()
    config = load_config(None, overrides(args, url, args.steps + 1, rubric))
    task = build_task(config.task)
    records = [
        r for i in range(1, args.steps + 2) for r in task.batch(i, config.trainer.prompts_per_iteration)
    ]
    dataset = Dataset.from_list(
        [{"prompt": task.policy_conversation(r), "record": n} for n, r in enumerate(records)]
    )
    judge_item = load_prompt("essay_writing", "judge_item")

    async def judge_reward(prompts, completions, record, **kwargs):
        # The judge prompt our scorer sends for one criterion (scoring/scorers.py), same variables.
        async def criterion(index, text, number, item) -> float:
            rendered = judge_item.render(
                **task.prompt_variables(records[index]),
                response=as_judge_data(text),
                rubric=RUBRIC,
                item_number=number,
                item_count=len(CRITERIA),
                item_text=item,
                item_low="0",
                item_high="5",
            )
            reply = await litellm.acompletion(
                model="openai/bench", api_base=url, api_key="x", messages=rendered.messages, max_tokens=64
            )
            return float(re.search(r"Score:\s*(\d+)", reply.choices[0].message.content).group(1))

        async def one(index, completion) -> float:
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            scores = await asyncio.gather(
                *(criterion(index, text, n, item) for n, item in enumerate(CRITERIA, start=1))
            )
            return sum(scores)

        return await asyncio.gather(*(one(i, c) for i, c in zip(record, completions, strict=True)))

    trainer, ends = trl_trainer(config, judge_reward, dataset, workdir / "trl-out", args.steps + 1)
    trainer.train()
    return [b - a for a, b in itertools.pairwise(ends)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_judge(latency: float, concurrency: int) -> tuple[subprocess.Popen, str]:
    """The scripted judge server in a process of its own; its URL once it answers."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "support" / "judge_server.py"),
            f"--port={port}",
            "--rule=keyword:good",
            f"--latency={latency}",
            f"--concurrency={concurrency}",
        ],
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
            return server, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the judge server did not start") from None
            time.sleep(0.1)


def on_own_thread(function, *args):
    """`function(*args)` on a thread that ends with it, so its OpenMP team ends too (bench_iteration.py)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-turn") as turn:
        return turn.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=2, help="timed iterations per turn (after a warm-up)")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per judge reply")
    parser.add_argument("--concurrency", type=int, default=4, help="judge requests served at once")
    parser.add_argument(
        "--sides",
        default="off,one_step,trl",
        help="which to run, comma-separated (the ratios need all three)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every side, e.g. policy.device=cuda (repeatable)",
    )
    parser.add_argument(
        "--once", action="store_true", help="one turn per side instead of the mirrored order (a quick look)"
    )
    args = parser.parse_args()
    logprob_tiles.install()  # as our policy does; TRL's turn uses the same folds (see bench_iteration.py)
    sides = args.sides.split(",")
    turns = sides if args.once else [*sides, *reversed(sides)]  # this machine drifts: mirror the order
    steps: dict[str, list[float]] = {side: [] for side in sides}
    metrics: dict[str, list[dict]] = {side: [] for side in sides}
    server, url = start_judge(args.latency, args.concurrency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rubric = Path(tmp) / "rubric.md"
            rubric.write_text(RUBRIC)
            if not args.once:
                # Unmeasured: the first MPO run of a process updated ~15% faster than every later one (10.7 s
                # against 12.2-12.5 s, whatever the loop; a heap trim between runs did not change it), which
                # would favour the first turn's side.
                warm_up = Path(tmp) / "warm-up"
                warm_up.mkdir()
                time_mpo(argparse.Namespace(**{**vars(args), "steps": 0}), url, warm_up, rubric, "off")
            for turn, side in enumerate(turns):
                workdir = Path(tmp) / f"turn-{turn}"
                workdir.mkdir()
                started = time.perf_counter()
                if side == "trl":
                    timed = on_own_thread(time_trl, args, url, workdir, rubric)
                else:
                    timed, lines = time_mpo(args, url, workdir, rubric, side)
                    metrics[side] += lines
                steps[side] += timed
                gc.collect()  # what the turn left (its trainer, model, optimizer) is freed before the next
                allocator.release_free_memory()  # and handed back, so the next turn starts from a clean heap
                print(
                    f"turn {turn + 1}/{len(turns)} ({side}): {time.perf_counter() - started:.1f} s wall; "
                    "timed "
                    f"steps {', '.join(f'{s:.2f}' for s in timed)} s",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(timeout=10)
    for name, side in (("synchronous", "off"), ("pipelined", "one_step")):
        if metrics.get(side):
            parts = {
                key: round(statistics.median(m[key] for m in metrics[side]), 2)
                for key in ("rollout_seconds", "judge_seconds", "judge_wait_seconds", "update_seconds")
            }
            print(
                f"MPO {name}: median iteration {statistics.median(steps[side]):.2f} s; "
                f"parts (median): {parts}"
            )
    if set(sides) != {"off", "one_step", "trl"}:
        return
    sync_s, pipelined_s, trl_s = (statistics.median(steps[side]) for side in ("off", "one_step", "trl"))
    pipelined = metrics["one_step"]
    waited = sum(m["judge_wait_seconds"] for m in pipelined) / sum(m["judge_seconds"] for m in pipelined)
    print(f"TRL GRPOTrainer.train() step with the async judge reward: median {trl_s:.2f} s")
    print(f"judge: {args.latency} s per reply, {args.concurrency} at once, 24 calls per batch")
    print(f"pipelined over synchronous: {pipelined_s / sync_s:.3f}")
    print(f"visible judge wait: {waited:.3f}")
    print(f"pipelined over TRL: {pipelined_s / trl_s:.3f}")


if __name__ == "__main__":
    main()
