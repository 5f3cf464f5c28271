"""`output.checkpointer: postgres`: a real PostgreSQL server on 127.0.0.1 (Debian's binaries, installed by
`.ci/run`) holds the graph checkpoints; a SIGKILLed run resumes from it and matches an uninterrupted one."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mpo_agents.errors import ConfigError
from mpo_agents.graph_checkpoints import redact
from mpo_agents.judges.local_server import free_port
from mpo_agents.runner import execute
from tests.support import TEST_ENV, run_overrides
from tests.support.cli import finish, mpo, run_command, start_mpo, wait_for
from tests.support.runs import prepared_run, summary

# One worker runs this module under pytest-xdist: one PostgreSQL cluster and reference run (module-scoped).
pytestmark = pytest.mark.xdist_group("postgres")


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway cluster on loopback, trust auth, stopped at the end of the module."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed; .ci/run installs the `postgresql` package")
    # Not under pytest's tmp dir: its root-only parents would keep the `postgres` user out.
    root = Path(tempfile.mkdtemp(prefix="mpo-postgres-"))
    data = root / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    _run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    _run([*pg_ctl, "-o", options, "-w", "-l", str(root / "server.log"), "start"])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command[-1]} failed: {done.stdout[-1000:]} {done.stderr[-1000:]}"


def postgres_args(run_dir: Path, model_dir: Path, url: str) -> list[str]:
    """The run of test_resume.py (4 iterations, a meta step every 2), its graph checkpoints in Postgres."""
    settings = {"schedule.iterations": 4, "schedule.meta_every": 2, "output.checkpointer": "postgres"}
    return run_command(run_dir, run_overrides(model_dir, url, **settings))


@pytest.fixture(scope="module")
def postgres_reference(tmp_path_factory, tiny_model_dir, postgres_url) -> Path:
    """An uninterrupted run with its graph checkpoints in Postgres."""
    from tests.support.judge_server import JudgeServer

    reference = tmp_path_factory.mktemp("postgres") / "uninterrupted"
    with JudgeServer(latency=0.05) as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPO_POSTGRES_URL", postgres_url)  # the subprocess inherits it
        finish(start_mpo(*postgres_args(reference, tiny_model_dir, server.url)))
    return reference


def test_a_killed_run_resumes_from_postgres(
    tmp_path, tiny_model_dir, postgres_url, postgres_reference, monkeypatch
):
    from tests.support.judge_server import JudgeServer

    monkeypatch.setenv("MPO_POSTGRES_URL", postgres_url)  # the subprocesses inherit it
    reference = postgres_reference
    with JudgeServer(latency=0.05) as server:
        run_dir = tmp_path / "killed"
        process = start_mpo(*postgres_args(run_dir, tiny_model_dir, server.url))
        wait_for((run_dir, "samples/iter-0002.jsonl"), process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        resumed = finish(start_mpo("resume", str(run_dir)))
    assert "Run finished: 4/4 iterations" in " ".join(resumed.split())
    assert not (run_dir / "checkpoints.sqlite").exists()  # everything went to Postgres
    expected, got = summary(reference), summary(run_dir)
    assert got.pop("iterations") == expected.pop("iterations") == [1, 2, 3, 4]
    weights, reference_weights = got.pop("weights"), expected.pop("weights")
    assert got == expected
    assert all((weights[name] == reference_weights[name]).all() for name in reference_weights)

    # Both runs live in the same database, each as its own thread named by the run id.
    import psycopg

    with psycopg.connect(postgres_url) as connection:
        threads = {row[0] for row in connection.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    ids = {(path / "run_id").read_text().strip() for path in (reference, run_dir)}
    assert {f"mpo-{run_id}" for run_id in ids} <= threads and len(ids) == 2


def test_postgres_without_its_url_is_refused_before_any_model_loads(tmp_path, tiny_model_dir):
    config, run_dir = prepared_run(
        [f"policy.model={tiny_model_dir}", "output.checkpointer=postgres"], tmp_path / "run"
    )
    with pytest.raises(ConfigError, match=r"\$MPO_POSTGRES_URL is not set"):
        execute(config, run_dir, {}, fresh=True)
    assert not list(run_dir.policy_dir.iterdir())


def test_an_unreachable_postgres_is_a_clear_error_without_the_password(
    tmp_path, tiny_model_dir, judge_server
):
    server = judge_server()
    sets = run_overrides(
        tiny_model_dir, server.url, **{"output.checkpointer": "postgres", "schedule.iterations": 1}
    )
    port = free_port()  # nothing listens there
    url = f"postgresql://mpo:s3cret@127.0.0.1:{port}/mpo"
    result = mpo(*run_command(tmp_path / "run", sets), env={**TEST_ENV, "MPO_POSTGRES_URL": url})
    assert result.returncode != 0
    shown = " ".join((result.stdout + result.stderr).split())
    assert f"cannot use the Postgres checkpointer at postgresql://mpo:***@127.0.0.1:{port}/mpo" in shown
    assert "s3cret" not in shown


def test_redact_hides_passwords_in_both_url_and_keyword_forms():
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("host=h user=u password=pw dbname=db") == "host=h user=u password=*** dbname=db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_run_stopped_after_its_rollout_resumes_from_postgres_after_its_directory_moved(
    tmp_path, tiny_model_dir, postgres_url, postgres_reference, judge_server, monkeypatch
):
    monkeypatch.setenv("MPO_POSTGRES_URL", postgres_url)
    server = judge_server(latency=1.0)  # a slow judge: the score node after the rollout is in flight a while
    run_dir = tmp_path / "first-disk" / "run"
    process = start_mpo(*postgres_args(run_dir, tiny_model_dir, server.url))
    wait_for((run_dir, "rollouts/iter-0002.jsonl"), process)
    seen = len(server.requests)
    while len(server.requests) == seen:  # the score node asks the judge: the rollout is committed
        assert process.poll() is None, "the run ended before scoring iteration 2"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    moved = tmp_path / "second-disk" / "run"
    shutil.move(run_dir, moved)
    server.latency = 0.05
    resumed = finish(start_mpo("resume", str(moved)))
    assert "Run finished: 4/4 iterations" in " ".join(resumed.split())
    expected, got = summary(postgres_reference), summary(moved)
    assert got.pop("iterations") == expected.pop("iterations") == [1, 2, 3, 4]
    weights, reference_weights = got.pop("weights"), expected.pop("weights")
    assert got == expected
    assert all((weights[name] == reference_weights[name]).all() for name in reference_weights)
