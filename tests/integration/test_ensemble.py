"""Ensemble judges: every member scores, scores combine per criterion (mean, median, majority), a quorum
decides when a judgment counts, and agreement between members is recorded per sample and as a metric."""

from __future__ import annotations

import asyncio
import json

import pytest

from mpo_agents.config import load_config
from mpo_agents.judges.build import judge_panel
from mpo_agents.judges.ensemble import agreement, combine
from mpo_agents.judges.records import CallLog
from mpo_agents.litellm_import import release_litellm
from mpo_agents.rubrics import RubricVersion, parse_rubric
from mpo_agents.scoring.offline import pending_sample
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.tasks import build_task
from tests.support import TEST_ENV, run_overrides
from tests.support.judge_server import KeywordRule
from tests.support.runs import run_in_process

KEY = "TEST_JUDGE_KEY"
ONE_CRITERION = "Criterion 1: The essay makes its point well. (0-5 points)"


@pytest.mark.parametrize(
    ("scores", "how", "expected"),
    [
        ([1, 3, 3], "mean", 7 / 3),
        ([1, 3, 3], "median", 3),
        ([1, 3, 3], "majority", 3),
        ([1, 2, 4, 5], "median", 3),
        ([2, 4], "majority", 2),  # a tie, equally near the middle: the lower score
        ([1, 4, 4, 5, 5], "majority", 4),  # a tie of 4 and 5: 4 is the median
        ([0, 5, 5, 0, 4], "majority", 5),  # a tie of 0 and 5: the median 4 is nearer 5
    ],
)
def test_combine(scores, how, expected):
    assert combine(scores, how) == pytest.approx(expected)


def test_agreement_is_the_share_of_equal_pairs_averaged_over_criteria():
    assert agreement([[3, 3, 3]]) == 1
    assert agreement([[1, 3, 3]]) == pytest.approx(1 / 3)
    assert agreement([[1, 3, 3], [2, 2, 2]]) == pytest.approx((1 / 3 + 1) / 2)
    assert agreement([[4]]) is None


def panel_config(servers, mode: str, **ensemble):
    first, *others = servers
    members = [
        {"model": f"openai/member{n}", "api_base": s.url, "api_key_env": KEY}
        for n, s in enumerate(others, start=1)
    ]
    sets = [
        "judge.model=openai/member0",
        f"judge.api_base={first.url}",
        f"judge.api_key_env={KEY}",
        "judge.retries=0",
        f"judge.ensemble.members={json.dumps(members)}",
        f"scoring.mode={mode}",
    ]
    sets += [f"judge.ensemble.{key}={value}" for key, value in ensemble.items()]
    return load_config(None, sets)


def score_one(config, completion: str, rubric_text: str, tmp_path):
    task = build_task(config.task)
    rubric = RubricVersion.of(parse_rubric(rubric_text)[0], version=0, parent=None, iteration=0).to_state()
    record = task.records[0]
    panel = judge_panel(config, TEST_ENV, None, call_log=CallLog(tmp_path / "calls.jsonl"), cache=None)
    scorer = Scorer(task, panel, config)

    async def go():
        try:
            return await scorer.score(
                rubric, record, pending_sample("s0", 0, task, record, completion, False, 0), 1
            )
        finally:
            await panel.aclose()
            await release_litellm()

    return asyncio.run(go())


@pytest.mark.parametrize(("how", "expected"), [("mean", 7 / 3), ("median", 3), ("majority", 3)])
def test_holistic_scores_of_three_models_combine(tmp_path, judge_server, how, expected):
    # The same completion scores 1, 3 and 3: each server counts a different word.
    servers = [judge_server(KeywordRule(word)) for word in ("clear", "good", "good")]
    config = panel_config(servers, "holistic", aggregate=how)
    sample = score_one(config, "A good, clear and good essay, good overall.", ONE_CRITERION, tmp_path)

    assert sample["status"] == "scored" and sample["score"] == pytest.approx(expected)
    assert [m["score"] for m in sample["members"]] == [1, 3, 3]
    assert [m["model"] for m in sample["members"]] == ["openai/member0", "openai/member1", "openai/member2"]
    assert sample["agreement"] == pytest.approx(1 / 3)
    assert all(s.counts["requests"] == 1 for s in servers)


