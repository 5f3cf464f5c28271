"""What every meta-judge prompt is rendered with: the task's framing and the rubric a case is reviewed under."""

from __future__ import annotations

from typing import Any

from mpo_agents.rubrics import rubric_view
from mpo_agents.state import MPOState

__all__ = ["rubric_view", "shared_variables"]


def shared_variables(framing: dict[str, str], state: MPOState) -> dict[str, Any]:
    """The placeholders every meta stage's prompt shares: the task's framing (`Task.framing()`), the open
    alarms, the rubric's version and range."""
    rubric = state["rubric"]
    return {
        **framing,
        "alarms": [f"{a['node']}: {a['message']}" for a in state.get("alarms", [])],
        "rubric_version": rubric["version"],
        "low": f"{rubric['low']:g}",
        "high": f"{rubric['high']:g}",
    }
