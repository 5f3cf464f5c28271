"""A whole run in this process (config from `--set` overrides, a new run directory, `execute`); its summary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from mpo_agents.config import MPOConfig, load_config
from mpo_agents.events import NodeFinished, RunEvent
from mpo_agents.rundir import RunDirectory, read_jsonl
from mpo_agents.runner import RunOutcome, execute, new_run_dir
from tests.support import TEST_ENV


def prepared_run(sets: Iterable[str], root: Path) -> tuple[MPOConfig, RunDirectory]:
    """The config of `sets` (over the defaults) and a new run directory for it at `root`."""
    config = load_config(None, list(sets))
    return config, new_run_dir(config, root)


def run_in_process(
    sets: Iterable[str],
    root: Path,
    *,
    env: Mapping[str, str] = TEST_ENV,
    events: list[str | type] | None = None,
    **execute_options: Any,
) -> tuple[RunOutcome, RunDirectory]:
    """A fresh run of `sets` at `root`, to its end in this process: `(outcome, run_dir)`.

    `events`, when given, collects each run event: a finished node by its name, any other event (a budget stop,
    a review pause) by its type; `execute_options` go to `mpo_agents.runner.execute` (e.g. `on_status`)."""
    config, run_dir = prepared_run(sets, root)
    if events is not None:

        def record(event: RunEvent) -> None:
            events.append(event.node if isinstance(event, NodeFinished) else type(event))

        execute_options["on_event"] = record
    return execute(config, run_dir, dict(env), fresh=True, **execute_options), run_dir


# Settings under which the tiny policy learns what the `count_e` judge rewards within a few iterations.
LEARNS_COUNT_E = {
    "schedule.meta_every": 0,
    "trainer.learning_rate": 0.05,
    "trainer.beta": 0.0,
    "trainer.num_generations": 8,
    "policy.generation.temperature": 1.0,
    "task.truncation_penalty": 0,
}


def run_loop(
    tmp_path: Path, model_dir: Path, server: Any, name: str = "run", **settings: Any
) -> tuple[RunOutcome, RunDirectory, list[str | type]]:
    """A fast run of the tiny model against the test judge `server` (`run_overrides` plus `settings`) at
    `tmp_path / name`: `(outcome, run_dir, events)`."""
    from tests.support import run_overrides

    events: list[str | type] = []
    outcome, run_dir = run_in_process(
        run_overrides(model_dir, server.url, **settings), tmp_path / name, events=events
    )
    return outcome, run_dir, events


def summary(run_dir: Path) -> dict[str, Any]:
    """What two runs that did the same work agree on: iterations, policy and optimizer steps, rubric versions
    and the final policy's weights."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    checkpoints = sorted(path for path in (run_dir / "policy").glob("iter-*") if path.name[5:].isdigit())
    final = checkpoints[-1]
    return {
        "iterations": [m["iteration"] for m in metrics],
        "policy_steps": [m["policy_step"] for m in metrics],
        "rubric_versions": sorted(p.name for p in (run_dir / "rubrics").glob("v*.md")),
        "optimizer_steps": json.loads((final / "COMPLETE").read_text())["step"],
        "weights": load_file(str(final / "model" / "model.safetensors")),
    }
