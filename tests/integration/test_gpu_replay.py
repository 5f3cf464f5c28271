"""On a CUDA GPU, a run stopped between two policy checkpoints and resumed (its updates replayed from the run
directory) ends where an uninterrupted run ends, to within what the GPU's kernels allow (docs/design.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mpo_agents.config import load_config
from mpo_agents.events import NodeFinished
from mpo_agents.run_config import saved_config
from mpo_agents.rundir import RunDirectory
from mpo_agents.runner import execute, new_run_dir
from tests.support import TEST_ENV, run_overrides
from tests.support.runs import summary

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ITERATIONS = 4


def length_score(prompt: str, request: dict) -> str:
    """Longer responses score higher, so the tiny model's rollouts differ in reward and every update moves it."""
    response = prompt.rsplit("<response>", 1)[-1].split("</response>", 1)[0]
    return f"Reason: length.\nScore: {min(5, len(response.split()))}"


class Killed(Exception):
    """Stands in for a SIGKILL after an update: nothing more is written, no checkpoint is saved on the way out."""


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_gpu_run_killed_between_checkpoints_resumes_to_the_same_policy(
    tmp_path: Path, tiny_model_dir: Path, judge_server, dtype: str
) -> None:
    server = judge_server(length_score)
    settings = {
        "policy.device": "cuda",
        "policy.dtype": dtype,
        "schedule.iterations": ITERATIONS,
        "schedule.meta_every": 0,
        "output.checkpoint_every": 3,  # checkpoints after iterations 3 and 4
    }
    config = load_config(None, run_overrides(tiny_model_dir, server.url, **settings))

    whole = new_run_dir(config, tmp_path / "whole")
    execute(config, whole, TEST_ENV, fresh=True)

    def kill_after_update_2(event: object) -> None:
        updated = isinstance(event, NodeFinished) and event.node == "policy_update"
        if updated and (broken.root / "updates" / "iter-0002.json").is_file():
            raise Killed

    broken = new_run_dir(config, tmp_path / "broken")
    with pytest.raises(Killed):
        execute(config, broken, TEST_ENV, fresh=True, on_event=kill_after_update_2)
    assert not list((broken.root / "policy").glob("iter-*[0-9]"))  # updates 1 and 2 live in no checkpoint
    replays: list[str] = []
    execute(
        saved_config(broken.root), RunDirectory(broken.root), TEST_ENV, fresh=False, on_status=replays.append
    )
    assert any(message.startswith("replaying the update of iteration 1") for message in replays), replays

    expected, resumed = summary(whole.root), summary(broken.root)
    assert resumed["iterations"] == expected["iterations"] == list(range(1, ITERATIONS + 1))
    assert resumed["optimizer_steps"] == expected["optimizer_steps"] == ITERATIONS
    initial = load_file(str(tiny_model_dir / "model.safetensors"))
    moved = max((expected["weights"][n].float() - initial[n].float()).abs().max().item() for n in initial)
    apart = max(
        (expected["weights"][n].float() - resumed["weights"][n].float()).abs().max().item() for n in initial
    )
    changed = sum(int((expected["weights"][n].float() != initial[n].float()).sum()) for n in initial)
    rewards = [json.loads(p.read_text())["rewards"] for p in sorted((whole.root / "updates").glob("*.json"))]
    report = {
        "device": torch.cuda.get_device_name(0),
        "dtype": str(next(iter(expected["weights"].values())).dtype),
        "largest_weight_change_in_training": moved,
        "largest_difference_resumed_vs_whole": apart,
        "weights_changed_by_training": changed / sum(t.numel() for t in initial.values()),
        "rewards": rewards,
    }
    print("gpu replay:", json.dumps(report))
    if os.environ.get("MPO_GPU_REPORT"):
        with Path(os.environ["MPO_GPU_REPORT"]).open("a") as out:
            out.write(json.dumps(report) + "\n")
    assert moved > 0  # training changed the weights, so agreement means something
    assert apart <= 0.01 * moved, report
