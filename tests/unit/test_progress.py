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


def test_the_pipelined_loop_shows_its_own_order():
    following = next_nodes(build_graph(pipeline="one_step").compile())

    assert following["rollout"] == ["judge_collect", "judge_dispatch"]  # the next batch, or a run's first
    assert following["judge_collect"] == ["meta_analyze", "judge_dispatch", "policy_update"]
    assert following["rubric_rewrite"] == following["commit"] == ["judge_dispatch", "policy_update"]
    assert following["judge_dispatch"] == ["rollout", "judge_collect", "policy_update"]
    assert following["policy_update"] == ["rollout", "judge_collect"]  # the last batch is sampled already


def test_a_meta_level_node_takes_its_place_in_the_shown_order():
    alarm = load_meta_nodes([MetaNodeConfig(name="hacking_alarm")])  # an after_score node
    following = next_nodes(build_graph(alarm).compile())

    assert following["score"] == ["hacking_alarm"]
    assert following["hacking_alarm"][-1] == "policy_update"


def test_the_pipelined_bar_shows_the_share_of_judging_waited_for():
    from mpo_agents.cli.progress import ProgressView
    from mpo_agents.events import NodeFinished

    done = [{"iteration": 1, "judge_seconds": 4.0, "judge_wait_seconds": 4.0}]  # a resumed run keeps counting
    view = ProgressView(3, done, [], pipeline="one_step")
    metrics = {"iteration": 2, "reward_mean": 1.5, "judge_seconds": 4.0, "judge_wait_seconds": 0.0}
    view.on_event(NodeFinished("policy_update", {"metrics": metrics}))

    stats = view.progress.tasks[0].fields["stats"]
    assert "reward 1.50" in stats and "judge wait 50%" in stats  # (4 + 0) of (4 + 4) seconds
    synchronous = ProgressView(3, done, [])
    synchronous.on_event(NodeFinished("policy_update", {"metrics": metrics}))
    assert "judge wait" not in synchronous.progress.tasks[0].fields["stats"]  # always all of it there
