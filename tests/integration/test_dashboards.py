"""Training dashboards (`trainer.report_to`): each iteration's metrics reach TRL's integration callbacks once,
TensorBoard writes complete event files under `<run dir>/tensorboard`, and a missing package fails early."""

from __future__ import annotations

import importlib.util
import signal
import struct
from pathlib import Path

import pytest

from mpo_agents.errors import ConfigError
from mpo_agents.events import NodeFinished, RunEvent
from mpo_agents.run_config import saved_config
from mpo_agents.rundir import RunDirectory, read_jsonl
from mpo_agents.runner import execute
from tests.support import TEST_ENV, run_overrides
from tests.support.runs import prepared_run, run_in_process


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under `directory`: tag -> [(step, value), ...] by step. Reads the
    TFRecord framing itself (u64 length, u32 masked CRC of it, payload, u32 masked CRC of the payload) and
    checks both CRCs, so a truncated or unflushed file fails here."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(directory.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {directory}"
    for path in files:
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            header = data[offset : offset + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
            payload = data[offset + 12 : offset + 12 + length]
            (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
            assert header_crc == masked_crc32c(header) and payload_crc == masked_crc32c(payload), path
            offset += 16 + length
            event = Event.FromString(payload)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return {tag: sorted(points) for tag, points in scalars.items()}


def start_run(tmp_path: Path, model_dir: Path, url: str, on_event=None, **extra) -> RunDirectory:
    _, run_dir = run_in_process(
        run_overrides(model_dir, url, **{"schedule.meta_every": 0, **extra}),
        tmp_path / "run",
        on_event=on_event,
    )
    return run_dir


def test_tensorboard_gets_each_iteration_once_also_across_a_resume(tmp_path, tiny_model_dir, judge_server):
    def ctrl_c_after_the_first_update(event: RunEvent) -> None:
        if isinstance(event, NodeFinished) and event.node == "policy_update":
            signal.raise_signal(signal.SIGINT)  # the run stops at the next node boundary

    server = judge_server()
    settings = {"schedule.iterations": 2, "trainer.report_to": "[tensorboard]"}
    run_dir = start_run(tmp_path, tiny_model_dir, server.url, ctrl_c_after_the_first_update, **settings)
    assert [m["iteration"] for m in read_jsonl(run_dir.metrics_path)] == [1]
    # A second policy (a new writer, a new event file) finishes the run: iteration 1 must not be sent again.
    outcome = execute(saved_config(run_dir.root), run_dir, TEST_ENV, fresh=False)

    assert outcome.status == "finished"
    metrics = read_jsonl(run_dir.metrics_path)
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert len(list(run_dir.tensorboard_dir.glob("events.out.tfevents.*"))) == 2
    scalars = tensorboard_scalars(run_dir.tensorboard_dir)
    # TRL's `rewrite_logs` files training metrics under "train/"; the step is the MPO iteration.
    assert scalars["train/reward_mean"] == [
        (m["iteration"], pytest.approx(m["reward_mean"], abs=1e-6)) for m in metrics
    ]
    assert [step for step, _ in scalars["train/update_loss"]] == [1, 2]
    assert scalars["train/policy_step"] == [(1, 1.0), (2, 2.0)]
    assert "train/iteration" not in scalars and "train/epoch" not in scalars
    assert not (run_dir.root / "trainer" / "runs").exists()  # transformers' default place


def test_no_dashboard_by_default(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    run_dir = start_run(tmp_path, tiny_model_dir, server.url, **{"schedule.iterations": 1})
    assert read_jsonl(run_dir.metrics_path)[0]["iteration"] == 1
    assert not run_dir.tensorboard_dir.exists()
    assert not list(run_dir.root.rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("integration", ["wandb", "trackio"])
def test_missing_dashboard_package_is_a_config_error_before_training(tmp_path, tiny_model_dir, integration):
    if importlib.util.find_spec(integration) is not None:
        pytest.skip(f"{integration} is installed here")
    config, run_dir = prepared_run(
        run_overrides(tiny_model_dir, "http://127.0.0.1:9/v1", **{"trainer.report_to": f'["{integration}"]'}),
        tmp_path / "run",
    )
    with pytest.raises(ConfigError) as error:
        execute(config, run_dir, TEST_ENV, fresh=True)
    message = str(error.value)
    assert "trainer.report_to" in message and f"pip install {integration}" in message
    assert not run_dir.metrics_path.exists() and not list(run_dir.policy_dir.iterdir())


def test_record_metrics_reports_whether_the_line_is_new(tmp_path):
    run_dir = RunDirectory(tmp_path / "run")
    assert run_dir.record_metrics({"iteration": 1, "reward_mean": 0.5}) is True
    assert run_dir.record_metrics({"iteration": 1, "reward_mean": 0.7}) is False  # a re-run node
    assert read_jsonl(run_dir.metrics_path) == [{"iteration": 1, "reward_mean": 0.5}]
