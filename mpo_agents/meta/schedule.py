"""The schedule knobs in force: as a meta-level node last set them (in the graph state), else as configured."""

from __future__ import annotations

from mpo_agents.config import MPOConfig
from mpo_agents.state import MPOState


def knob(config: MPOConfig, state: MPOState, name: str) -> int:
    """A schedule knob as a meta-level node last set it, else as configured."""
    return int(state.get("schedule", {}).get(name, getattr(config.schedule, name)))
