"""Run files under real failures: damaged lines are named, appends survive interruptions and full disks, OS
write failures become StorageError, paths in the state survive a move, damaged checkpoints are recognised."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mpo_agents.errors import ConfigError, RunFileError
from mpo_agents.integrity import sqlite_problem
from mpo_agents.policy.weight_checkpoints import (
    COMPLETE_MARKER,
    _manifest,
    quarantine,
    usable_checkpoint,
    verify_checkpoint,
)
from mpo_agents.rundir import (
    RunDirectory,
    append_jsonl,
    read_checked_jsonl,
    read_jsonl,
    storage_error,
    writing,
)

# -- reading ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b'{"a": 1}\n{garbage\n',
            r"metrics.jsonl line 2 is not JSON \(.*column 2\); it is the log of finished",
        ),
        (b'{"a": 1}\n[1, 2]\n', r"metrics.jsonl line 2 is a JSON list, not an object"),
        (b'{"a": 1}\n{"b": "\xff"}\n', r"metrics.jsonl line 2 is not UTF-8 text \(byte 8 of the line\)"),
    ],
)
def test_a_damaged_run_file_is_named_with_its_line_and_what_to_do(tmp_path, content, expected):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    with pytest.raises(RunFileError, match=expected):
        read_jsonl(path)


def test_a_missing_run_file_is_an_error_not_an_empty_list(tmp_path):
    path = tmp_path / "rollouts" / "iter-0002.jsonl"
    with pytest.raises(RunFileError, match=r"iter-0002.jsonl does not exist; the policy update of that iter"):
        read_jsonl(path)


def test_a_user_file_gets_a_config_error_naming_the_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"completion": "x"}\n\n{"prompt": "p"}\n')
    with pytest.raises(ConfigError, match=r"in.jsonl line 3 has no completion field \(completions\)"):
        read_checked_jsonl(path, ("completion",), "completions")


def test_an_append_cut_short_is_skipped_when_read_and_removed_by_the_next_append(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"iteration": 1}\n{"iteration": 2, "rew')  # killed mid-append
    with pytest.raises(RunFileError):
        read_jsonl(path)  # a file written atomically never has a torn tail: there it is damage
    assert read_jsonl(path, torn_tail_ok=True) == [{"iteration": 1}]
    append_jsonl(path, {"iteration": 2})
    assert path.read_text() == '{"iteration": 1}\n{"iteration": 2}\n'


def test_a_whole_last_record_missing_only_its_line_break_is_kept(tmp_path):
    path = tmp_path / "timings.jsonl"
    path.write_bytes(b'{"n": 1}\n{"n": 2}')
    append_jsonl(path, {"n": 3})
    assert read_jsonl(path) == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_run_directory_records_metrics_once_per_iteration(tmp_path):
    run_dir = RunDirectory(tmp_path / "run")
    assert run_dir.metrics() == []
    assert run_dir.record_metrics({"iteration": 1}) and not run_dir.record_metrics({"iteration": 1})
    assert run_dir.metrics() == [{"iteration": 1}]


# -- writing under real OS failures ------------------------------------------------------------------------------


def under_file_size_limit(code: str, tmp_path: Path) -> dict:
    """Run `code` (which sets `result`) in a child process whose files cannot grow past 600 bytes: writes
    beyond fail with EFBIG, a real OS failure that needs no root. A child, because the limit would also stop
    this process's own output to a log file. SIGXFSZ is ignored, so the write fails instead of killing it."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    program = "\n".join(
        [
            "import json",
            "from pathlib import Path",
            f"tmp = Path({str(tmp_path)!r})",
            code,
            "print(json.dumps(result))",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,  # only sets a limit and a signal disposition before exec
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_refused_append_names_the_file_and_leaves_no_partial_line(tmp_path):
    result = under_file_size_limit(
        """
from mpo_agents.errors import StorageError
from mpo_agents.rundir import append_jsonl
path = tmp / "metrics.jsonl"
append_jsonl(path, {"iteration": 1, "note": "x" * 200})
before = path.read_bytes()
try:
    append_jsonl(path, {"iteration": 2, "note": "y" * 500})
    result = {"raised": None}
except StorageError as exc:
    result = {"raised": str(exc), "fix": exc.fix, "unchanged": path.read_bytes() == before}
""",
        tmp_path,
    )
    assert result["raised"].endswith("metrics.jsonl: the file grew past the file system's limit")
    assert result["fix"] and result["unchanged"]  # the partial bytes were taken back


def test_a_refused_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    result = under_file_size_limit(
        """
from mpo_agents.errors import StorageError
from mpo_agents.rundir import atomic_write_text
path = tmp / "state.json"
atomic_write_text(path, "old")
try:
    atomic_write_text(path, "x" * 1000)
    result = {"raised": None}
except StorageError as exc:
    result = {"raised": str(exc), "text": path.read_text(), "files": sorted(p.name for p in tmp.iterdir())}
""",
        tmp_path,
    )
    assert "state.json" in result["raised"]
    assert result["text"] == "old" and result["files"] == ["state.json"]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
        (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
        (OSError(errno.EACCES, "Permission denied"), "permission denied"),
        (sqlite3.OperationalError("database or disk is full"), "no space left on the device"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "the file system is read-only"),
    ],
)
def test_os_write_failures_are_recognised_in_every_form(error, reason):
    found = storage_error(error, "run/x")
    assert found is not None and found.reason == reason and "run/x" in str(found)


