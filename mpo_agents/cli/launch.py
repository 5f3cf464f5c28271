"""Several processes from one command: re-launching `mpo` under `accelerate launch`, the checks that belong
to launching, and each launched process joining the run (process 0 drives it, the others serve a replica)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mpo_agents.cli.common import fail
from mpo_agents.errors import ConfigError, MPOError

if TYPE_CHECKING:
    from mpo_agents.parallel import ControlChannel

# Options of every command that can continue a run (run, resume, review), for several processes.
NumProcesses = Annotated[
    int | None,
    typer.Option(
        "--num-processes",
        help="Run across this many processes (one per GPU) through `accelerate launch`; see docs/scaling.md.",
    ),
]
AccelerateConfig = Annotated[
    Path | None,
    typer.Option(
        "--accelerate-config", help="An accelerate config file for the launch (examples/accelerate/)."
    ),
]


def repeat(flag: str, values: list[Any] | None) -> list[str]:
    """`--flag value` for each value: a command's options, spelled again for the re-launched command."""
    return [item for value in values or [] for item in (flag, str(value))]


def launch_or_follow(
    arguments: list[str], num_processes: int | None, accelerate_config: Path | None
) -> ControlChannel | None:
    """Multi-process runs. Asked for several processes: re-launch `mpo <arguments>` under `accelerate launch`
    (never returns). Inside such a launch, process 0 gets its channel to the others, for the runner; a process
    other than 0 serves its policy replica, and its command ends there (typer.Exit). None: one process."""
    from mpo_agents import parallel

    try:
        if launched_world_size(os.environ) <= 1:
            if (num_processes or 1) > 1 or accelerate_config is not None:
                relaunch(arguments, num_processes, accelerate_config)
            return None
        channel = parallel.join()
    except MPOError as exc:
        fail(exc)
    if channel.is_main:
        return channel
    from mpo_agents.context import build_run_policy

    parallel.follow(channel, build_run_policy)
    raise typer.Exit()


def launched_world_size(environ: Mapping[str, str]) -> int:
    """How many processes the launcher (accelerate, torchrun) started; 1 when run directly."""
    return int(environ.get("WORLD_SIZE", "1") or 1)


def launch_command(
    mpo_arguments: Sequence[str], num_processes: int | None, accelerate_config: Path | None
) -> list[str]:
    """The `accelerate launch` command that runs `mpo <mpo_arguments>` in `num_processes` processes.

    Without an accelerate config file, `--multi_gpu` makes accelerate start one process per rank with
    torchrun (DDP over NCCL on GPUs; on a CPU-only machine the policy's `use_cpu` makes it gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is not None:
        if not Path(accelerate_config).is_file():
            raise ConfigError(f"--accelerate-config: {accelerate_config} does not exist")
        command += ["--config_file", str(accelerate_config)]
    elif num_processes is not None and num_processes > 1:
        # A free rendezvous port: two runs on one machine must not both take accelerate's default 29500. The
        # other flags are accelerate's defaults, spelled out so it does not print a warning about them; the
        # precision is the policy's own (`policy.dtype` sets TRL's bf16/fp16, which wins over the launcher's).
        from mpo_agents.judges.local_server import free_port

        command += ["--multi_gpu", "--main_process_port", str(free_port())]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes is not None:
        command += ["--num_processes", str(num_processes)]
    return [*command, "-m", "mpo_agents", *mpo_arguments]


def relaunch(mpo_arguments: Sequence[str], num_processes: int | None, accelerate_config: Path | None) -> None:
    """Replace this process by `accelerate launch` of the same command in several processes."""
    import torch

    if num_processes is not None and num_processes < 1:
        raise ConfigError("--num-processes must be at least 1")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and num_processes is not None and num_processes > gpus:
        raise ConfigError(
            f"--num-processes {num_processes} asks for more processes than the {gpus} visible GPU(s); one "
            "process drives one GPU"
        )
    command = launch_command(mpo_arguments, num_processes, accelerate_config)
    print(f"launching: {shlex.join(command[1:])}", file=sys.stderr, flush=True)
    os.execv(command[0], command)
