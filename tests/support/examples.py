"""An example package under examples/ installed with pip into a folder of its own, and its own tests run there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, TEST_ENV


def install_example(example: Path, target: Path) -> dict[str, str]:
    """Install `example` (no dependencies, no build isolation) into `target`; the environment in which both it and
    this checkout are importable."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--target", str(target), str(example)], check=True, capture_output=True, timeout=300
    )
    return {**os.environ, **TEST_ENV, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}


def run_own_tests(example: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The example package's own tests (its `tests/` folder), run as its author would."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example / "tests")],
        check=False,
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
