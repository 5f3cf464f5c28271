"""Every shipped task config and baseline, run for real with SmolLM2 as policy, judge and meta-judge (slow:
several minutes each on 2 CPU cores; `python -m pytest -m slow tests/integration/test_examples.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpo_agents.rundir import read_jsonl
from tests.support import REPO
from tests.support.cli import as_options, mpo

EXAMPLES = REPO / "examples"
TASK_CONFIGS = sorted(
    p
    for p in EXAMPLES.glob("*.yaml")
    if p.stem
    in {"essay_writing", "essay_writing_ppo", "summarization", "ethical_reasoning", "math_reasoning"}
)
BASELINES = sorted((EXAMPLES / "baselines").glob("*.yaml"))


def run(config: Path, run_dir: Path, *sets: str) -> None:
    mpo(
        "run", config, "--run-dir", run_dir, *as_options(sets),
        cwd=EXAMPLES.parent, env={"OPENAI_API_KEY": ""}, timeout=3000, check=True,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("config", TASK_CONFIGS, ids=lambda p: p.stem)
def test_task_example_runs_a_meta_step(tmp_path, config):
    run(config, tmp_path / "run")
    assert [m["iteration"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    # The meta step ran through all stages: a new version, or a refusal with its reason.
    versions = list((tmp_path / "run" / "rubrics").glob("v*.json"))
    assert len(versions) == 2 or (tmp_path / "run" / "rubrics" / "rejected.jsonl").exists()
    assert (tmp_path / "run" / "meta" / "iter-0002" / "cases.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config", BASELINES, ids=lambda p: p.stem)
def test_baseline_keeps_its_rubric(tmp_path, config):
    run(config, tmp_path / "run", "schedule.iterations=1")
    assert [p.name for p in (tmp_path / "run" / "rubrics").glob("v*.json")] == ["v0000.json"]
    assert not (tmp_path / "run" / "calls" / "meta_judge.jsonl").exists()


PARADIGMS = sorted((EXAMPLES / "paradigms").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", PARADIGMS, ids=lambda p: p.stem)
def test_paradigm_example_runs(tmp_path, config):
    run(config, tmp_path / "run", "schedule.iterations=2")
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [1, 2]
    if (
        config.stem == "prompt_rubrics"
    ):  # every prompt drawn has a buffer, written before its group was judged
        assert len(list((tmp_path / "run" / "rubrics" / "prompts").glob("*/v0000.json"))) == 4
    if config.stem == "listwise":  # one call per group and order: 2 groups x 2 orders per iteration
        assert all(m["judge_calls"] == 4 for m in metrics)
