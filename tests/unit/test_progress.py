"""The run's progress view: what comes after each node is asked of the graph, not restated by hand."""

from __future__ import annotations

from mpo_agents.cli.progress import next_nodes
from mpo_agents.config import MetaNodeConfig
from mpo_agents.graphs.mpo import build_graph
from mpo_agents.plugins import load_meta_nodes


def test_the_progress_view_takes_the_node_order_from_the_graph():
    compiled = build_graph().compile()
    following = next_nodes(compiled)

    assert following["rollout"] == ["score"]
    assert following["policy_update"] == ["rollout"]  # the loop's end is no stage to show
    assert len(following["score"]) == 2 and following["score"][-1] == "policy_update"  # a meta step or not
    # Every node and every stage of the meta subgraph has a successor, so the bar always says what runs next.
    stages = {name.rpartition(":")[2] for name in compiled.get_graph(xray=1).nodes} - {"__start__", "__end__"}
    assert stages <= following.keys()


def test_a_meta_level_node_takes_its_place_in_the_shown_order():
    alarm = load_meta_nodes([MetaNodeConfig(name="hacking_alarm")])  # an after_score node
    following = next_nodes(build_graph(alarm).compile())

    assert following["score"] == ["hacking_alarm"]
    assert following["hacking_alarm"][-1] == "policy_update"
