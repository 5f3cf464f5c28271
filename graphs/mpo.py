"""The MPO loop as a LangGraph state machine, in the steps our users name.

rollout -> score -> [after_score nodes] -> meta_analyze -> rubric_rewrite -> policy_update
   ^                                       (every `schedule.meta_every` iterations,      |
   |                                        or when an alarm asks)                        |
   +------------------------------- while iterations remain -----------------------------+

meta_analyze    prescreen -> analyze                                the meta-judge reads and critiques
rubric_rewrite  refine -> merge -> [after_rewrite nodes] -> commit  candidates, one proposal, a decision

The two meta steps are subgraphs, one node per stage of the paper's meta-reward model. `merge` leaves a
proposal; `commit` accepts, rejects or edits it by the meta-level ("meta-meta") nodes' verdicts and, with
`review`, a person's (a LangGraph interrupt). Meta-level nodes are plug-ins (config `meta_nodes`, entry point
group `mpo_agents.meta_nodes`), each a node of its own here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Literal

from langgraph.graph import END, START, StateGraph

from mpo_agents.context import RunContext
from mpo_agents.meta.schedule import knob
from mpo_agents.nodes.meta_analyze import analyze, prescreen
from mpo_agents.nodes.plugin import plugin_node
from mpo_agents.nodes.policy_update import policy_update
from mpo_agents.nodes.rollout import rollout
from mpo_agents.nodes.rubric_rewrite import commit, merge, refine
from mpo_agents.nodes.score import score
from mpo_agents.plugins import MetaNode
from mpo_agents.state import MPOState

# The loop's subgraphs: in a stream with subgraphs=True their own update closes what their stages reported.
META_STEPS = ("meta_analyze", "rubric_rewrite")


def meta_due(state: MPOState, runtime) -> Literal["meta_analyze", "policy_update"]:
    if state.get("meta_requested"):  # an alarm asked for a meta step now
        return "meta_analyze"
    every = knob(runtime.context.config, state, "meta_every")
    return "meta_analyze" if every and state["iteration"] % every == 0 else "policy_update"


def more_iterations(state: MPOState, runtime) -> Literal["rollout", "__end__"]:
    return "rollout" if state["iteration"] <= runtime.context.config.schedule.iterations else END


def _chain(steps: dict[str, Callable]) -> StateGraph:
    """A graph that runs `steps` one after the other. It shares the loop's state, so as a subgraph each step's
    update is checkpointed like any other node's (in the subgraph's own checkpoint namespace) and a resumed
    run re-enters the stage it was in."""
    graph = StateGraph(MPOState, context_schema=RunContext)
    for name, node in steps.items():
        graph.add_node(name, node)
    for before, after in itertools.pairwise([START, *steps, END]):
        graph.add_edge(before, after)
    return graph


def build_meta_analyze_graph() -> StateGraph:
    """meta_analyze: what the meta-judge reads (`prescreen`), and its critique of each case (`analyze`)."""
    return _chain({"prescreen": prescreen, "analyze": analyze})


def build_rubric_rewrite_graph(meta_nodes: Sequence[MetaNode] = ()) -> StateGraph:
    """rubric_rewrite: candidates (`refine`), one proposal (`merge`), the after_rewrite nodes' verdicts, and
    the decision (`commit`)."""
    verdicts = {node.name: plugin_node(node) for node in meta_nodes if node.stage == "after_rewrite"}
    return _chain({"refine": refine, "merge": merge, **verdicts, "commit": commit})


def build_meta_step_graph(meta_nodes: Sequence[MetaNode] = ()) -> StateGraph:
    """One meta step on its own, meta_analyze then rubric_rewrite (for tests and for driving a meta step outside
    the loop)."""
    return _chain(
        {
            "meta_analyze": build_meta_analyze_graph().compile(),
            "rubric_rewrite": build_rubric_rewrite_graph(meta_nodes).compile(),
        }
    )


def build_graph(meta_nodes: Sequence[MetaNode] = ()) -> StateGraph:
    """The loop, with the configured meta-level nodes wired in their order (see the module docstring)."""
    graph = StateGraph(MPOState, context_schema=RunContext)
    graph.add_node("rollout", rollout)
    graph.add_node("score", score)
    graph.add_node("meta_analyze", build_meta_analyze_graph().compile())
    graph.add_node("rubric_rewrite", build_rubric_rewrite_graph(meta_nodes).compile())
    graph.add_node("policy_update", policy_update)
    after_score = [node for node in meta_nodes if node.stage == "after_score"]
    for node in after_score:
        graph.add_node(node.name, plugin_node(node))

    for before, after in itertools.pairwise([START, "rollout", "score", *(n.name for n in after_score)]):
        graph.add_edge(before, after)
    graph.add_conditional_edges(after_score[-1].name if after_score else "score", meta_due)
    graph.add_edge("meta_analyze", "rubric_rewrite")
    graph.add_edge("rubric_rewrite", "policy_update")
    graph.add_conditional_edges("policy_update", more_iterations)
    return graph
