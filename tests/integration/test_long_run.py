"""A long run holds its memory flat: 30 iterations of the tiny policy, the process's resident size after the
30th update within 10% of the size after the 10th (a leak per iteration fails it); and a finished run leaves
nothing behind in its process."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from mpo_agents import context
from mpo_agents.config import load_config
from mpo_agents.rundir import RunDirectory
from mpo_agents.runner import execute, new_run_dir
from tests.support import TEST_ENV, run_overrides
from tests.support.cli import finish, run_command, start_mpo

# Its own worker: the run takes a while and its memory should not share a process with other tests.
pytestmark = pytest.mark.xdist_group("long_run")

ITERATIONS = 30


def test_thirty_iterations_hold_memory_flat(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    run_dir = tmp_path / "run"
    settings = {"schedule.iterations": ITERATIONS, "schedule.meta_every": 5, "output.checkpoint_every": 5}
    finish(
        start_mpo(*run_command(run_dir, run_overrides(tiny_model_dir, server.url, **settings))), timeout=600
    )

    metrics = RunDirectory(run_dir).metrics()
    assert [m["iteration"] for m in metrics] == list(range(1, ITERATIONS + 1))
    resident = {m["iteration"]: m["update_memory_mb"] for m in metrics}
    assert all(value > 0 for value in resident.values())
    growth = resident[30] / resident[10]
    assert growth <= 1.10, f"resident MB by iteration: {resident}"
    # The rubric was rewritten along the way: the meta steps ran too, not only updates.
    assert max(m["rubric_version"] for m in metrics) >= 1


def test_a_finished_run_frees_its_policy(
    tmp_path: Path, tiny_model_dir: Path, judge_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiteLLM's module globals (its logging task, its cached HTTP clients) had kept the context of the graph
    # node that first used them, and through it the run's policy: ~2 GB per finished run for SmolLM2-135M.
    server = judge_server()
    policies: list[weakref.ref[Any]] = []
    build_context = context.build_context

    def recording(*args: Any, **kwargs: Any) -> Any:
        ctx = build_context(*args, **kwargs)
        policies.append(weakref.ref(ctx.policy))
        return ctx

    monkeypatch.setattr(context, "build_context", recording)
    settings = {"schedule.iterations": 2, "schedule.meta_every": 0}
    for name in ("first", "second"):
        config = load_config(None, run_overrides(tiny_model_dir, server.url, **settings))
        execute(config, new_run_dir(config, tmp_path / name), TEST_ENV, fresh=True)
        gc.collect()
    assert len(policies) == 2 and [ref() for ref in policies] == [None, None]
