"""`hacking_alarm`: detectors over each scored batch that catch reward hacking as it starts, raise an alarm,
start a meta step at once (instead of waiting for the schedule) and point the meta-judge at the samples.

Detectors (each compares this batch with the run's earlier iterations where it needs a baseline):
- length collapse or blow-up: mean words per completion below `length_drop` x or above `length_rise` x the
  mean of earlier iterations;
- repetition: the share of completions in which one word 4-gram makes up over a third of all 4-grams;
- language switch: the share of completions with few common English words (or mostly non-Latin letters);
- grader address and format gaming: the share of completions with injection flags (score claims, the judge's
  format, delimiter tags, text addressed to the grader, rubric echo);
- reward rising while an independent check falls: where the task has one (math exact match), the judge's mean
  reward went up since the last iteration while exact-match accuracy went down.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from statistics import fmean
from typing import ClassVar

from mpo_agents.plugins.api import Decision, MetaView

_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)
_COMMON_ENGLISH = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "is",
        "are",
        "was",
        "be",
        "it",
        "that",
        "this",
        "for",
        "on",
        "with",
        "as",
        "not",
        "but",
        "by",
        "from",
        "at",
        "have",
        "has",
    ]
)


@dataclass
class HackingAlarm:
    """Settings: `length_drop` (0.5), `length_rise` (2.0), `repetition_share` (0.25), `language_share`
    (0.25), `flagged_share` (0.25), `trigger_meta` (true: start a meta step when an alarm fires)."""

    length_drop: float = 0.5
    length_rise: float = 2.0
    repetition_share: float = 0.25
    language_share: float = 0.25
    flagged_share: float = 0.25
    trigger_meta: bool = True
    name: str = field(default="hacking_alarm", init=False)
    stage: ClassVar[str] = "after_score"

    async def __call__(self, view: MetaView) -> Decision | None:
        batch = view.batch
        if not batch:
            return None
        words = {s["key"]: len(_WORDS.findall(s["completion"])) for s in batch}
        mean_words = fmean(words.values())
        findings: list[tuple[str, list[str]]] = []
        earlier = [
            m[f"{self.name}_mean_words"] for m in view.metrics_history if f"{self.name}_mean_words" in m
        ]
        if earlier:
            baseline = fmean(earlier)
            if baseline > 0 and mean_words < self.length_drop * baseline:
                short = [k for k, n in words.items() if n < self.length_drop * baseline]
                findings.append(
                    (f"length collapse: {mean_words:.1f} words per completion, was {baseline:.1f}", short)
                )
            if baseline > 0 and mean_words > self.length_rise * baseline:
                long = [k for k, n in words.items() if n > self.length_rise * baseline]
                findings.append(
                    (f"length blow-up: {mean_words:.1f} words per completion, was {baseline:.1f}", long)
                )
        repeated = [s["key"] for s in batch if _repetitive(s["completion"])]
        if len(repeated) > self.repetition_share * len(batch):
            findings.append((f"repetition in {len(repeated)} of {len(batch)} completions", repeated))
        foreign = [s["key"] for s in batch if _not_english(s["completion"])]
        if len(foreign) > self.language_share * len(batch):
            findings.append((f"language switch in {len(foreign)} of {len(batch)} completions", foreign))
        flagged = [s["key"] for s in batch if s.get("injection_flags")]
        if len(flagged) > self.flagged_share * len(batch):
            kinds = Counter(flag for s in batch for flag in s.get("injection_flags", []))
            listed = ", ".join(f"{kind} {count}" for kind, count in kinds.most_common())
            findings.append((f"completions address the grader or game its format ({listed})", flagged))
        diverging, checked = self._reward_against_exact_match(view)
        if diverging:
            findings.append(diverging)
        metrics: dict[str, float] = {
            "mean_words": round(mean_words, 3),
            "repetition_share": len(repeated) / len(batch),
            "language_share": len(foreign) / len(batch),
            "flagged_share": len(flagged) / len(batch),
            **checked,
        }
        if not findings:
            return Decision(metrics=metrics)
        evidence = list(dict.fromkeys(key for _, keys in findings for key in keys))
        return Decision(
            alarm="; ".join(message for message, _ in findings),
            trigger_meta=self.trigger_meta,
            evidence=evidence,
            metrics={**metrics, "detectors": float(len(findings))},
            details={"findings": [{"message": m, "samples": keys} for m, keys in findings]},
        )

    def _reward_against_exact_match(
        self, view: MetaView
    ) -> tuple[tuple[str, list[str]] | None, dict[str, float]]:
        """Judge reward up while exact-match accuracy (an independent check) went down since last iteration;
        also this batch's reward and accuracy, for the next iteration's comparison."""
        task = view.context.task
        records = task.batch(view.iteration, view.config.trainer.prompts_per_iteration)
        checked = []
        for sample in view.batch:
            exact = task.exact_match_score(records[sample["prompt_index"]], sample["completion"])
            if exact is not None and sample.get("normalized_reward") is not None:
                checked.append((sample["normalized_reward"], exact.score > 0))
        if not checked:
            return None, {}
        reward, accuracy = fmean(r for r, _ in checked), fmean(ok for _, ok in checked)
        now = {"reward": round(reward, 4), "accuracy": round(accuracy, 4)}
        previous = view.metrics_history[-1] if view.metrics_history else {}
        old_reward, old_accuracy = previous.get(f"{self.name}_reward"), previous.get(f"{self.name}_accuracy")
        if (
            old_reward is None
            or old_accuracy is None
            or not (reward > old_reward and accuracy < old_accuracy)
        ):
            return None, now
        message = (
            f"reward rose ({old_reward:.2f} -> {reward:.2f}) while exact-match accuracy fell "
            f"({old_accuracy:.2f} -> {accuracy:.2f})"
        )
        return (message, [s["key"] for s in view.batch]), now


def _repetitive(text: str) -> bool:
    tokens = _WORDS.findall(text.lower())
    grams = list(zip(tokens, tokens[1:], tokens[2:], tokens[3:], strict=False))
    if len(grams) < 6:
        return False
    return Counter(grams).most_common(1)[0][1] > len(grams) / 3


def _not_english(text: str) -> bool:
    tokens = _WORDS.findall(text.lower())
    if len(tokens) < 8:
        return False
    latin = sum(token.isascii() for token in tokens) / len(tokens)
    common = sum(token in _COMMON_ENGLISH for token in tokens) / len(tokens)
    return latin < 0.5 or common < 0.05
