"""The loop's node names: taken from plug-ins, and checked against saved graph state on resume."""

from __future__ import annotations

import asyncio

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from mpo_agents.errors import CheckpointError
from mpo_agents.graph_checkpoints import refuse_unknown_nodes
from mpo_agents.graphs.mpo import build_graph
from mpo_agents.plugins.registry import RESERVED
from mpo_agents.state import MPOState

RUN = {"configurable": {"thread_id": "mpo"}}


def _names(app) -> tuple[set[str], set[str]]:
    steps = {name for name in app.get_graph().nodes if not name.startswith("__")}
    stages = {name.split(":")[-1] for name in app.get_graph(xray=1).nodes if not name.startswith("__")}
    return steps, stages


def test_every_node_and_stage_of_the_loop_is_reserved_for_it():
    steps, stages = _names(build_graph().compile())
    assert steps == {"rollout", "score", "meta_analyze", "rubric_rewrite", "policy_update"}
    pipelined_steps, pipelined_stages = _names(build_graph(pipeline="one_step").compile())
    # The pipelined loop judges in two nodes: one starts the judging, one collects it.
    assert pipelined_steps == steps - {"score"} | {"judge_dispatch", "judge_collect"}
    assert pipelined_stages - pipelined_steps == stages - steps  # the same meta stages
    assert steps | stages | pipelined_steps | {"meta_due"} == RESERVED  # meta_due: the router after score


def stopped_before(node: str, saver: InMemorySaver) -> None:
    """Saved state of a graph stopped with `node` next (as a kill would leave it)."""

    def fail(state):
        raise RuntimeError("killed")

    graph = StateGraph(MPOState)
    graph.add_node("rollout", lambda state: {"iteration": 1})
    graph.add_node(node, fail)
    graph.add_edge(START, "rollout")
    graph.add_edge("rollout", node)
    graph.add_edge(node, END)
    with pytest.raises(RuntimeError):
        graph.compile(checkpointer=saver).invoke({"iteration": 0}, RUN)


@pytest.mark.parametrize("old_node", ["meta", "rubric_commit"])
def test_a_saved_state_waiting_on_a_node_the_graph_lacks_is_refused(old_node):
    saver = InMemorySaver()
    stopped_before(old_node, saver)
    app = build_graph().compile(checkpointer=saver)
    assert app.get_state(RUN).next == ()  # LangGraph alone would call this run finished
    with pytest.raises(CheckpointError, match=f"waits on {old_node}.*meta_analyze and rubric_rewrite"):
        asyncio.run(refuse_unknown_nodes(app, RUN))


def test_a_saved_state_waiting_on_a_node_the_graph_has_is_accepted():
    saver = InMemorySaver()
    stopped_before("score", saver)
    app = build_graph().compile(checkpointer=saver)
    assert app.get_state(RUN).next == ("score",)
    asyncio.run(refuse_unknown_nodes(app, RUN))
    asyncio.run(refuse_unknown_nodes(build_graph().compile(checkpointer=InMemorySaver()), RUN))  # no state
