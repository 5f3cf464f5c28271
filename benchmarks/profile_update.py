"""Profile our policy update and rollout against the same batch inside TRL's own `GRPOTrainer.train()`.

Three parts, each timed after a warm-up step and then profiled with cProfile (top entries by cumulative time):

- ours: `TRLGRPOPolicy.generate` on the batch, then `TRLGRPOPolicy.update` on those rollouts (profiled on the
  policy's own thread, where both run).
- trl-replay: one step of `GRPOTrainer.train()` whose `rollout_func` replays the very same rollouts and rewards
  (what `tests/integration/test_policy_grpo.py` compares numerically): the training part of TRL's step alone.
- trl-generate: one step of `GRPOTrainer.train()` that generates itself (the bench's TRL side); its
  generation (`_generate_single_turn`) is timed apart from the rest of the step.

Same model, dtype, threads and `GRPOConfig` (`grpo_config`) on every side.

    python benchmarks/profile_update.py [--model smollm2-135m] [--tokens 48] [--top 8] [--skip ...]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from loop_bench import time_each_call

from mpo_agents.config import load_config
from mpo_agents.policy import Rollout
from mpo_agents.policy.grpo import build_policy, grpo_config
from mpo_agents.policy.models import load_policy_model, resolve_device, resolve_dtype, resolve_model_dir
from mpo_agents.tasks import build_task


def reward(completion_ids: list[int], generation_index: int) -> float:
    """Distinct, deterministic rewards within a group, so advantages are non-zero."""
    return float(len(completion_ids) % 5) + 0.5 * generation_index


def top(profile: cProfile.Profile, count: int) -> str:
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("cumulative").print_stats(count)
    lines = stream.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(lines[start : start + count + 1])


def timed(label: str, fn: Callable[[], Any], runs: int, profile_count: int, on: Any = None) -> Any:
    """Run `fn` `runs` times unprofiled (the first is the warm-up), then once under cProfile; print both, with
    the process's user and system CPU seconds and minor page faults. `on`: the executor to run it on."""

    def call(profile: cProfile.Profile | None) -> tuple[float, Any]:
        box: dict[str, Any] = {}

        def body() -> None:
            if profile is not None:
                profile.enable()  # cProfile sees only the thread that enables it
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            box["result"] = fn()
            box["seconds"] = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            if profile is not None:
                profile.disable()
            print(
                f"   {label}: {box['seconds']:.2f} s, user {after.ru_utime - before.ru_utime:.2f} s, system "
                f"{after.ru_stime - before.ru_stime:.2f} s, minor faults {after.ru_minflt - before.ru_minflt}"
            )

        if on is not None:
            on.submit(body).result()
        else:
            body()
        return box["seconds"], box["result"]

    seconds = [call(None)[0] for _ in range(runs)]
    profile = cProfile.Profile()
    profiled, result = call(profile)
    print(
        f"\n== {label}: {', '.join(f'{s:.2f}' for s in seconds)} s unprofiled (first = warm-up), "
        f"median after warm-up {statistics.median(seconds[1:] or seconds):.2f} s; profiled {profiled:.2f} s"
    )
    print(top(profile, profile_count))
    return result


def ours(args: argparse.Namespace, config: Any, conversations: list[Any], workdir: Path) -> list[Rollout]:
    policy = build_policy(config.policy, config.trainer, workdir / "ours")
    print(f"torch threads {torch.get_num_threads()}, model dtype {policy.model.dtype}")
    G = config.trainer.num_generations

    def generate() -> list[Rollout]:
        return policy.generate(conversations, G, seed=7, key_prefix="it")

    thread = policy._policy_thread()
    rollouts = timed("ours: TRLGRPOPolicy.generate", generate, args.runs, args.top, on=thread)
    rewards = [reward(r.completion_ids, r.generation_index) for r in rollouts]
    print(
        "completion lengths:",
        [len(r.completion_ids) for r in rollouts],
        "prompt lengths:",
        sorted({len(r.prompt_ids) for r in rollouts}),
    )
    timed(
        "ours: TRLGRPOPolicy.update", lambda: policy.update(rollouts, rewards), args.runs, args.top, on=thread
    )
    policy.close()
    return rollouts


