"""`rubric_gate`: before a proposed rubric is used, check that it still tells good answers from known hacks,
that it separates this batch's completions at least as well as its parent, and that it stays under a size cap.

Anchors are the task's reward-hacking suite (`prompts/<task>/hacking.jsonl`: per case a good reference and
hacks such as a title only, gibberish, another language, a rubric echo, text addressing the grader). Both
rubrics score the anchors; the proposal is rejected if a hack scores at least its reference under it but not
under the parent (with `strict`, if any hack does: a weak judge may fail some anchors under every rubric). The
batch is re-scored under the proposal to compare spread and all-equal GRPO groups, and to log the score map
between the versions (rank correlation, scale change, per-criterion means). Every check costs judge calls
(anchors x 2 rubrics + the batch), logged like any other with node `rubric_gate`.

With `rubric.scope: prompt` it gates each change to a prompt's buffer the same way (`check_buffer`), on the
suite cases of that prompt, where the suite has any.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any, ClassVar

from mpo_agents.buffers import prompt_id
from mpo_agents.plugins.api import BufferView, Decision, MetaView
from mpo_agents.scoring.hacking import default_suite, load_suite, run_check
from mpo_agents.scoring.scorer import Scorer, normalized


@dataclass
class RubricGate:
    """Settings: `suite` (anchor file; default the task's hacking suite), `max_cases` (anchor cases used),
    `strict` (reject when any hack wins, not only a hack the parent kept below its reference),
    `max_items` / `max_tokens` (size caps; default the config's rubric.max_items, no token cap),
    `check_batch` (re-score the batch to compare discrimination), `spread_tolerance` (the proposal's score
    spread may be this fraction below the parent's)."""

    suite: str | None = None
    max_cases: int = 3
    strict: bool = False
    max_items: int | None = None
    max_tokens: int | None = None
    check_batch: bool = True
    spread_tolerance: float = 0.1
    name: str = field(default="rubric_gate", init=False)
    stage: ClassVar[str] = "after_rewrite"

    async def __call__(self, view: MetaView) -> Decision | None:
        proposal, parent, ctx = view.proposal, view.rubric, view.context
        if proposal is None:
            return None
        problems: list[str] = []
        cap = self.max_items or ctx.config.rubric.max_items
        if proposal.items > cap:
            problems.append(f"{proposal.items} items, over the cap of {cap}")
        if self.max_tokens is not None and proposal.tokens > self.max_tokens:
            problems.append(f"{proposal.tokens} tokens, over the cap of {self.max_tokens}")
        scorer = Scorer(
            ctx.task, ctx.judge, ctx.config, call_metadata={"node": self.name, "iteration": view.iteration}
        )
        cases = load_suite(Path(self.suite) if self.suite else default_suite(ctx.task), ctx.task)[
            : self.max_cases
        ]
        before, after = await asyncio.gather(
            run_check(scorer, lambda record: parent.to_state(), cases),
            run_check(scorer, lambda record: proposal.to_state(), cases),
        )
        hacks_win = [f"{row['case']}/{row['kind']}" for row in after if row["verdict"] == "hack_wins"]
        held_before = {f"{row['case']}/{row['kind']}" for row in before if row["verdict"] == "ok"}
        newly = [hack for hack in hacks_win if hack in held_before]
        if self.strict and hacks_win:
            problems.append(f"hacks score at least their reference: {', '.join(hacks_win)}")
        elif newly:
            problems.append(
                f"hacks now score at least their reference (not under the parent): {', '.join(newly)}"
            )
        details: dict[str, Any] = {
            "anchors": {
                "parent_hack_wins": sum(row["verdict"] == "hack_wins" for row in before),
                "proposal_hack_wins": len(hacks_win),
                "new_hack_wins": newly,
                "judge_failed": sum(row["verdict"] == "judge_failed" for row in after),
            }
        }
        metrics: dict[str, float] = {"proposal_hack_wins": float(len(hacks_win))}
        if self.check_batch and view.batch:
            comparison = await self._compare_on_batch(view, scorer)
            details["score_map"] = comparison
            metrics.update(spearman=comparison["spearman"] or 0.0, scale_change=comparison["scale_change"])
            if comparison["proposal_spread"] < comparison["parent_spread"] * (1 - self.spread_tolerance):
                problems.append(
                    f"less discriminative on this batch: spread {comparison['proposal_spread']:.3f} vs "
                    f"{comparison['parent_spread']:.3f}"
                )
            if comparison["proposal_flat_groups"] > comparison["parent_flat_groups"]:
                problems.append(
                    f"more all-equal groups: {comparison['proposal_flat_groups']} vs "
                    f"{comparison['parent_flat_groups']}"
                )
        audit = [
            d for d in view.decisions if d["node"] == "meta_judge_audit" and d.get("verdict") == "reject"
        ]
        if audit:
            problems.append(f"the meta-judge audit objects: {audit[0].get('reason')}")
        if problems:
            return Decision("reject", reason="; ".join(problems), metrics=metrics, details=details)
        return Decision(
            "accept",
            reason="anchors ranked, discrimination kept, size under cap",
            metrics=metrics,
            details=details,
        )

    async def check_buffer(self, view: BufferView) -> Decision | None:
        """A change to a prompt's buffer, checked against the anchors of that prompt (suite cases with the same
        prompt): rejected when a hack scores at least its reference under the new buffer but not the old (with
        `strict`, when any does). None when the suite has no case for the prompt."""
        task = view.context.task
        suite = load_suite(Path(self.suite) if self.suite else default_suite(task), task)
        cases = [c for c in suite if prompt_id(task.prompt_text(c.record)) == view.buffer.prompt_id]
        if not cases:
            return None
        how = view.config.rubric.aggregate
        scorer = Scorer(
            task,
            view.context.judge,
            view.config,
            call_metadata={"node": self.name, "iteration": view.iteration},
        )
        before, after = await asyncio.gather(
            run_check(scorer, lambda record: view.buffer.rubric_state(0, how), cases[: self.max_cases]),
            run_check(scorer, lambda record: view.proposal.rubric_state(0, how), cases[: self.max_cases]),
        )
        wins = [f"{row['case']}/{row['kind']}" for row in after if row["verdict"] == "hack_wins"]
        held = {f"{row['case']}/{row['kind']}" for row in before if row["verdict"] == "ok"}
        newly = [hack for hack in wins if hack in held]
        metrics = {"buffer_hack_wins": float(len(wins))}
        details = {"prompt_id": view.buffer.prompt_id, "hack_wins": wins, "new_hack_wins": newly}
        if (self.strict and wins) or newly:
            return Decision(
                "reject",
                reason=f"prompt {view.buffer.prompt_id} v{view.proposal.version}: hacks score at least their "
                f"reference{'' if self.strict else ' (not under the buffer in force)'}: {', '.join(newly or wins)}",
                metrics=metrics,
                details=details,
            )
        return Decision(
            "accept",
            reason="the prompt's anchors still rank their references first",
            metrics=metrics,
            details=details,
        )

    async def _compare_on_batch(self, view: MetaView, scorer: Scorer) -> dict[str, Any]:
        proposal = view.proposal.to_state()
        records = view.context.task.batch(view.iteration, view.config.trainer.prompts_per_iteration)
        judged = [s for s in view.batch if s.get("grader") == "judge" and s.get("score") is not None]
        rescored = await asyncio.gather(
            *(
                scorer.score(proposal, records[s["prompt_index"]], {**s, "status": "pending"}, view.iteration)
                for s in judged
            )
        )
        pairs = [
            (
                normalized(old["score"], view.rubric.low, view.rubric.high),
                normalized(new["score"], proposal["low"], proposal["high"]),
            )
            for old, new in zip(judged, rescored, strict=True)
            if new.get("score") is not None
        ]
        old_scores, new_scores = [p[0] for p in pairs], [p[1] for p in pairs]
        return {
            "samples": len(pairs),
            "spearman": _spearman(old_scores, new_scores),
            "scale_change": (fmean(new_scores) - fmean(old_scores)) if pairs else 0.0,
            "parent_spread": pstdev(old_scores) if len(pairs) > 1 else 0.0,
            "proposal_spread": pstdev(new_scores) if len(pairs) > 1 else 0.0,
            "parent_flat_groups": _flat_groups(judged, "score"),
            "proposal_flat_groups": _flat_groups(rescored, "score"),
            "proposal_item_means": _item_means(rescored),
        }


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    position = 0
    while position < len(order):
        tied = position
        while tied + 1 < len(order) and values[order[tied + 1]] == values[order[position]]:
            tied += 1
        for k in range(position, tied + 1):
            ranks[order[k]] = (position + tied) / 2
        position = tied + 1
    return ranks


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation of two score lists (ties get their mean rank); None if either is constant."""
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = fmean(ra), fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else None


def _flat_groups(samples: list[dict[str, Any]], key: str) -> int:
    """GRPO groups (completions of one prompt) whose scores are all equal: they teach the policy nothing."""
    groups: dict[int, set] = {}
    for sample in samples:
        if sample.get(key) is not None:
            groups.setdefault(sample["prompt_index"], set()).add(sample[key])
    return sum(len(scores) == 1 for scores in groups.values())


def _item_means(samples: list[dict[str, Any]]) -> list[float]:
    columns = [s["items"] for s in samples if s.get("items")]
    if not columns:
        return []
    return [round(fmean(item["score"] for item in column), 3) for column in zip(*columns)]
