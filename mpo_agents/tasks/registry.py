"""Finding tasks by name in the `mpo_agents.tasks` entry point group and building them from the config. Our own
tasks are registered the same way (pyproject.toml), so a user's task is a package, no different from ours."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from mpo_agents.errors import ConfigError
from mpo_agents.tasks.base import Task

if TYPE_CHECKING:
    from mpo_agents.config import TaskConfig
    from mpo_agents.tasks.data import PromptBudget

ENTRY_POINT_GROUP = "mpo_agents.tasks"


def _registered() -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}


def available_tasks() -> list[str]:
    """The names of the installed tasks (nothing is imported to list them)."""
    return sorted(_registered())


def task_class(name: str) -> type[Task]:
    """The Task subclass registered as `name`; a ConfigError names the entry point that cannot provide it."""
    registered = _registered()
    entry = registered.get(name)
    if entry is None:
        known = ", ".join(sorted(registered)) or "none"
        raise ConfigError(
            f"task.name: unknown task '{name}'. Available: {known}. A task is found through the "
            f'`[project.entry-points."{ENTRY_POINT_GROUP}"]` of an installed package: install the one that '
            "provides it (after changing a source checkout's entry points, `pip install -e .` again)"
        )
    try:
        cls = entry.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task.name: '{name}' ({entry.value}) cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(
            f"task.name: '{name}' ({entry.value}) is {cls!r}, which is not a task: the entry point must name a "
            "subclass of mpo_agents.tasks.Task"
        )
    if getattr(cls, "name", None) != name:
        # The class's name finds its prompt files (prompts/<name>/) and labels its runs: the two must agree.
        raise ConfigError(
            f"task.name: '{name}' ({entry.value}) is a task named {getattr(cls, 'name', None)!r}; register it "
            f'under its own name, or set `name = "{name}"` on the class'
        )
    return cls


def build_task(config: TaskConfig, load_data: bool = True, prompt_budget: PromptBudget | None = None) -> Task:
    """The configured task; `load_data=False` skips reading (and preparing) its records, and `prompt_budget`
    measures its prompts against the policy's limit (dropping the longer ones under `task.long_prompts: drop`)."""
    return task_class(config.name)(config=config, load_data=load_data, prompt_budget=prompt_budget)
