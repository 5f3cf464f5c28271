"""pyproject.toml lists the wheel's packages by hand (it maps folders from the repository's top into them):
the list must name every package in the tree, and each mapped folder must exist."""

from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

from mpo_agents.bundled import EXAMPLE_DATA_DIR, PROMPTS_DIR
from tests.support import REPO

SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_wheel_lists_every_package_of_the_tree():
    in_tree = {
        ".".join(Path(folder).relative_to(REPO).parts)
        for folder, _, files in os.walk(REPO / "mpo_agents", followlinks=True)  # into the graphs/ link too
        if "__init__.py" in files
    }
    listed = set(SETUPTOOLS["packages"]) - set(SETUPTOOLS["package-dir"])
    assert listed == in_tree


def test_mapped_folders_are_the_ones_the_package_reads_in_a_checkout():
    mapped = {package: REPO / folder for package, folder in SETUPTOOLS["package-dir"].items()}
    assert mapped == {
        "mpo_agents.prompt_files": PROMPTS_DIR,
        "mpo_agents.example_data": EXAMPLE_DATA_DIR,
    }
    assert (REPO / "mpo_agents" / "graphs").resolve() == REPO / "graphs"


def test_every_module_says_its_job_in_a_docstring():
    undocumented = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "mpo_agents").rglob("*.py"))
        if "__pycache__" not in path.parts and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert undocumented == []


def test_no_test_module_imports_another():
    borrowed = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for path in sorted((REPO / "tests").rglob("test_*.py"))
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(("from tests.unit", "from tests.integration", "import tests.unit"))
        or line.lstrip().startswith("import tests.integration")
    ]
    assert borrowed == []  # shared helpers live in tests/support
