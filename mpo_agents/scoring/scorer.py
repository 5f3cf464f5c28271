"""Scoring one completion under one rubric version: the task's guards, exact match where the task has a gold
answer, or the judge in one of three modes (per criterion, all criteria as JSON, or one holistic score).

Shared by the `score` node and `mpo hacking-check`. A judgment that fails is recorded as failed, never as a
plausible number: its score and rewards are None and the update leaves it out.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mpo_agents.judges.client import JudgeResult
from mpo_agents.judges.ensemble import JudgePanel, agreement, combine
from mpo_agents.judges.failures import PARSE_FAILURES, STATUS_JUDGE_FAILED, STATUS_UNPARSEABLE
from mpo_agents.judges.injection import as_judge_data, echoes_rubric, grader_address_flags
from mpo_agents.judges.parsing import parse_score
from mpo_agents.rubrics import Criterion, RubricVersion
from mpo_agents.state import RubricState, ScoredSample

if TYPE_CHECKING:
    from mpo_agents.config import MPOConfig
    from mpo_agents.judges.client import JudgeClient
    from mpo_agents.tasks import Task

_SCORE_LINE = re.compile(r"^\W*score\b.*$", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_JSON_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def rationale_of(reply: str) -> str:
    """The judge's reasoning: its reply up to the score line, without the 'Reason:' label."""
    text = _SCORE_LINE.split(reply, maxsplit=1)[0].strip()
    return re.sub(r"^\W*reason\W*", "", text, flags=re.IGNORECASE).strip()


def normalized(value: float, low: float, high: float) -> float:
    """`value` on the rubric's scale mapped so that `low` is 0 and `high` is 1 (guard floors and penalties
    below `low` map below 0 by the same affine map, so their ordering survives)."""
    return (value - low) / (high - low)


def parse_item_scores(reply: str, criteria: tuple[Criterion, ...]) -> list[dict[str, Any]] | None:
    """Every criterion's rationale and score from a JSON reply, or None if any is missing or out of range.

    Accepts `{"items": [...]}` or a bare list, each entry `{"criterion": N, "rationale": "...", "score": S}`,
    inside a code fence or surrounded by prose.
    """
    fenced = _JSON_FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    entries = data.get("items") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        return None
    found: dict[int, dict[str, Any]] = {}
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            return None
        number = entry.get("criterion", position)
        score = entry.get("score")
        if not isinstance(number, int) or isinstance(score, bool) or not isinstance(score, int | float):
            return None
        if not 1 <= number <= len(criteria) or number in found:
            return None
        criterion = criteria[number - 1]
        if not criterion.low <= score <= criterion.high:
            return None
        found[number] = {
            "criterion": number,
            "score": float(score),
            "rationale": str(entry.get("rationale", "")),
        }
    if len(found) != len(criteria):
        return None
    return [found[n] for n in sorted(found)]


def _failure_status(result: JudgeResult) -> str:
    return STATUS_UNPARSEABLE if result.error in PARSE_FAILURES else STATUS_JUDGE_FAILED


def _failure_note(result: JudgeResult) -> str:
    """The failure kind and what shows it: the reply that did not parse, else why the call failed."""
    return f"{result.error}: {(result.reply or result.detail or '')[:200]}"


