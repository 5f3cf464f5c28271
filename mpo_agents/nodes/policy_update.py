"""policy_update: exactly one GRPO step on this iteration's scored batch, computed by TRL, its stats and
rewards kept; the full policy state is checkpointed every `output.checkpoint_every` iterations. Idempotent: an
update the policy in memory already holds is not applied again."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.policy import Rollout, checkpoint_dir, checkpoint_indices, prune_checkpoints
from mpo_agents.rundir import UPDATE_REWARDS, atomic_write_text, read_jsonl
from mpo_agents.scoring.scorer import training_reward
from mpo_agents.state import MPOState

log = logging.getLogger(__name__)


def policy_update(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    iteration = state["iteration"]
    if iteration > ctx.policy_iteration:
        # Not applied yet (or applied by a process that was killed before the graph committed this node: the
        # restored policy then lacks it), so applying the step now is neither lost nor duplicated.
        versions = {sample["rubric_version"] for sample in state["batch"]}
        if len(versions) > 1:
            # GRPO compares a completion with its group; scores on two rubric scales are not comparable.
            raise RuntimeError(f"one batch scored under several rubric versions: {sorted(versions)}")
        rollouts = Rollout.read(ctx.run_dir.locate(state["rollout_path"]))
        rewards = [training_reward(sample, ctx.config) for sample in state["batch"]]
        stats = apply_update(ctx, iteration, rollouts, rewards)
    else:  # restored from this iteration's own checkpoint
        stats_path = ctx.run_dir.update_stats_path(iteration)
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        stats.pop(UPDATE_REWARDS, None)
    metrics = {
        "iteration": iteration,
        # The version this batch was scored with; a meta step in this iteration may already have written the next.
        "rubric_version": state["batch"][0]["rubric_version"]
        if state["batch"]
        else state["rubric"]["version"],
        "rubric_version_next": state["rubric"]["version"],
        "policy_step": ctx.policy.step,
        **state.get("metrics", {}),
        **{f"update_{key}" if not key.startswith("update") else key: value for key, value in stats.items()},
    }
    metrics.update(judge_usage_metrics(ctx, iteration))
    if ctx.run_dir.record_metrics(metrics):
        # Only a newly written line: a node re-run after a crash must not put an iteration on a dashboard twice.
        ctx.policy.log_metrics(metrics, iteration)
    return {
        "iteration": iteration + 1,
        "policy_step": ctx.policy.step,
        "metrics": metrics,
        "batch": [],
        "decisions": [],
    }


def apply_update(
    ctx: RunContext, iteration: int, rollouts: list[Rollout], rewards: list[float | None]
) -> dict[str, float]:
    """One step on a batch (none when no reward is usable), its stats and rewards kept in `updates/` (what a
    replay needs), then the iteration's checkpoint when the cadence asks for one. Returns the stats."""
    if ctx.config.trainer.mask_truncated_completions and rollouts and all(r.truncated for r in rollouts):
        log.warning(
            "iteration %d: every completion hit policy.generation.max_new_tokens, and "
            "trainer.mask_truncated_completions (the %s preset's) leaves them all out of the loss: this update "
            "trains nothing. Raise max_new_tokens or set trainer.mask_truncated_completions: false.",
            iteration,
            ctx.config.trainer.algorithm,
        )
    if any(reward is not None for reward in rewards):
        stats = ctx.policy.update(rollouts, rewards)
    else:
        stats = {"update_skipped": 1.0}  # no valid judgment at all: nothing to learn from
    ctx.policy_iteration = iteration
    atomic_write_text(
        ctx.run_dir.update_stats_path(iteration), json.dumps({**stats, UPDATE_REWARDS: rewards})
    )
    ctx.run_dir.record_batch(
        iteration, "trained", policy_step=ctx.policy.step, staleness=stats.get("staleness", 0.0)
    )
    if checkpoint_due(ctx, iteration):
        saving = time.perf_counter()
        save_policy(ctx)
        stats["checkpoint_seconds"] = time.perf_counter() - saving
    return stats


def checkpoint_due(ctx: RunContext, iteration: int) -> bool:
    """Whether the cadence checkpoints this iteration: every `output.checkpoint_every`th, and the last one."""
    return iteration % ctx.config.output.checkpoint_every == 0 or iteration >= ctx.config.schedule.iterations


