"""The MPO loop as a LangGraph state machine.

rollout -> score -> [meta_analyze -> rubric_rewrite, every `schedule.meta_every` iterations] -> policy_update
   ^                                                                                                |
   +------------------------------------ while iterations remain ----------------------------------+
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph

from mpo_agents.context import RunContext
from mpo_agents.nodes import meta_analyze, policy_update, rollout, rubric_rewrite, score
from mpo_agents.state import MPOState


def meta_due(state: MPOState, runtime) -> Literal["meta_analyze", "policy_update"]:
    every = runtime.context.config.schedule.meta_every
    return "meta_analyze" if every and state["iteration"] % every == 0 else "policy_update"


def more_iterations(state: MPOState, runtime) -> Literal["rollout", "__end__"]:
    return "rollout" if state["iteration"] <= runtime.context.config.schedule.iterations else END


def build_graph() -> StateGraph:
    graph = StateGraph(MPOState, context_schema=RunContext)
    graph.add_node("rollout", rollout)
    graph.add_node("score", score)
    graph.add_node("meta_analyze", meta_analyze)
    graph.add_node("rubric_rewrite", rubric_rewrite)
    graph.add_node("policy_update", policy_update)

    graph.add_edge(START, "rollout")
    graph.add_edge("rollout", "score")
    graph.add_conditional_edges("score", meta_due)
    graph.add_edge("meta_analyze", "rubric_rewrite")
    graph.add_edge("rubric_rewrite", "policy_update")
    graph.add_conditional_edges("policy_update", more_iterations)
    return graph
