"""Policy checkpoints on a cadence: which iterations are written and kept, and a stop between two of them."""

from __future__ import annotations

import json
import os
import signal

from mpo_agents.events import NodeFinished, RunEvent
from mpo_agents.run_config import saved_config
from mpo_agents.rundir import read_jsonl
from mpo_agents.runner import execute
from tests.support import TEST_ENV, run_overrides
from tests.support.runs import run_in_process


def saved(run_dir) -> list[str]:
    return sorted(path.name for path in run_dir.policy_dir.iterdir())


def test_checkpoints_follow_the_cadence_and_retention_keeps_the_best(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    settings = {
        "schedule.iterations": 5,
        "schedule.meta_every": 0,
        "output.checkpoint_every": 2,
        "output.keep_last": 1,
        # A metric whose best is known in advance: the lowest iteration number that has a checkpoint.
        "output.keep_best": "iteration",
        "output.keep_best_mode": "min",
    }
    outcome, run_dir = run_in_process(run_overrides(tiny_model_dir, server.url, **settings), tmp_path / "run")

    assert outcome.status == "finished" and outcome.policy_step == 5
    # Written after iterations 2, 4 and 5 (the last); 4 was deleted, 2 kept as the best.
    assert saved(run_dir) == ["iter-000002", "iter-000005"]
    metrics = read_jsonl(run_dir.metrics_path)
    assert [m["iteration"] for m in metrics if "update_checkpoint_seconds" in m] == [2, 4, 5]
    assert json.loads((run_dir.policy_dir / "iter-000002" / "COMPLETE").read_text())["step"] == 2
    # Every update keeps what an exact replay needs, checkpointed or not.
    assert all(run_dir.update_rewards(iteration) is not None for iteration in range(1, 6))


def test_a_stop_between_two_checkpoints_saves_the_policy_it_holds(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    settings = {"schedule.iterations": 3, "schedule.meta_every": 0, "output.checkpoint_every": 10}

    def stop_after_the_first_update(event: RunEvent) -> None:
        if (
            isinstance(event, NodeFinished)
            and event.node == "policy_update"
            and event.update["iteration"] == 2
        ):
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: finish the node, then stop

    outcome, run_dir = run_in_process(
        run_overrides(tiny_model_dir, server.url, **settings),
        tmp_path / "run",
        on_event=stop_after_the_first_update,
    )
    assert outcome.status == "stopped" and outcome.policy_step == 1
    # The cadence would write its first checkpoint after iteration 3; the stop wrote the one of iteration 1.
    assert saved(run_dir) == ["iter-000001"]
    assert json.loads((run_dir.policy_dir / "iter-000001" / "COMPLETE").read_text())["step"] == 1

    resumed = execute(saved_config(run_dir.root), run_dir, TEST_ENV, fresh=False)
    assert resumed.status == "finished" and resumed.policy_step == 3
    assert saved(run_dir) == ["iter-000001", "iter-000003"]
