"""Ratings from pairwise verdicts: Elo as the paper computes it, and a Bradley-Terry maximum-likelihood fit.

A verdict is one judge call: `first` and `second` name the systems in the order the judge saw them, `winner`
is "first", "second", "tie", or None for a failed judgment (left out). Both rating methods work on *matches*:
the verdicts about one (prompt, pair of systems), in whichever orders were judged, merged into one score for
each side: 1 a win, 0 a loss, 0.5 a tie, and the mean over the orders when both were judged (a pair whose two
orders disagree is a tie, so position bias cancels instead of deciding the match).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WINNERS = ("first", "second", "tie")
ELO_SCALE = 400.0 / math.log(10.0)  # a Bradley-Terry strength of 1 is this many Elo points


@dataclass(frozen=True)
class Match:
    """One (prompt, pair) after merging its verdicts: `score_a` is a's share of the points (0..1)."""

    prompt_id: str
    a: str
    b: str
    score_a: float


def matches_of(verdicts: Iterable[dict[str, Any]]) -> list[Match]:
    """Merge verdicts into matches (failed ones are skipped); deterministic order (prompt, a, b)."""
    points: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for verdict in verdicts:
        winner = verdict.get("winner")
        if winner not in WINNERS:
            continue
        a, b = sorted((verdict["first"], verdict["second"]))
        first_score = {"first": 1.0, "second": 0.0, "tie": 0.5}[winner]
        points[(str(verdict["prompt_id"]), a, b)].append(
            first_score if verdict["first"] == a else 1.0 - first_score
        )
    return [
        Match(prompt_id, a, b, sum(scores) / len(scores))
        for (prompt_id, a, b), scores in sorted(points.items())
    ]