def save_policy(ctx: RunContext) -> None:
    """Checkpoint the policy in memory as of `ctx.policy_iteration`, then delete the checkpoints retention does
    not keep (the newest `output.keep_last`, and the best by `output.keep_best`)."""
    ctx.policy.save(checkpoint_dir(ctx.run_dir.policy_dir, ctx.policy_iteration))
    output = ctx.config.output
    prune_checkpoints(ctx.run_dir.policy_dir, output.keep_last, also_keep=_best_checkpoint(ctx))


def save_policy_if_behind(ctx: RunContext) -> bool:
    """Checkpoint the policy when it holds updates that no checkpoint does (a run that stops between two
    checkpoints of the cadence), so that a resume need not apply them again. True when it saved."""
    saved = checkpoint_indices(ctx.run_dir.policy_dir)
    if ctx.policy_iteration == 0 or (saved and saved[-1] >= ctx.policy_iteration):
        return False
    save_policy(ctx)
    return True


def _best_checkpoint(ctx: RunContext) -> set[int]:
    """The checkpointed iteration with the best `output.keep_best` metric (an empty set without one)."""
    output = ctx.config.output
    if output.keep_best is None:
        return set()
    saved = set(checkpoint_indices(ctx.run_dir.policy_dir))
    values = {
        record["iteration"]: record[output.keep_best]
        for record in ctx.run_dir.metrics()
        if record.get("iteration") in saved and isinstance(record.get(output.keep_best), int | float)
    }
    if not values:
        return set()
    pick = max if output.keep_best_mode == "max" else min
    return {pick(values, key=values.__getitem__)}


def replay_updates(
    ctx: RunContext, iterations: range, on_status: Callable[[str], None] = lambda message: None
) -> None:
    """Apply again, in order, updates the graph has made but the restored checkpoint does not hold (made after
    it, or newer checkpoints were damaged): each from its stored rollouts and the rewards it trained on, so each
    is the same step again; checkpoints are written on the run's cadence, as the first time."""
    for iteration in iterations:
        on_status(
            f"replaying the update of iteration {iteration} (of {iterations.start}..{iterations.stop - 1})"
        )
        rollouts = Rollout.read(ctx.run_dir.rollouts_path(iteration))
        stats = apply_update(ctx, iteration, rollouts, stored_rewards(ctx, iteration))
        log.info("replayed the update of iteration %d: step %d, %s", iteration, ctx.policy.step, stats)


def stored_rewards(ctx: RunContext, iteration: int) -> list[float | None]:
    """The rewards an applied update trained on: kept with its stats; for updates made before they were kept
    there, recomputed from the samples file (the same unless `mpo rejudge` has rewritten it since)."""
    rewards = ctx.run_dir.update_rewards(iteration)
    if rewards is not None:
        return rewards
    return [training_reward(sample, ctx.config) for sample in read_jsonl(ctx.run_dir.samples_path(iteration))]


def judge_usage_metrics(ctx: RunContext, iteration: int) -> dict[str, float]:
    """Tokens, latency, cost and cache hits of this iteration's judge calls, per role and per node:
    `judge_tokens`, `judge_cost_usd`, ..., and `judge_score_tokens`, `meta_judge_meta_analyze_cost_usd`, ...
    (what this process sent; a cache hit costs nothing)."""
    metrics: dict[str, float] = {}
    for role, client in (("judge", ctx.judge), ("meta_judge", ctx.meta_judge)):
        by_node = client.usage(iteration)
        totals = {"calls": 0, "cached": 0, "tokens": 0, "latency_s": 0.0, "cost_usd": 0.0}
        for node, usage in by_node.items():
            tokens = usage.prompt_tokens + usage.completion_tokens
            metrics[f"{role}_{node}_tokens"] = tokens
            metrics[f"{role}_{node}_cost_usd"] = round(usage.cost_usd, 6)
            for key, value in (
                ("calls", usage.calls),
                ("cached", usage.cached),
                ("tokens", tokens),
                ("latency_s", usage.latency_s),
                ("cost_usd", usage.cost_usd),
            ):
                totals[key] += value
        metrics.update({f"{role}_{key}": round(value, 6) for key, value in totals.items()})
    return metrics
