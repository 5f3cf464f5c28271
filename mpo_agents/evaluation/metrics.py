"""Reference-based scores of a generations file: ROUGE for summaries, accuracy for ethics verdicts and math
answers. Each returns per-item rows (one per generation) and a summary in the form reports read."""

from __future__ import annotations

import re
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from mpo_agents.errors import ConfigError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ACCURACY_TASKS = ("ethical_reasoning", "math_reasoning")
_BARE_VERDICT = re.compile(r"\b(RIGHT|WRONG)\b")


def _references(rows: Sequence[dict[str, Any]], what: str) -> None:
    missing = [str(row["id"]) for row in rows if not str(row.get("reference") or "").strip()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ConfigError(
            f"{len(missing)} generation(s) have no `reference` ({what}) to compare with: {shown}. "
            f"`mpo generate` writes it when the task's data has one"
        )


def rouge(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """ROUGE-1/2/L/Lsum F-measure with Porter stemming against each row's reference summary (as the paper's
    script does), ×100, averaged over the rows. ROUGE-Lsum splits sentences on newlines, as `rouge-score`
    expects."""
    from rouge_score import rouge_scorer

    _references(rows, "the reference summary")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    items = []
    for row in rows:
        scores = scorer.score(row["reference"], row["response"])
        items.append({"id": row["id"], **{name: 100.0 * scores[name].fmeasure for name in ROUGE_TYPES}})
    summary = {
        "kind": "rouge",
        "items": len(items),
        **{name: fmean(item[name] for item in items) for name in ROUGE_TYPES},
    }
    return items, summary


def ethics_verdict(response: str) -> tuple[str | None, str]:
    """The verdict a response gives and how it was read: the last `<verdict>` tag; without one, the bare word
    RIGHT or WRONG when exactly one of them occurs (both: undecided), as the paper's evaluation reads it."""
    from mpo_agents.tasks.ethical_reasoning import verdict_of

    tagged = verdict_of(response)
    if tagged is not None:
        return tagged, "tag"
    words = set(_BARE_VERDICT.findall(response))
    if len(words) == 1:
        return words.pop(), "word"
    return None, "both words" if words else "none"


def accuracy(task: str, rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Share of rows whose answer equals the reference: the ethics verdict, or the math boxed answer (the last
    `\\boxed{}` of the response, compared with the task's equivalence normaliser, as training rewards it)."""
    if task not in ACCURACY_TASKS:
        raise ConfigError(f"accuracy is defined for {', '.join(ACCURACY_TASKS)}, not '{task}'")
    _references(rows, "the gold verdict" if task == "ethical_reasoning" else "the gold answer")
    items = []
    for row in rows:
        if task == "ethical_reasoning":
            predicted, read_from = ethics_verdict(row["response"])
            correct = predicted is not None and predicted == str(row["reference"]).strip().upper()
        else:
            from mpo_agents.tasks.math_answers import answers_equivalent, final_boxed_answer

            predicted = final_boxed_answer(row["response"])
            read_from = "boxed" if predicted is not None else "none"
            correct = answers_equivalent(predicted, str(row["reference"]))
        items.append(
            {
                "id": row["id"],
                "predicted": predicted,
                "reference": row["reference"],
                "read_from": read_from,
                "correct": correct,
            }
        )
    correct_count = sum(item["correct"] for item in items)
    summary = {
        "kind": "accuracy",
        "task": task,
        "items": len(items),
        "correct": correct_count,
        "accuracy": correct_count / len(items) if items else 0.0,
        "no_answer": sum(item["predicted"] is None for item in items),
    }
    return items, summary
