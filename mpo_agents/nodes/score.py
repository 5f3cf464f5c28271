"""score: every completion is scored against the current rubric, concurrently (see mpo_agents/scoring/scorer.py)."""

from __future__ import annotations

import asyncio
import time
from statistics import fmean

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.errors import JudgeOutage
from mpo_agents.judges.failures import FAILED_STATUSES, STATUS_UNPARSEABLE
from mpo_agents.rundir import write_jsonl
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.state import MPOState


async def score(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    iteration, rubric = state["iteration"], state["rubric"]
    scorer = Scorer(ctx.task, ctx.judge, ctx.config)
    records = ctx.task.batch(iteration, ctx.config.trainer.prompts_per_iteration)
    started = time.perf_counter()
    scored = await asyncio.gather(
        *(scorer.score(rubric, records[s["prompt_index"]], s, iteration) for s in state["batch"])
    )
    judge_seconds = time.perf_counter() - started
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
    rewards = [s["reward"] for s in scored if s.get("reward") is not None]
    normalized = [s["normalized_reward"] for s in scored if s.get("normalized_reward") is not None]
    metrics = {
        **state.get("metrics", {}),  # the rollout's
        # The batch's judging, start to last judgment: the synchronous loop waits for all of it
        "judge_seconds": judge_seconds,
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
