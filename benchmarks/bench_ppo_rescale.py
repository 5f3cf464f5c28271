"""What a rubric rewrite that changes the score range does to PPO's value model, with raw and with normalised rewards.

A rewrite can take the summed score from 0-5 to 0-40 (SPEC §7.6). This runs PPO updates (`trainer.algorithm:
ppo`, the paper's value settings) on the test suite's tiny model with a scripted judge: `--before` iterations
score each completion 0-5, then the "rewritten rubric" scores the same completions eight times as high (0-40, as
if it had gained seven items that agree with the first). `raw` trains on those numbers; `normalized` on each
mapped to 0..1 by its rubric's range (`scoring.reward: normalized`, PPO's default), so the rewrite changes
nothing it sees. Both run in this process, over three seeds.

For each iteration it prints the value model's gap: |mean value - mean return| over the batch's tokens, as a
share of the reward range in force (returns are the score plus the small KL terms, gamma 1). Value clipping
(`cliprange_value` 0.2 per update) lets a raw-reward value model close an 8x jump only slowly, and until it does,
GAE hands early and late tokens different shares of that error. The last line is the ratio of the mean gap over
the `--after` iterations after the rewrite, raw / normalized.

    python benchmarks/bench_ppo_rescale.py [--before 6] [--after 6] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from mpo_agents.config import GenerationConfig, LoraConfig, PolicyConfig, TrainerConfig
from mpo_agents.policy.grpo import build_policy
from tests.support.tiny_model import build_tiny_model

CONVERSATIONS = [[{"role": "user", "content": f"Write an essay about {topic}."}] for topic in
                 ("rivers", "cities", "winter", "music", "trains", "gardens", "the sea", "letters")]  # fmt: skip
LOW_RANGE, HIGH_RANGE = 5.0, 40.0


def judge(completion_ids: list[int]) -> float:
    """A scripted 0-5 score that depends on the completion."""
    return float(sum(completion_ids) % 6)


def run(model_dir: Path, work: Path, seed: int, variant: str, before: int, after: int) -> list[float]:
    """Each iteration's value gap as a share of the range in force."""
    trainer = TrainerConfig(
        algorithm="ppo", learning_rate=1e-3, prompts_per_iteration=len(CONVERSATIONS), max_prompt_length=64,
        seed=seed,
    )  # fmt: skip
    policy_cfg = PolicyConfig(
        model=str(model_dir), device="cpu", dtype="float32",
        generation=GenerationConfig(max_new_tokens=16, temperature=1.0), lora=LoraConfig(enabled=False),
    )  # fmt: skip
    policy = build_policy(policy_cfg, trainer, work)
    gaps = []
    try:
        for iteration in range(before + after):
            scale = 1.0 if iteration < before else HIGH_RANGE / LOW_RANGE
            span = LOW_RANGE if iteration < before else HIGH_RANGE
            rollouts = policy.generate(
                CONVERSATIONS, 1, seed=seed * 1000 + iteration, key_prefix=f"i{iteration}"
            )
            raw = [judge(r.completion_ids) * scale for r in rollouts]
            rewards = raw if variant == "raw" else [score / span for score in raw]
            metrics = policy.update(rollouts, rewards)
            in_force = span if variant == "raw" else 1.0
            gaps.append(abs(metrics["value_mean"] - metrics["reward_mean"]) / in_force)
    finally:
        policy.close()
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=int, default=6)
    parser.add_argument("--after", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[list[float]]] = {"raw": [], "normalized": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        for seed in args.seeds:
            for variant, runs in results.items():
                work = Path(tmp) / f"{variant}-{seed}"
                runs.append(run(model_dir, work, seed, variant, args.before, args.after))
    print(
        f"value gap |mean value - mean return| / reward range, per iteration (rewrite after {args.before}):"
    )
    for variant, runs in results.items():
        means = [statistics.fmean(column) for column in zip(*runs, strict=True)]
        print(f"  {variant:>10}: " + " ".join(f"{m:.3f}" for m in means))
    ratios = []
    for seed, raw, normalized in zip(args.seeds, results["raw"], results["normalized"], strict=True):
        after_raw, after_norm = (
            statistics.fmean(raw[args.before :]),
            statistics.fmean(normalized[args.before :]),
        )
        ratios.append(after_raw / after_norm)
        print(f"seed {seed}: mean gap after the rewrite raw {after_raw:.3f}, normalized {after_norm:.3f}")
    print(f"ratio (raw / normalized, mean gap after the rewrite): {statistics.fmean(ratios):.2f} "
          f"({', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip


if __name__ == "__main__":
    main()