def test_per_item_scores_combine_criterion_by_criterion_then_sum(tmp_path, judge_server):
    servers = [judge_server(KeywordRule(word)) for word in ("clear", "good", "good")]
    config = panel_config(servers, "per_item", aggregate="median")
    rubric = "Criterion 1: Makes a clear point. (0-5 points)\nCriterion 2: Uses some evidence. (0-1 points)"
    sample = score_one(config, "good clear good good", rubric, tmp_path)

    # Per member and criterion the count is clipped to that criterion's range: clear=1 -> [1, 1];
    # good=3 -> [3, 1]. Medians per criterion: [3, 1], summed: 4.
    assert [m["items"] for m in sample["members"]] == [[1, 1], [3, 1], [3, 1]]
    assert [item["score"] for item in sample["items"]] == [3, 1]
    assert sample["score"] == 4
    assert sample["agreement"] == pytest.approx((1 / 3 + 1) / 2)


def test_listwise_scores_of_three_models_combine_per_completion(tmp_path, judge_server):
    servers = [judge_server(KeywordRule(word)) for word in ("clear", "good", "good")]
    config = panel_config(servers, "listwise", aggregate="mean")
    sample = score_one(config, "A good, clear and good essay, good overall.", ONE_CRITERION, tmp_path)

    # Each member scores the group of one on 0-10 (1, 3, 3); the mean, 7/3, is mapped onto the criterion's 0-5.
    assert sample["status"] == "scored" and sample["score"] == pytest.approx(7 / 3 / 10 * 5)
    assert sample["agreement"] == pytest.approx(1 / 3)
    assert all(s.counts["requests"] == 1 for s in servers)


def test_a_failed_member_is_outvoted_by_the_quorum_and_recorded(tmp_path, judge_server):
    servers = [judge_server() for _ in range(3)]
    servers[2].inject("500")
    config = panel_config(servers, "holistic")  # quorum defaults to a majority: 2 of 3
    sample = score_one(config, "good good", ONE_CRITERION, tmp_path)

    assert sample["status"] == "scored" and sample["score"] == 2
    assert [m["status"] for m in sample["members"]] == ["scored", "scored", "judge_failed"]
    assert sample["agreement"] == 1  # over the members that scored


def test_below_the_quorum_the_judgment_fails_instead_of_trusting_one_member(tmp_path, judge_server):
    servers = [judge_server() for _ in range(3)]
    servers[1].inject("500")
    servers[2].inject("garbage")
    config = panel_config(servers, "holistic")
    sample = score_one(config, "good good", ONE_CRITERION, tmp_path)

    assert sample["status"] == "judge_failed" and sample.get("score") is None and sample.get("reward") is None
    assert "1 of 3 ensemble members scored (quorum 2)" in sample["rationale"]

    lenient = panel_config([judge_server() for _ in range(2)], "holistic", quorum=1)
    assert lenient.judge.quorum == 1


def test_an_ensemble_run_logs_agreement_and_member_scores(tmp_path, tiny_model_dir, judge_server):
    from mpo_agents.rundir import read_jsonl

    one, two = judge_server(KeywordRule("the")), judge_server(KeywordRule("a"))
    sets = run_overrides(tiny_model_dir, one.url, **{"schedule.iterations": 1, "schedule.meta_every": 0})
    member = {"model": "openai/second", "api_base": two.url, "api_key_env": KEY}
    sets += [f"judge.ensemble.members={json.dumps([member])}", "judge.ensemble.aggregate=mean"]
    _, run_dir = run_in_process(sets, tmp_path / "run")

    metrics = read_jsonl(run_dir.metrics_path)[0]
    samples = read_jsonl(run_dir.samples_path(1))
    judged = [s for s in samples if s.get("members")]
    assert judged and all(len(s["members"]) == 2 for s in judged)
    assert 0 <= metrics["judge_agreement"] <= 1
    expected = sum(s["agreement"] for s in judged if s.get("agreement") is not None) / len(judged)
    assert metrics["judge_agreement"] == pytest.approx(expected, abs=1e-4)
    calls = CallLog.read(run_dir.calls_path("judge"))
    assert {c["metadata"]["member"] for c in calls} == {0, 1}
    assert one.counts["requests"] and two.counts["requests"]
