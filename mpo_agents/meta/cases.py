"""Which samples the meta-judge reads: one case per sample (uniform, or flagged by prescreen first), or one
case per cluster with low/middle/high-score stratified samples (math)."""

from __future__ import annotations

import random
from collections import defaultdict

from mpo_agents.state import MetaCase, ScoredSample

PER_THIRD = 2  # samples drawn from each score third of a cluster, as the paper's math meta-judge does


def sample_cases(
    pool: list[ScoredSample],
    count: int,
    seed: int,
    verdicts: dict[str, str] | None = None,
    preferred: set[str] | None = None,
) -> list[MetaCase]:
    """Up to `count` single-sample cases. Without prescreen verdicts or preferred keys: uniform without
    replacement (the paper's released behaviour). Otherwise samples judged "flawed" first, then preferred ones
    (alarm hits, the top score tail), then the rest, each group shuffled."""
    rng = random.Random(seed)
    if verdicts or preferred:
        verdicts, preferred = verdicts or {}, preferred or set()
        flawed = [s for s in pool if verdicts.get(s["key"]) == "flawed"]
        liked = [s for s in pool if verdicts.get(s["key"]) != "flawed" and s["key"] in preferred]
        others = [s for s in pool if verdicts.get(s["key"]) != "flawed" and s["key"] not in preferred]
        for group in (flawed, liked, others):
            rng.shuffle(group)
        chosen = (flawed + liked + others)[:count]
    else:
        chosen = rng.sample(pool, min(count, len(pool)))
    return [MetaCase(id=s["key"], cluster=s.get("cluster"), samples=[s]) for s in chosen]


def stratified_cluster_cases(
    pool: list[ScoredSample], seed: int, per_third: int = PER_THIRD
) -> list[MetaCase]:
    """One case per cluster present in the pool: its samples sorted by score, split into thirds, and up to
    `per_third` drawn from each, so the meta-judge sees what the judge rewarded and what it punished."""
    rng = random.Random(seed)
    by_cluster: dict[str, list[ScoredSample]] = defaultdict(list)
    for sample in pool:
        by_cluster[sample.get("cluster") or "default"].append(sample)
    cases = []
    for cluster in sorted(by_cluster):
        ranked = sorted(
            by_cluster[cluster], key=lambda s: (s["score"] if s["score"] is not None else 0.0, s["key"])
        )
        size = len(ranked)
        thirds = [ranked[: size // 3], ranked[size // 3 : 2 * size // 3], ranked[2 * size // 3 :]]
        chosen = [s for third in thirds for s in rng.sample(third, min(per_third, len(third)))]
        cases.append(MetaCase(id=cluster, cluster=cluster, samples=chosen))
    return cases