def test_a_safetensors_io_error_is_recognised_by_its_os_code():
    from safetensors import SafetensorError

    message = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'
    assert storage_error(SafetensorError(message), "p").reason == "no space left on the device"


def test_errors_that_are_not_storage_failures_keep_their_own_type():
    assert storage_error(ValueError("bad"), "p") is None
    assert storage_error(OSError(errno.ENOENT, "missing"), "p") is None
    with pytest.raises(KeyError), writing("p"):
        raise KeyError("a bug keeps its traceback")


# -- paths in the state ------------------------------------------------------------------------------------------


def test_state_paths_are_relative_and_old_absolute_ones_are_read_under_the_moved_directory(tmp_path):
    run_dir = RunDirectory(tmp_path / "moved" / "run")
    stored = run_dir.relative(run_dir.rollouts_path(3))
    assert stored == "rollouts/iter-0003.jsonl"
    assert run_dir.locate(stored) == run_dir.rollouts_path(3)
    # Written by an earlier version, before the run directory moved from /old/disk/run.
    assert run_dir.locate("/old/disk/run/samples/iter-0002.jsonl") == run_dir.samples_path(2)
    assert run_dir.locate("/old/disk/run/rollouts/iter-0003.jsonl") == run_dir.rollouts_path(3)


# -- policy checkpoints ------------------------------------------------------------------------------------------


def fake_checkpoint(root: Path, index: int, *, marker_files: bool = True) -> Path:
    """A checkpoint directory of real safetensors files and a marker, as `save_checkpoint` lays it out."""
    directory = root / f"iter-{index:06d}"
    (directory / "model").mkdir(parents=True)
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(directory / "model" / "model.safetensors"))
    save_file({"state.0.exp_avg": torch.ones(500)}, str(directory / "optimizer.safetensors"))
    (directory / "state.json").write_text(json.dumps({"format_version": 1}))
    marker = {"step": index, **({"files": _manifest(directory)} if marker_files else {})}
    (directory / COMPLETE_MARKER).write_text(json.dumps(marker))
    return directory


def test_a_truncated_or_altered_file_fails_verification_and_the_previous_checkpoint_is_used(tmp_path):
    older, newer = fake_checkpoint(tmp_path, 3), fake_checkpoint(tmp_path, 4)
    assert verify_checkpoint(newer) == []
    weights = newer / "model" / "model.safetensors"
    with open(weights, "r+b") as handle:  # one flipped byte, size unchanged
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert verify_checkpoint(newer) == [
        "model/model.safetensors does not match the hash recorded when it was written"
    ]
    os.truncate(newer / "optimizer.safetensors", 100)
    assert "optimizer.safetensors has 100 bytes" in verify_checkpoint(newer)[1]
    chosen, damaged = usable_checkpoint(tmp_path)
    assert chosen == older and [path for path, _ in damaged] == [newer]
    assert quarantine(newer).name == "iter-000004.damaged"
    assert usable_checkpoint(tmp_path) == (older, [])


def test_a_checkpoint_without_file_hashes_still_gets_a_structural_check(tmp_path):
    legacy = fake_checkpoint(tmp_path, 1, marker_files=False)
    assert verify_checkpoint(legacy) == []
    weights = legacy / "model" / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, 3000)
    assert verify_checkpoint(legacy) == [
        f"model/model.safetensors is truncated or padded (3000 bytes, its header describes {size})"
    ]


def test_no_usable_checkpoint_lists_every_damaged_one(tmp_path):
    only = fake_checkpoint(tmp_path, 2)
    (only / "state.json").unlink()
    assert usable_checkpoint(tmp_path) == (None, [(only, ["state.json is missing"])])


# -- databases ---------------------------------------------------------------------------------------------------


def test_a_truncated_sqlite_file_is_reported_damaged(tmp_path):
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,) for _ in range(200)])
    db.close()
    assert sqlite_problem(path) is None
    os.truncate(path, path.stat().st_size // 2)
    assert "malformed" in sqlite_problem(path)


def test_a_damaged_saved_config_is_an_error_that_says_what_to_do(tmp_path):
    from mpo_agents.errors import CheckpointError
    from mpo_agents.run_config import saved_config

    (tmp_path / "config.yaml").write_text("task: [unclosed\n")
    with pytest.raises(CheckpointError, match=r"config.yaml is damaged .*restore it from a copy"):
        saved_config(tmp_path)
    (tmp_path / "config.yaml").write_text("trainer: {learning_rate: -1}\n")
    with pytest.raises(CheckpointError, match=r"learning_rate"):
        saved_config(tmp_path)
