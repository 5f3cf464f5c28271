"""What every `mpo` command shares: the stderr console, environment setup, options, and errors turned into
messages and exit codes."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from mpo_agents.errors import MPOError, StorageError

console = Console(stderr=True)  # progress and errors; a command's own report goes to stdout
EXIT_STORAGE = (
    74  # sysexits' EX_IOERR: the run directory cannot be written (disk full, read-only, no permission)
)

Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a field (repeatable).")]


def prepare_environment() -> None:
    from dotenv import load_dotenv

    # Provider keys (OPENAI_API_KEY, ...) may live in ./.env; variables already set win over the file.
    load_dotenv(Path.cwd() / ".env", override=False)
    # LiteLLM fetches a price map from the internet at import unless told not to; runs must work offline.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # transformers 5 deprecation notices about TRL's calls are for TRL's maintainers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    # `kill` (SIGTERM) unwinds like Ctrl-C's second press, so the local judge server is stopped on the way out.
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def fail(exc: Exception) -> NoReturn:
    console.print(f"[red]error:[/] {exc}")
    raise typer.Exit(code=2)


def storage_failed(exc: StorageError, run_dir: Path | None) -> NoReturn:
    """A write the OS refused: say what, what is kept and how to go on, here and in run.log; exit 74."""
    import logging

    from mpo_agents.policy import latest_checkpoint

    kept = "nothing yet (no policy checkpoint was completed)"
    if run_dir is not None and (latest := latest_checkpoint(Path(run_dir) / "policy")) is not None:
        kept = f"every step up to the last complete policy checkpoint, {latest.relative_to(run_dir)}"
    message = (
        f"cannot write {exc.path}: {exc.reason}. The run stopped at once; nothing half-written is ever read. "
        f"Kept: {kept}, and the graph's state after its last completed node. "
        f"Fix: {exc.fix}, then `mpo resume {run_dir or 'RUN_DIR'}`."
    )
    logging.getLogger("mpo_agents.cli").error(message)  # run.log, if the disk still takes a line
    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=EXIT_STORAGE)


def interrupted(run_dir: Path | None) -> NoReturn:
    console.print(
        f"[yellow]Interrupted.[/] Checkpoints are consistent; continue with: mpo resume {run_dir or 'RUN_DIR'}"
    )
    raise typer.Exit(code=130)


@contextmanager
def stops_reported(run_dir: Path) -> Iterator[None]:
    """What a command on an existing run can stop with, each said once with its exit code: a write the OS refused
    (74), our own error (2), Ctrl-C (130)."""
    try:
        yield
    except StorageError as exc:
        storage_failed(exc, run_dir)
    except MPOError as exc:
        fail(exc)
    except KeyboardInterrupt:
        interrupted(run_dir)
