"""Per-prompt buffers (`rubric.scope: prompt`): the aggregate with signed weights and masked items, what a
proposal or the data may add, pruning, eviction, and the configs that cannot score them."""

from __future__ import annotations

import pytest

from mpo_agents.buffers import (
    PromptRubric,
    aggregate,
    evolve,
    items_from_data,
    parse_persistent,
    parse_proposal,
    prune,
    scale_of,
)
from mpo_agents.config import load_config
from mpo_agents.errors import ConfigError, RubricRejected
from mpo_agents.judges.parsing import parse_listwise
from mpo_agents.rubrics import RubricItem, parse_rubric


def _item(ident: str, weight: float, origin: str = "evolved", iteration: int = 1) -> RubricItem:
    return RubricItem(
        ident,
        f"Item {ident}",
        f"The response does thing {ident} well.",
        weight,
        origin=origin,
        iteration=iteration,
    )


BUFFER = PromptRubric("abc", 3, (_item("p1", 2, "persistent"), _item("e1.1", 1), _item("e2.1", -1)), 2, 2)


def test_the_weighted_aggregate_is_sum_of_w_times_s_over_sum_of_abs_w():
    # Scores are on 0-2 and read as 0..1: (2*1 + 1*0.5 - 1*1) / (2 + 1 + 1) = 1.5 / 4.
    assert aggregate([(2, 2), (1, 1), (-1, 2)], "weighted") == pytest.approx(1.5 / 4)
    assert aggregate([(2, 2), (1, 1), (-1, 2)], "points") == pytest.approx(1.5)


def test_a_masked_item_leaves_the_aggregate_with_its_weight():
    # The -1 item failed: dropped from numerator and denominator alike, not counted as 0 (which gives 2.5/4).
    assert aggregate([(2, 2), (1, 1)], "weighted") == pytest.approx(2.5 / 3)
    assert aggregate([], "weighted") is None  # nothing usable: a failed judgment, never 0


def test_the_scale_of_a_buffer_spans_its_penalties_and_rewards():
    assert scale_of([2, 1, -1], "weighted") == pytest.approx((-0.25, 0.75))
    assert scale_of([2, 1, -1], "points") == (-1, 3)
    assert BUFFER.scale("weighted") == pytest.approx((-0.25, 0.75))


def test_a_proposal_adds_checked_new_items_and_says_why_it_left_others_out():
    lines = [
        "Here are the items:",
        "+1 | Concrete example | Backs the main claim with one concrete example.",
        "- −2 | Invented facts | States statistics that the prompt gives no ground for.",
        "+1 | Item e1.1 | The response does thing e1.1 well.",  # already in the buffer
        "0 | Neutral | Mentions the weather in passing somewhere.",  # zero weight
        "+1 | Quote | the quick brown fox jumps over the lazy dog again and again today",  # copies a completion
        "+3 | Third new | Ends with a conclusion that answers the question.",
        "+1 | Fourth new | Uses paragraphs that each carry one idea.",  # over the limit of 3
    ]
    reply = "\n".join(lines)
    completions = ["the quick brown fox jumps over the lazy dog again and again today"]
    items, notes = parse_proposal(
        reply, buffer=BUFFER, iteration=4, samples=completions, copy_run_words=8, limit=3
    )
    assert [(i.id, i.title, i.weight, i.origin, i.iteration) for i in items] == [
        ("e4.1", "Concrete example", 1.0, "evolved", 4),
        ("e4.2", "Invented facts", -2.0, "evolved", 4),
        ("e4.3", "Third new", 3.0, "evolved", 4),
    ]
    assert len(notes) == 4
    assert any("repeats an item" in n for n in notes) and any("weight 0" in n for n in notes)
    assert any("copies" in n for n in notes) and any("max_new_items=3" in n for n in notes)


def test_persistent_items_are_numbered_and_a_reply_without_items_is_refused():
    items = parse_persistent(
        "+2 | Thesis | States a clear position early on.\n-1 | Padding | Repeats points to add length.", 1, 6
    )
    assert [(i.id, i.weight, i.origin) for i in items] == [
        ("p1", 2.0, "persistent"),
        ("p2", -1.0, "persistent"),
    ]
    with pytest.raises(RubricRejected, match="no usable item lines"):
        parse_persistent("A good essay has a thesis.", 1, 6)


def test_items_from_the_data_are_read_or_refused_with_the_entry_named():
    items = items_from_data(
        [
            {"title": "Dose", "description": "Gives the adult dose in milligrams.", "weight": 5},
            {"criterion": "Recommends seeing a doctor for worsening symptoms.", "weight": -2},
        ],
        "rubric.items_field 'rubric'",
    )
    assert [(i.id, i.weight) for i in items] == [("p1", 5.0), ("p2", -2.0)]
    assert items[1].title == "Recommends seeing a doctor for worsening"  # its first six words
    assert (
        items_from_data('[{"title": "A", "description": "Says what A is.", "weight": 1}]', "f")[0].title
        == "A"
    )
    with pytest.raises(ConfigError, match="item 1: weight 'heavy' is not a number"):
        items_from_data([{"title": "A", "description": "Says what A is.", "weight": "heavy"}], "f")
    with pytest.raises(ConfigError, match="f item 2: the description 'x' does not say"):
        items_from_data(
            [{"title": "A", "description": "Says what A is."}, {"title": "B", "description": "x"}], "f"
        )
    with pytest.raises(ConfigError, match="non-empty list"):
        items_from_data([], "f")