class StepProfiler:
    """A TrainerCallback that times every optimizer step and profiles the last one."""

    def __init__(self, profile_step: int) -> None:
        from transformers import TrainerCallback

        outer = self
        self.seconds: list[float] = []
        self.profile = cProfile.Profile()

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step + 1 == profile_step:
                    outer.profile.enable()
                outer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                outer.seconds.append(time.perf_counter() - outer.started)
                if state.global_step == profile_step:
                    outer.profile.disable()

        self.callback = Callback()


def trl_step(
    args: argparse.Namespace,
    config: Any,
    conversations: list[Any],
    workdir: Path,
    rollouts: list[Rollout] | None,
) -> None:
    """`rollouts` given: replay them (trl-replay); None: TRL generates (trl-generate)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    steps = args.runs + 1
    device = resolve_device(config.policy)
    dtype = resolve_dtype(config.policy, device)
    model, tokenizer = load_policy_model(resolve_model_dir(config.policy.model), device, dtype)
    generation_seconds: list[float] = []
    extra: dict[str, Any] = {}
    if rollouts is not None:
        scores = {r.key: reward(r.completion_ids, r.generation_index) for r in rollouts}

        def replay(prompts: list, trainer: Any) -> dict:
            return {
                "prompt_ids": [r.prompt_ids for r in rollouts],
                "completion_ids": [r.completion_ids for r in rollouts],
                "logprobs": None,
                "key": [r.key for r in rollouts],
            }

        def score(prompts: list, completions: list, key: list[str], **_: Any) -> list[float]:
            return [scores[k] for k in key]

        extra["rollout_func"] = replay
        dataset = Dataset.from_dict({"prompt": ["unused"] * (len(conversations) * steps)})
        label = "trl-replay: GRPOTrainer.train() step on our rollouts"
    else:

        def score(prompts: list, completions: list, completion_ids: list, **_: Any) -> list[float]:
            G = config.trainer.num_generations
            return [reward(ids, row % G) for row, ids in enumerate(completion_ids)]

        dataset = Dataset.from_list([{"prompt": c} for _ in range(steps) for c in conversations])
        label = "trl-generate: GRPOTrainer.train() step, generation included"
    profiler = StepProfiler(profile_step=steps)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[score],
        args=grpo_config(
            config.trainer,
            config.policy.generation,
            device,
            dtype,
            workdir / "trl",
            max_steps=steps,
            shuffle_dataset=False,
            disable_tqdm=True,
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[profiler.callback],
        **extra,
    )
    if rollouts is None:
        generation_seconds = time_each_call(trainer, "_generate_single_turn")
    trainer.train()
    s = profiler.seconds
    print(
        f"\n== {label}: {', '.join(f'{x:.2f}' for x in s)} s (first = warm-up, last profiled), "
        f"median of the unprofiled after warm-up {statistics.median(s[1:-1] or s[:1]):.2f} s"
    )
    if generation_seconds:
        g = generation_seconds
        print(
            f"   of which generation (_generate_single_turn): {', '.join(f'{x:.2f}' for x in g)} s; "
            f"training part (step - generation): {', '.join(f'{a - b:.2f}' for a, b in zip(s, g))} s"
        )
    print(top(profiler.profile, args.top))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="unprofiled runs per side, the first a warm-up")
    parser.add_argument("--top", type=int, default=25, help="profile entries printed per side")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "trl-replay", "trl-generate"])
    args = parser.parse_args()
    config = load_config(
        None,
        [
            f"policy.model={args.model}",
            f"policy.generation.max_new_tokens={args.tokens}",
            "policy.generation.temperature=0.9",
            f"trainer.num_generations={args.generations}",
            f"trainer.prompts_per_iteration={args.prompts}",
            "task.max_prompts=64",
        ],
    )
    task = build_task(config.task)
    conversations = [task.policy_conversation(r) for r in task.batch(1, args.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        rollouts = None
        if "ours" not in args.skip or "trl-replay" not in args.skip:
            rollouts = ours(args, config, conversations, Path(tmp))
        if "trl-replay" not in args.skip:
            trl_step(args, config, conversations, Path(tmp), rollouts)
        if "trl-generate" not in args.skip:
            trl_step(args, config, conversations, Path(tmp), None)


if __name__ == "__main__":
    main()
