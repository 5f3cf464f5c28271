"""rubric_evolve (`rubric.scope: prompt`): before a batch is judged, each of its prompts gets its buffer ready:
persistent items the first time the prompt is drawn, and every `schedule.meta_every` iterations (or when an alarm
asks) the evolved items that stopped telling its completions apart pruned and new ones proposed from its group
of rollouts (see mpo_agents/buffers.py).

A meta-level node that gates buffers (`rubric_gate`, a `BufferGate`) sees each change before it is made and may
reject it. Each new buffer version is written to `rubrics/prompts/<prompt id>/` before the node returns; the state holds
only the version in force per prompt, so a resumed run scores with exactly the buffers it had. The meta-judge's
replies come from the judgment cache on a re-run, so a node re-run after a crash writes the same versions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langgraph.runtime import Runtime

from mpo_agents.buffers import (
    BufferStore,
    PromptRubric,
    evolve,
    items_from_data,
    items_from_rubric,
    parse_persistent,
    parse_proposal,
    prompt_id,
    prune,
    spread_of,
)
from mpo_agents.context import RunContext
from mpo_agents.errors import RubricRejected
from mpo_agents.judges.injection import as_judge_data
from mpo_agents.meta.schedule import knob
from mpo_agents.plugins import BufferGate, BufferView
from mpo_agents.policy import Rollout
from mpo_agents.rubrics import RubricItem
from mpo_agents.rundir import append_jsonl, read_jsonl
from mpo_agents.state import MPOState

logger = logging.getLogger(__name__)
PERSISTENT_ITEMS = 6  # at most this many persistent items from the meta-judge per prompt


def rubric_evolve_node(gates: Sequence[BufferGate] = ()) -> Callable[..., Awaitable[dict]]:
    """The node, with the meta-level nodes that decide on buffer changes (`rubric_gate`): a change one of them
    rejects is not made (the buffer in force stays), and every verdict goes to meta_levels.jsonl."""

    async def rubric_evolve(state: MPOState, runtime: Runtime[RunContext]) -> dict:
        return await _evolve(state, runtime.context, gates)

    return rubric_evolve


async def _evolve(state: MPOState, ctx: RunContext, gates: Sequence[BufferGate]) -> dict:
    iteration = state["iteration"]
    records = ctx.task.batch(iteration, ctx.config.trainer.prompts_per_iteration)
    store = BufferStore(ctx.run_dir.prompt_rubrics_dir)
    pointers = dict(state.get("buffers", {}))
    pids = [prompt_id(ctx.task.prompt_text(record)) for record in records]
    completions: dict[str, list[str]] = defaultdict(list)
    for item in Rollout.read(ctx.run_dir.locate(state["rollout_path"])):
        completions[pids[item.prompt_index]].append(item.completion)
    prompts = dict(zip(pids, records, strict=True))
    every = knob(ctx.config, state, "meta_every")
    due = bool(state.get("meta_requested") or (every and iteration % every == 0))

    async def first(pid: str, record: dict[str, Any]) -> PromptRubric:
        if pid in pointers:
            return store.load(pid, pointers[pid])
        buffer = await _first_buffer(ctx, pid, record, iteration)
        store.save(buffer)
        return buffer

    current = dict(
        zip(prompts, await asyncio.gather(*(first(pid, r) for pid, r in prompts.items())), strict=True)
    )
    uses = _uses(ctx, current, iteration) if due else {}

    async def ready(pid: str, record: dict[str, Any]) -> tuple[str, PromptRubric, list[dict[str, Any]]]:
        buffer = current[pid]
        if not due:
            return pid, buffer, []
        pruned = prune(buffer, uses[pid], ctx.config.rubric.prune_after)
        new = await _proposed(ctx, buffer, record, completions[pid], iteration)
        evolved = evolve(buffer, new, pruned, max_active=ctx.config.rubric.max_active, iteration=iteration)
        if evolved is None or await _refused(ctx, gates, BufferView(ctx, iteration, record, buffer, evolved)):
            return pid, buffer, []
        store.save(evolved)
        for change in evolved.changes:
            if change["change"] != "added":
                logger.info(
                    "prompt %s: %s item %s: %s", pid, change["change"], change["item"], change["reason"]
                )
        return pid, evolved, list(evolved.changes)

    readied = await asyncio.gather(*(ready(pid, record) for pid, record in prompts.items()))
    changes = [change for _, _, found in readied for change in found]
    metrics = {
        **state.get("metrics", {}),
        "buffers_new": sum(pid not in pointers for pid, _, _ in readied),
        "buffer_items_mean": round(sum(len(b.items) for _, b, _ in readied) / max(1, len(readied)), 3),
        **{
            f"buffer_items_{kind}": sum(c["change"] == kind for c in changes)
            for kind in ("added", "pruned", "evicted")
        },
    }
    update: dict[str, Any] = {
        "buffers": {**pointers, **{pid: b.version for pid, b, _ in readied}},
        "metrics": metrics,
    }
    if due:  # the evolution is this scope's meta step: it uses up the window and any alarm's request
        update |= {"window": [], "meta_requested": False, "alarms": []}
    return update


async def _refused(ctx: RunContext, gates: Sequence[BufferGate], view: BufferView) -> bool:
    """Whether a gate rejects the change; each verdict (or a gate's failure, which does not stop the change) is
    logged to meta_levels.jsonl."""
    refused = False
    for gate in gates:
        entry: dict[str, Any] = {
            "iteration": view.iteration,
            "node": gate.name,
            "stage": "buffer",
            "prompt_id": view.buffer.prompt_id,
            "version": view.proposal.version,
        }
        try:
            decision = await gate.check_buffer(view)
        except Exception as exc:  # noqa: BLE001 - a plug-in must never take the run down; it is named instead
            logger.warning(
                "meta-level node %s failed on prompt %s: %s", gate.name, view.buffer.prompt_id, exc
            )
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        else:
            if decision is None:
                continue
            entry |= {"verdict": decision.verdict, "reason": decision.reason, "details": decision.details}
            if decision.verdict == "reject":
                logger.info(
                    "prompt %s: %s rejected v%d: %s",
                    view.buffer.prompt_id,
                    gate.name,
                    view.proposal.version,
                    decision.reason,
                )
                refused = True
        append_jsonl(ctx.run_dir.meta_levels_path, entry)
    return refused


async def _first_buffer(ctx: RunContext, pid: str, record: dict[str, Any], iteration: int) -> PromptRubric:
    """Version 0 of a prompt's buffer: its persistent items, from the data (`rubric.items_field`), else written
    by the meta-judge, else (the meta-judge failed) the task rubric's criteria, each weighted by its top score."""
    field = ctx.config.rubric.items_field
    if field is not None:  # checked for every record before the run started (context.build_run_task)
        items = items_from_data(record[field], f"rubric.items_field '{field}' of prompt {pid}")
        return _created(ctx, pid, record, items, iteration, "from the data")
    template = ctx.prompt("meta_persistent_items", ctx.config.meta_judge.api)
    prompt = template.render(
        **ctx.task.prompt_variables(record),
        task_rubric=ctx.task.initial_rubric().full_text(),
        reference_solution=ctx.task.reference_of(record) or "",
        max_items=PERSISTENT_ITEMS,
    )

    def parse(reply: str) -> list[RubricItem] | None:
        try:
            return parse_persistent(prompt.full_reply(reply), iteration, PERSISTENT_ITEMS)
        except RubricRejected:
            return None

    result = await ctx.meta_judge.complete(
        prompt.messages,
        parse=parse,
        metadata={"iteration": iteration, "node": "rubric_evolve", "prompt_id": pid},
    )
    if result.ok:
        reason = "written by the meta-judge"
        items = result.value
    else:
        reason = f"the meta-judge could not write items ({result.error}): the task rubric's criteria instead"
        logger.warning("prompt %s: %s", pid, reason)
        items = items_from_rubric(ctx.task.initial_rubric())
    return _created(ctx, pid, record, items, iteration, reason)


def _created(
    ctx: RunContext, pid: str, record: dict[str, Any], items: list[RubricItem], iteration: int, reason: str
) -> PromptRubric:
    created = ({"change": "created", "item": "*", "reason": reason},)
    return PromptRubric(pid, 0, tuple(items), None, iteration, created, ctx.task.prompt_text(record))


async def _proposed(
    ctx: RunContext, buffer: PromptRubric, record: dict[str, Any], completions: list[str], iteration: int
) -> list[RubricItem]:
    """New items the meta-judge proposes from the prompt's group: what separates its better completions from
    its worse ones and the buffer does not yet check. A failed call proposes nothing (logged)."""
    limits = ctx.config.rubric
    template = ctx.prompt("meta_propose_items", ctx.config.meta_judge.api)
    prompt = template.render(
        **ctx.task.prompt_variables(record),
        buffer=buffer.render(),
        completions=[
            {"id": f"c{n}", "text": as_judge_data(text)} for n, text in enumerate(completions, start=1)
        ],
        max_items=limits.max_new_items,
    )
    result = await ctx.meta_judge.complete(
        prompt.messages,
        metadata={"iteration": iteration, "node": "rubric_evolve", "prompt_id": buffer.prompt_id},
    )
    if not result.ok:
        logger.warning(
            "prompt %s: no items proposed, the meta-judge failed (%s)", buffer.prompt_id, result.error
        )
        return []
    items, notes = parse_proposal(
        prompt.full_reply(result.value),
        buffer=buffer,
        iteration=iteration,
        samples=completions,
        copy_run_words=limits.copy_run_words,
        limit=limits.max_new_items,
    )
    for note in notes:
        logger.info("prompt %s: proposal line left out: %s", buffer.prompt_id, note)
    return items


def _uses(ctx: RunContext, buffers: dict[str, PromptRubric], iteration: int) -> dict[str, dict[str, list]]:
    """Per prompt and evolved item, each earlier iteration that judged the prompt's group with the item and how far
    its scores differed across the group there, oldest first. Read from the samples files back to the iteration
    the oldest evolved item was written at (an item has no uses before it)."""
    size = ctx.config.trainer.prompts_per_iteration
    uses: dict[str, dict[str, list]] = {pid: defaultdict(list) for pid in buffers}
    oldest = min((item.iteration for b in buffers.values() for item in b.evolved), default=iteration)
    for earlier in range(oldest, iteration):
        wanted = {prompt_id(ctx.task.prompt_text(r)) for r in ctx.task.batch(earlier, size)} & set(buffers)
        path = ctx.run_dir.samples_path(earlier)
        if not wanted or not path.exists():
            continue
        scores: dict[tuple[str, str], list[float]] = defaultdict(list)
        for sample in read_jsonl(path):
            if sample.get("prompt_id") in wanted:
                for judged in sample.get("item_judgments", []):
                    if judged["score"] is not None:
                        scores[sample["prompt_id"], judged["item"]].append(judged["score"])
        for (pid, item), found in scores.items():
            spread = spread_of(found)
            if spread is not None:
                uses[pid][item].append((earlier, spread))
    return uses
