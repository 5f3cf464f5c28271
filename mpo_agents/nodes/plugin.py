"""A meta-level ("meta-meta") plug-in as a graph node: it runs the plug-in on a read-only view of the run and
turns its `Decision` into a state update (after_score nodes in the loop, after_rewrite nodes in rubric_rewrite).

A plug-in that raises or returns something that is not a `Decision` is recorded with its name in
`meta_levels.jsonl` and in the iteration's metrics; the run goes on as if it had returned nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from langgraph.runtime import Runtime

from mpo_agents.context import RunContext
from mpo_agents.plugins.api import SCHEDULE_KNOBS, Decision, MetaNode, MetaView
from mpo_agents.rubrics import RubricVersion
from mpo_agents.rundir import append_jsonl
from mpo_agents.state import MPOState

logger = logging.getLogger(__name__)
LOG_FILE = "meta_levels.jsonl"


def plugin_node(node: MetaNode):
    """The graph node that runs one plug-in and turns its decision into a state update."""

    async def run(state: MPOState, runtime: Runtime[RunContext]) -> dict:
        ctx = runtime.context
        iteration = state["iteration"]
        proposal = state.get("proposal")
        view = MetaView(
            context=ctx,
            iteration=iteration,
            rubric=RubricVersion.from_state(state["rubric"]),
            proposal=RubricVersion.from_state(proposal) if proposal else None,
            batch=list(state.get("batch", [])),
            window_paths=list(state.get("window", [])),
            decisions=[d for d in state.get("decisions", []) if d["iteration"] == iteration],
        )
        entry: dict[str, Any] = {"iteration": iteration, "node": node.name, "stage": node.stage}
        try:
            decision = _checked(await node(view), node)
        except Exception as exc:  # noqa: BLE001 - a plug-in must never take the run down; it is named instead
            logger.warning("meta-level node %s failed: %s", node.name, exc)
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
            _log(ctx, entry)
            metrics = {**state.get("metrics", {}), f"{node.name}_failed": 1}
            return {"decisions": [*state.get("decisions", []), entry], "metrics": metrics}
        if decision is None:
            entry["verdict"] = None
            _log(ctx, entry)
            return {"decisions": [*state.get("decisions", []), entry]}
        entry.update(
            verdict=decision.verdict,
            reason=decision.reason,
            rubric_text=decision.rubric_text,
            schedule=decision.schedule,
            alarm=decision.alarm,
            trigger_meta=decision.trigger_meta,
            evidence=decision.evidence,
            details=decision.details,
        )
        _log(ctx, entry)
        update: dict[str, Any] = {"decisions": [*state.get("decisions", []), entry]}
        metrics = {f"{node.name}_{key}": value for key, value in decision.metrics.items()}
        if decision.alarm:
            alarm = {"iteration": iteration, "node": node.name, "message": decision.alarm}
            update["alarms"] = [*state.get("alarms", []), {**alarm, "evidence": decision.evidence}]
            metrics[f"{node.name}_alarm"] = 1
        if decision.trigger_meta:
            update["meta_requested"] = True
        if decision.schedule:
            update["schedule"] = {**state.get("schedule", {}), **decision.schedule}
        if metrics:
            update["metrics"] = {**state.get("metrics", {}), **metrics}
        return update

    run.__name__ = node.name
    return run


def _checked(decision: Any, node: MetaNode) -> Decision | None:
    """The decision if it is one this node may make; anything else raises, naming what was wrong."""
    if decision is None:
        return None
    if not isinstance(decision, Decision):
        raise TypeError(
            f"returned {type(decision).__name__} {str(decision)[:80]!r}, expected a Decision or None"
        )
    if decision.verdict not in (None, "accept", "reject", "edit"):
        raise ValueError(f"verdict {decision.verdict!r} is not accept, reject or edit")
    if decision.verdict is not None and node.stage != "after_rewrite":
        raise ValueError(f"gave verdict {decision.verdict!r}, but only after_rewrite nodes decide on rubrics")
    if decision.verdict == "edit" and not (decision.rubric_text or "").strip():
        raise ValueError("gave verdict 'edit' without rubric_text")
    if decision.trigger_meta and node.stage != "after_score":
        raise ValueError("asked for a meta step, but only after_score nodes can start one")
    for name, value in decision.schedule.items():
        if name not in SCHEDULE_KNOBS:
            raise ValueError(f"set schedule knob {name!r}; only {', '.join(SCHEDULE_KNOBS)} may be set")
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < (0 if name == "meta_every" else 1)
        ):
            raise ValueError(f"set {name} to {value!r}; it must be a whole number (meta_samples at least 1)")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in decision.metrics.values()):
        raise ValueError("returned metrics that are not numbers")
    json.dumps(dataclasses.asdict(decision))  # details must be serialisable: they go to the log and state
    return decision


def _log(ctx: RunContext, entry: dict[str, Any]) -> None:
    append_jsonl(ctx.run_dir.root / LOG_FILE, entry)
