"""What the whole-loop benchmarks share: an instant judge with a real rule, and the `--set` overrides of a
quickstart-like run against it (no meta steps, a policy checkpoint every iteration, so each is measured)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from mpo_agents.rundir import read_jsonl


def judge_reply(prompt: str, request: dict) -> str:
    """An instant judge with a real rule: longer responses score higher (0-5)."""
    response = re.findall(r"<response>(.*?)</response>", prompt, re.DOTALL)[-1]
    return f"Reason: measured length.\nScore: {min(5, len(response.split()) // 8)}"


def loop_overrides(
    model: str, tokens: int, url: str, iterations: int, generations: int = 4, prompts: int = 2
) -> list[str]:
    """The run: `model` as the policy, `prompts` x `generations` rollouts of `tokens` new tokens per iteration,
    judge and meta-judge at `url` (key in `BENCH_KEY`)."""
    return [
        f"policy.model={model}",
        f"policy.generation.max_new_tokens={tokens}",
        "policy.generation.temperature=0.9",
        "judge.model=openai/bench",
        f"judge.api_base={url}",
        "judge.api_key_env=BENCH_KEY",
        "meta_judge.model=openai/bench",
        f"meta_judge.api_base={url}",
        "meta_judge.api_key_env=BENCH_KEY",
        f"trainer.num_generations={generations}",
        f"trainer.prompts_per_iteration={prompts}",
        f"schedule.iterations={iterations}",
        "schedule.meta_every=0",
        "task.max_prompts=64",
        "output.checkpoint_every=1",
    ]


def node_seconds(run_root: Path) -> dict[str, list[float]]:
    """Each node's seconds per iteration from a run's `timings.jsonl`, iteration 1 (the warm-up) left out."""
    nodes: dict[str, list[float]] = {}
    for record in read_jsonl(run_root / "timings.jsonl"):
        if record["iteration"] > 1:
            nodes.setdefault(record["node"], []).append(record["seconds"])
    return nodes


def time_each_call(owner: Any, name: str) -> list[float]:
    """Wrap the method `name` of `owner` so that every call's seconds are appended to the returned list (e.g.
    TRL's `_generate_single_turn`, to set its generation apart from the rest of its step)."""
    inner, seconds = getattr(owner, name), []

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    setattr(owner, name, timed)
    return seconds
