"""A judge role made of several models (`judge.ensemble`): every member scores every judgment and the scores
are combined per criterion (mean, median or majority). How often the members agree is a metric of its own.

`JudgePanel` holds the members and sums their accounting; the pure functions below combine their scores, and
the Scorer calls them only for a panel of several, so that a one-member panel costs nothing extra.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from statistics import fmean, median
from typing import Any

from mpo_agents.judges.client import JudgeClient
from mpo_agents.judges.usage import JudgeStats, Usage


@dataclass(frozen=True)
class JudgePanel:
    """The clients of one judge role: the role's own model first, then its ensemble members."""

    members: tuple[JudgeClient, ...]
    aggregate: str = "mean"
    quorum: int = 1  # members that must return a valid score for a judgment to count

    @property
    def role(self) -> str:
        return self.members[0].role

    def stats(self) -> JudgeStats:
        """The members' running totals, summed."""
        total = JudgeStats()
        for member in self.members:
            stats = member.stats()
            for spec in dataclasses.fields(JudgeStats):
                if spec.name == "errors":
                    for kind, count in stats.errors.items():
                        total.errors[kind] = total.errors.get(kind, 0) + count
                else:
                    setattr(total, spec.name, getattr(total, spec.name) + getattr(stats, spec.name))
        return total

    def usage(self, iteration: int) -> dict[str, Usage]:
        """The members' usage of one iteration by node, summed."""
        total: dict[str, Usage] = {}
        for member in self.members:
            for node, usage in member.usage(iteration).items():
                into = total.setdefault(node, Usage())
                for spec in dataclasses.fields(Usage):
                    setattr(into, spec.name, getattr(into, spec.name) + getattr(usage, spec.name))
        return total

    async def aclose(self) -> None:
        for member in self.members:
            await member.aclose()


def combine(scores: Sequence[float], how: str) -> float:
    """One score from the members' scores of the same criterion (or of the whole response)."""
    if not scores:
        raise ValueError("no scores to combine")
    if how == "mean":
        return fmean(scores)
    if how == "median":
        return float(median(scores))
    if how == "majority":
        counts = Counter(scores)
        most = max(counts.values())
        tied = [score for score, count in counts.items() if count == most]
        if len(tied) == 1:
            return float(tied[0])
        middle = median(scores)  # a tie (e.g. 3 vs 4 with two members) goes to the score nearest the middle
        return float(min(tied, key=lambda score: (abs(score - middle), score)))
    raise ValueError(f"unknown aggregation {how!r}; use mean, median or majority")


def nearest(scores: Sequence[float], value: float) -> int:
    """Which member's score is nearest a combined `value` (the first, on a tie): its rationale speaks for it."""
    return min(range(len(scores)), key=lambda k: abs(scores[k] - value))


def combine_items(members: Sequence[Sequence[Mapping[str, Any]]], how: str) -> list[dict[str, Any]]:
    """One list of per-criterion items from each member's items: per criterion the members' scores combined,
    with the rationale of the member nearest the result."""
    items = []
    for number, column in enumerate(zip(*members), start=1):
        scores = [item["score"] for item in column]
        value = combine(scores, how)
        items.append(
            {"criterion": number, "score": value, "rationale": column[nearest(scores, value)]["rationale"]}
        )
    return items


def agreement(columns: Sequence[Sequence[float]]) -> float | None:
    """How often members gave the same score: per column (a criterion, or the one score) the share of member
    pairs with equal scores, averaged over columns. 1 is unanimous; None when fewer than two members scored."""
    shares = []
    for column in columns:
        pairs = list(combinations(column, 2))
        if pairs:
            shares.append(sum(a == b for a, b in pairs) / len(pairs))
    return fmean(shares) if shares else None
