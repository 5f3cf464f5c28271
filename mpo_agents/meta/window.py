"""The meta-judge's view: every rollout scored since its previous run, not only the last batch."""

from __future__ import annotations

from mpo_agents.rundir import RunDirectory, read_jsonl
from mpo_agents.state import ScoredSample

JUDGED = ("scored", "guarded")


def window_samples(run_dir: RunDirectory, paths: list[str]) -> list[ScoredSample]:
    """Every sample of the window's files (as the state lists them: relative to the run directory)."""
    return [sample for path in paths for sample in read_jsonl(run_dir.locate(path))]  # type: ignore[misc]


def judged_samples(run_dir: RunDirectory, paths: list[str]) -> list[ScoredSample]:
    """Samples of the window with a valid score (failed judgments carry nothing to analyse)."""
    return [sample for sample in window_samples(run_dir, paths) if sample["status"] in JUDGED]
