"""Several processes for one run (mpo_agents/parallel.py), on CPU with gloo: a policy step shared by two
processes equals the single-process step, and a two-process `mpo run` killed mid-run resumes to the same
weights as an uninterrupted one."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mpo_agents.cli.launch import launch_command
from mpo_agents.config import MPOConfig
from mpo_agents.errors import CheckpointError, ConfigError
from mpo_agents.judges.local_server import free_port
from mpo_agents.rundir import read_jsonl
from tests.support import REPO, TEST_ENV, run_overrides
from tests.support.cli import as_options, finish, start_mpo

torch = pytest.importorskip("torch")

SUPPORT = REPO / "tests" / "support"
CONVERSATIONS = [
    [{"role": "user", "content": "Write about a cat."}],
    [{"role": "user", "content": "Write a short poem about the river city, please."}],
]


def policy_config(model_dir: Path, lora: bool = False, algorithm: str = "grpo") -> MPOConfig:
    return MPOConfig(
        policy={
            "model": str(model_dir),
            "device": "cpu",
            "dtype": "float32",
            "generation": {"max_new_tokens": 12, "temperature": 0.9},
            # No adapter dropout: each process draws its own masks, which one process would draw differently.
            "lora": {"enabled": lora, "r": 8, "alpha": 16, "dropout": 0.0},
        },
        trainer={
            "algorithm": algorithm,
            "learning_rate": 1e-2,  # large, so the step visibly moves the weights
            "beta": 0.04,  # the KL term is on
            "num_generations": 4,
            "prompts_per_iteration": 2,
            "max_prompt_length": 64,
        },
    )


def child_env() -> dict[str, str]:
    return {**os.environ, **TEST_ENV, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def trained_weights(policy) -> dict:
    """What a checkpoint holds: the whole model's weights, or the adapter's (as PEFT saves it)."""
    if policy.is_lora:
        from peft import get_peft_model_state_dict

        return {name: p.detach().clone() for name, p in get_peft_model_state_dict(policy.model).items()}
    return {name: p.detach().clone() for name, p in policy.model.named_parameters()}


def launcher(kind: str) -> list[str]:
    """Two processes: plain torchrun (DDP), or accelerate with the shipped DeepSpeed ZeRO-2 config (on CPU in
    fp32: DeepSpeed falls back to its CPU accelerator and gloo)."""
    port = str(free_port())
    if kind == "zero2":
        config = REPO / "examples" / "accelerate" / "deepspeed_zero2.yaml"
        return [
            *[sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)],
            *["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", port],
        ]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port]


@pytest.mark.parametrize(
    "kind",
    [
        "full",
        "lora",
        "rloo",  # TRL's RLOOTrainer: its leave-one-out baseline over rewards gathered from both processes
        pytest.param(
            "zero2",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (the dev extra)"
            ),
        ),
    ],
)
def test_a_step_shared_by_two_processes_equals_the_single_process_step(tiny_model_dir, tmp_path, kind):
    from mpo_agents.policy import build_policy

    lora = kind == "lora"
    config = policy_config(tiny_model_dir, lora, algorithm="rloo" if kind == "rloo" else "grpo")
    single = build_policy(config.policy, config.trainer, tmp_path / "single")
    rollouts = single.generate(CONVERSATIONS, 4, seed=3, key_prefix="it0001")
    rewards = [float(len(r.completion_ids) % 5) + 0.5 * r.generation_index for r in rollouts]
    rewards[5] = None  # a failed judgment in process 1's share
    initial = trained_weights(single)
    batch = {"conversations": CONVERSATIONS, "rollouts": [r.to_dict() for r in rollouts], "rewards": rewards}
    (tmp_path / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    (tmp_path / "batch.json").write_text(json.dumps(batch))
    out = tmp_path / "shared"
    script = [
        str(SUPPORT / "distributed_update.py"),
        *(str(tmp_path / n) for n in ("config.json", "batch.json")),
    ]
    launched = subprocess.run(
        [*launcher(kind), *script, str(out)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    stats_single = single.update(rollouts, rewards)
    result = json.loads((out / "result.json").read_text())
    weights_file = "adapter/adapter_model.safetensors" if lora else "model/model.safetensors"
    shared = load_file(str(out / "policy" / "iter-000001" / weights_file))
    after = trained_weights(single)
    assert shared.keys() == after.keys()
    moved = max((after[name] - initial[name]).abs().max().item() for name in initial)
    assert moved > 1e-4  # the step did something, so equality below means something
    # Not bitwise: DDP sums the two halves' gradients in another order, and Adam's first step (about
    # lr * sign(g)) magnifies that for the few weights whose gradient is near its epsilon. So the step as a whole
    # must agree to 0.1%; a process training on the wrong share, or without the other's gradient, is off by O(1).
    ours = torch.cat([(shared[name] - initial[name]).flatten() for name in initial])
    reference = torch.cat([(after[name] - initial[name]).flatten() for name in initial])
    assert (ours - reference).norm() / reference.norm() < 1e-3
    stats = result["stats"]
    assert stats["processes"] == 2 and stats["num_scored"] == 7 and stats["num_failed"] == 1
    assert stats["grad_norm"] == pytest.approx(stats_single["grad_norm"], rel=1e-4)
    assert stats["reward_mean"] == pytest.approx(stats_single["reward_mean"], rel=1e-5)

    # Rollouts: each process sampled its own prompt; process 0 got all of them, keyed by batch position.
    sampled = result["sampled"]
    assert [r["key"] for r in sampled] == [f"it0001-p{p}-g{g}" for p in range(2) for g in range(4)]
    assert [r["prompt_index"] for r in sampled] == [0] * 4 + [1] * 4
    # Process 1's torch RNG state went into the checkpoint beside process 0's.
    tensors = load_file(str(out / "policy" / "iter-000001" / "optimizer.safetensors"))
    assert "rng.torch" in tensors and "process.1.rng.torch" in tensors
    assert (out / "run.rank1.log").is_file()
    # Restoring the checkpoint restores the optimizer too: the step after it is the step before it, bit for bit.
    assert result["resumed_step_identical"]
    if kind == "zero2":  # each process's optimizer partition, in DeepSpeed's own files
        partitions = sorted((out / "policy" / "iter-000001" / "deepspeed").rglob("*optim_states.pt"))
        assert len(partitions) == 2
        # Without DeepSpeed the partitions cannot be restored: refused, not half-loaded.
        with pytest.raises(CheckpointError, match="written under DeepSpeed ZeRO"):
            single.load(out / "policy" / "iter-000001")


# How `mpo` starts here: one thread per process, in a session of its own, so that the test can kill the
# launcher and every process it started at once.
LAUNCHER = {"env": {"OMP_NUM_THREADS": "1"}, "start_new_session": True}


def final_weights(run_dir: Path) -> dict:
    final = max((run_dir / "policy").glob("iter-*"))
    return load_file(str(final / "model" / "model.safetensors"))


def test_two_process_run_killed_and_resumed_equals_an_uninterrupted_one(tiny_model_dir, tmp_path):
    from tests.support.judge_server import JudgeServer, KeywordRule

    settings = run_overrides(
        tiny_model_dir, "URL", **{"schedule.iterations": 3, "schedule.meta_every": 2, "policy.cpu_threads": 1}
    )
    with JudgeServer(
        KeywordRule("with"), latency=0.02
    ) as server:  # "with" is common in the tiny model's text
        sets = as_options(pair.replace("URL", server.url) for pair in settings)
        whole = tmp_path / "whole"
        finish(
            start_mpo("run", "--run-dir", str(whole), "--num-processes", "2", *sets, **LAUNCHER), timeout=300
        )

        killed = tmp_path / "killed"
        process = start_mpo("run", "--run-dir", str(killed), "--num-processes", "2", *sets, **LAUNCHER)
        deadline = time.monotonic() + 240
        # The update of iteration 2 applied; no policy checkpoint holds it (the cadence writes after the 3rd), so
        # the resume applies updates 1 and 2 again, in both processes.
        while not (killed / "updates" / "iter-0002.json").exists():
            assert process.poll() is None, process.stdout.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the update of iteration 2 never came"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both processes, mid-run
        process.wait()
        output = finish(start_mpo("resume", str(killed), "--num-processes", "2", **LAUNCHER), timeout=300)

    assert "Run finished: 3/3 iterations" in output
    metrics = read_jsonl(killed / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    assert all(m["update_processes"] == 2 for m in metrics)
    rewards = [m["reward_mean"] for m in read_jsonl(whole / "metrics.jsonl")]
    assert len(set(rewards)) > 1 or rewards[0] != 0  # the judge's scores varied: the weights really moved
    expected, resumed = final_weights(whole), final_weights(killed)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def test_launch_command_and_world_checks(tmp_path):
    command = launch_command(["run", "cfg.yaml"], 4, None)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command and command[command.index("--num_processes") + 1] == "4"
    assert command[-4:] == ["-m", "mpo_agents", "run", "cfg.yaml"]
    config_file = tmp_path / "zero2.yaml"
    config_file.write_text("distributed_type: DEEPSPEED\n")
    with_file = launch_command(["resume", "runs/x"], None, config_file)
    assert with_file[3:5] == ["--config_file", str(config_file)] and "--multi_gpu" not in with_file
    with pytest.raises(ConfigError, match="does not exist"):
        launch_command(["run"], 2, tmp_path / "missing.yaml")


def test_uneven_prompt_share_is_refused_before_loading(tmp_path):
    from mpo_agents.parallel import ControlChannel, check_world

    config = MPOConfig(trainer={"prompts_per_iteration": 3})
    with pytest.raises(ConfigError, match="trainer.prompts_per_iteration is 3.*multiple of 2"):
        check_world(config, ControlChannel(rank=0, world_size=2, group=None), {})


def test_ppo_is_refused_on_several_processes_before_loading():
    from mpo_agents.parallel import ControlChannel, check_world

    config = MPOConfig(trainer={"algorithm": "ppo", "prompts_per_iteration": 4})
    with pytest.raises(ConfigError, match="trainer.algorithm ppo runs in one process"):
        check_world(config, ControlChannel(rank=0, world_size=2, group=None), {})


def test_a_refused_multi_process_run_ends_every_process_with_the_reason(tiny_model_dir, tmp_path):
    """Process 0 refuses the config before any model loads; the followers, waiting for the run to be announced,
    are released instead of keeping the launcher waiting."""
    settings = run_overrides(tiny_model_dir, "http://127.0.0.1:9/v1", **{"trainer.prompts_per_iteration": 3})
    sets = as_options(settings)
    process = start_mpo("run", "--run-dir", str(tmp_path / "run"), "--num-processes", "2", *sets, **LAUNCHER)
    output, _ = process.communicate(timeout=180)
    text = output.decode(errors="replace")
    assert process.returncode != 0
    assert "trainer.prompts_per_iteration is 3, which 2 processes cannot share" in text
    assert not list((tmp_path / "run" / "policy").glob("iter-*"))


def test_parameter_sharding_is_refused_with_the_reason():
    from mpo_agents.parallel import check_sharding

    check_sharding({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"})  # supported
    with pytest.raises(ConfigError, match="FSDP, which shards the policy's parameters"):
        check_sharding({"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(ConfigError, match="DeepSpeed ZeRO stage 3.*ZeRO stages 1 and 2"):
        check_sharding({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
