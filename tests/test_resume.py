"""Crash safety: SIGKILL `mpo run` mid-iteration, `mpo resume`, and nothing is lost or done twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TEST_ENV, run_overrides
from safetensors.torch import load_file

from mpo_agents.rundir import read_jsonl

ITERATIONS = 4
SCHEDULE = {"schedule.iterations": ITERATIONS, "schedule.meta_every": 2}


def mpo(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, **TEST_ENV, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mpo_agents", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )


def run_command(run_dir: Path, model_dir: Path, url: str) -> list[str]:
    sets = [item for pair in run_overrides(model_dir, url, **SCHEDULE) for item in ("--set", pair)]
    return ["run", "--run-dir", str(run_dir), *sets]


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]
    return output.decode(errors="replace")


def summary(run_dir: Path) -> dict:
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    checkpoints = sorted((run_dir / "policy").glob("iter-*"))
    final = checkpoints[-1]
    return {
        "iterations": [m["iteration"] for m in metrics],
        "policy_steps": [m["policy_step"] for m in metrics],
        "rubric_versions": sorted(p.name for p in (run_dir / "rubrics").glob("v*.md")),
        "optimizer_steps": json.loads((final / "COMPLETE").read_text())["step"],
        "weights": load_file(str(final / "model" / "model.safetensors")),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    from judge_server import JudgeServer

    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    with JudgeServer(latency=0.05) as server:
        finish(mpo(*run_command(run_dir, tiny_model_dir, server.url)))
    return summary(run_dir)


def wait_for(path_glob: tuple[Path, str], process: subprocess.Popen, timeout: float = 180) -> None:
    root, pattern = path_glob
    deadline = time.monotonic() + timeout
    while not list(root.glob(pattern)):
        assert process.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, f"{pattern} never appeared"
        time.sleep(0.005)


@pytest.mark.parametrize(
    "kill_when",
    [
        "samples/iter-0002.jsonl",  # iteration 2 scored, meta step or update in flight
        "updates/iter-0003.json",  # the update of iteration 3 applied, its checkpoint being written
        "rubrics/v0002.md",  # the second rewrite stored, not yet committed to the graph
        "meta/iter-0002/analyze/*.json",  # in the middle of a meta stage: one analysis stored, others in flight
    ],
)
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    tmp_path, tiny_model_dir, judge_server, uninterrupted, kill_when
):
    server = judge_server(latency=0.05)
    run_dir = tmp_path / "run"
    process = mpo(*run_command(run_dir, tiny_model_dir, server.url))
    wait_for((run_dir, kill_when), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stored_analyses = {path.stem for path in (run_dir / "meta" / "iter-0002" / "analyze").glob("*.json")}

    output = finish(mpo("resume", str(run_dir)))
    assert "Run finished" in output, output

    resumed = summary(run_dir)
    assert resumed["iterations"] == uninterrupted["iterations"] == list(range(1, ITERATIONS + 1)), output
    assert resumed["policy_steps"] == uninterrupted["policy_steps"]
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"] == ITERATIONS
    assert resumed["rubric_versions"] == uninterrupted["rubric_versions"]
    # Same seeds, same judge rule, same restored optimizer and RNG state: the same final weights.
    for name, tensor in uninterrupted["weights"].items():
        assert (resumed["weights"][name] - tensor).abs().max().item() < 1e-6, name
    # An analysis stored before the kill is read back, never asked for again.
    asked = [
        json.loads(line)["metadata"]
        for line in (run_dir / "calls" / "meta_judge.jsonl").read_text().splitlines()
    ]
    for case in stored_analyses:
        calls = [
            m for m in asked if m["node"] == "meta_analyze" and m["iteration"] == 2 and m["case"] == case
        ]
        assert len(calls) == 1, (case, calls)


def test_resume_of_a_finished_run_changes_nothing(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    run_dir = tmp_path / "run"
    finish(mpo(*run_command(run_dir, tiny_model_dir, server.url)))
    before = (run_dir / "metrics.jsonl").read_text()
    output = finish(mpo("resume", str(run_dir)))
    assert "Run finished" in output and (run_dir / "metrics.jsonl").read_text() == before


def test_run_refuses_an_existing_run_directory(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    run_dir = tmp_path / "run"
    finish(mpo(*run_command(run_dir, tiny_model_dir, server.url)))
    again = mpo(*run_command(run_dir, tiny_model_dir, server.url))
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 2 and b"mpo resume" in output


def test_ctrl_c_stops_at_a_node_boundary_and_resume_finishes(
    tmp_path, tiny_model_dir, judge_server, uninterrupted
):
    server = judge_server(latency=0.05)
    run_dir = tmp_path / "run"
    process = mpo(*run_command(run_dir, tiny_model_dir, server.url))
    wait_for((run_dir, "samples/iter-0001.jsonl"), process)
    process.send_signal(signal.SIGINT)
    output = finish(process)
    assert "Stopping after the current node" in output and "mpo resume" in output
    stopped_at = len(read_jsonl(run_dir / "metrics.jsonl"))
    assert stopped_at < ITERATIONS

    finish(mpo("resume", str(run_dir)))
    resumed = summary(run_dir)
    assert resumed["iterations"] == uninterrupted["iterations"]
    assert resumed["optimizer_steps"] == ITERATIONS
