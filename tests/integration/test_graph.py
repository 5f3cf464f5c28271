"""The whole loop in one process: tiny real policy, TRL updates, judges over real HTTP through LiteLLM."""

from __future__ import annotations

import json

import pytest

from mpo_agents.rundir import read_jsonl
from tests.support import TEST_ENV, run_overrides
from tests.support.judge_server import count_e
from tests.support.runs import LEARNS_COUNT_E, run_in_process, run_loop


def test_loop_runs_nodes_in_order_and_writes_the_run_directory(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()  # keyword rule: scores occurrences of "good"; answers the meta prompts
    outcome, run_dir, events = run_loop(
        tmp_path,
        tiny_model_dir,
        server,
        **{"schedule.iterations": 4, "schedule.meta_every": 2, "output.checkpoint_every": 1},
    )

    assert outcome.status == "finished" and outcome.iteration == 5 and outcome.policy_step == 4
    per_iteration = ["rollout", "score", "policy_update"]
    meta_analyze = ["prescreen", "analyze", "meta_analyze"]  # each stage, then the step that holds them
    rubric_rewrite = ["refine", "merge", "commit", "rubric_rewrite"]
    with_meta = ["rollout", "score", *meta_analyze, *rubric_rewrite, "policy_update"]
    assert events == per_iteration + with_meta + per_iteration + with_meta
    assert outcome.rubric_version == 2
    assert sorted(p.name for p in run_dir.rubrics_dir.glob("v*.md")) == ["v0000.md", "v0001.md", "v0002.md"]

    metrics = read_jsonl(run_dir.metrics_path)
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4]
    assert [m["rubric_version"] for m in metrics] == [0, 0, 1, 1]  # the version each batch was scored with
    assert [m["policy_step"] for m in metrics] == [1, 2, 3, 4]
    # Where each iteration's time went, and every update on-policy (the synchronous loop)
    assert all(
        m["rollout_seconds"] > 0 and m["judge_seconds"] > 0 and m["update_seconds"] > 0 for m in metrics
    )
    assert [m["update_staleness"] for m in metrics] == [0, 0, 0, 0]
    samples = read_jsonl(run_dir.samples_path(3))
    assert len(samples) == 8 and {s["rubric_version"] for s in samples} == {1}
    assert all(s["status"] == "scored" and s["score"] is not None for s in samples)
    assert {"prompt", "completion", "score", "rationale", "rubric_version"} <= samples[0].keys()

    calls = (run_dir.root / "calls" / "judge.jsonl").read_text()
    # Per-criterion scoring: v0 has one criterion (2 iterations x 8 samples), v1 two (2 x 8 x 2).
    assert len(calls.splitlines()) == 16 + 32
    assert TEST_ENV["TEST_JUDGE_KEY"] not in calls + run_dir.config_path.read_text()
    first_call = json.loads(calls.splitlines()[0])
    assert first_call["completion_tokens"] > 0 and first_call["latency_s"] > 0
    assert len(list(run_dir.policy_dir.glob("iter-*"))) == 2  # output.keep_last


def test_failed_judgments_are_recorded_and_left_out_of_the_update(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    # No retries, so the first three requests fail for good: two replies without a score, one HTTP 500.
    server.inject("garbage", "garbage", "500")
    _, run_dir = run_in_process(
        run_overrides(
            tiny_model_dir,
            server.url,
            **{"schedule.iterations": 1, "schedule.meta_every": 0, "judge.retries": 0},
        ),
        tmp_path / "run",
    )

    samples = read_jsonl(run_dir.samples_path(1))
    statuses = [s["status"] for s in samples]
    assert statuses.count("unparseable") == 2 and statuses.count("judge_failed") == 1
    for sample in samples:
        if sample["status"] != "scored":
            assert sample["score"] is None and sample["reward"] is None  # never a silent 0
    metrics = read_jsonl(run_dir.metrics_path)[0]
    assert metrics["judge_failures"] == 3 and metrics["judged"] == 5
    assert metrics["update_num_failed"] == 3 and metrics["policy_step"] == 1


def test_rejected_rewrite_keeps_the_rubric_and_logs_why(tmp_path, tiny_model_dir, judge_server):
    def reply(prompt: str, request: dict) -> str:
        if "write an improved rubric" in prompt:
            return "The rubric looks fine to me, no changes needed."  # no criteria: must be refused
        if "Write a critique" in prompt:
            return "Scores look inflated for short answers."
        return "Reason: fine.\nScore: 3"

    server = judge_server(reply)
    outcome, run_dir, _ = run_loop(
        tmp_path, tiny_model_dir, server, **{"schedule.iterations": 2, "schedule.meta_every": 2}
    )
    assert outcome.rubric_version == 0
    rejections = (run_dir.rubrics_dir / "rejected.jsonl").read_text()
    assert "no usable candidate" in rejections
    refine_calls = [json.loads(line) for line in (run_dir.root / "calls" / "meta_judge.jsonl").open()]
    assert {c["error"] for c in refine_calls if c["metadata"]["node"] == "meta_refine"} == {"unparseable"}
    assert read_jsonl(run_dir.metrics_path)[1]["rubric_rewrite_accepted"] == 0


@pytest.mark.parametrize(
    "algorithm", ["grpo", "dapo", "dr_grpo", "gspo", "cispo", "sapo", "rloo", "reinforce_pp", "ppo"]
)
def test_policy_learns_the_behaviour_the_judge_rewards(tmp_path, tiny_model_dir, judge_server, algorithm):
    server = judge_server(count_e)
    settings = {"schedule.iterations": 6, "trainer.algorithm": algorithm}
    if (
        algorithm == "dapo"
    ):  # the tiny policy's 8 tokens never reach EOS: DAPO's mask would drop every completion
        settings["trainer.mask_truncated_completions"] = False
    run_loop(tmp_path, tiny_model_dir, server, **LEARNS_COUNT_E, **settings)
    rewards = [m["reward_mean"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert len(rewards) == 6
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 1.0, rewards


@pytest.mark.parametrize("meta_every", [0])
def test_fixed_rubric_baseline_never_calls_the_meta_judge(tmp_path, tiny_model_dir, judge_server, meta_every):
    server = judge_server()
    outcome, run_dir, events = run_loop(
        tmp_path, tiny_model_dir, server, **{"schedule.iterations": 2, "schedule.meta_every": meta_every}
    )
    assert not {"meta_analyze", "analyze", "rubric_rewrite"} & set(events) and outcome.rubric_version == 0
    assert not (run_dir.root / "calls" / "meta_judge.jsonl").exists()


def test_an_update_that_masks_every_completion_says_so(tmp_path, tiny_model_dir, judge_server, caplog):
    # DAPO leaves truncated completions out of the loss, and the tiny policy's 8 tokens never reach EOS.
    with caplog.at_level("WARNING", logger="mpo_agents.nodes.policy_update"):
        run_loop(
            tmp_path,
            tiny_model_dir,
            judge_server(),
            **{"schedule.iterations": 1, "trainer.algorithm": "dapo"},
        )
    (record,) = [r for r in caplog.records if r.name == "mpo_agents.nodes.policy_update"]
    assert "this update trains nothing" in record.getMessage() and "dapo preset" in record.getMessage()
