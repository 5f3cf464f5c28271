"""What a running loop tells its caller: the typed events `runner.execute` hands to `on_event` as it goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeFinished:
    """A node of the graph (or a stage of the meta subgraph) finished; `update`: what it wrote to state."""

    node: str
    update: dict[str, Any]


@dataclass(frozen=True)
class StopRequested:
    """Ctrl-C: the run stops once the current node is done (a second Ctrl-C stops it at once)."""


@dataclass(frozen=True)
class BudgetExhausted:
    """The judges spent `schedule.budget_usd`: the run stops at this checkpoint."""

    spent_usd: float
    budget_usd: float


@dataclass(frozen=True)
class ReviewRequested:
    """The run paused: these rubric changes wait for a person's decision (`mpo review`)."""

    reviews: tuple[dict[str, Any], ...]


RunEvent = NodeFinished | StopRequested | BudgetExhausted | ReviewRequested
