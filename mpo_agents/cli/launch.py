"""Several processes from one command: re-launching `mpo` under `accelerate launch`, and each launched process
joining the run (process 0 drives it, the others serve their policy replica)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from mpo_agents.cli.common import fail
from mpo_agents.errors import MPOError

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


def launch_or_follow(arguments: list[str], num_processes: int | None, accelerate_config: Path | None) -> bool:
    """Multi-process runs. Asked for several processes: re-launch `mpo <arguments>` under `accelerate launch`
    (never returns). Inside such a launch, a process other than 0 serves its policy replica and returns True:
    the command ends there, process 0 does the rest."""
    from mpo_agents import parallel

    try:
        if parallel.launched_world_size(os.environ) <= 1 and (
            (num_processes or 1) > 1 or accelerate_config is not None
        ):
            parallel.relaunch(arguments, num_processes, accelerate_config)
        channel = parallel.join(os.environ)
    except MPOError as exc:
        fail(exc)
    if channel is None or channel.is_main:
        return False
    parallel.follow(channel)
    return True
