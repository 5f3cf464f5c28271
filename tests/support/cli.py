"""Running the `mpo` command in a child process, as a user does: to the end (`mpo`) or in the background."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support import TEST_ENV

MPO = (sys.executable, "-m", "mpo_agents")


def as_options(sets: Iterable[str]) -> list[str]:
    """`--set` overrides as command-line options: `["a=1", "b=2"]` -> `["--set", "a=1", "--set", "b=2"]`."""
    return [item for pair in sets for item in ("--set", pair)]


def run_command(run_dir: Path | str, sets: Iterable[str]) -> list[str]:
    """The arguments of `mpo run --run-dir RUN_DIR --set ...`."""
    return ["run", "--run-dir", str(run_dir), *as_options(sets)]


def mpo(
    *args: str | Path,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    check: bool = False,
    program: Sequence[str | Path] = MPO,
    base_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`mpo ARGS` to the end, its output captured as text.

    `env` is added to `base_env` (default: this process's environment); `check` asserts a zero exit status and
    shows the end of stderr otherwise; `program` replaces `python -m mpo_agents` (e.g. an installed `mpo`).
    """
    done = subprocess.run(
        [*program, *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**(os.environ if base_env is None else base_env), **(env or {})},
        timeout=timeout,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_mpo(*args: str | Path, env: Mapping[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """`mpo ARGS` in the background with the test judge's key, stdout and stderr in one pipe (bytes).

    Unbuffered, so a test waiting for a line sees it at once, and on a wide console: rich wraps long lines at
    the terminal's width, even inside a path that a test looks for. `popen` goes to `subprocess.Popen` (e.g.
    `cwd`, or `start_new_session=True` to kill a launcher and every process it started at once).
    """
    return subprocess.Popen(
        [*MPO, *map(str, args)],
        env={**os.environ, **TEST_ENV, "PYTHONUNBUFFERED": "1", "COLUMNS": "400", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a background `mpo` to end; assert it succeeded and return its output."""
    output, _ = process.communicate(timeout=timeout)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    return text


def wait_for(path_glob: tuple[Path, str], process: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until a file matching `(root, pattern)` exists, while `process` is still running."""
    root, pattern = path_glob
    deadline = time.monotonic() + timeout
    while not list(root.glob(pattern)):
        assert process.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, f"{pattern} never appeared"
        time.sleep(0.005)