def expected_score(rating_a: float, rating_b: float) -> float:
    """Elo's expected score of a against b."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / 400.0))


def elo_ratings(
    matches: Sequence[Match], systems: Sequence[str], k: float, initial: float = 1000.0
) -> dict[str, float]:
    """Sequential Elo over `matches` in the order given (the order matters: that is why runs are repeated)."""
    ratings = {system: initial for system in systems}
    for match in matches:
        expected_a = expected_score(ratings[match.a], ratings[match.b])
        ratings[match.a] += k * (match.score_a - expected_a)
        ratings[match.b] += k * ((1.0 - match.score_a) - (1.0 - expected_a))
    return ratings


def elo_runs(
    matches: Sequence[Match],
    systems: Sequence[str],
    *,
    k: float,
    runs: int,
    seed: int,
    initial: float = 1000.0,
) -> dict[str, dict[str, Any]]:
    """The paper's protocol: several independent Elo runs, each over the matches in a fresh random order;
    per system the mean and (population) standard deviation of its final ratings."""
    finals: dict[str, list[float]] = {system: [] for system in systems}
    for run in range(runs):
        order = list(matches)
        random.Random(seed + run).shuffle(order)
        for system, rating in elo_ratings(order, systems, k, initial).items():
            finals[system].append(rating)
    return {
        system: {"mean": float(np.mean(values)), "std": float(np.std(values)), "finals": values}
        for system, values in finals.items()
    }


def bradley_terry(
    matches: Sequence[Match], systems: Sequence[str], *, prior: float = 0.01, center: float = 1000.0
) -> dict[str, float]:
    """Maximum-likelihood Bradley-Terry strengths on the Elo scale, centred on `center`.

    P(a beats b) = 1 / (1 + 10^((R_b - R_a)/400)); a tie counts as half a win each. A weak Gaussian prior
    (`prior`, in strength units, summed over systems) keeps the estimate finite when a system won or lost every
    match; with it the log-likelihood is strictly concave and Newton's method converges in a few steps.
    """
    index = {system: i for i, system in enumerate(systems)}
    n = len(systems)
    if n < 2:
        return {system: center for system in systems}
    a = np.array([index[m.a] for m in matches], dtype=int)
    b = np.array([index[m.b] for m in matches], dtype=int)
    score = np.array([m.score_a for m in matches], dtype=float)
    strength = np.zeros(n)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(strength[b] - strength[a]))
        residual = score - p
        gradient = np.bincount(a, residual, n) - np.bincount(b, residual, n) - prior * strength
        weight = p * (1.0 - p)
        hessian = np.zeros((n, n))
        np.add.at(hessian, (a, a), -weight)
        np.add.at(hessian, (b, b), -weight)
        np.add.at(hessian, (a, b), weight)
        np.add.at(hessian, (b, a), weight)
        hessian -= prior * np.eye(n)
        step = np.linalg.solve(hessian, gradient)
        strength -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    strength -= strength.mean()
    return {system: center + ELO_SCALE * float(strength[index[system]]) for system in systems}


def bradley_terry_intervals(
    matches: Sequence[Match],
    systems: Sequence[str],
    *,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """The fit on all matches plus percentile bootstrap intervals (matches resampled with replacement)."""
    fitted = bradley_terry(matches, systems)
    result = {system: {"rating": rating} for system, rating in fitted.items()}
    if resamples <= 0 or not matches:
        return result
    rng = np.random.default_rng(seed)
    draws = {system: [] for system in systems}
    for _ in range(resamples):
        picked = rng.integers(0, len(matches), len(matches))
        for system, rating in bradley_terry([matches[i] for i in picked], systems).items():
            draws[system].append(rating)
    tail = (1.0 - level) / 2.0 * 100.0
    for system in systems:
        low, high = np.percentile(draws[system], [tail, 100.0 - tail])
        result[system].update(low=float(low), high=float(high))
    return result


def position_bias(verdicts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """How often the response shown first won, and how often both orders of a pair agreed.

    `first_win_rate` is over decided verdicts (ties excluded): 0.5 for an unbiased judge. A pair judged in both
    orders is consistent when the same system won both times (or both were ties)."""
    decided = {"first": 0, "second": 0, "tie": 0}
    by_pair: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for verdict in verdicts:
        winner = verdict.get("winner")
        if winner not in WINNERS:
            continue
        decided[winner] += 1
        winning = {"first": verdict["first"], "second": verdict["second"], "tie": "tie"}[winner]
        a, b = sorted((verdict["first"], verdict["second"]))
        by_pair[(str(verdict["prompt_id"]), a, b)][verdict["first"]] = winning
    both = [orders for orders in by_pair.values() if len(orders) == 2]
    consistent = sum(len(set(orders.values())) == 1 for orders in both)
    first_or_second = decided["first"] + decided["second"]
    return {
        "first_wins": decided["first"],
        "second_wins": decided["second"],
        "ties": decided["tie"],
        "first_win_rate": decided["first"] / first_or_second if first_or_second else None,
        "pairs_both_orders": len(both),
        "consistent_pairs": consistent,
        "consistency": consistent / len(both) if both else None,
    }


def win_matrix(matches: Sequence[Match], systems: Sequence[str]) -> dict[str, dict[str, dict[str, int]]]:
    """Per ordered pair of systems: matches won, lost and tied (a match scored 0.5 is a tie)."""
    table = {a: {b: {"wins": 0, "losses": 0, "ties": 0} for b in systems if b != a} for a in systems}
    for match in matches:
        if match.score_a > 0.5:
            table[match.a][match.b]["wins"] += 1
            table[match.b][match.a]["losses"] += 1
        elif match.score_a < 0.5:
            table[match.a][match.b]["losses"] += 1
            table[match.b][match.a]["wins"] += 1
        else:
            table[match.a][match.b]["ties"] += 1
            table[match.b][match.a]["ties"] += 1
    return table


def rate(
    verdicts: Sequence[dict[str, Any]],
    systems: Sequence[str] | None = None,
    *,
    k: float = 4.0,
    runs: int = 5,
    seed: int = 0,
    initial: float = 1000.0,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Everything the tournament reports that depends only on the verdicts (so a verdict file can be re-rated
    without a judge)."""
    if systems is None:
        systems = sorted({v["first"] for v in verdicts} | {v["second"] for v in verdicts})
    systems = list(systems)
    matches = matches_of(verdicts)
    return {
        "systems": systems,
        "judgments": len(verdicts),
        "failed": sum(v.get("winner") not in WINNERS for v in verdicts),
        "matches": len(matches),
        "k": k,
        "runs": runs,
        "initial_rating": initial,
        "elo": elo_runs(matches, systems, k=k, runs=runs, seed=seed, initial=initial),
        "bradley_terry": bradley_terry_intervals(matches, systems, resamples=bootstrap, seed=seed),
        "position_bias": position_bias(verdicts),
        "win_matrix": win_matrix(matches, systems),
    }
