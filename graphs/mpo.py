"""The MPO loop as a LangGraph state machine.

rollout -> score -> [meta, every `schedule.meta_every` iterations] -> policy_update
   ^                                                                      |
   +-------------------------- while iterations remain -------------------+

`meta` is a subgraph, one node per stage of the meta-reward model:
prescreen -> analyze -> refine -> merge
"""

from __future__ import annotations

import itertools
from typing import Literal

from langgraph.graph import END, START, StateGraph

from mpo_agents.context import RunContext
from mpo_agents.nodes import (
    meta_analyze,
    meta_merge,
    meta_prescreen,
    meta_refine,
    policy_update,
    rollout,
    score,
)
from mpo_agents.state import MPOState

META_STAGES = ("meta_prescreen", "meta_analyze", "meta_refine", "meta_merge")


def meta_due(state: MPOState, runtime) -> Literal["meta", "policy_update"]:
    every = runtime.context.config.schedule.meta_every
    return "meta" if every and state["iteration"] % every == 0 else "policy_update"


def more_iterations(state: MPOState, runtime) -> Literal["rollout", "__end__"]:
    return "rollout" if state["iteration"] <= runtime.context.config.schedule.iterations else END


def build_meta_graph() -> StateGraph:
    """The meta-reward pipeline. It shares the loop's state, so each stage's update is checkpointed like any
    other node's (in the subgraph's own checkpoint namespace) and a resumed run re-enters the stage it was in."""
    graph = StateGraph(MPOState, context_schema=RunContext)
    stages = {
        "meta_prescreen": meta_prescreen,
        "meta_analyze": meta_analyze,
        "meta_refine": meta_refine,
        "meta_merge": meta_merge,
    }
    for name, node in stages.items():
        graph.add_node(name, node)
    graph.add_edge(START, META_STAGES[0])
    for before, after in itertools.pairwise(META_STAGES):
        graph.add_edge(before, after)
    graph.add_edge(META_STAGES[-1], END)
    return graph


def build_graph() -> StateGraph:
    graph = StateGraph(MPOState, context_schema=RunContext)
    graph.add_node("rollout", rollout)
    graph.add_node("score", score)
    graph.add_node("meta", build_meta_graph().compile())
    graph.add_node("policy_update", policy_update)

    graph.add_edge(START, "rollout")
    graph.add_edge("rollout", "score")
    graph.add_conditional_edges("score", meta_due)
    graph.add_edge("meta", "policy_update")
    graph.add_conditional_edges("policy_update", more_iterations)
    return graph
