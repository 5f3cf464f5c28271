"""The CLI as a user meets it: help, config printing, and the errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO, TEST_ENV, run_overrides
from tests.support.cli import mpo, run_command


def test_help_lists_the_commands_without_loading_heavy_libraries():
    result = mpo("--help")
    assert result.returncode == 0
    for command in ("run", "resume", "rubrics", "config", "score", "rejudge", "hacking-check"):
        assert command in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, mpo_agents.cli; print(sorted({'torch','trl','litellm','langgraph'} & set(sys.modules)))",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "[]"


def test_config_command_shows_layered_values(tmp_path):
    (tmp_path / "c.yaml").write_text("trainer:\n  beta: 0.3\n")
    result = mpo(
        "config", str(tmp_path / "c.yaml"), "--set", "schedule.iterations=9", env={"MPO_TRAINER__SEED": "5"}
    )
    assert result.returncode == 0, result.stderr
    assert "beta: 0.3" in result.stdout and "iterations: 9" in result.stdout and "seed: 5" in result.stdout


def test_config_reference_in_docs_is_up_to_date():

    from mpo_agents.config import config_reference

    docs = REPO / "docs" / "config.md"
    assert docs.read_text().strip() == config_reference().strip(), (
        "regenerate: mpo config --reference > docs/config.md"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--set", "trainer.learning_rate=fast"], "trainer.learning_rate"),
        (["run", "--set", "judge.tmeout=3"], "judge.tmeout: unknown key"),
        (["run", "missing.yaml"], "does not exist"),
        (["resume", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, args, message):
    result = mpo(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_missing_api_key_is_reported_before_any_model_loads(tmp_path, tiny_model_dir):
    result = mpo(
        *run_command(tmp_path / "run", run_overrides(tiny_model_dir, "http://127.0.0.1:9/v1")),
        env={"TEST_JUDGE_KEY": ""},
    )
    assert result.returncode == 2
    assert "TEST_JUDGE_KEY" in result.stderr and "Traceback" not in result.stderr


def test_rubrics_command_shows_history_and_diff(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    sets = run_overrides(tiny_model_dir, server.url, **{"schedule.iterations": 2, "schedule.meta_every": 2})
    result = mpo(*run_command(tmp_path / "run", sets), env=TEST_ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = mpo("rubrics", str(tmp_path / "run"))
    assert shown.returncode == 0
    assert "v0 → v1" in shown.stdout and "+Criterion 1: The response uses the word 'good'" in shown.stdout
