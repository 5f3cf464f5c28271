"""Tasks register by name; third-party tasks come in through the `mpo_agents.tasks` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from mpo_agents.errors import ConfigError

if TYPE_CHECKING:
    from mpo_agents.config import TaskConfig
    from mpo_agents.tasks.base import Task
    from mpo_agents.tasks.data import PromptBudget

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    _TASKS[cls.name] = cls
    return cls


def _discover() -> None:
    # Built-in tasks register on import.
    import mpo_agents.tasks.essay_writing
    import mpo_agents.tasks.ethical_reasoning
    import mpo_agents.tasks.math_reasoning
    import mpo_agents.tasks.summarization  # noqa: F401

    for entry in entry_points(group="mpo_agents.tasks"):
        entry.load()


def available_tasks() -> list[str]:
    _discover()
    return sorted(_TASKS)


def build_task(config: TaskConfig, load_data: bool = True, prompt_budget: PromptBudget | None = None) -> Task:
    """The configured task; `load_data=False` skips reading (and preparing) its records, and `prompt_budget`
    measures its prompts against the policy's limit (dropping the longer ones under `task.long_prompts: drop`)."""
    _discover()
    if config.name not in _TASKS:
        raise ConfigError(f"task.name: unknown task '{config.name}'. Available: {', '.join(sorted(_TASKS))}")
    return _TASKS[config.name](config=config, load_data=load_data, prompt_budget=prompt_budget)
