"""The meta-judge's view: every rollout scored since its previous run, not only the last batch."""

from __future__ import annotations

from pathlib import Path

from mpo_agents.rundir import read_jsonl
from mpo_agents.state import ScoredSample

JUDGED = ("scored", "guarded")


def window_samples(paths: list[str]) -> list[ScoredSample]:
    return [sample for path in paths for sample in read_jsonl(Path(path))]  # type: ignore[misc]


def judged_samples(paths: list[str]) -> list[ScoredSample]:
    """Samples of the window with a valid score (failed judgments carry nothing to analyse)."""
    return [sample for sample in window_samples(paths) if sample["status"] in JUDGED]
