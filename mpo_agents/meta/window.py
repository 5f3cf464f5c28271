"""The meta-judge's view: samples from every rollout scored since its previous run, not only the last batch."""

from __future__ import annotations

import random
from pathlib import Path

from mpo_agents.rundir import read_jsonl
from mpo_agents.state import ScoredSample

JUDGED = ("scored", "guarded")


def window_samples(paths: list[str]) -> list[ScoredSample]:
    return [sample for path in paths for sample in read_jsonl(Path(path))]  # type: ignore[misc]


def sample_window(paths: list[str], count: int, seed: int) -> list[ScoredSample]:
    """Up to `count` judged samples drawn uniformly without replacement (as the paper's released code does),
    seeded so that a resumed meta step reads the same samples."""
    judged = [sample for sample in window_samples(paths) if sample["status"] in JUDGED]
    return random.Random(seed).sample(judged, min(count, len(judged)))
