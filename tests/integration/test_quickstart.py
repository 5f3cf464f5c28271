"""The embedded default itself: `mpo run examples/quickstart.yaml`, fully offline. Slow (minutes)."""

from __future__ import annotations

import json

import pytest

from mpo_agents.rundir import read_jsonl
from tests.support import REPO
from tests.support.cli import mpo


@pytest.mark.slow
def test_quickstart_runs_offline_and_rewrites_the_rubric(tmp_path):
    run_dir = tmp_path / "quickstart"
    quick = {"timeout": 1800, "check": True}
    mpo(
        "run",
        REPO / "examples" / "quickstart.yaml",
        "--run-dir",
        run_dir,
        env={"OPENAI_API_KEY": ""},
        **quick,
    )
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4]
    assert len(list((run_dir / "rubrics").glob("v*.md"))) >= 2, "no meta-judge rewrite was accepted"
    # Every judge reply is either a parsed score or a recorded failure: never a made-up number.
    for path in sorted((run_dir / "samples").glob("iter-*.jsonl")):
        for sample in read_jsonl(path):
            assert (sample["status"] == "scored") == (sample["score"] is not None)
    calls = [json.loads(line) for line in (run_dir / "calls" / "judge.jsonl").read_text().splitlines()]
    assert calls and all(call["prompt"] for call in calls)

    # The README's comparison flow on the same run: generate (the quickstart's `evaluation` section), a base
    # model to compare with, a tournament judged by the local SmolLM2 server, one report.
    config = str(REPO / "examples" / "quickstart.yaml")
    mpo("generate", str(run_dir), **quick)
    generations = run_dir / "eval" / "generations.test.jsonl"
    assert len(generations.read_text().splitlines()) == 16
    base = tmp_path / "base.test.jsonl"
    mpo("generate", "smollm2-135m", "--config", config, "--name", "base", "--output", str(base), **quick)
    mpo(
        "eval",
        "elo",
        str(generations),
        str(base),
        "--config",
        config,
        "--output",
        str(tmp_path / "elo"),
        **quick,
    )
    summary = json.loads((tmp_path / "elo" / "elo.json").read_text())
    assert summary["judgments"] == 2 * 16 and set(summary["systems"]) == {"quickstart", "base"}
    report = tmp_path / "report.html"
    mpo(
        "report", str(run_dir), "--eval", str(tmp_path / "elo" / "elo.json"), "--output", str(report), **quick
    )
    assert f"{summary['elo']['base']['mean']:.1f}" in report.read_text()
