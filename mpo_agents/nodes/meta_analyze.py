"""meta_analyze: the meta-judge reads the rubric and scored samples and says where the rubric is exploited,
inflated or vague."""

from __future__ import annotations

import json

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.judges.client import nonempty
from mpo_agents.meta import sample_window
from mpo_agents.meta.text import collapse_repeats
from mpo_agents.rundir import atomic_write_text
from mpo_agents.state import MPOState

ANALYSIS_MAX_WORDS = 300


async def meta_analyze(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    iteration, rubric = state["iteration"], state["rubric"]
    samples = sample_window(
        state.get("window", []), ctx.config.schedule.meta_samples, ctx.config.trainer.seed + iteration
    )
    prompt = ctx.prompt("meta_analyze", ctx.config.meta_judge.api).render(
        rubric=rubric["text"],
        rubric_version=rubric["version"],
        low=f"{rubric['low']:g}",
        high=f"{rubric['high']:g}",
        samples=samples,
        max_words=ANALYSIS_MAX_WORDS,
    )
    result = await ctx.meta_judge.complete(
        prompt.messages, parse=nonempty, metadata={"iteration": iteration, "node": "meta_analyze"}
    )
    analysis = collapse_repeats(prompt.full_reply(result.value)) if result.ok else None
    record = {
        "iteration": iteration,
        "rubric_version": rubric["version"],
        "samples": [s["key"] for s in samples],
        "analysis": analysis,
        "error": result.error,
    }
    atomic_write_text(ctx.run_dir.meta_path(iteration), json.dumps(record, indent=2))
    return {"analysis": analysis, "metrics": {**state.get("metrics", {}), "meta_analysis_ok": int(result.ok)}}
