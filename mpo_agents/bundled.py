"""Where the files shipped with the package live: the prompt files and the tasks' sample data.

A wheel carries them inside the package (`mpo_agents/prompt_files`, `mpo_agents/example_data`, mapped in by
pyproject.toml); a source checkout, editable install included, keeps them at the repository's top (`prompts/`,
`examples/data/`), where our users look for them.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPOSITORY_DIR = PACKAGE_DIR.parent


def _first_folder(*candidates: Path) -> Path:
    return next((folder for folder in candidates if folder.is_dir()), candidates[-1])


PROMPTS_DIR = _first_folder(PACKAGE_DIR / "prompt_files", REPOSITORY_DIR / "prompts")
EXAMPLE_DATA_DIR = _first_folder(PACKAGE_DIR / "example_data", REPOSITORY_DIR / "examples" / "data")
