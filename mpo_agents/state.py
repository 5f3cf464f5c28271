"""The graph state: plain, serialisable data only (text, numbers, paths). No tensors, no clients.

Token ids live in `rollouts/iter-NNNN.jsonl` and weights in `policy/`; the state keeps their paths, so the
checkpoints LangGraph writes after every node stay small.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

SampleStatus = Literal["pending", "scored", "guarded", "judge_failed", "unparseable"]
Grader = Literal["judge", "exact_match", "guard"]


class RubricState(TypedDict):
    version: int
    text: str  # criteria (one per line), or for `kind == "guidelines"` the default guideline
    low: float
    high: float
    parent: int | None
    iteration: int
    kind: NotRequired[Literal["criteria", "guidelines"]]
    guidelines: NotRequired[dict[str, str]]  # per-cluster guidelines (math), keyed by cluster
    items: NotRequired[int]
    tokens: NotRequired[int]
    origin: NotRequired[str]  # how it came about: initial, merge, merge_fallback, per_cluster
    evidence: NotRequired[str | None]  # the meta step's record (analyses, candidates) that led to it
    review: NotRequired[str | None]  # who decided on it beyond the meta-judge (meta-level nodes, a person)
    # A prompt's buffer as the scorer sees it (`rubric.scope: prompt`, see buffers.py): `version` stays the task
    # rubric's, `text` and `low`/`high` are the buffer's.
    scope: NotRequired[Literal["task", "prompt"]]
    prompt_id: NotRequired[str]
    buffer_version: NotRequired[int]
    prompt_items: NotRequired[list[dict[str, Any]]]


class ScoredSample(TypedDict):
    key: str
    prompt_index: int
    prompt: str
    completion: str
    truncated: bool
    score: float | None  # the judge's score on the rubric's scale; None when no valid judgment exists
    reward: float | None  # score minus penalties, on the rubric's scale; None = left out of the update
    status: SampleStatus
    rationale: str
    rubric_version: int
    normalized_reward: NotRequired[float | None]  # `reward` mapped to 0..1 by the rubric's range
    grader: NotRequired[Grader]
    items: NotRequired[list[dict[str, Any]]]  # per-criterion score and rationale (per_item and json modes)
    cluster: NotRequired[str | None]
    injection_flags: NotRequired[list[str]]  # ways the completion addresses the grader (judges/injection.py)
    members: NotRequired[
        list[dict[str, Any]]
    ]  # an ensemble's per-member model, status, score and item scores
    agreement: NotRequired[float | None]  # share of ensemble member pairs that gave equal scores
    prompt_id: NotRequired[str]  # rubric.scope: prompt: the prompt's buffer and the version that scored it
    buffer_version: NotRequired[int]
    item_judgments: NotRequired[
        list[dict[str, Any]]
    ]  # per buffer item: weight, 0-2 score (None: masked), status
    masked_items: NotRequired[
        int
    ]  # buffer items whose judgment failed, left out of the reward with their weight
    listwise: NotRequired[
        dict[str, Any]
    ]  # listwise mode: its anonymous id, the order shown, the raw 0-10 scores


class MetaCase(TypedDict):
    """One unit the meta-judge analyses: a sample (merge style) or a cluster's stratified samples."""

    id: str
    cluster: str | None
    samples: list[ScoredSample]


class MetaProgress(TypedDict, total=False):
    iteration: int
    prescreen: dict[str, str]  # sample key -> verdict
    cases: list[MetaCase]
    analyses: dict[str, str | None]  # case id -> analysis (None: the meta-judge failed on it)
    candidates: dict[str, str | None]  # case id -> candidate rubric or guideline text


class BatchRef(TypedDict):
    """A batch ahead of the one being trained, in the pipelined loop (`schedule.pipeline: one_step`): where its
    rollouts are, and, once sent to the judge, the rubric version it is scored under."""

    iteration: int  # the iteration whose update trains on it
    rollout_path: str  # relative to the run directory
    rollout_seconds: float
    rubric_version: NotRequired[int]  # set when judging starts


class MPOState(TypedDict, total=False):
    iteration: int  # 1-based number of the iteration in progress
    rubric: RubricState  # the rubric in force
    rollout_path: (
        str  # this iteration's rollouts with token ids, relative to the run directory (so it can move)
    )
    batch: list[ScoredSample]  # this iteration's samples, scored once `score` has run
    window: list[str]  # sample files since the last meta step (what the meta-judge draws from), relative
    meta: MetaProgress  # the meta pipeline's work in progress within one meta step
    policy_step: int  # optimizer steps applied so far
    metrics: dict[str, float]  # the latest iteration's metrics
    proposal: RubricState | None  # the meta-judge's proposed next rubric, until `commit` decides on it
    decisions: list[dict[str, Any]]  # this iteration's meta-level node decisions (and failures)
    alarms: list[dict[str, Any]]  # alarms raised since the last meta step: node, message, evidence keys
    schedule: dict[str, int]  # meta_every / meta_samples set by meta-level nodes, overriding the config
    meta_requested: bool  # an alarm asked for a meta step at this iteration
    # The pipelined loop only: the next batch, sampled but not yet sent to the judge, and the batch the judge is
    # scoring (the one the next `judge_collect` takes). The sync loop leaves both unset.
    sampled: BatchRef | None
    judging: BatchRef | None
    # rubric.scope: prompt: the buffer version in force per prompt id (the buffers are files under
    # rubrics/prompts/; this pointer is what a resume restores).
    buffers: dict[str, int]