@dataclass
class Scorer:
    """Turns (rubric version, record, completion) into a scored sample.

    `judge` is one client or a panel of them (an ensemble): each member judges on its own and the scores are
    combined per criterion, with the members' scores and their agreement kept on the sample.
    """

    task: Task
    judge: JudgeClient | JudgePanel | None
    config: MPOConfig
    # Overrides of the call-log metadata, e.g. a meta-level node that re-scores: {"node": ..., "iteration": ...}
    # so that its judge calls are counted as its own in the iteration's usage metrics.
    call_metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.judge is not None and not isinstance(self.judge, JudgePanel):
            self.judge = JudgePanel((self.judge,))

    @property
    def mode(self) -> str:
        return self.config.scoring.mode

    def _prompt(self, role: str):
        return self.task.prompt(role, self.config.judge.api)

    def uses_exact_match(self, iteration: int, group: int | str) -> bool:
        """Whether a prompt group is graded by exact match: drawn once per group, so the G completions of a
        prompt share one way of grading and GRPO's group baseline compares like with like."""
        fraction = self.config.task.exact_match_fraction
        if fraction <= 0:
            return False
        draw = random.Random(f"{self.config.trainer.seed}/{iteration}/{group}").random()
        return draw < fraction

    def finish(self, sample: ScoredSample, score: float, rubric: RubricState, **fields: Any) -> ScoredSample:
        penalty = self.config.task.truncation_penalty if sample["truncated"] else 0.0
        if sample.get("injection_flags"):
            penalty += self.config.scoring.injection_penalty
        reward = score - penalty
        return {
            **sample,
            **fields,
            "score": score,
            "reward": reward,
            "normalized_reward": normalized(reward, rubric["low"], rubric["high"]),
        }

    async def score(
        self, rubric: RubricState, record: dict[str, Any], sample: ScoredSample, iteration: int
    ) -> ScoredSample:
        flags = grader_address_flags(sample["completion"])
        if echoes_rubric(sample["completion"], rubric.get("text", "")):
            flags.append("rubric_echo")
        sample = {**sample, "cluster": self.task.cluster_of(record), "items": [], "injection_flags": flags}
        guarded = self.task.guard(record, sample["completion"])
        if guarded is not None:
            return self.finish(
                sample, guarded.score, rubric, status="guarded", grader="guard", rationale=guarded.reason
            )
        if self.uses_exact_match(iteration, sample["prompt_index"]):
            exact = self.task.exact_match_score(record, sample["completion"])
            if exact is not None:
                return self.finish(
                    sample, exact.score, rubric, status="scored", grader="exact_match", rationale=exact.reason
                )
        metadata = {
            "iteration": iteration,
            "node": "score",
            "sample": sample["key"],
            "rubric_version": rubric["version"],
            **self.call_metadata,
        }
        # The completion is data to the judge: it cannot close its <response> block or fake the judge's tags.
        variables = {**self.task.prompt_variables(record), "response": as_judge_data(sample["completion"])}
        members = self.judge.members
        if len(members) == 1:
            return await self._judged(members[0], rubric, record, sample, variables, metadata)
        verdicts = await asyncio.gather(
            *(
                self._judged(member, rubric, record, sample, variables, {**metadata, "member": number})
                for number, member in enumerate(members)
            )
        )
        return self._combined(sample, rubric, verdicts)

    async def _judged(self, judge, rubric, record, sample, variables, metadata) -> ScoredSample:
        """`sample` scored by one judge model in the configured mode."""
        if rubric.get("kind") == "guidelines":
            return await self._plan_then_execute(judge, rubric, record, sample, variables, metadata)
        criteria = RubricVersion.from_state(rubric).parsed().criteria
        if self.mode == "per_item" and len(criteria) > 0:
            return await self._per_item(judge, rubric, criteria, sample, variables, metadata)
        if self.mode == "json":
            return await self._json(judge, rubric, criteria, sample, variables, metadata)
        return await self._holistic(judge, rubric, sample, variables, metadata)

    def _combined(
        self, sample: ScoredSample, rubric: RubricState, verdicts: list[ScoredSample]
    ) -> ScoredSample:
        """The ensemble's judgment from its members' verdicts: scores combined per criterion where every
        member scored criteria, else on the one score; the rationale of the member nearest the result."""
        panel = self.judge
        members = [
            {
                "model": client.cfg.model,
                "status": verdict["status"],
                "score": verdict.get("score"),
                **({"items": [item["score"] for item in verdict["items"]]} if verdict.get("items") else {}),
            }
            for client, verdict in zip(panel.members, verdicts, strict=True)
        ]
        scored = [verdict for verdict in verdicts if verdict["status"] == "scored"]
        if len(scored) < panel.quorum:
            failed = next(verdict for verdict in verdicts if verdict["status"] != "scored")
            note = f"{len(scored)} of {len(verdicts)} ensemble members scored (quorum {panel.quorum}); "
            return {
                **sample,
                "status": failed["status"],
                "rationale": note + failed["rationale"],
                "members": members,
            }
        how = panel.aggregate
        if all(verdict.get("items") for verdict in scored):
            columns = [[item["score"] for item in column] for column in zip(*(v["items"] for v in scored))]
            items = []
            for number, column in enumerate(columns, start=1):
                value = combine(column, how)
                nearest = min(range(len(column)), key=lambda k: abs(column[k] - value))
                items.append(
                    {
                        "criterion": number,
                        "score": value,
                        "rationale": scored[nearest]["items"][number - 1]["rationale"],
                    }
                )
            result = self._itemised(sample, rubric, items)
        else:
            columns = [[verdict["score"] for verdict in scored]]
            value = combine(columns[0], how)
            nearest = min(scored, key=lambda verdict: abs(verdict["score"] - value))
            result = self.finish(
                sample, value, rubric, status="scored", grader="judge", rationale=nearest["rationale"]
            )
        return {**result, "members": members, "agreement": agreement(columns)}

    async def _holistic(self, judge, rubric, sample, variables, metadata) -> ScoredSample:
        prompt = self._prompt("judge").render(
            **variables, rubric=rubric["text"], low=f"{rubric['low']:g}", high=f"{rubric['high']:g}"
        )
        result = await judge.complete(
            prompt.messages,
            parse=lambda reply: parse_score(reply, rubric["low"], rubric["high"]),
            metadata=metadata,
        )
        if not result.ok:
            return {**sample, "status": _failure_status(result), "rationale": _failure_note(result)}
        return self.finish(
            sample,
            result.value,
            rubric,
            status="scored",
            grader="judge",
            rationale=rationale_of(result.reply or ""),
        )

    async def _per_item(self, judge, rubric, criteria, sample, variables, metadata) -> ScoredSample:
        template = self._prompt("judge_item")

        async def judge_item(number: int, criterion: Criterion) -> JudgeResult:
            prompt = template.render(
                **variables,
                rubric=rubric["text"],
                item_number=number,
                item_count=len(criteria),
                item_text=criterion.text,
                item_low=f"{criterion.low:g}",
                item_high=f"{criterion.high:g}",
            )
            return await judge.complete(
                prompt.messages,
                parse=lambda reply: parse_score(reply, criterion.low, criterion.high),
                metadata={**metadata, "criterion": number},
            )

        results = await asyncio.gather(*(judge_item(n, c) for n, c in enumerate(criteria, start=1)))
        failed = [(n, r) for n, r in enumerate(results, start=1) if not r.ok]
        if failed:
            # One unscored criterion leaves the total unknown: the sample fails as a whole.
            number, result = failed[0]
            return {
                **sample,
                "status": _failure_status(result),
                "rationale": f"criterion {number}: {_failure_note(result)}",
            }
        items = [
            {"criterion": n, "score": r.value, "rationale": rationale_of(r.reply or "")}
            for n, r in enumerate(results, start=1)
        ]
        return self._itemised(sample, rubric, items)

    def _itemised(
        self, sample: ScoredSample, rubric: RubricState, items: list[dict[str, Any]]
    ) -> ScoredSample:
        """A sample scored criterion by criterion: the reward is the sum of the items, as the paper."""
        total = sum(item["score"] for item in items)
        return self.finish(
            sample, total, rubric, status="scored", grader="judge", items=items, rationale=_joined(items)
        )

    async def _json(self, judge, rubric, criteria, sample, variables, metadata) -> ScoredSample:
        prompt = self._prompt("judge_json").render(
            **variables,
            rubric=rubric["text"],
            items=[
                {"number": n, "text": c.text, "low": f"{c.low:g}", "high": f"{c.high:g}"}
                for n, c in enumerate(criteria, start=1)
            ],
        )
        result = await judge.complete(
            prompt.messages, parse=lambda reply: parse_item_scores(reply, criteria), metadata=metadata
        )
        if not result.ok:
            return {**sample, "status": _failure_status(result), "rationale": _failure_note(result)}
        items = result.value
        return self._itemised(sample, rubric, items)

    async def _plan_then_execute(self, judge, rubric, record, sample, variables, metadata) -> ScoredSample:
        """The math judge: a grading plan from the reference solution and the cluster's guidelines, then the
        plan carried out on the response, ending in one score on the fixed scale."""
        guidelines = rubric.get("guidelines", {}).get(sample.get("cluster") or "", rubric["text"])
        shared = {
            **variables,
            "reference_solution": record.get("solution", ""),
            "guidelines": guidelines,
            "low": f"{rubric['low']:g}",
            "high": f"{rubric['high']:g}",
        }
        plan_prompt = self._prompt("judge_plan").render(**shared)
        plan = await judge.complete(
            plan_prompt.messages, parse=_nonblank, metadata={**metadata, "step": "plan"}
        )
        if not plan.ok:
            return {**sample, "status": _failure_status(plan), "rationale": f"plan: {_failure_note(plan)}"}
        plan_text = plan_prompt.full_reply(plan.value).strip()
        execute_prompt = self._prompt("judge_execute").render(**shared, plan=plan_text)
        result = await judge.complete(
            execute_prompt.messages,
            parse=lambda reply: parse_score(reply, rubric["low"], rubric["high"]),
            metadata={**metadata, "step": "execute"},
        )
        if not result.ok:
            return {
                **sample,
                "status": _failure_status(result),
                "rationale": f"execute: {_failure_note(result)}",
            }
        feedback = (
            f"Plan:\n{plan_text}\n\nExecution:\n{rationale_of(execute_prompt.full_reply(result.reply or ''))}"
        )
        return self.finish(sample, result.value, rubric, status="scored", grader="judge", rationale=feedback)


def _nonblank(reply: str) -> str | None:
    return reply if reply.strip() else None


def _joined(items: list[dict[str, Any]]) -> str:
    return "\n".join(f"[{item['criterion']}: {item['score']:g}] {item['rationale']}" for item in items)


def training_reward(sample: ScoredSample, config: MPOConfig) -> float | None:
    """The reward the policy update sees for a sample, per `scoring.reward`."""
    key = "normalized_reward" if config.scoring.reward == "normalized" else "reward"
    return sample.get(key)
