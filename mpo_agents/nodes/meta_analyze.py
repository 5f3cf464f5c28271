"""The meta_analyze step's stages (the `meta_analyze` subgraph in graphs/mpo.py): `prescreen` picks what the
meta-judge reads, `analyze` asks it for a critique of each case.

Every per-case result is written to `meta/iter-NNNN/<stage>/<case>.json` the moment it arrives, and a stage
re-run after a crash reads those files instead of asking again: a kill in the middle of a stage loses only the
calls in flight.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.judges.client import nonempty
from mpo_agents.meta import judged_samples, sample_cases, stratified_cluster_cases
from mpo_agents.meta.progress import each_case, step_progress
from mpo_agents.meta.prompting import rubric_view, shared_variables
from mpo_agents.meta.schedule import knob
from mpo_agents.meta.text import collapse_repeats
from mpo_agents.rundir import atomic_write_text
from mpo_agents.state import MetaCase, MPOState

PRESCREEN_POOL_FACTOR = 4  # prescreen looks at this many times `schedule.meta_samples` samples
_VERDICT = re.compile(r"\b(flawed|fine)\b", re.IGNORECASE)


async def prescreen(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Pick what the meta-judge analyses. Merge-style tasks: up to `schedule.meta_samples` samples, uniformly
    or (with `meta.prescreen`) those the meta-judge flags as mis-scored first. Per-cluster tasks: every cluster
    in the window, with stratified samples."""
    ctx = runtime.context
    iteration = state["iteration"]
    directory = ctx.run_dir.meta_dir(iteration)
    pool = judged_samples(ctx.run_dir, state.get("window", []))
    seed = ctx.config.trainer.seed * 7919 + iteration
    progress = step_progress(state)
    verdicts: dict[str, str] = {}
    if ctx.task.meta_style == "per_cluster":
        references = {ctx.task.prompt_text(r): ctx.task.reference_of(r) for r in ctx.task.records}
        cases = [
            {
                **case,
                "samples": [{**s, "reference": references.get(s["prompt"]) or ""} for s in case["samples"]],
            }
            for case in stratified_cluster_cases(pool, seed)
        ]
    else:
        if ctx.config.meta.prescreen and pool:
            verdicts = await _prescreen(ctx, state, pool, seed, directory)
        cases = sample_cases(
            pool, knob(ctx.config, state, "meta_samples"), seed, verdicts, _preferred(ctx, state, pool)
        )
    atomic_write_text(directory / "cases.json", json.dumps(cases, indent=2))
    metrics = {**state.get("metrics", {}), "meta_window": len(pool), "meta_cases": len(cases)}
    if verdicts:
        metrics["meta_prescreen_flawed"] = sum(v == "flawed" for v in verdicts.values())
    return {"meta": {**progress, "prescreen": verdicts, "cases": cases}, "metrics": metrics}


def _preferred(ctx: RunContext, state: MPOState, pool: list) -> set[str]:
    """Samples the meta-judge should see first: those alarms pointed at, and with
    `meta.sample_selection: alarms_and_top` also the top quarter by score, where reward hacks hide."""
    keys = {key for alarm in state.get("alarms", []) for key in alarm.get("evidence", [])}
    if ctx.config.meta.sample_selection == "alarms_and_top":
        scored = sorted(
            (s for s in pool if s.get("score") is not None), key=lambda s: s["score"], reverse=True
        )
        keys |= {s["key"] for s in scored[: max(1, len(scored) // 4)]}
    return keys


async def _prescreen(
    ctx: RunContext, state: MPOState, pool: list, seed: int, directory: Path
) -> dict[str, str]:
    screened = random.Random(seed).sample(
        pool, min(len(pool), PRESCREEN_POOL_FACTOR * knob(ctx.config, state, "meta_samples"))
    )
    template = ctx.prompt("meta_prescreen", ctx.config.meta_judge.api)
    shared = shared_variables(ctx.task.framing(), state)

    def verdict(reply: str) -> str | None:
        found = _VERDICT.findall(reply)
        return found[-1].lower() if found else None

    async def screen(case: dict) -> str | None:
        sample = case["sample"]
        prompt = template.render(
            **shared, rubric=rubric_view(state["rubric"], sample.get("cluster")), sample=sample
        )
        result = await ctx.meta_judge.complete(
            prompt.messages,
            parse=lambda reply: verdict(prompt.full_reply(reply)),
            # The call log names each meta stage by its prompt (meta_prescreen, meta_analyze, ...), as before.
            metadata={"iteration": state["iteration"], "node": "meta_prescreen", "sample": sample["key"]},
        )
        return result.value if result.ok else None

    found = await each_case(
        directory / "prescreen", [{"id": s["key"], "sample": s} for s in screened], screen
    )
    return {key: value for key, value in found.items() if value}


async def analyze(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Per case: a critique of how the judge scored it and of the rubric it used."""
    ctx = runtime.context
    progress = step_progress(state)
    template = ctx.prompt("meta_analyze", ctx.config.meta_judge.api)
    shared = shared_variables(ctx.task.framing(), state)

    async def analyze_one(case: MetaCase) -> str | None:
        prompt = template.render(
            **shared,
            rubric=rubric_view(state["rubric"], case["cluster"]),
            cluster=case["cluster"],
            samples=case["samples"],
            max_words=ctx.config.meta.analysis_max_words,
        )
        result = await ctx.meta_judge.complete(
            prompt.messages,
            parse=nonempty,
            metadata={"iteration": state["iteration"], "node": "meta_analyze", "case": case["id"]},
        )
        return collapse_repeats(prompt.full_reply(result.value)) if result.ok else None

    analyses = await each_case(
        ctx.run_dir.meta_dir(state["iteration"]) / "analyze", progress.get("cases", []), analyze_one
    )
    metrics = {**state.get("metrics", {}), "meta_analyses_ok": sum(a is not None for a in analyses.values())}
    return {"meta": {**progress, "analyses": analyses}, "metrics": metrics}
