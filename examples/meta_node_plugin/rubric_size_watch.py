"""A meta-level node from outside mpo-agents: it refuses a proposed rubric that grows by more than
`max_growth` (a fraction) in tokens over the rubric in force, and otherwise has no objection.

The paper reports rubrics growing from tens to thousands of tokens; this node puts a brake on that per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpo_agents.plugins import Decision, MetaView


@dataclass
class RubricSizeWatch:
    max_growth: float = 1.0  # 1.0 allows a rewrite to double the rubric's tokens
    name: str = "rubric_size_watch"
    stage = "after_rewrite"

    def __post_init__(self) -> None:
        if self.max_growth < 0:
            raise ValueError(f"max_growth must be at least 0, got {self.max_growth}")

    async def __call__(self, view: MetaView) -> Decision | None:
        if view.proposal is None:
            return None
        before, after = view.rubric.tokens, view.proposal.tokens
        growth = (after - before) / before if before else 0.0
        metrics = {"growth": round(growth, 4)}
        if growth > self.max_growth:
            return Decision(
                "reject",
                reason=f"grows from {before} to {after} tokens ({growth:+.0%}), over max_growth {self.max_growth:.0%}",
                metrics=metrics,
            )
        return Decision(metrics=metrics)
