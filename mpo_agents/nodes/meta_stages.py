"""The meta-reward pipeline, one node per stage (wired as the `meta` subgraph in graphs/mpo.py):

prescreen (optional) -> analyze (per case) -> refine (per case) -> merge.

Every per-case result is written to `meta/iter-NNNN/<stage>/<case>.json` the moment it arrives, and a stage
re-run after a crash reads those files instead of asking again: a kill in the middle of a stage loses only the
calls in flight. The window of rollouts is consumed by `merge`, whatever its outcome.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.errors import RubricRejected
from mpo_agents.judges.client import nonempty
from mpo_agents.meta import judged_samples, sample_cases, stratified_cluster_cases, window_samples
from mpo_agents.meta.text import collapse_repeats
from mpo_agents.nodes.meta_level import knob
from mpo_agents.rubrics import (
    Rubric,
    RubricVersion,
    check_no_copy,
    join_under_word_limit,
    merge_in_order,
    parse_rubric,
    validate_rewrite,
    word_count,
)
from mpo_agents.rundir import atomic_write_text
from mpo_agents.state import MetaCase, MetaProgress, MPOState

MIN_GUIDELINE_WORDS = 8  # a shorter "guideline" says nothing a grader could follow
PRESCREEN_POOL_FACTOR = 4  # prescreen looks at this many times `schedule.meta_samples` samples
_VERDICT = re.compile(r"\b(flawed|fine)\b", re.IGNORECASE)


def _file_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "__", case_id) + ".json"


async def _each_case(
    directory: Path, cases: list[dict], run_one: Callable[[dict], Awaitable[Any]]
) -> dict[str, Any]:
    """`run_one` for every case not already on disk, concurrently; each result is saved as it completes."""

    async def one(case: dict) -> tuple[str, Any]:
        path = directory / _file_name(case["id"])
        if path.exists():
            return case["id"], json.loads(path.read_text())["value"]
        value = await run_one(case)
        atomic_write_text(path, json.dumps({"id": case["id"], "value": value}, indent=2))
        return case["id"], value

    return dict(await asyncio.gather(*(one(case) for case in cases)))


def _rubric_view(rubric: dict, cluster: str | None) -> str:
    """The rubric text the meta-judge reviews: the criteria, or the cluster's guideline."""
    if rubric.get("kind") == "guidelines":
        return rubric.get("guidelines", {}).get(cluster or "", rubric["text"])
    return rubric["text"]


def _shared_variables(ctx: RunContext, state: MPOState) -> dict[str, Any]:
    rubric = state["rubric"]
    return {
        **ctx.task.framing(),
        "alarms": [f"{a['node']}: {a['message']}" for a in state.get("alarms", [])],
        "rubric_version": rubric["version"],
        "low": f"{rubric['low']:g}",
        "high": f"{rubric['high']:g}",
    }


def _progress(state: MPOState) -> MetaProgress:
    progress = state.get("meta") or {}
    return progress if progress.get("iteration") == state["iteration"] else {"iteration": state["iteration"]}


