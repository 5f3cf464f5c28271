"""The MPO loop as a LangGraph state machine.

rollout -> score -> [after_score nodes] -> [meta -> after_rewrite nodes -> rubric_commit] -> policy_update
   ^                                          (every `schedule.meta_every` iterations,          |
   |                                           or when an alarm asks)                           |
   +---------------------------------- while iterations remain --------------------------------+

`meta` is a subgraph, one node per stage of the meta-reward model: prescreen -> analyze -> refine -> merge.
Its merge is a proposal; `rubric_commit` accepts, rejects or edits it by the meta-level ("meta-meta") nodes'
verdicts and, with `review`, a person's (a LangGraph interrupt). Meta-level nodes are plug-ins (config
`meta_nodes`, entry point group `mpo_agents.meta_nodes`), each a node of its own here.
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
from mpo_agents.nodes.meta_level import knob, meta_level_node, rubric_commit
from mpo_agents.plugins import MetaNode
from mpo_agents.state import MPOState

META_STAGES = ("meta_prescreen", "meta_analyze", "meta_refine", "meta_merge")


def meta_due(state: MPOState, runtime) -> Literal["meta", "policy_update"]:
    if state.get("meta_requested"):  # an alarm asked for a meta step now
        return "meta"
    every = knob(runtime.context, state, "meta_every")
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


def build_meta_step_graph(meta_nodes: list[MetaNode] | tuple[MetaNode, ...] = ()) -> StateGraph:
    """One meta step on its own: the meta subgraph, the after_rewrite nodes and `rubric_commit` (for tests
    and for driving a meta step outside the loop)."""
    graph = StateGraph(MPOState, context_schema=RunContext)
    graph.add_node("meta", build_meta_graph().compile())
    chain = ["meta", *(n.name for n in meta_nodes if n.stage == "after_rewrite"), "rubric_commit"]
    for node in meta_nodes:
        if node.stage == "after_rewrite":
            graph.add_node(node.name, meta_level_node(node))
    graph.add_node("rubric_commit", rubric_commit)
    graph.add_edge(START, "meta")
    for before, after in itertools.pairwise(chain):
        graph.add_edge(before, after)
    graph.add_edge("rubric_commit", END)
    return graph


def build_graph(meta_nodes: list[MetaNode] | tuple[MetaNode, ...] = ()) -> StateGraph:
    """The loop, with the configured meta-level nodes wired in their order (see the module docstring)."""
    graph = StateGraph(MPOState, context_schema=RunContext)
    graph.add_node("rollout", rollout)
    graph.add_node("score", score)
    graph.add_node("meta", build_meta_graph().compile())
    graph.add_node("rubric_commit", rubric_commit)
    graph.add_node("policy_update", policy_update)
    for node in meta_nodes:
        graph.add_node(node.name, meta_level_node(node))

    graph.add_edge(START, "rollout")
    graph.add_edge("rollout", "score")
    after_score = ["score", *(n.name for n in meta_nodes if n.stage == "after_score")]
    for before, after in itertools.pairwise(after_score):
        graph.add_edge(before, after)
    graph.add_conditional_edges(after_score[-1], meta_due)
    after_rewrite = ["meta", *(n.name for n in meta_nodes if n.stage == "after_rewrite"), "rubric_commit"]
    for before, after in itertools.pairwise(after_rewrite):
        graph.add_edge(before, after)
    graph.add_edge("rubric_commit", "policy_update")
    graph.add_conditional_edges("policy_update", more_iterations)
    return graph
