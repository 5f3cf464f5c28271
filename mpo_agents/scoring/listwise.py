"""Listwise group judging (`scoring.mode: listwise`): one judge call sees a prompt's whole group of completions
under anonymous ids in a shuffled order and scores each 0-10; a reply that misses, repeats or invents an id or
leaves the scale is retried, then the whole group fails (never partly scored)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING, Any

from mpo_agents.judges.injection import as_judge_data
from mpo_agents.judges.parsing import parse_listwise
from mpo_agents.rubrics import rubric_view

if TYPE_CHECKING:
    from mpo_agents.judges.client import JudgeClient, JudgeResult
    from mpo_agents.prompts import PromptTemplate
    from mpo_agents.state import RubricState, ScoredSample

SCALE = (
    10.0  # the judge scores every completion from 0 to SCALE; the scorer maps that onto the rubric's range
)


@dataclass(frozen=True)
class GroupVerdict:
    """One judge model's listwise verdict on a group: per sample key its mean 0-10 score over the orders, the
    explanation of the first order, its anonymous id there, and every order's list of keys; or the call that
    failed."""

    scores: dict[str, dict[str, Any]] | None
    orders: list[list[str]]
    failed: JudgeResult | None = None


def shown_orders(keys: list[str], seed: str, orders: int) -> list[list[str]]:
    """The order(s) the group is shown in: a shuffle fixed by `seed` (so a resumed run asks the same question
    and hits the judgment cache), and with two orders its reverse."""
    first = list(keys)
    random.Random(seed).shuffle(first)
    return [first, first[::-1]][:orders]


async def judge_group(
    judge: JudgeClient,
    template: PromptTemplate,
    rubric: RubricState,
    samples: list[ScoredSample],
    variables: dict[str, Any],
    reference: str,
    seed: str,
    orders: int,
    metadata: dict[str, Any],
) -> GroupVerdict:
    """The group's scores from one judge model, asked once per order."""
    by_key = {sample["key"]: sample for sample in samples}
    shown = shown_orders(list(by_key), seed, orders)
    per_order: list[dict[str, dict[str, Any]]] = []
    for number, order in enumerate(shown, start=1):
        ids = [f"c{position}" for position in range(1, len(order) + 1)]
        prompt = template.render(
            **variables,
            rubric=rubric_view(rubric, samples[0].get("cluster")),
            reference_solution=reference,
            completions=[
                {"id": ident, "text": as_judge_data(by_key[key]["completion"])}
                for ident, key in zip(ids, order)
            ],
            count=len(order),
            high=f"{SCALE:g}",
        )
        result = await judge.complete(
            prompt.messages,
            parse=lambda reply, prompt=prompt, ids=ids: _parsed(reply, prompt.full_reply(reply), ids),
            metadata={**metadata, "order": number, "group_size": len(order)},
        )
        if not result.ok:
            return GroupVerdict(None, shown, failed=result)
        per_order.append({key: {**result.value[ident], "id": ident} for ident, key in zip(ids, order)})
    scores = {
        key: {
            "score": fmean(found[key]["score"] for found in per_order),
            "explanation": per_order[0][key]["explanation"],
            "id": per_order[0][key]["id"],
            "raw": [found[key]["score"] for found in per_order],
        }
        for key in by_key
    }
    return GroupVerdict(scores, shown)


def _parsed(reply: str, completed: str, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    """The reply as it stands (a model that restated the JSON's start), else continuing the prompt's prefill."""
    return parse_listwise(reply, ids, 0.0, SCALE) or parse_listwise(completed, ids, 0.0, SCALE)