# -- stage 1: prescreen and case selection -----------------------------------------------------------------
async def meta_prescreen(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Pick what the meta-judge analyses. Merge-style tasks: up to `schedule.meta_samples` samples, uniformly
    or (with `meta.prescreen`) those the meta-judge flags as mis-scored first. Per-cluster tasks: every cluster
    in the window, with stratified samples."""
    ctx = runtime.context
    iteration = state["iteration"]
    directory = ctx.run_dir.meta_dir(iteration)
    pool = judged_samples(ctx.run_dir, state.get("window", []))
    seed = ctx.config.trainer.seed * 7919 + iteration
    progress = _progress(state)
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
            pool, knob(ctx, state, "meta_samples"), seed, verdicts, _preferred(ctx, state, pool)
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
        pool, min(len(pool), PRESCREEN_POOL_FACTOR * knob(ctx, state, "meta_samples"))
    )
    template = ctx.prompt("meta_prescreen", ctx.config.meta_judge.api)
    shared = _shared_variables(ctx, state)

    def verdict(reply: str) -> str | None:
        found = _VERDICT.findall(reply)
        return found[-1].lower() if found else None

    async def screen(case: dict) -> str | None:
        sample = case["sample"]
        prompt = template.render(
            **shared, rubric=_rubric_view(state["rubric"], sample.get("cluster")), sample=sample
        )
        result = await ctx.meta_judge.complete(
            prompt.messages,
            parse=lambda reply: verdict(prompt.full_reply(reply)),
            metadata={"iteration": state["iteration"], "node": "meta_prescreen", "sample": sample["key"]},
        )
        return result.value if result.ok else None

    found = await _each_case(
        directory / "prescreen", [{"id": s["key"], "sample": s} for s in screened], screen
    )
    return {key: value for key, value in found.items() if value}


# -- stage 2: analyze --------------------------------------------------------------------------------------
async def meta_analyze(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Per case: a critique of how the judge scored it and of the rubric it used."""
    ctx = runtime.context
    progress = _progress(state)
    template = ctx.prompt("meta_analyze", ctx.config.meta_judge.api)
    shared = _shared_variables(ctx, state)

    async def analyze(case: MetaCase) -> str | None:
        prompt = template.render(
            **shared,
            rubric=_rubric_view(state["rubric"], case["cluster"]),
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

    analyses = await _each_case(
        ctx.run_dir.meta_dir(state["iteration"]) / "analyze", progress.get("cases", []), analyze
    )
    metrics = {**state.get("metrics", {}), "meta_analyses_ok": sum(a is not None for a in analyses.values())}
    return {"meta": {**progress, "analyses": analyses}, "metrics": metrics}


# -- stage 3: refine ---------------------------------------------------------------------------------------
async def meta_refine(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Per analysed case: a candidate rubric (criteria with award and deduction points) or, per cluster, a
    candidate guideline. A candidate that does not parse or quotes a sample is asked for again, then dropped."""
    ctx = runtime.context
    progress = _progress(state)
    template = ctx.prompt("meta_refine", ctx.config.meta_judge.api)
    shared = _shared_variables(ctx, state)
    limits = ctx.config.rubric
    guidelines = state["rubric"].get("kind") == "guidelines"
    sample_texts = [s["completion"] for s in window_samples(ctx.run_dir, state.get("window", []))]
    current_items = 0 if guidelines else len(RubricVersion.from_state(state["rubric"]).parsed().criteria)

    def check(text: str) -> str | None:
        try:
            if guidelines:
                text = collapse_repeats(text)  # small models loop on one line until max_tokens
                if word_count(text) < MIN_GUIDELINE_WORDS or word_count(text) > limits.max_words:
                    return None
                check_no_copy(text, sample_texts, limits.copy_run_words)
                return text
            rubric, _ = parse_rubric(text)
            check_no_copy(rubric.render(), sample_texts, limits.copy_run_words)
            return rubric.render()
        except RubricRejected:
            return None

    async def refine(case: MetaCase) -> str | None:
        analysis = progress.get("analyses", {}).get(case["id"])
        if not analysis:
            return None
        prompt = template.render(
            **shared,
            rubric=_rubric_view(state["rubric"], case["cluster"]),
            cluster=case["cluster"],
            samples=case["samples"],
            analysis=analysis,
            max_items=limits.max_items,
            max_words=limits.max_words,
            next_item=current_items + 1,
        )
        result = await ctx.meta_judge.complete(
            prompt.messages,
            parse=lambda reply: check(prompt.full_reply(reply)),
            metadata={"iteration": state["iteration"], "node": "meta_refine", "case": case["id"]},
        )
        return result.value if result.ok else None

    candidates = await _each_case(
        ctx.run_dir.meta_dir(state["iteration"]) / "refine", progress.get("cases", []), refine
    )
    metrics = {
        **state.get("metrics", {}),
        "meta_candidates_ok": sum(c is not None for c in candidates.values()),
    }
    return {"meta": {**progress, "candidates": candidates}, "metrics": metrics}


# -- stage 4: merge ----------------------------------------------------------------------------------------
async def meta_merge(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Candidates into the next rubric version. Merge-style: the meta-judge merges the candidates (taken in
    order under `meta.merge_word_budget` words) into one concise rubric, repeats removed in order; if its merge
    fails validation, the candidates' criteria are merged in order instead. Per-cluster: each cluster's
    candidate replaces that cluster's guideline (no merge, as the paper)."""
    ctx = runtime.context
    iteration = state["iteration"]
    progress = _progress(state)
    current = RubricVersion.from_state(state["rubric"])
    candidates = [c for c in progress.get("candidates", {}).values() if c]
    consumed = {"window": [], "meta": {}}  # this meta step used up the window, whatever happens next
    metrics = dict(state.get("metrics", {}))
    evidence = str(ctx.run_dir.meta_dir(iteration).relative_to(ctx.run_dir.root))  # the run dir may move
    if not candidates:
        ctx.rubrics.log_rejection(
            iteration, "no usable candidate from meta_refine (see meta/ and calls/)", ""
        )
        return {**consumed, "metrics": {**metrics, "rubric_rewrite_accepted": 0}}
    if current.kind == "guidelines":
        updated = {**current.guidelines}
        for case_id, text in progress.get("candidates", {}).items():
            if text:
                updated[case_id] = text
        new = RubricVersion.of_guidelines(
            current.text,
            updated,
            low=current.low,
            high=current.high,
            version=current.version + 1,
            parent=current.version,
            iteration=iteration,
            origin="per_cluster",
            evidence=evidence,
        )
        method = "per_cluster"
    else:
        try:
            rubric, method = await _merge_criteria(ctx, state, current, candidates)
        except RubricRejected as exc:
            ctx.rubrics.log_rejection(iteration, str(exc), "\n\n".join(candidates))
            return {**consumed, "metrics": {**metrics, "rubric_rewrite_accepted": 0}}
        new = RubricVersion.of(
            rubric,
            version=current.version + 1,
            parent=current.version,
            iteration=iteration,
            origin=method,
            evidence=evidence,
        )
    atomic_write_text(
        ctx.run_dir.meta_dir(iteration) / "merge.json",
        json.dumps({"method": method, "version": new.version, "text": new.full_text()}, indent=2),
    )
    # A proposal until rubric_commit decides on it (meta-level nodes, a reviewer); see nodes/meta_level.py.
    return {**consumed, "proposal": new.to_state(), "metrics": metrics}


async def _merge_criteria(
    ctx: RunContext, state: MPOState, current: RubricVersion, candidates: list[str]
) -> tuple[Rubric, str]:
    limits = ctx.config.rubric
    kept, dropped = join_under_word_limit(candidates, ctx.config.meta.merge_word_budget)
    kept = kept or candidates[:1]  # one candidate over the budget on its own is still worth merging
    sample_texts = [s["completion"] for s in window_samples(ctx.run_dir, state.get("window", []))]
    previous = current.parsed()

    def validated(text: str) -> Rubric:
        rubric, _ = validate_rewrite(
            text,
            previous=previous,
            samples=sample_texts,
            max_words=limits.max_words,
            max_items=limits.max_items,
            copy_run_words=limits.copy_run_words,
        )
        return rubric

    reasons: list[str] = []
    if len(kept) > 1:
        prompt = ctx.prompt("meta_merge", ctx.config.meta_judge.api).render(
            **_shared_variables(ctx, state),
            rubric=current.text,
            candidates=kept,
            max_items=limits.max_items,
            max_words=limits.max_words,
        )

        def accept(reply: str) -> Rubric | None:
            try:
                # Repeats the meta-judge left in are dropped (first kept); the limits are then checked, not
                # enforced by cutting: a merge over the limits is asked for again.
                merged = parse_rubric(prompt.full_reply(reply))[0]
                deduplicated = merge_in_order([merged], max_items=len(merged.criteria), max_words=10**9)
                return validated(deduplicated.render())
            except RubricRejected as exc:
                reasons.append(str(exc))
                return None

        result = await ctx.meta_judge.complete(
            prompt.messages,
            parse=accept,
            metadata={"iteration": state["iteration"], "node": "meta_merge", "dropped_over_budget": dropped},
        )
        if result.ok:
            return result.value, "merge"
    # One candidate, or the meta-judge's merge was unusable: the candidates' criteria, in order, repeats dropped.
    parsed = [parse_rubric(text)[0] for text in kept]
    try:
        return validated(
            merge_in_order(parsed, max_items=limits.max_items, max_words=limits.max_words).render()
        ), ("single_candidate" if len(kept) == 1 else "merge_fallback")
    except RubricRejected as exc:
        raise RubricRejected(f"{exc}" + (f" (meta-judge merge: {reasons[-1]})" if reasons else "")) from exc
