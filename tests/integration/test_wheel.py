"""The package as a user gets it from an index: a built wheel, installed into a fresh virtualenv that cannot see
the source tree, driven from a directory of its own. Editable installs read prompts and data from the checkout
and so hide what a wheel leaves out; this test is the one that does not."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from mpo_agents.rundir import read_jsonl, write_jsonl
from tests.support import REPO, TEST_ENV, TWO_CRITERIA
from tests.support.cli import mpo

UNTRACKED = (
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "runs",
    "__pycache__",
    ".*_cache",
    ".gpu",
)
# One worker runs this module under pytest-xdist: the wheel and its virtualenv (module-scoped) are built once.
pytestmark = pytest.mark.xdist_group("wheel")


def _setuptools_is_recent() -> bool:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 68
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy of the tracked tree: a build in the checkout would leave build/ and *.egg-info behind, and a
    # stale build/lib (modules since renamed) would end up in the next wheel.
    source = tmp_path_factory.mktemp("source") / "mpo-agents"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*UNTRACKED))
    # Without build isolation when this environment can build it (offline, seconds); else pip fetches the
    # build backend that pyproject.toml asks for.
    no_isolation = ["--no-build-isolation"] if _setuptools_is_recent() else []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *no_isolation, "-w", out, source],
        check=True,
        capture_output=True,
        timeout=300,
        env=_clean_env(),
    )
    (built,) = out.glob("mpo_agents-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv holding the wheel; its dependencies come from this environment's site-packages, added
    as a plain path (so this environment's editable install of the checkout is not activated there)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300, env=_clean_env())
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Without this checkout on PYTHONPATH: pip would find the checkout's mpo_agents.egg-info there (written by
    # the wheel build above) and skip the install as "already installed with the same version".
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
        timeout=300,
        env=_clean_env(),
    )
    return venv


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without what points Python or pip at the checkout (a PYTHONPATH would make pip think
    the package is installed already, and the installed one import the checkout's modules)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **TEST_ENV, **extra}


def installed_mpo(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `mpo` installed in `venv`, without this checkout on its path."""
    return mpo(*args, program=[venv / "bin" / "mpo"], cwd=cwd, base_env=_clean_env())


def test_the_wheel_carries_prompts_and_data_inside_its_own_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"mpo_agents"}  # no top-level `graphs` (or `prompts`) to collide with other projects
    assert "mpo_agents/graphs/mpo.py" in names
    assert "mpo_agents/prompt_files/essay_writing/judge.md" in names
    assert "mpo_agents/prompt_files/_common/meta_analyze.md" in names
    assert "mpo_agents/example_data/essay_prompts.jsonl" in names
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "mpo_agents.cli:app" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_package_runs_outside_the_source_tree(installed, tmp_path, judge_server):
    located = subprocess.run(
        [
            installed / "bin" / "python",
            "-c",
            (
                "import json, mpo_agents, mpo_agents.graphs.mpo as g, mpo_agents.prompts as p;"
                "print(json.dumps([mpo_agents.__file__, g.__file__, str(p.DEFAULT_PROMPTS_DIR)]))"
            ),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
        check=True,
    )
    for path in json.loads(located.stdout):
        assert Path(path).is_relative_to(installed) and not Path(path).is_relative_to(REPO)

    server = judge_server()  # per criterion: occurrences of "good", clipped to the criterion's range
    (tmp_path / "config.yaml").write_text(
        "task:\n  name: essay_writing\n"
        "judge:\n"
        f"  model: openai/test-judge\n  api_base: {server.url}\n  api_key_env: TEST_JUDGE_KEY\n"
        "  timeout: 5\n  retries: 2\n  retry_backoff: 0.01\n"
    )
    shown = installed_mpo(installed, "config", "config.yaml", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "essay_writing" in shown.stdout and "test-judge" in shown.stdout

    drawn = installed_mpo(installed, "graph", "config.yaml", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert "rollout" in drawn.stdout and "policy_update" in drawn.stdout

    (tmp_path / "rubric.md").write_text(TWO_CRITERIA)
    write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"prompt": "Write about parks.", "completion": "good good good good parks"},
            {"prompt": "Write about cities.", "completion": "good city"},
        ],
    )
    scored = installed_mpo(
        installed, "score", "config.yaml", "--input", "in.jsonl", "--rubric", "rubric.md", "--output", "out.jsonl",
        cwd=tmp_path,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert [s["score"] for s in read_jsonl(tmp_path / "out.jsonl")] == [4 + 3, 1 + 1]
    assert server.requests  # real HTTP through LiteLLM to the test server
