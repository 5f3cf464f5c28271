"""Tokens, latency and cost of the judges per role, node and iteration, in metrics.jsonl and the call log
(LiteLLM's price table for priced models; zero for unpriced local ones)."""

from __future__ import annotations

import json

import pytest
from conftest import TEST_ENV, run_overrides

from mpo_agents.config import load_config
from mpo_agents.rundir import read_jsonl
from mpo_agents.runner import execute, new_run_dir


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
    config = load_config(None, sets)
    run_dir = new_run_dir(config, tmp_path / "run")
    execute(config, run_dir, TEST_ENV, fresh=True)

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
