"""rollout: the policy samples G completions for each of an iteration's prompts (in the pipelined loop, for the
iteration after the one it is in)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.policy import Rollout
from mpo_agents.rundir import write_jsonl
from mpo_agents.scoring.scorer import pending_samples
from mpo_agents.state import BatchRef, MPOState


def rollout_seed(base_seed: int, iteration: int) -> int:
    """Each iteration samples with its own seed, so re-running an interrupted iteration gives the same batch."""
    return base_seed * 100_003 + iteration


def rollout(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    iteration = state["iteration"]
    records = ctx.task.batch(iteration, ctx.config.trainer.prompts_per_iteration)
    path, rollouts, seconds = sample_batch(ctx, iteration, records)
    # The iteration's metrics start here; the nodes after this one add theirs.
    return {
        "rollout_path": ctx.run_dir.relative(path),
        "batch": pending_samples(ctx.task, records, rollouts, state["rubric"]["version"]),
        "metrics": {"rollout_seconds": seconds},
    }


def rollout_ahead(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """The pipelined loop's rollout: the next iteration's batch while the judge scores this one's (or, with
    nothing in flight, as at a run's start, this iteration's own)."""
    ctx = runtime.context
    iteration = state["iteration"] + (1 if state.get("judging") else 0)
    records = ctx.task.batch(iteration, ctx.config.trainer.prompts_per_iteration)
    path, _, seconds = sample_batch(ctx, iteration, records)
    sampled = BatchRef(iteration=iteration, rollout_path=ctx.run_dir.relative(path), rollout_seconds=seconds)
    return {"sampled": sampled}


def sample_batch(
    ctx: RunContext, iteration: int, records: list[dict[str, Any]]
) -> tuple[Path, list[Rollout], float]:
    """Sample an iteration's batch (`records` are its prompts) with the policy as it is now, store it (token
    ids, behaviour log-probs, policy version) and enter it in the batch ledger. Returns its file, its rollouts
    and the seconds it took."""
    started = time.perf_counter()
    rollouts = ctx.policy.generate(
        [ctx.task.policy_conversation(record) for record in records],
        num_generations=ctx.config.trainer.num_generations,
        seed=rollout_seed(ctx.config.trainer.seed, iteration),
        key_prefix=f"it{iteration:04d}",
    )
    seconds = time.perf_counter() - started
    # Token ids go to disk; the state keeps only the path.
    path = ctx.run_dir.rollouts_path(iteration)
    write_jsonl(path, [item.to_dict() for item in rollouts])
    ctx.run_dir.record_batch(
        iteration,
        "generated",
        policy_step=ctx.policy.step,
        rollouts=ctx.run_dir.relative(path),
        completions=len(rollouts),
    )
    return path, rollouts, seconds
