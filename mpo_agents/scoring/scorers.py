"""The named ways one judge model scores one completion under one rubric (`holistic`, `per_item`, `json`,
`plan_then_execute`): `scoring.mode` picks one, and a task may name its own (math: `plan_then_execute`); and
`buffer_items`, how a prompt's buffer is judged (`rubric.scope: prompt`), one call per item.

A scorer is an async function of a `JudgeCall` that returns a `Judgment`; it calls the judge and parses the
reply, nothing more. The `Scorer` turns the judgment into a scored sample (reward, penalties, status), so every
scorer fails and scores the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mpo_agents.buffers import ITEM_SCALE
from mpo_agents.errors import ConfigError
from mpo_agents.judges.parsing import parse_item_scores, parse_score, rationale_of
from mpo_agents.rubrics import Criterion, RubricItem, RubricVersion, rubric_view

if TYPE_CHECKING:
    from mpo_agents.judges.client import JudgeClient, JudgeResult
    from mpo_agents.prompts import PromptTemplate
    from mpo_agents.state import RubricState, ScoredSample


@dataclass(frozen=True)
class JudgeCall:
    """What a scorer is handed: one judge model, the task's prompts (in the judge's api), the rubric, and the
    completion with the variables its prompts are filled with."""

    judge: JudgeClient
    prompt: Callable[[str], PromptTemplate]  # the task's prompt file for a role ("judge", "judge_item", ...)
    rubric: RubricState
    sample: ScoredSample
    variables: dict[str, Any]  # the record's prompt variables and the completion, quoted as data
    metadata: dict[str, Any]  # copied into the call log
    reference: str  # the task's reference answer for the record ("" when it has none)


@dataclass(frozen=True)
class Judgment:
    """One judge model's verdict: a score and its rationale, or per-criterion items (the score is their sum), or
    the judge call that failed and which step it was ("criterion 2", "plan")."""

    score: float | None = None
    rationale: str = ""
    items: list[dict[str, Any]] | None = None
    failed: JudgeResult | None = None
    step: str | None = None


JudgeScorer = Callable[[JudgeCall], Awaitable[Judgment]]
SCORERS: dict[str, JudgeScorer] = {}


def scorer(name: str) -> Callable[[JudgeScorer], JudgeScorer]:
    """Register a scorer under `name`, the value of `scoring.mode` or of a task's `judge_scorer`."""

    def register(function: JudgeScorer) -> JudgeScorer:
        SCORERS[name] = function
        return function

    return register


def scorer_named(name: str, where: str) -> JudgeScorer:
    """The scorer registered as `name`; `where` says who asked for it (a config field, a task)."""
    if name not in SCORERS:
        raise ConfigError(f"{where}: no scorer named '{name}'. Available: {', '.join(sorted(SCORERS))}")
    return SCORERS[name]


@scorer("holistic")
async def holistic(call: JudgeCall) -> Judgment:
    """One score for the whole response under the whole rubric."""
    rubric = call.rubric
    prompt = call.prompt("judge").render(
        **call.variables, rubric=rubric["text"], low=f"{rubric['low']:g}", high=f"{rubric['high']:g}"
    )
    result = await call.judge.complete(
        prompt.messages,
        parse=lambda reply: parse_score(reply, rubric["low"], rubric["high"]),
        metadata=call.metadata,
    )
    if not result.ok:
        return Judgment(failed=result)
    return Judgment(score=result.value, rationale=rationale_of(result.reply or ""))


def _criteria(rubric: RubricState) -> tuple[Criterion, ...]:
    return RubricVersion.from_state(rubric).parsed().criteria


async def _judge_each(
    call: JudgeCall, items: list[tuple[str, float, float, dict[str, Any]]]
) -> list[JudgeResult]:
    """One `judge_item` call per item, concurrently: each item's text, score range and call-log fields."""
    template = call.prompt("judge_item")

    async def judge_one(number: int, text: str, low: float, high: float, tags: dict[str, Any]) -> JudgeResult:
        prompt = template.render(
            **call.variables,
            rubric=call.rubric["text"],
            item_number=number,
            item_count=len(items),
            item_text=text,
            item_low=f"{low:g}",
            item_high=f"{high:g}",
        )
        return await call.judge.complete(
            prompt.messages,
            parse=lambda reply: parse_score(reply, low, high),
            metadata={**call.metadata, **tags},
        )

    return list(await asyncio.gather(*(judge_one(n, *item) for n, item in enumerate(items, start=1))))


