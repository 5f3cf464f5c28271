"""rubric_rewrite: the meta-judge writes the next rubric; it is validated and versioned, or refused with a reason
while the current rubric stays in force."""

from __future__ import annotations

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.errors import RubricRejected
from mpo_agents.meta.window import window_samples
from mpo_agents.rubrics import Rubric, RubricVersion, validate_rewrite
from mpo_agents.state import MPOState


async def rubric_rewrite(state: MPOState, runtime: Runtime[RunContext]) -> dict:
    ctx = runtime.context
    iteration, current = state["iteration"], RubricVersion.from_state(state["rubric"])
    consumed = {"window": [], "analysis": None}  # this meta step used up the window, whatever happens next
    metrics = dict(state.get("metrics", {}))
    if not state.get("analysis"):
        ctx.rubrics.log_rejection(iteration, "no analysis from meta_analyze (see calls/meta_judge.jsonl)", "")
        return {**consumed, "metrics": {**metrics, "rubric_rewrite_accepted": 0}}
    previous = current.parsed()
    sample_texts = [s["completion"] for s in window_samples(state.get("window", []))]
    limits = ctx.config.rubric
    prompt = ctx.prompt("rubric_rewrite", ctx.config.meta_judge.api).render(
        rubric=current.text,
        rubric_version=current.version,
        analysis=state["analysis"],
        max_items=limits.max_items,
        max_words=limits.max_words,
        next_item=len(previous.criteria) + 1,
    )
    reasons: list[str] = []

    def accept(reply: str) -> Rubric | None:
        # A rejected draft counts as an unparseable reply, so the judge client asks again (up to its retries).
        try:
            return validate_rewrite(
                prompt.full_reply(reply),
                previous=previous,
                samples=sample_texts,
                max_words=limits.max_words,
                max_items=limits.max_items,
                copy_run_words=limits.copy_run_words,
            )[0]
        except RubricRejected as exc:
            reasons.append(str(exc))
            return None

    result = await ctx.meta_judge.complete(
        prompt.messages, parse=accept, metadata={"iteration": iteration, "node": "rubric_rewrite"}
    )
    if not result.ok:
        reason = reasons[-1] if reasons else f"meta-judge call failed: {result.error}"
        ctx.rubrics.log_rejection(iteration, reason, prompt.full_reply(result.reply or ""))
        return {**consumed, "metrics": {**metrics, "rubric_rewrite_accepted": 0}}
    new = RubricVersion.of(
        result.value, version=current.version + 1, parent=current.version, iteration=iteration
    )
    ctx.rubrics.save(new)
    return {**consumed, "rubric": new.to_state(), "metrics": {**metrics, "rubric_rewrite_accepted": 1}}
