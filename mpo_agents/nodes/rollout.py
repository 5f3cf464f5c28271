"""rollout: the policy samples G completions for each of this iteration's prompts."""

from __future__ import annotations

import time

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.rundir import write_jsonl
from mpo_agents.state import MPOState, ScoredSample


def rollout_seed(base_seed: int, iteration: int) -> int:
    """Each iteration samples with its own seed, so re-running an interrupted iteration gives the same batch."""
    return base_seed * 100_003 + iteration


def rollout(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    iteration = state["iteration"]
    records = ctx.task.batch(iteration, ctx.config.trainer.prompts_per_iteration)
    started = time.perf_counter()
    rollouts = ctx.policy.generate(
        [ctx.task.policy_conversation(record) for record in records],
        num_generations=ctx.config.trainer.num_generations,
        seed=rollout_seed(ctx.config.trainer.seed, iteration),
        key_prefix=f"it{iteration:04d}",
    )
    seconds = time.perf_counter() - started
    # Token ids go to disk; the state keeps only the path and the text.
    path = ctx.run_dir.rollouts_path(iteration)
    write_jsonl(path, [item.to_dict() for item in rollouts])
    batch = [
        ScoredSample(
            key=item.key,
            prompt_index=item.prompt_index,
            prompt=ctx.task.prompt_text(records[item.prompt_index]),
            completion=item.completion,
            truncated=item.truncated,
            score=None,
            reward=None,
            status="pending",
            rationale="",
            rubric_version=state["rubric"]["version"],
        )
        for item in rollouts
    ]
    # The iteration's metrics start here; the nodes after this one add theirs.
    return {
        "rollout_path": ctx.run_dir.relative(path),
        "batch": batch,
        "metrics": {"rollout_seconds": seconds},
    }
