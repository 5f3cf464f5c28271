"""Math reasoning (MATH): the policy solves a competition problem and boxes its answer. The judge writes a
grading plan from the reference solution and its cluster's guidelines, then follows it; for a share of the
prompts the boxed answer is compared with the gold answer instead."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from mpo_agents.cache_dir import default_cache_dir
from mpo_agents.rubrics import RubricVersion
from mpo_agents.tasks.base import GuardResult, Task

MATH_SCORE_LOW, MATH_SCORE_HIGH = 0.0, 5.0  # the paper's one integer 0-5, whatever the guidelines say
_WORD = re.compile(r"\b\w+\b")


class MathReasoning(Task):
    name: ClassVar[str] = "math_reasoning"
    default_data_file: ClassVar[str] = "math.jsonl"
    prompt_field: ClassVar[str] = "problem"
    required_fields: ClassVar[tuple[str, ...]] = ("problem", "solution", "answer")
    meta_style: ClassVar[Literal["merge", "per_cluster"]] = "per_cluster"
    default_guard_score: ClassVar[float] = 0.0
    default_min_reasoning_words: ClassVar[int] = 30
    # The judge writes a grading plan from the worked solution and the cluster's guideline, then follows it.
    judge_scorer: ClassVar[str | None] = "plan_then_execute"
    reference_field: ClassVar[str | None] = "solution"

    def prepare_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from mpo_agents.tasks.clustering import assign_clusters

        keys = assign_clusters(
            records,
            self.config.cluster_by,
            self.config.clusters_per_subject,
            seed=self.config.shuffle_seed,
            cache_dir=default_cache_dir() / "clusters",
        )
        return [{**record, "cluster": key} for record, key in zip(records, keys, strict=True)]

    def normalize_record(self, record: dict[str, Any]) -> dict[str, Any] | None:
        from mpo_agents.tasks.math_answers import first_boxed_answer

        # The raw MATH files carry no answer field; the gold answer is the solution's boxed expression.
        answer = record.get("answer") or first_boxed_answer(str(record.get("solution") or ""))
        if answer is None and "answer" not in record:
            return dict(record)  # no answer anywhere: reported as a missing field, not an empty one
        return {**record, "answer": answer}

    def initial_rubric(self) -> RubricVersion:
        """Version 0: one prose guideline that every cluster starts from, on the fixed 0-5 scale."""
        return RubricVersion.of_guidelines(
            self.initial_rubric_text(),
            {},
            low=MATH_SCORE_LOW,
            high=MATH_SCORE_HIGH,
            version=0,
            parent=None,
            iteration=0,
        )

    def evaluation_reference(self, record: dict[str, Any]) -> str | None:
        return record.get("answer") or None

    def record_variables(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"problem": record["problem"]}

    def cluster_of(self, record: dict[str, Any]) -> str | None:
        return record.get("cluster")

    def guard(self, record: dict[str, Any], completion: str) -> GuardResult | None:
        from mpo_agents.tasks.math_answers import reasoning_without_answer

        words = len(_WORD.findall(reasoning_without_answer(completion)))
        if words < self.min_reasoning_words:
            return GuardResult(
                self.guard_score, f"reasoning of {words} words, fewer than {self.min_reasoning_words}"
            )
        return None

    def exact_match_score(self, record: dict[str, Any], completion: str) -> GuardResult | None:
        from mpo_agents.tasks.math_answers import answers_equivalent, final_boxed_answer

        predicted = final_boxed_answer(completion)
        if predicted is None:
            return GuardResult(MATH_SCORE_LOW, "no \\boxed{} answer")
        if answers_equivalent(predicted, record["answer"]):
            return GuardResult(MATH_SCORE_HIGH, f"boxed answer {predicted!r} equals the gold answer")
        return GuardResult(MATH_SCORE_LOW, f"boxed answer {predicted!r} differs from {record['answer']!r}")
