"""One MPO iteration (rollout, score, update, checkpoint) against one step of TRL's own GRPOTrainer.train().

Both sides use the same model (SmolLM2-135M-Instruct by default, the quickstart's policy), the same prompts,
batch (prompts x G), generation length, and the same judge: a local OpenAI-compatible server that answers at
once, reached through LiteLLM, so judge latency does not hide our overhead. Both are measured in this
process, after a warm-up step, as the median over `--steps` steps. Whichever side runs second in a process
was measured about 10% slower (one run each way: ratio 1.06-1.12 with TRL first, 0.97 with MPO first), so by
default each side runs twice, in the order TRL, MPO, MPO, TRL, and the medians are over both turns. Most of
that order effect was OpenMP: each thread that starts torch work gets a team of spinning workers, and a
second live team slowed generation ~20%. So each TRL turn runs on a thread that ends with it (its team ends
too), as our policy's own thread ends when the run closes it: every turn runs with one live team.

The MPO run checkpoints at the cadence priced (`--every`, default 10, ours), as a real run does: with the
default 3 timed steps that is once, after its last iteration. An iteration costs its rollout, score and update
without the checkpoint plus a tenth of one (`--every`); that ratio is printed last as `ratio: X` (target
<= 1.05), after the ratio with a checkpoint every iteration. Each turn also prints its wall, user and system
CPU seconds and the process's resident size before and after; an MPO turn its per-node medians, a TRL turn
its step split into generation (`_generate_single_turn`) and the rest.

    python benchmarks/bench_iteration.py [--model smollm2-135m|DIR] [--steps 3] [--tokens 48] [--every 10]
        [--algorithm grpo|dapo|dr_grpo|gspo|cispo|sapo|rloo|reinforce_pp|ppo] [--set KEY=VALUE ...]

`--algorithm rloo` (or reinforce_pp) times TRL's `RLOOTrainer.train()` step on the TRL side. `--algorithm ppo`
has no TRL counterpart (TRL 1.16 ships no PPO): its MPO side samples one completion for each of prompts x
generations prompts, the same number of sampled tokens as the TRL side's GRPO step, so the ratio is PPO's
iteration against a GRPO step; each MPO turn also prints its update's memory (peak and held after), which with
PPO includes the value model and its optimizer.

`--set` overrides apply to both sides (the TRL side reads the device, dtype, generation and trainer settings
from the same config); on a GPU, `--set policy.gradient_checkpointing=false` keeps our `auto` plan from turning
on gradient checkpointing, which TRL's side would not use.

Both sides fold log-probs with mpo-agents' in-place folds (`mpo_agents/policy/logprob_tiles.py`, whose results
equal TRL's bit for bit), installed before the first turn: the ratio prices the loop, not that memory saving.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from loop_bench import (
    judge_reply,
    loop_overrides,
    node_seconds,
    time_each_call,
    trl_trainer,
    update_end_times,
)

from mpo_agents.config import ALGORITHM_PRESETS, load_config
from mpo_agents.policy import logprob_tiles
from mpo_agents.prompts import load_prompt
from mpo_agents.runner import new_run_dir
from tests.support.judge_server import JudgeServer


def overrides(args: argparse.Namespace, url: str, iterations: int, *extra: str) -> list[str]:
    run = loop_overrides(args.model, args.tokens, url, iterations, args.generations, args.prompts)
    return [*run, *extra, *args.set]


def time_mpo(args: argparse.Namespace, url: str, workdir: Path) -> tuple[list[float], list[float]]:
    """Seconds of each timed iteration, and of the checkpoint each wrote (0 where it wrote none). The run
    checkpoints at the cadence priced (`--every`), so at least after its last iteration, as a real run does."""
    cadence = f"output.checkpoint_every={args.every}"
    config = load_config(None, overrides(args, url, args.steps + 1, cadence, *args.mpo_set))
    run_dir = new_run_dir(config, workdir / "mpo-run")
    finished = update_end_times(config, run_dir, {"BENCH_KEY": "x"})
    breakdown = node_seconds(run_dir.root)
    print(
        "MPO per-node median seconds:",
        {node: round(statistics.median(v), 2) for node, v in breakdown.items()},
    )
    timed = [m for m in run_dir.metrics() if m["iteration"] > 1]
    print(
        f"MPO update memory ({config.trainer.algorithm}): peak {statistics.median(m['update_peak_memory_mb'] for m in timed):.0f} MB, "
        f"held after {statistics.median(m['update_memory_mb'] for m in timed):.0f} MB (medians over the timed iterations)",
        flush=True,
    )
    checkpoints = [m.get("update_checkpoint_seconds", 0.0) for m in run_dir.metrics() if m["iteration"] > 1]
    return [b - a for a, b in itertools.pairwise(finished)], checkpoints  # iteration k+1 = end(k)..end(k+1)


def time_trl(args: argparse.Namespace, url: str, workdir: Path) -> list[float]:
    from datasets import Dataset

    from mpo_agents.litellm_import import import_litellm
    from mpo_agents.tasks import build_task

    litellm = import_litellm()  # as the judge client imports it (keep-alive below the server's)
    config = load_config(None, overrides(args, url, args.steps + 1))
    task = build_task(config.task)
    records = [task.batch(i, config.trainer.prompts_per_iteration) for i in range(1, args.steps + 2)]
    dataset = Dataset.from_list([{"prompt": task.policy_conversation(r)} for batch in records for r in batch])
    judge = load_prompt("essay_writing", "judge")

    async def judge_reward(prompts, completions, **kwargs):
        async def one(prompt, completion):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            rendered = judge.render(
                prompt=prompt[-1]["content"],
                rubric="Criterion 1: x. (0-5 points)",
                low=0,
                high=5,
                response=text,
            )
            reply = await litellm.acompletion(
                model="openai/bench", api_base=url, api_key="x", messages=rendered.messages, max_tokens=64
            )
            return float(re.search(r"Score:\s*(\d+)", reply.choices[0].message.content).group(1))

        return await asyncio.gather(*(one(p, c) for p, c in zip(prompts, completions)))

    # The same GRPOConfig our policy uses, but TRL generates and calls the reward itself, in its own loop.
    trainer, ends = trl_trainer(config, judge_reward, dataset, workdir / "trl-out", args.steps + 1)
    generation = time_each_call(trainer, "_generate_single_turn")  # to set beside our rollout node
    trainer.train()
    steps = [b - a for a, b in itertools.pairwise(ends)]
    print(
        f"TRL per-part median seconds: generation {statistics.median(generation[1:]):.2f}, rest of the step "
        f"{statistics.median(s - g for s, g in zip(steps, generation[1:], strict=True)):.2f}",
        flush=True,
    )
    return steps


def _rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up)")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument(
        "--every", type=int, default=10, help="the checkpoint cadence to price (default: ours)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for both sides, e.g. policy.device=cuda (repeatable)",
    )
    parser.add_argument(
        "--order",
        choices=["abba", "trl-first", "mpo-first"],
        default="abba",
        help="abba (default): TRL, MPO, MPO, TRL, so neither side always runs second in the process",
    )
    parser.add_argument(
        "--algorithm",
        choices=sorted(ALGORITHM_PRESETS),
        default=None,
        help="trainer.algorithm on both sides (default: the config's, grpo); rloo and reinforce_pp are timed "
        "against TRL's RLOOTrainer; ppo (TRL has none) against TRL's GRPO step at the same number of sampled "
        "tokens: one sample for each of prompts x generations prompts",
    )
    parser.add_argument("--mpo-only", action="store_true", help="time only the MPO side (for profiling)")
    args = parser.parse_args()
    args.mpo_set = []  # overrides of the MPO side only
    if args.algorithm == "ppo":
        rows = args.prompts * args.generations
        args.mpo_set = [
            "trainer.algorithm=ppo",
            "trainer.num_generations=1",
            f"trainer.prompts_per_iteration={rows}",
        ]
    elif args.algorithm:
        args.set.append(f"trainer.algorithm={args.algorithm}")
    logprob_tiles.install()  # as our policy would on its first turn; TRL's turns use the same folds
    sides = {"abba": "tmmt", "trl-first": "tm", "mpo-first": "mt"}[args.order]
    if args.mpo_only:
        sides = "m"
    trl_steps: list[float] = []
    mpo_steps: list[float] = []
    checkpoints: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, JudgeServer(judge_reply) as server:
        for turn, side in enumerate(sides):
            workdir = Path(tmp) / f"turn-{turn}"
            workdir.mkdir()
            rss_before, cpu_before, wall_before = _rss_gb(), os.times(), time.perf_counter()
            if side == "t":
                # On a thread of its own that ends with the turn, so that the OpenMP team its torch work
                # starts ends too, as our policy's thread does when its run closes the policy: each turn
                # then runs with one team, as each loop does in a process of its own (docs/benchmarks.md).
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trl-turn") as turn_thread:
                    trl_steps += turn_thread.submit(time_trl, args, server.url, workdir).result()
            else:
                steps, saves = time_mpo(args, server.url, workdir)
                mpo_steps += steps
                checkpoints += saves
            gc.collect()  # what the turn left (its trainer, model, optimizer) is freed before the next
            cpu = os.times()
            print(
                f"turn {turn + 1}/{len(sides)} ({'TRL' if side == 't' else 'MPO'}): "
                f"{time.perf_counter() - wall_before:.1f} s wall, user {cpu.user - cpu_before.user:.1f} s, "
                f"system {cpu.system - cpu_before.system:.1f} s, RSS {rss_before:.2f} -> {_rss_gb():.2f} GB",
                flush=True,
            )
    trl_steps = trl_steps or [float("nan")]
    trl_s = statistics.median(trl_steps)
    checkpoint_s = statistics.median(c for c in checkpoints if c > 0)
    without = statistics.median(t - c for t, c in zip(mpo_steps, checkpoints, strict=True))
    every_one, at_cadence = without + checkpoint_s, without + checkpoint_s / args.every
    trl_name = "RLOOTrainer" if args.algorithm in ("rloo", "reinforce_pp") else "GRPOTrainer"
    print(
        f"TRL {trl_name}.train() step: median {trl_s:.2f} s over {len(trl_steps)} ({', '.join(f'{t:.2f}' for t in trl_steps)})"
    )
    print(
        f"MPO iteration (rollout+score+update): median {without:.2f} s without a checkpoint, over "
        f"{len(mpo_steps)} ({', '.join(f'{t:.2f}' for t in mpo_steps)}, checkpoints included); checkpoint "
        f"median {checkpoint_s:.2f} s"
    )
    print(
        f"MPO iteration at checkpoint_every {args.every}: {at_cadence:.2f} s (checkpoint share "
        f"{checkpoint_s / args.every / at_cadence:.1%})"
    )
    print(f"ratio with checkpoint_every 1: {every_one / trl_s:.3f}")
    print(f"ratio: {at_cadence / trl_s:.3f}")


if __name__ == "__main__":
    main()
