"""The rubric_rewrite step's stages (the `rubric_rewrite` subgraph in graphs/mpo.py): `refine` asks the
meta-judge for a candidate rubric per analysed case, `merge` makes the candidates one proposal, the
after_rewrite meta-level nodes give their verdicts on it, and `commit` accepts, rejects or edits it (by those
verdicts, or by a person with `review`: a LangGraph interrupt).

Per-case results are kept on disk as in meta_analyze, so a stage re-run after a crash asks only what was in
flight. The window of rollouts is consumed by `merge`, whatever its outcome.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from mpo_agents.context import RunContext
from mpo_agents.errors import RubricRejected
from mpo_agents.meta import window_samples
from mpo_agents.meta.progress import each_case, step_progress
from mpo_agents.meta.prompting import rubric_view, shared_variables
from mpo_agents.meta.text import collapse_repeats
from mpo_agents.rubrics import (
    Rubric,
    RubricVersion,
    check_no_copy,
    diff_rubrics,
    join_under_word_limit,
    merge_in_order,
    parse_rubric,
    validate_rewrite,
    word_count,
)
from mpo_agents.rundir import atomic_write_text
from mpo_agents.state import MetaCase, MPOState

MIN_GUIDELINE_WORDS = 8  # a shorter "guideline" says nothing a grader could follow


async def refine(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Per analysed case: a candidate rubric (criteria with award and deduction points) or, per cluster, a
    candidate guideline. A candidate that does not parse or quotes a sample is asked for again, then dropped."""
    ctx = runtime.context
    progress = step_progress(state)
    template = ctx.prompt("meta_refine", ctx.config.meta_judge.api)
    shared = shared_variables(ctx.task.framing(), state)
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

    async def refine_one(case: MetaCase) -> str | None:
        analysis = progress.get("analyses", {}).get(case["id"])
        if not analysis:
            return None
        prompt = template.render(
            **shared,
            rubric=rubric_view(state["rubric"], case["cluster"]),
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

    candidates = await each_case(
        ctx.run_dir.meta_dir(state["iteration"]) / "refine", progress.get("cases", []), refine_one
    )
    metrics = {
        **state.get("metrics", {}),
        "meta_candidates_ok": sum(c is not None for c in candidates.values()),
    }
    return {"meta": {**progress, "candidates": candidates}, "metrics": metrics}


async def merge(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Candidates into the next rubric version. Merge-style: the meta-judge merges the candidates (taken in
    order under `meta.merge_word_budget` words) into one concise rubric, repeats removed in order; if its merge
    fails validation, the candidates' criteria are merged in order instead. Per-cluster: each cluster's
    candidate replaces that cluster's guideline (no merge, as the paper)."""
    ctx = runtime.context
    iteration = state["iteration"]
    progress = step_progress(state)
    current = RubricVersion.from_state(state["rubric"])
    candidates = [c for c in progress.get("candidates", {}).values() if c]
    consumed = {"window": [], "meta": {}}  # this meta step used up the window, whatever happens next
    metrics = dict(state.get("metrics", {}))
    evidence = str(ctx.run_dir.meta_dir(iteration).relative_to(ctx.run_dir.root))  # the run dir may move
    if not candidates:
        ctx.rubrics.log_rejection(iteration, "no usable candidate from refine (see meta/ and calls/)", "")
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
    # A proposal until `commit` decides on it (after the meta-level nodes' verdicts, and a reviewer's).
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
            **shared_variables(ctx.task.framing(), state),
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


async def commit(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    """Decide on the meta step's proposal: the nodes' verdicts (any reject wins, then the last edit, else
    accept), then a person's with `review`, who sees the diff, the evidence and the verdicts."""
    ctx = runtime.context
    iteration = state["iteration"]
    done = {"proposal": None, "meta_requested": False, "alarms": []}
    proposal = state.get("proposal")
    if not proposal:
        return done
    current = RubricVersion.from_state(state["rubric"])
    new = RubricVersion.from_state(proposal)
    decisions = [d for d in state.get("decisions", []) if d["iteration"] == iteration]
    mine = [d for d in decisions if d["stage"] == "after_rewrite" and "error" not in d]
    failed = [d["node"] for d in decisions if "error" in d]
    outcome, text, by, reasons = _verdict(mine)
    review = ctx.config.review
    if review is True or (review == "on_objection" and (outcome != "accept" or failed)):
        answer = interrupt(
            {
                "iteration": iteration,
                "current_version": current.version,
                "proposed_version": new.version,
                "diff": diff_rubrics(current, new),
                "proposal": new.full_text(),
                "evidence": new.evidence,
                "decisions": mine,
                "failed_nodes": failed,
                "suggested": outcome,
                "suggested_text": text,
            }
        )
        outcome, text, by, reasons = _human(answer)
    metrics = dict(state.get("metrics", {}))
    if outcome == "edit":
        try:
            new = _edited(ctx, current, new, text or "")
        except RubricRejected as exc:
            outcome, reasons = "reject", f"the edit by {', '.join(by)} is not a valid rubric: {exc}"
    if outcome == "reject":
        ctx.rubrics.log_rejection(iteration, f"rejected by {', '.join(by)}: {reasons}", new.full_text())
        return {**done, "metrics": {**metrics, "rubric_rewrite_accepted": 0}}
    verb = "edited" if outcome == "edit" else "accepted"
    if by:
        new = dataclasses.replace(
            new, review=f"{verb} by {', '.join(by)}" + (f": {reasons}" if reasons else "")
        )
    ctx.rubrics.save(new)
    metrics.update(rubric_rewrite_accepted=1, rubric_items=new.items, rubric_tokens=new.tokens)
    return {**done, "rubric": new.to_state(), "metrics": metrics}


def _verdict(decisions: list[dict[str, Any]]) -> tuple[str, str | None, list[str], str]:
    """The after_rewrite nodes' verdicts together (any reject wins, then the last edit, else accept): the
    outcome, the edited text, the nodes it rests on, and their reasons."""
    rejects = [d for d in decisions if d.get("verdict") == "reject"]
    edits = [d for d in decisions if d.get("verdict") == "edit"]
    if rejects:
        outcome, text, by = "reject", None, [d["node"] for d in rejects]
    elif edits:
        outcome, text, by = "edit", edits[-1]["rubric_text"], [edits[-1]["node"]]
    else:
        outcome, text, by = "accept", None, [d["node"] for d in decisions if d.get("verdict") == "accept"]
    reasons = "; ".join(
        f"{d['node']}: {d.get('reason') or d.get('verdict')}" for d in (rejects or edits or decisions)
    )
    return outcome, text, by, reasons


def _human(answer: Any) -> tuple[str, str | None, list[str], str]:
    """A reviewer's resume value: {"decision": accept|reject|edit, "text": ..., "note": ..., "reviewer": ...}."""
    if not isinstance(answer, dict) or answer.get("decision") not in ("accept", "reject", "edit"):
        raise ValueError(f"a review must resume with decision accept, reject or edit, got {answer!r}")
    who = str(answer.get("reviewer") or "human review")
    return answer["decision"], answer.get("text"), [who], str(answer.get("note") or "")


def _edited(ctx: RunContext, current: RubricVersion, proposal: RubricVersion, text: str) -> RubricVersion:
    """The proposal with its text replaced by an edit, checked like any rewrite."""
    if proposal.kind == "guidelines":
        return dataclasses.replace(proposal, text=text.strip())
    limits = ctx.config.rubric
    rubric, _ = validate_rewrite(
        text,
        previous=current.parsed(),
        samples=[],
        max_words=limits.max_words,
        max_items=limits.max_items,
        copy_run_words=limits.copy_run_words,
    )
    return RubricVersion.of(
        rubric,
        version=proposal.version,
        parent=proposal.parent,
        iteration=proposal.iteration,
        origin=f"{proposal.origin}+edit",
        evidence=proposal.evidence,
    )
