"""score, judge_dispatch, judge_collect: a batch's completions scored against the rubric in force, concurrently
(see mpo_agents/scoring/scorer.py). The synchronous loop waits in `score`; the pipelined loop starts the judging
in `judge_dispatch` and takes its outcome in `judge_collect`, with the policy's work in between."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from statistics import fmean
from typing import Any

from langgraph.runtime import Runtime

from mpo_agents.buffers import BufferStore, prompt_id
from mpo_agents.context import RunContext
from mpo_agents.errors import JudgeOutage
from mpo_agents.judges.failures import FAILED_STATUSES, STATUS_UNPARSEABLE
from mpo_agents.policy import Rollout
from mpo_agents.rundir import write_jsonl
from mpo_agents.scoring.scorer import Scorer, pending_samples
from mpo_agents.state import MPOState, RubricState, ScoredSample


async def score(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    iteration = state["iteration"]
    records = ctx.task.batch(iteration, ctx.config.trainer.prompts_per_iteration)
    scored, seconds = await judge_batch(
        ctx, state["rubric"], records, state["batch"], iteration, state.get("buffers")
    )
    # The synchronous loop waits for all of the batch's judging.
    timing = {**state.get("metrics", {}), "judge_seconds": seconds, "judge_wait_seconds": seconds}
    return judged(ctx, state, iteration, scored, timing)


async def judge_dispatch(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Start judging the sampled batch under the rubric in force, on the run's event loop, and go on: the
    judgments proceed while the next nodes update and sample on the policy's thread."""
    ctx = runtime.context
    sampled, rubric = state["sampled"], state["rubric"]
    assert sampled is not None  # the graph routes here only with a batch sampled
    ctx.start_judging(
        sampled["iteration"], _judging(ctx, sampled["rollout_path"], rubric, sampled["iteration"])
    )
    return {"sampled": None, "judging": {**sampled, "rubric_version": rubric["version"]}}


async def judge_collect(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Wait for the judging `judge_dispatch` started (the wait is what the pipeline did not hide). After a stop
    or a kill nothing is in flight: the batch is judged again here, and judgments made before come from the
    judgment cache."""
    ctx = runtime.context
    judging, rubric, iteration = state["judging"], state["rubric"], state["iteration"]
    assert judging is not None and judging["iteration"] == iteration  # the graph's order guarantees both
    if judging.get("rubric_version") != rubric["version"]:
        raise RuntimeError(
            f"the batch of iteration {iteration} was sent to the judge under rubric v{judging.get('rubric_version')}"
            f" but v{rubric['version']} is in force: no rubric may change while a batch is being judged"
        )
    waiting = time.perf_counter()
    # None after a resume: judged again here, from the cache where it can be.
    in_flight = ctx.take_judging(iteration) or _judging(ctx, judging["rollout_path"], rubric, iteration)
    scored, seconds = await in_flight
    timing = {
        "rollout_seconds": judging["rollout_seconds"],
        "judge_seconds": seconds,
        "judge_wait_seconds": time.perf_counter() - waiting,
    }
    return {
        **judged(ctx, state, iteration, scored, timing),
        "judging": None,
        "rollout_path": judging["rollout_path"],
    }


async def _judging(
    ctx: RunContext, rollout_path: str, rubric: RubricState, iteration: int
) -> tuple[list[ScoredSample], float]:
    records = ctx.task.batch(iteration, ctx.config.trainer.prompts_per_iteration)
    batch = pending_samples(
        ctx.task, records, Rollout.read(ctx.run_dir.locate(rollout_path)), rubric["version"]
    )
    return await judge_batch(ctx, rubric, records, batch, iteration)


async def judge_batch(
    ctx: RunContext,
    rubric: RubricState,
    records: list[dict[str, Any]],
    batch: list[ScoredSample],
    iteration: int,
    buffers: dict[str, int] | None = None,
) -> tuple[list[ScoredSample], float]:
    """Every sample of `batch` (`records` are its prompts) scored under `rubric`, or with `rubric.scope: prompt`
    under its prompt's buffer (`buffers`: the version in force per prompt id), a prompt's group at a time and
    all groups concurrently; and the seconds from the first call to the last judgment."""
    scorer = Scorer(ctx.task, ctx.judge, ctx.config)
    groups: dict[int, list[ScoredSample]] = {}
    for sample in batch:
        groups.setdefault(sample["prompt_index"], []).append(sample)
    store = BufferStore(ctx.run_dir.prompt_rubrics_dir)
    how = ctx.config.rubric.aggregate

    def rubric_of(record: dict[str, Any]) -> RubricState:
        if ctx.config.rubric.scope != "prompt":
            return rubric
        pid = prompt_id(ctx.task.prompt_text(record))
        return store.load(pid, (buffers or {})[pid]).rubric_state(rubric["version"], how)

    started = time.perf_counter()
    judged = await asyncio.gather(
        *(
            scorer.score_group(rubric_of(records[index]), records[index], group, iteration)
            for index, group in groups.items()
        )
    )
    by_key = {sample["key"]: sample for group in judged for sample in group}
    return [by_key[sample["key"]] for sample in batch], time.perf_counter() - started


def judged(
    ctx: RunContext, state: MPOState, iteration: int, scored: list[ScoredSample], timing: dict[str, Any]
) -> dict:
    """The state update of a judged batch: its samples stored and entered in the window, the ledger and the
    iteration's metrics (after `timing`); JudgeOutage when too many judgments failed."""
    failed = sum(s["status"] in FAILED_STATUSES for s in scored)
    limit = ctx.config.scoring.max_failure_rate
    if limit is not None and scored and failed / len(scored) > limit:
        # Raised inside the node, so LangGraph commits nothing: a resume scores this batch again.
        raise JudgeOutage(
            f"{failed} of {len(scored)} judgments of iteration {iteration} failed after retries, more than "
            f"scoring.max_failure_rate={limit:g} (see calls/judge.jsonl for the errors). The run is paused "
            f"before this batch trains anything; fix the judge endpoint, then `mpo resume {ctx.run_dir.root}`: "
            "judgments that succeeded come from the cache, only the failed ones are sent again."
        )
    path = ctx.run_dir.samples_path(iteration)
    write_jsonl(path, scored)
    ctx.run_dir.record_batch(
        iteration,
        "judged",
        rubric_version=scored[0]["rubric_version"] if scored else state["rubric"]["version"],
        samples=ctx.run_dir.relative(path),
        outcomes=dict(Counter(s["status"] for s in scored)),
    )
    rewards = [s["reward"] for s in scored if s.get("reward") is not None]
    normalized = [s["normalized_reward"] for s in scored if s.get("normalized_reward") is not None]
    metrics = {
        **timing,
        "reward_mean": fmean(rewards) if rewards else None,
        "normalized_reward_mean": fmean(normalized) if normalized else None,
        "judged": len(rewards),
        "guarded": sum(s["status"] == "guarded" for s in scored),
        "exact_match_graded": sum(s.get("grader") == "exact_match" for s in scored),
        "judge_failures": failed,
        "unparseable": sum(s["status"] == STATUS_UNPARSEABLE for s in scored),
        "truncated": sum(s["truncated"] for s in scored),
    }
    agreements = [s["agreement"] for s in scored if s.get("agreement") is not None]
    if agreements:  # an ensemble judge: how often its members gave the same score
        metrics["judge_agreement"] = round(fmean(agreements), 4)
    return {
        "batch": scored,
        "window": [*state.get("window", []), ctx.run_dir.relative(path)],
        "metrics": metrics,
    }
