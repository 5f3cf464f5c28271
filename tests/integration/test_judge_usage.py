"""Tokens, latency and cost of the judges per role, node and iteration, in metrics.jsonl and the call log
(LiteLLM's price table for priced models; zero for unpriced local ones)."""

from __future__ import annotations

import json

import pytest

from mpo_agents.events import BudgetExhausted
from mpo_agents.rundir import read_jsonl
from mpo_agents.runner import execute
from tests.support import TEST_ENV, run_overrides
from tests.support.cli import mpo
from tests.support.runs import prepared_run, run_in_process


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "openai/local-unpriced-judge"])
def test_usage_and_cost_per_role_node_and_iteration(tmp_path, tiny_model_dir, judge_server, model):
    server = judge_server()
    sets = run_overrides(
        tiny_model_dir,
        server.url,
        **{
            "schedule.iterations": 2,
            "schedule.meta_every": 2,
            "judge.model": model,
            "meta_judge.model": model,
        },
    )
    _, run_dir = run_in_process(sets, tmp_path / "run")

    metrics = read_jsonl(run_dir.metrics_path)
    calls = {
        role: [json.loads(line) for line in (run_dir.root / "calls" / f"{role}.jsonl").open()]
        for role in ("judge", "meta_judge")
    }
    for m in metrics:
        judged = [c for c in calls["judge"] if c["metadata"]["iteration"] == m["iteration"]]
        assert (
            m["judge_tokens"]
            == m["judge_score_tokens"]
            == sum(c["prompt_tokens"] + c["completion_tokens"] for c in judged)
        )
        assert m["judge_cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in judged), abs=1e-6)
        assert m["judge_calls"] == len(judged) - sum(c["attempt"] > 1 for c in judged)
    assert metrics[0]["meta_judge_tokens"] == 0 and metrics[1]["meta_judge_meta_analyze_tokens"] > 0
    if model == "openai/gpt-4o-mini":  # priced in LiteLLM's bundled cost map
        assert all(m["judge_cost_usd"] > 0 for m in metrics) and metrics[1]["meta_judge_cost_usd"] > 0
    else:
        assert all(m["judge_cost_usd"] == 0 for m in metrics)


def test_budget_stops_at_a_checkpoint_and_resume_continues_with_a_new_one(
    tmp_path, tiny_model_dir, judge_server
):

    server = judge_server()
    sets = run_overrides(
        tiny_model_dir,
        server.url,
        **{
            "schedule.iterations": 2,
            "schedule.meta_every": 0,
            "judge.model": "openai/gpt-4o-mini",  # priced: every judgment costs a little
            "schedule.budget_usd": 1e-7,
        },
    )
    events: list[str | type] = []
    outcome, run_dir = run_in_process(sets, tmp_path / "run", events=events)
    assert outcome.status == "over_budget" and BudgetExhausted in events
    assert events.index(BudgetExhausted) == events.index("score") + 1  # stopped right after spending
    assert not run_dir.metrics_path.exists()  # no update was trained past the budget

    again = mpo("resume", str(run_dir.root), env=TEST_ENV)  # the same budget: refused at once, nothing spent
    assert again.returncode == 0 and "budget-usd" in " ".join(again.stderr.split())
    assert server.counts["requests"] == 8

    finished = mpo("resume", str(run_dir.root), "--budget-usd", "10", env=TEST_ENV)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "Run finished" in " ".join(finished.stderr.split())
    assert [m["iteration"] for m in read_jsonl(run_dir.metrics_path)] == [1, 2]
    assert "budget_usd: 10.0" in (run_dir.root / "config.yaml").read_text()


def test_a_judge_outage_pauses_the_run_and_resume_sends_only_the_failed_judgments(
    tmp_path, tiny_model_dir, judge_server
):
    from mpo_agents.errors import JudgeOutage

    server = judge_server()
    server.inject(*["500"] * 5)  # 5 of the 8 judgments of iteration 1 fail (no retries)
    sets = run_overrides(
        tiny_model_dir,
        server.url,
        **{
            "schedule.iterations": 1,
            "schedule.meta_every": 0,
            "judge.retries": 0,
            "scoring.max_failure_rate": 0.5,
        },
    )
    config, run_dir = prepared_run(sets, tmp_path / "run")
    with pytest.raises(JudgeOutage, match=r"5 of 8 judgments of iteration 1 failed.*mpo resume"):
        execute(config, run_dir, TEST_ENV, fresh=True)
    assert not run_dir.metrics_path.exists() and not run_dir.samples_path(1).exists()
    assert server.counts["requests"] == 8

    outcome = execute(config, run_dir, TEST_ENV, fresh=False)  # the endpoint is healthy again
    assert outcome.status == "finished"
    assert server.counts["requests"] == 8 + 5  # the three that succeeded came from the cache
    samples = read_jsonl(run_dir.samples_path(1))
    assert all(s["status"] == "scored" for s in samples)