def test_pruning_drops_an_item_that_no_longer_separates_and_keeps_one_that_does():
    uses = {
        "e1.1": [(3, 0.0), (5, 0.0)],  # scored alike across the group twice running: uninformative
        "e2.1": [(3, 0.0), (5, 1.0)],  # still separates the group
    }
    changes = prune(BUFFER, uses, after=2)
    assert [c["item"] for c in changes] == ["e1.1"]
    assert changes[0]["reason"] == "scored alike across its group in its last 2 use(s) (iterations 3, 5)"
    assert prune(BUFFER, {"e1.1": [(5, 0.0)]}, after=2) == []  # one use is not yet evidence enough
    assert prune(BUFFER, {"p1": [(3, 0.0), (5, 0.0)]}, after=2) == []  # persistent items are never pruned


def test_evolving_prunes_adds_and_evicts_the_oldest_beyond_max_active():
    pruned = prune(BUFFER, {"e1.1": [(3, 0.0)]}, after=1)
    new = [_item("e4.1", 1, iteration=4), _item("e4.2", 2, iteration=4)]
    after = evolve(BUFFER, new, pruned, max_active=2, iteration=4)
    assert after is not None and (after.version, after.parent, after.iteration) == (4, 3, 4)
    assert [i.id for i in after.items] == ["p1", "e4.1", "e4.2"]  # e1.1 pruned, e2.1 evicted as the oldest
    assert [(c["change"], c["item"]) for c in after.changes] == [
        ("pruned", "e1.1"),
        ("added", "e4.1"),
        ("added", "e4.2"),
        ("evicted", "e2.1"),
    ]
    assert evolve(BUFFER, [], [], max_active=5, iteration=4) is None  # nothing changed: no new version
    assert PromptRubric.from_state(after.to_state()) == after


def test_a_task_rubric_reads_as_items_of_the_same_model():
    rubric, _ = parse_rubric(
        "Criterion 1: States a clear thesis early. (0-5 points)\nCriterion 2: Invents facts or figures. (-3 to 0 points)"
    )
    items = rubric.items()
    assert [(i.id, i.low, i.high, i.weight) for i in items] == [("c1", 0, 5, None), ("c2", -3, 0, None)]


def test_a_listwise_reply_must_name_every_id_once_within_the_scale():
    ids = ["c1", "c2"]
    good = '{"scores": [{"id": "c2", "explanation": "better", "score": 7}, {"id": "c1", "score": 2.5}]}'
    assert parse_listwise(good, ids, 0, 10) == {
        "c2": {"score": 7.0, "explanation": "better"},
        "c1": {"score": 2.5, "explanation": ""},
    }
    assert parse_listwise('```json\n[{"id": "c1", "score": 1}, {"id": "c2", "score": 0}]\n```', ids, 0, 10)
    # What a small model continuing the completion variant writes: one "id: score" line each.
    assert parse_listwise("c1: 4\nc2: 9\n", ids, 0, 10) == {
        "c1": {"score": 4.0, "explanation": ""},
        "c2": {"score": 9.0, "explanation": ""},
    }
    assert parse_listwise("c1: 4\nc2: 9\nc3: 1", ids, 0, 10) is None  # an id it invented
    for bad in (
        '{"scores": [{"id": "c1", "score": 1}]}',  # c2 missing
        '{"scores": [{"id": "c1", "score": 1}, {"id": "c1", "score": 2}, {"id": "c2", "score": 3}]}',  # repeated
        '{"scores": [{"id": "c1", "score": 1}, {"id": "c2", "score": 11}]}',  # off the scale
        '{"scores": [{"id": "c1", "score": 1}, {"id": "c3", "score": 2}]}',  # not a listed id
        '{"scores": [{"id": "c1", "score": true}, {"id": "c2", "score": 2}]}',
        "c1: 3, c2: 4",
    ):
        assert parse_listwise(bad, ids, 0, 10) is None, bad


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["rubric.scope=prompt", "scoring.mode=holistic"],
            "scoring.mode='holistic' cannot score per-prompt rubrics",
        ),
        (["rubric.scope=prompt", "schedule.pipeline=one_step"], "set schedule.pipeline: off"),
        (["rubric.scope=prompt", "review=on_objection"], "set review: false"),
    ],
)
def test_configs_that_cannot_score_per_prompt_buffers_are_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_a_prompt_scope_loop_gates_buffers_and_refuses_nodes_that_only_judge_a_task_rubric():
    from mpo_agents.graphs.mpo import build_graph, loop_graph
    from mpo_agents.plugins import BufferGate, load_meta_nodes

    config = load_config(None, ["rubric.scope=prompt", 'meta_nodes=[{"name": "meta_judge_audit"}]'])
    with pytest.raises(ConfigError, match="meta_judge_audit judge.*no check_buffer"):
        loop_graph(config)
    sets = ['meta_nodes=[{"name": "hacking_alarm"}, {"name": "rubric_gate"}]']
    nodes = load_meta_nodes(load_config(None, sets).meta_nodes)
    assert isinstance(nodes[1], BufferGate)
    graph = list(build_graph(nodes, scope="prompt").compile().get_graph().nodes)
    # The gate runs inside rubric_evolve, on each prompt's change; the alarm after scoring as in the task scope.
    assert graph == [
        "__start__",
        "rollout",
        "rubric_evolve",
        "score",
        "hacking_alarm",
        "policy_update",
        "__end__",
    ]
