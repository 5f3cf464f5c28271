"""Crash safety: SIGKILL `mpo run` mid-iteration, move its directory, fill its disk or damage its files, then
`mpo resume`: nothing is lost or done twice, and what cannot be mended is named."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mpo_agents.run_config import saved_config
from mpo_agents.rundir import RunDirectory, read_jsonl
from mpo_agents.runner import execute
from tests.support import TEST_ENV, run_overrides
from tests.support.cli import finish, run_command, start_mpo, wait_for
from tests.support.runs import summary

# One worker runs this module under pytest-xdist: the uninterrupted run (module-scoped) is made once.
pytestmark = pytest.mark.xdist_group("resume")

ITERATIONS = 4
# Policy checkpoints after iterations 3 and 4 only: a kill before either leaves updates no checkpoint holds.
SCHEDULE = {"schedule.iterations": ITERATIONS, "schedule.meta_every": 2, "output.checkpoint_every": 3}


def run_args(run_dir: Path, model_dir: Path, url: str, **settings: object) -> list[str]:
    return run_command(run_dir, run_overrides(model_dir, url, **{**SCHEDULE, **settings}))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir):
    from tests.support.judge_server import JudgeServer

    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    with JudgeServer(latency=0.05) as server:
        finish(start_mpo(*run_args(run_dir, tiny_model_dir, server.url)))
    return {**summary(run_dir), "run_dir": run_dir}


@pytest.mark.parametrize(
    "kill_when",
    [
        "samples/iter-0002.jsonl",  # iteration 2 scored, meta step or update in flight
        "updates/iter-0002.json",  # two updates applied, no checkpoint holds them: both applied again
        "updates/iter-0003.json",  # the update of iteration 3 applied, its checkpoint being written
        "samples/iter-0004.jsonl",  # between the checkpoints of iterations 3 and 4
        "rubrics/v0002.md",  # the second rewrite stored, not yet committed to the graph
        "meta/iter-0002/analyze/*.json",  # in the middle of a meta stage: one analysis stored, others in flight
    ],
)
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    tmp_path, tiny_model_dir, judge_server, uninterrupted, kill_when
):
    server = judge_server(latency=0.05)
    run_dir = tmp_path / "run"
    process = start_mpo(*run_args(run_dir, tiny_model_dir, server.url))
    wait_for((run_dir, kill_when), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stored_analyses = {path.stem for path in (run_dir / "meta" / "iter-0002" / "analyze").glob("*.json")}

    output = finish(start_mpo("resume", str(run_dir)))
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
    finish(start_mpo(*run_args(run_dir, tiny_model_dir, server.url)))
    before = (run_dir / "metrics.jsonl").read_text()
    output = finish(start_mpo("resume", str(run_dir)))
    assert "Run finished" in output and (run_dir / "metrics.jsonl").read_text() == before


def test_run_refuses_an_existing_run_directory(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    run_dir = tmp_path / "run"
    finish(start_mpo(*run_args(run_dir, tiny_model_dir, server.url)))
    again = start_mpo(*run_args(run_dir, tiny_model_dir, server.url))
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 2 and b"mpo resume" in output


def test_ctrl_c_stops_at_a_node_boundary_and_resume_finishes(
    tmp_path, tiny_model_dir, judge_server, uninterrupted
):
    server = judge_server(latency=0.05)
    run_dir = tmp_path / "run"
    process = start_mpo(*run_args(run_dir, tiny_model_dir, server.url))
    wait_for((run_dir, "samples/iter-0001.jsonl"), process)
    process.send_signal(signal.SIGINT)
    output = finish(process)
    assert "Stopping after the current node" in output and "mpo resume" in output
    stopped_at = len(RunDirectory(run_dir).metrics())  # none yet when the stop came inside iteration 1
    assert stopped_at < ITERATIONS

    finish(start_mpo("resume", str(run_dir)))
    resumed = summary(run_dir)
    assert resumed["iterations"] == uninterrupted["iterations"]
    assert resumed["optimizer_steps"] == ITERATIONS


class CrashInReplay(Exception):
    """Stands in for a kill while a resume applies stored updates again (nothing durable is written between two
    replayed updates of the cadence, so raising there leaves what a SIGKILL would)."""


def test_a_resume_killed_inside_its_replay_resumes_again_exactly(
    tmp_path, tiny_model_dir, judge_server, uninterrupted
):
    server = judge_server(latency=0.05)
    run_dir = tmp_path / "run"
    process = start_mpo(*run_args(run_dir, tiny_model_dir, server.url))
    wait_for((run_dir, "samples/iter-0003.jsonl"), process)  # updates 1 and 2 applied; no checkpoint yet
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not list((run_dir / "policy").glob("iter-*[0-9]"))

    def crash_in_replay(message: str) -> None:
        if message.startswith("replaying the update of iteration 2"):  # the first is applied in memory
            raise CrashInReplay(message)

    replayed: list[str] = []
    with pytest.raises(CrashInReplay):
        execute(
            saved_config(run_dir),
            RunDirectory(run_dir),
            TEST_ENV,
            fresh=False,
            on_status=lambda message: (replayed.append(message), crash_in_replay(message)),
        )
    assert replayed[-1] == "replaying the update of iteration 2 (of 1..2)", replayed
    assert not list((run_dir / "policy").glob("iter-*[0-9]"))

    checked = " ".join(finish(start_mpo("check", str(run_dir))).split())
    assert "then applies 2 update(s) again" in checked, checked
    output = finish(start_mpo("resume", str(run_dir)))
    assert "Run finished" in output, output
    same_run(summary(run_dir), uninterrupted)
    assert sorted(path.name for path in (run_dir / "policy").iterdir()) == ["iter-000003", "iter-000004"]


def same_run(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["iterations"] == uninterrupted["iterations"] == list(range(1, ITERATIONS + 1))
    assert resumed["optimizer_steps"] == uninterrupted["optimizer_steps"] == ITERATIONS
    assert resumed["rubric_versions"] == uninterrupted["rubric_versions"]
    for name, tensor in uninterrupted["weights"].items():
        assert (resumed["weights"][name] - tensor).abs().max().item() < 1e-6, name


@pytest.mark.parametrize(
    ("written_by", "next_node"),
    [("rollouts/iter-0002.jsonl", "score"), ("samples/iter-0002.jsonl", "meta_analyze")],
)
def test_a_run_stopped_inside_an_iteration_resumes_after_its_directory_moved(
    tmp_path, tiny_model_dir, judge_server, uninterrupted, written_by, next_node
):
    server = judge_server(
        latency=1.0
    )  # the judge is slow, so the node after `written_by` is in flight a while
    run_dir = tmp_path / "first-disk" / "run"
    process = start_mpo(*run_args(run_dir, tiny_model_dir, server.url))
    wait_for((run_dir, written_by), process)
    # The next node's first judge request means the node that wrote the file is committed to the graph's state
    # (with the paths of its files): stop there, inside iteration 2.
    seen = len(server.requests)
    while len(server.requests) == seen:
        assert process.poll() is None, f"the run ended before {next_node} asked the judge"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (run_dir / "metrics.jsonl").exists() or len(read_jsonl(run_dir / "metrics.jsonl")) == 1

    moved = tmp_path / "second-disk" / "run"
    shutil.move(run_dir, moved)
    server.latency = 0.05
    output = finish(start_mpo("resume", str(moved)))
    assert "Run finished" in output, output
    same_run(summary(moved), uninterrupted)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_full_disk_stops_the_run_with_one_clear_error_and_resume_loses_nothing(
    tmp_path, tiny_model_dir, judge_server, uninterrupted
):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
        check=False,
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        server = judge_server(latency=0.05)
        run_dir = disk / "run"
        # A checkpoint every iteration, so that the write of iteration 2's is the one that finds the disk full.
        process = start_mpo(*run_args(run_dir, tiny_model_dir, server.url, **{"output.checkpoint_every": 1}))
        wait_for((run_dir, "policy/iter-000001/COMPLETE"), process)
        # Leave less than one policy checkpoint (1.3 MB for the tiny model): iteration 2 cannot complete.
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 600_000))
        output, _ = process.communicate(timeout=240)
        shown = " ".join(output.decode(errors="replace").split())
        assert process.returncode == 74, shown[-2000:]
        assert f"error: cannot write {run_dir}/" in shown and "no space left on the device" in shown
        assert f"Fix: free space on that file system, then `mpo resume {run_dir}`" in shown
        assert "Traceback" not in shown
        assert "cannot write" in (run_dir / "run.log").read_text()

        ballast.unlink()
        resumed = finish(start_mpo("resume", str(run_dir)))
        assert "Run finished" in resumed
        same_run(summary(run_dir), uninterrupted)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("damaged", ["newest", "every"])
def test_a_damaged_policy_checkpoint_is_set_aside_and_its_updates_applied_again(
    tmp_path, uninterrupted, damaged
):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted["run_dir"], run_dir)
    checkpoints = sorted((run_dir / "policy").glob("iter-*"))
    for checkpoint in checkpoints[-1:] if damaged == "newest" else checkpoints:
        os.truncate(checkpoint / "model" / "model.safetensors", 1000)

    checked = start_mpo("check", str(run_dir))
    report = " ".join(finish(checked).split())
    assert "repair policy/iter-000004: damaged: model/model.safetensors has 1000 bytes" in report
    replayed = "1 update(s)" if damaged == "newest" else f"{ITERATIONS} update(s)"
    assert f"then applies {replayed} again" in report

    output = " ".join(finish(start_mpo("resume", str(run_dir))).split())
    assert "moves it aside as iter-000004.damaged" in output and "Run finished" in output
    assert (run_dir / "policy" / "iter-000004.damaged").is_dir()
    same_run(summary(run_dir), uninterrupted)  # the same steps again, from the stored rollouts and rewards


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("metrics", "metrics.jsonl: line 2 is not JSON"),
        (
            "database",
            "checkpoints.sqlite: the graph's checkpoint database is damaged (database disk image is",
        ),
        ("rollouts", "rollouts/iter-0004.jsonl: missing: the update of iteration 4 must be applied again"),
    ],
)
def test_damage_a_resume_cannot_mend_is_named_before_any_model_loads(
    tmp_path, uninterrupted, damage, expected
):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted["run_dir"], run_dir)
    if damage == "metrics":
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        lines[1] = lines[1][: len(lines[1]) // 2]
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    elif damage == "database":
        os.truncate(run_dir / "checkpoints.sqlite", (run_dir / "checkpoints.sqlite").stat().st_size // 3)
    else:
        os.truncate(run_dir / "policy" / "iter-000004" / "model" / "model.safetensors", 1000)
        (run_dir / "rollouts" / "iter-0004.jsonl").unlink()
    before = sorted(path.name for path in (run_dir / "policy").iterdir())

    checked = start_mpo("check", str(run_dir))
    report = " ".join(checked.communicate(timeout=120)[0].decode().split())
    assert checked.returncode == 1 and f"error {expected}" in report, report
    resumed = start_mpo("resume", str(run_dir))
    output = " ".join(resumed.communicate(timeout=120)[0].decode().split())
    assert resumed.returncode == 2 and "cannot be resumed as it is" in output and expected in output, output
    assert "restoring policy weights" not in output  # stopped before the model loaded
    assert sorted(path.name for path in (run_dir / "policy").iterdir()) == before
