"""score: the judge scores every completion against the current rubric, concurrently."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.judges.client import PARSE_FAILURES
from mpo_agents.judges.parsing import parse_score
from mpo_agents.prompts import PromptTemplate
from mpo_agents.rundir import write_jsonl
from mpo_agents.state import MPOState, RubricState, ScoredSample

_SCORE_LINE = re.compile(r"^\W*score\b.*$", re.IGNORECASE | re.MULTILINE | re.DOTALL)


def rationale_of(reply: str) -> str:
    """The judge's reasoning: its reply up to the score line, without the 'Reason:' label."""
    text = _SCORE_LINE.split(reply, maxsplit=1)[0].strip()
    return re.sub(r"^\W*reason\W*", "", text, flags=re.IGNORECASE).strip()


async def judge_sample(
    ctx: RunContext,
    template: PromptTemplate,
    rubric: RubricState,
    record: dict[str, Any],
    sample: ScoredSample,
    iteration: int,
) -> ScoredSample:
    guarded = ctx.task.guard(record, sample["completion"])
    if guarded is not None:
        return {
            **sample,
            "score": guarded.score,
            "status": "guarded",
            "rationale": guarded.reason,
            "reward": _reward(ctx, guarded.score, sample),
        }
    prompt = template.render(
        **ctx.task.prompt_variables(record),
        rubric=rubric["text"],
        low=f"{rubric['low']:g}",
        high=f"{rubric['high']:g}",
        response=sample["completion"],
    )
    result = await ctx.judge.complete(
        prompt.messages,
        parse=lambda reply: parse_score(reply, rubric["low"], rubric["high"]),
        metadata={
            "iteration": iteration,
            "node": "score",
            "sample": sample["key"],
            "rubric_version": rubric["version"],
        },
    )
    if not result.ok:
        # Never a plausible number: the sample is recorded as failed and left out of the update.
        status = "unparseable" if result.error in PARSE_FAILURES else "judge_failed"
        return {**sample, "status": status, "rationale": f"{result.error}: {(result.reply or '')[:200]}"}
    return {
        **sample,
        "score": result.value,
        "status": "scored",
        "rationale": rationale_of(result.reply or ""),
        "reward": _reward(ctx, result.value, sample),
    }


def _reward(ctx: RunContext, score: float, sample: ScoredSample) -> float:
    return score - (ctx.config.task.truncation_penalty if sample["truncated"] else 0.0)


async def score(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    iteration, rubric = state["iteration"], state["rubric"]
    template = ctx.prompt("judge", ctx.config.judge.api)
    records = ctx.task.batch(iteration, ctx.config.trainer.prompts_per_iteration)
    scored = await asyncio.gather(
        *(
            judge_sample(ctx, template, rubric, records[s["prompt_index"]], s, iteration)
            for s in state["batch"]
        )
    )
    path = ctx.run_dir.samples_path(iteration)
    write_jsonl(path, scored)
    rewards = [s["reward"] for s in scored if s["reward"] is not None]
    metrics = {
        "reward_mean": sum(rewards) / len(rewards) if rewards else None,
        "judged": len(rewards),
        "judge_failures": sum(s["status"] in ("judge_failed", "unparseable") for s in scored),
        "unparseable": sum(s["status"] == "unparseable" for s in scored),
        "truncated": sum(s["truncated"] for s in scored),
    }
    return {"batch": scored, "window": [*state.get("window", []), str(path)], "metrics": metrics}
