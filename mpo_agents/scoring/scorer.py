"""Scoring one completion under one rubric version: the task's guards, exact match where the task has a gold
answer, or the judge through one of the named scorers (scoring/scorers.py), by one model or an ensemble.

Shared by the `score` node and `mpo hacking-check`. A judgment that fails is recorded as failed, never as a
plausible number: its score and rewards are None and the update leaves it out.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mpo_agents.buffers import aggregate
from mpo_agents.judges.client import JudgeResult
from mpo_agents.judges.ensemble import JudgePanel, agreement, combine, combine_items, nearest
from mpo_agents.judges.failures import PARSE_FAILURES, STATUS_JUDGE_FAILED, STATUS_UNPARSEABLE
from mpo_agents.judges.injection import as_judge_data, echoes_rubric, grader_address_flags
from mpo_agents.scoring.listwise import SCALE, GroupVerdict, judge_group
from mpo_agents.scoring.scorers import JudgeCall, JudgeScorer, buffer_items, scorer_named
from mpo_agents.state import RubricState, ScoredSample

if TYPE_CHECKING:
    from mpo_agents.config import MPOConfig
    from mpo_agents.judges.client import JudgeClient
    from mpo_agents.policy import Rollout
    from mpo_agents.tasks import Task


def normalized(value: float, low: float, high: float) -> float:
    """`value` on the rubric's scale mapped so that `low` is 0 and `high` is 1 (guard floors and penalties
    below `low` map below 0 by the same affine map, so their ordering survives)."""
    return (value - low) / (high - low)


def _failure_status(result: JudgeResult) -> str:
    return _failure_status_of(result.error)


def _failure_note(result: JudgeResult) -> str:
    """The failure kind and what shows it: the reply that did not parse, else why the call failed."""
    return f"{result.error}: {(result.reply or result.detail or '')[:200]}"


@dataclass
class Scorer:
    """Turns (rubric version, record, completion) into a scored sample.

    The judge scores through the scorer the task names (`Task.judge_scorer`, math: `plan_then_execute`), else
    the one `scoring.mode` names. `judge` is one client or a panel of them (an ensemble): each member judges on
    its own and the scores are combined per criterion, with the members' scores and their agreement kept on
    the sample.
    """

    task: Task
    judge: JudgeClient | JudgePanel | None
    config: MPOConfig
    # Overrides of the call-log metadata, e.g. a meta-level node that re-scores: {"node": ..., "iteration": ...}
    # so that its judge calls are counted as its own in the iteration's usage metrics.
    call_metadata: dict[str, Any] = field(default_factory=dict)
    judge_scorer: JudgeScorer = field(init=False)

    def __post_init__(self) -> None:
        if self.judge is not None and not isinstance(self.judge, JudgePanel):
            self.judge = JudgePanel((self.judge,))
        self.listwise = self.config.scoring.mode == "listwise"
        if self.listwise:
            self.judge_scorer = scorer_named("holistic", "scoring.mode")  # unused: groups are judged whole
        elif self.task.judge_scorer is not None:
            self.judge_scorer = scorer_named(self.task.judge_scorer, f"task {self.task.name}: judge_scorer")
        else:
            self.judge_scorer = scorer_named(self.config.scoring.mode, "scoring.mode")

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

    async def score_group(
        self, rubric: RubricState, record: dict[str, Any], samples: list[ScoredSample], iteration: int
    ) -> list[ScoredSample]:
        """The completions of one prompt (`record`): in listwise mode judged together in one call per judge
        model (and order), otherwise each on its own, concurrently."""
        if not self.listwise:
            return list(await asyncio.gather(*(self.score(rubric, record, s, iteration) for s in samples)))
        prepared = [self._prepared(rubric, record, sample, iteration) for sample in samples]
        pending = [sample for sample, done in prepared if done is None]
        judged: dict[str, ScoredSample] = {}
        if pending:
            judged = {s["key"]: s for s in await self._judged_group(rubric, record, pending, iteration)}
        return [done if done is not None else judged[sample["key"]] for sample, done in prepared]

    def _prepared(
        self, rubric: RubricState, record: dict[str, Any], sample: ScoredSample, iteration: int
    ) -> tuple[ScoredSample, ScoredSample | None]:
        """The sample with its cluster and injection flags, and its final verdict when no judge is needed (a
        guard, exact match), else None."""
        flags = grader_address_flags(sample["completion"])
        if echoes_rubric(sample["completion"], rubric.get("text", "")):
            flags.append("rubric_echo")
        sample = {**sample, "cluster": self.task.cluster_of(record), "items": [], "injection_flags": flags}
        if rubric.get("scope") == "prompt":
            sample = {**sample, "prompt_id": rubric["prompt_id"], "buffer_version": rubric["buffer_version"]}
        guarded = self.task.guard(record, sample["completion"])
        if guarded is not None:
            done = self.finish(
                sample, guarded.score, rubric, status="guarded", grader="guard", rationale=guarded.reason
            )
            return sample, done
        if self.uses_exact_match(iteration, sample["prompt_index"]):
            exact = self.task.exact_match_score(record, sample["completion"])
            if exact is not None:
                done = self.finish(
                    sample, exact.score, rubric, status="scored", grader="exact_match", rationale=exact.reason
                )
                return sample, done
        return sample, None

    def _metadata(self, rubric: RubricState, iteration: int, **fields: Any) -> dict[str, Any]:
        """What every judge call of a scoring records in the call log."""
        metadata = {"iteration": iteration, "node": "score", **fields, "rubric_version": rubric["version"]}
        if rubric.get("scope") == "prompt":
            metadata |= {"prompt_id": rubric["prompt_id"], "buffer_version": rubric["buffer_version"]}
        return {**metadata, **self.call_metadata}

    async def _judged_group(
        self, rubric: RubricState, record: dict[str, Any], samples: list[ScoredSample], iteration: int
    ) -> list[ScoredSample]:
        """Listwise: each judge model scores the whole group; a group no model could score (or too few, for an
        ensemble's quorum) fails whole."""
        group = samples[0]["prompt_index"]
        metadata = self._metadata(rubric, iteration, sample=f"group-{group}")
        seed = f"{self.config.trainer.seed}/{iteration}/{group}/listwise"
        variables = self.task.prompt_variables(record)
        template = self._prompt("judge_listwise")
        orders = self.config.scoring.listwise_orders
        reference = self.task.reference_of(record) or ""
        members = self.judge.members
        verdicts: list[GroupVerdict] = await asyncio.gather(
            *(
                judge_group(
                    member,
                    template,
                    rubric,
                    samples,
                    variables,
                    reference,
                    seed,
                    orders,
                    metadata if len(members) == 1 else {**metadata, "member": number},
                )
                for number, member in enumerate(members)
            )
        )
        scored = [verdict for verdict in verdicts if verdict.scores is not None]
        if len(scored) < self.judge.quorum or not scored:
            failed = next(verdict.failed for verdict in verdicts if verdict.failed is not None)
            note = f"the listwise judgment of this prompt's group of {len(samples)} failed; " + _failure_note(
                failed
            )
            return [{**s, "status": _failure_status(failed), "rationale": note} for s in samples]
        low, high = rubric["low"], rubric["high"]
        results = []
        for sample in samples:
            values = [verdict.scores[sample["key"]]["score"] for verdict in scored]
            value = combine(values, self.judge.aggregate) if len(values) > 1 else values[0]
            first = scored[nearest(values, value)].scores[sample["key"]]
            listwise = {"id": first["id"], "score": value, "raw": first["raw"], "orders": scored[0].orders}
            result = self.finish(
                sample,
                low + value / SCALE * (high - low),
                rubric,
                status="scored",
                grader="judge",
                rationale=first["explanation"],
                listwise=listwise,
            )
            if len(verdicts) > 1:
                result = {**result, "agreement": agreement([values])}
            results.append(result)
        return results

    async def score(
        self, rubric: RubricState, record: dict[str, Any], sample: ScoredSample, iteration: int
    ) -> ScoredSample:
        if self.listwise:  # one sample is a group of one
            return (await self.score_group(rubric, record, [sample], iteration))[0]
        sample, done = self._prepared(rubric, record, sample, iteration)
        if done is not None:
            return done
        metadata = self._metadata(rubric, iteration, sample=sample["key"])
        # The completion is data to the judge: it cannot close its <response> block or fake the judge's tags.
        variables = {**self.task.prompt_variables(record), "response": as_judge_data(sample["completion"])}
        reference = self.task.reference_of(record) or ""

        def judged(member: JudgeClient, call_metadata: dict[str, Any]) -> Awaitable[ScoredSample]:
            call = JudgeCall(member, self._prompt, rubric, sample, variables, call_metadata, reference)
            return self._judged(call, rubric, sample)

        members = self.judge.members
        if len(members) == 1:
            return await judged(members[0], metadata)
        verdicts = await asyncio.gather(
            *(judged(member, {**metadata, "member": number}) for number, member in enumerate(members))
        )
        return self._combined(sample, rubric, verdicts)

    async def _judged(self, call: JudgeCall, rubric: RubricState, sample: ScoredSample) -> ScoredSample:
        """`sample` scored by one judge model through the chosen scorer (a prompt's buffer: item by item)."""
        if rubric.get("scope") == "prompt":
            judgment = await buffer_items(call)
            if judgment.failed is None:
                return self._buffered(sample, rubric, judgment.items or [])
        else:
            judgment = await self.judge_scorer(call)
        if judgment.failed is not None:
            result = judgment.failed
            step = f"{judgment.step}: " if judgment.step else ""
            return {**sample, "status": _failure_status(result), "rationale": step + _failure_note(result)}
        if judgment.items is not None:
            return self._itemised(sample, rubric, judgment.items)
        return self.finish(
            sample, judgment.score, rubric, status="scored", grader="judge", rationale=judgment.rationale
        )

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
            per_member = [verdict["items"] for verdict in scored]
            columns = [[item["score"] for item in column] for column in zip(*per_member)]
            result = self._itemised(sample, rubric, combine_items(per_member, how))
        else:
            columns = [[verdict["score"] for verdict in scored]]
            value = combine(columns[0], how)
            rationale = scored[nearest(columns[0], value)]["rationale"]
            result = self.finish(sample, value, rubric, status="scored", grader="judge", rationale=rationale)
        return {**result, "members": members, "agreement": agreement(columns)}

    def _itemised(
        self, sample: ScoredSample, rubric: RubricState, items: list[dict[str, Any]]
    ) -> ScoredSample:
        """A sample scored criterion by criterion: the reward is the sum of the items, as the paper."""
        total = sum(item["score"] for item in items)
        return self.finish(
            sample, total, rubric, status="scored", grader="judge", items=items, rationale=_joined(items)
        )

    def _buffered(
        self, sample: ScoredSample, rubric: RubricState, judged: list[dict[str, Any]]
    ) -> ScoredSample:
        """A sample scored on its prompt's buffer: an item whose judgment failed is left out with its weight (its
        status says why), never counted as 0."""
        for item in judged:
            error = item.pop("error", None)
            item["status"] = "scored" if item["score"] is not None else _failure_status_of(error)
        usable = [(item["weight"], item["score"]) for item in judged if item["score"] is not None]
        masked = len(judged) - len(usable)
        lines = [
            f"[{item['item']} {item['weight']:+g}: {_shown(item['score'])}] {item['rationale']}"
            for item in judged
        ]
        return self.finish(
            sample,
            aggregate(usable, self.config.rubric.aggregate),
            rubric,
            status="scored",
            grader="judge",
            rationale="\n".join(lines),
            item_judgments=judged,
            masked_items=masked,
        )


def _shown(score: float | None) -> str:
    return "masked" if score is None else f"{score:g}"


def _failure_status_of(error: str | None) -> str:
    return STATUS_UNPARSEABLE if error in PARSE_FAILURES else STATUS_JUDGE_FAILED


def _joined(items: list[dict[str, Any]]) -> str:
    return "\n".join(f"[{item['criterion']}: {item['score']:g}] {item['rationale']}" for item in items)


def pending_samples(
    task: Task, records: list[dict[str, Any]], rollouts: list[Rollout], rubric_version: int
) -> list[ScoredSample]:
    """A batch's sampled completions (`records` are its prompts) as samples not yet judged, to be scored under
    `rubric_version`."""
    return [
        ScoredSample(
            key=item.key,
            prompt_index=item.prompt_index,
            prompt=task.prompt_text(records[item.prompt_index]),
            completion=item.completion,
            truncated=item.truncated,
            score=None,
            reward=None,
            status="pending",
            rationale="",
            rubric_version=rubric_version,
        )
        for item in rollouts
    ]


def training_reward(sample: ScoredSample, config: MPOConfig) -> float | None:
    """The reward the policy update sees for a sample, per `scoring.reward`."""
    key = "normalized_reward" if config.scoring.reward == "normalized" else "reward"
    return sample.get(key)