@scorer("per_item")
async def per_item(call: JudgeCall) -> Judgment:
    """One call per criterion, each a rationale and a score in the criterion's range (the paper); a rubric
    without criteria is scored holistically."""
    criteria = _criteria(call.rubric)
    if not criteria:
        return await holistic(call)
    results = await _judge_each(
        call, [(c.text, c.low, c.high, {"criterion": n}) for n, c in enumerate(criteria, start=1)]
    )
    failed = [(n, r) for n, r in enumerate(results, start=1) if not r.ok]
    if failed:
        # One unscored criterion leaves the total unknown: the sample fails as a whole.
        number, result = failed[0]
        return Judgment(failed=result, step=f"criterion {number}")
    items = [
        {"criterion": n, "score": r.value, "rationale": rationale_of(r.reply or "")}
        for n, r in enumerate(results, start=1)
    ]
    return Judgment(items=items)


def item_text(item: RubricItem) -> str:
    """A buffer item as the per-item judge reads it: what to look for and what 0, 1 and 2 mean."""
    if (item.weight or 0) < 0:
        return (
            f"{item.title} (a flaw): {item.description} Score how clearly the response shows this flaw: 0 not at "
            "all, 1 somewhat, 2 clearly."
        )
    return (
        f"{item.title}: {item.description} Score 0 if the response does not do this, 1 if partly, 2 if fully."
    )


async def buffer_items(call: JudgeCall) -> Judgment:
    """One call per item of the prompt's buffer, each scored 0-2. An item whose judgment fails is kept with its
    error, for the scorer to leave out of the aggregate with its weight; the judgment fails only when no item
    was scored."""
    items = [RubricItem.from_state(item) for item in call.rubric["prompt_items"]]
    results = await _judge_each(call, [(item_text(i), 0.0, ITEM_SCALE, {"item": i.id}) for i in items])
    if not any(result.ok for result in results):
        return Judgment(failed=results[0], step=f"all {len(items)} items")
    judged = [
        {
            "item": item.id,
            "weight": item.weight,
            "score": result.value if result.ok else None,
            "error": result.error,
            "rationale": rationale_of(result.reply or "")
            if result.ok
            else (result.detail or result.reply or "")[:200],
        }
        for item, result in zip(items, results, strict=True)
    ]
    return Judgment(items=judged)


@scorer("json")
async def json_items(call: JudgeCall) -> Judgment:
    """Every criterion's rationale and score in one call, as JSON."""
    criteria = _criteria(call.rubric)
    prompt = call.prompt("judge_json").render(
        **call.variables,
        rubric=call.rubric["text"],
        items=[
            {"number": n, "text": c.text, "low": f"{c.low:g}", "high": f"{c.high:g}"}
            for n, c in enumerate(criteria, start=1)
        ],
    )
    result = await call.judge.complete(
        prompt.messages, parse=lambda reply: parse_item_scores(reply, criteria), metadata=call.metadata
    )
    if not result.ok:
        return Judgment(failed=result)
    return Judgment(items=result.value)


@scorer("plan_then_execute")
async def plan_then_execute(call: JudgeCall) -> Judgment:
    """The math judge: a grading plan from the reference solution and the cluster's guidelines, then the plan
    carried out on the response, ending in one score on the fixed scale."""
    rubric = call.rubric
    guidelines = rubric_view(rubric, call.sample.get("cluster"))
    shared = {
        **call.variables,
        "reference_solution": call.reference,
        "guidelines": guidelines,
        "low": f"{rubric['low']:g}",
        "high": f"{rubric['high']:g}",
    }
    plan_prompt = call.prompt("judge_plan").render(**shared)
    plan = await call.judge.complete(
        plan_prompt.messages, parse=_nonblank, metadata={**call.metadata, "step": "plan"}
    )
    if not plan.ok:
        return Judgment(failed=plan, step="plan")
    plan_text = plan_prompt.full_reply(plan.value).strip()
    execute_prompt = call.prompt("judge_execute").render(**shared, plan=plan_text)
    result = await call.judge.complete(
        execute_prompt.messages,
        parse=lambda reply: parse_score(reply, rubric["low"], rubric["high"]),
        metadata={**call.metadata, "step": "execute"},
    )
    if not result.ok:
        return Judgment(failed=result, step="execute")
    execution = rationale_of(execute_prompt.full_reply(result.reply or ""))
    return Judgment(score=result.value, rationale=f"Plan:\n{plan_text}\n\nExecution:\n{execution}")


def _nonblank(reply: str) -> str | None:
    return reply if reply.strip() else None
