"""The graph state: plain, serialisable data only (text, numbers, paths). No tensors, no clients.

Token ids live in `rollouts/iter-NNNN.jsonl` and weights in `policy/`; the state keeps their paths, so the
checkpoints LangGraph writes after every node stay small.
"""

from __future__ import annotations

from typing import Literal, TypedDict

SampleStatus = Literal["pending", "scored", "guarded", "judge_failed", "unparseable"]


class RubricState(TypedDict):
    version: int
    text: str
    low: float
    high: float
    parent: int | None
    iteration: int


class ScoredSample(TypedDict):
    key: str
    prompt_index: int
    prompt: str
    completion: str
    truncated: bool
    score: float | None  # the judge's score on the rubric's scale; None when no valid judgment exists
    reward: float | None  # what the update sees: score minus penalties; None = left out of the update
    status: SampleStatus
    rationale: str
    rubric_version: int


class MPOState(TypedDict, total=False):
    iteration: int  # 1-based number of the iteration in progress
    rubric: RubricState  # the rubric in force
    rollout_path: str  # this iteration's rollouts with token ids (on disk, outside the checkpoint)
    batch: list[ScoredSample]  # this iteration's samples, scored once `score` has run
    window: list[str]  # sample files written since the last meta step (what the meta-judge draws from)
    analysis: str | None  # the meta-judge's critique of this iteration, consumed by rubric_rewrite
    policy_step: int  # optimizer steps applied so far
    metrics: dict[str, float]  # the latest iteration's metrics
