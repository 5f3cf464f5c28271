"""A user's task is a package: examples/task_plugin installed with pip, found through its entry point, its own
tests passing, and a short training run on it through the CLI against a real HTTP judge."""

from __future__ import annotations

from mpo_agents.rubrics import RubricStore
from mpo_agents.rundir import RunDirectory, read_jsonl
from tests.support import EXAMPLES, run_overrides
from tests.support.cli import as_options, mpo
from tests.support.examples import install_example, run_own_tests

EXAMPLE = EXAMPLES / "task_plugin"
TOPICS = {record["topic"] for record in read_jsonl(EXAMPLE / "haiku_task" / "data" / "haiku_topics.jsonl")}


def test_a_task_from_the_example_package_is_installed_discovered_and_trained_on(
    tmp_path, tiny_model_dir, judge_server
):
    env = install_example(EXAMPLE, tmp_path / "site")
    own_tests = run_own_tests(EXAMPLE, env)
    assert own_tests.returncode == 0, own_tests.stdout + own_tests.stderr

    server = judge_server()
    sets = run_overrides(
        tiny_model_dir,
        server.url,
        **{"task.name": "haiku_writing", "schedule.iterations": 1, "schedule.meta_every": 1},
    )
    result = mpo("run", *as_options(sets), "--run-dir", str(tmp_path / "run"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    run = tmp_path / "run"
    samples = read_jsonl(RunDirectory(run).samples_path(1))
    assert len(samples) == 8 and {sample["prompt"] for sample in samples} <= TOPICS
    assert all(sample["status"] in ("scored", "guarded") for sample in samples)
    # The judge was told about the task by the package's own prompt files, filled into mpo-agents' judge prompt.
    judged = [str(request) for request in server.requests if "Haiku topic:" in str(request)]
    assert judged and all("poetry teacher" in request for request in judged)
    first = RubricStore(run / "rubrics").versions()[0]  # version 0: the package's initial_rubric.md
    assert "Imagery" in first.text and [c.high for c in first.parsed().criteria] == [2, 3]
