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


def update_end_times(config: Any, run_dir: Any, environ: dict[str, str]) -> list[float]:
    """Run `config` in `run_dir` to its end in this process: the `perf_counter` time at which each policy
    update finished (iteration k+1 took end(k)..end(k+1))."""
    from mpo_agents.events import NodeFinished
    from mpo_agents.runner import execute

    ends: list[float] = []

    def on_event(event: Any) -> None:
        if isinstance(event, NodeFinished) and event.node == "policy_update":
            ends.append(time.perf_counter())

    execute(config, run_dir, environ, fresh=True, on_event=on_event)
    return ends


def trl_trainer(
    config: Any, reward: Any, dataset: Any, output_dir: Path, max_steps: int
) -> tuple[Any, list[float]]:
    """TRL's own `GRPOTrainer` (`RLOOTrainer` for rloo and reinforce_pp) on `config`'s policy, with the config
    our policy uses but TRL generating and calling `reward` itself; and the list the end time of each of its
    steps is appended to."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer, RLOOTrainer

    from mpo_agents.policy import resolve_device, resolve_dtype, resolve_model_dir
    from mpo_agents.policy.grpo import grpo_config, rloo_config
    from mpo_agents.policy.models import load_policy_model

    ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())

    device = resolve_device(config.policy)
    dtype = resolve_dtype(config.policy, device)
    model, tokenizer = load_policy_model(resolve_model_dir(config.policy.model), device, dtype)
    rloo = config.trainer.trainer_kind == "rloo"
    args = (rloo_config if rloo else grpo_config)(
        config.trainer,
        config.policy.generation,
        device,
        dtype,
        output_dir,
        max_steps=max_steps,
        shuffle_dataset=False,
        disable_tqdm=True,
    )
    trainer = (RLOOTrainer if rloo else GRPOTrainer)(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    return trainer, ends
