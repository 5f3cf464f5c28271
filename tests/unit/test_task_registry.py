"""Finding tasks through the `mpo_agents.tasks` entry point group: ours are registered like anyone's, and an entry
point that cannot give a task is refused with its name and what to fix."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from mpo_agents.config import TaskConfig
from mpo_agents.errors import ConfigError
from mpo_agents.tasks import Task, available_tasks, build_task
from tests.support.plugins import install_plugin_module

BUILT_IN = ["essay_writing", "ethical_reasoning", "math_reasoning", "summarization"]


FAKE_SOURCE = """
    from mpo_agents.tasks import Task

    class Limericks(Task):
        name = "limericks"
        default_data_file = "essay_prompts.jsonl"

    class Misnamed(Task):
        name = "something_else"
        default_data_file = "essay_prompts.jsonl"

    not_a_task = {"name": "dict"}
"""


@pytest.fixture
def fake_tasks(tmp_path, monkeypatch):
    install_plugin_module(
        tmp_path,
        "fake_tasks",
        FAKE_SOURCE,
        "mpo_agents.tasks",
        {
            "limericks": "fake_tasks:Limericks",
            "misnamed": "fake_tasks:Misnamed",
            "not_a_task": "fake_tasks:not_a_task",
            "missing_module": "no_such_module_here:Task",
            "missing_attribute": "fake_tasks:NoSuchClass",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_built_in_tasks_are_registered_through_entry_points_like_any_other():
    registered = {entry.name: entry.value for entry in entry_points(group="mpo_agents.tasks")}
    assert set(BUILT_IN) <= set(registered)
    assert registered["math_reasoning"] == "mpo_agents.tasks.math_reasoning:MathReasoning"
    assert set(BUILT_IN) <= set(available_tasks())


def test_the_registry_and_the_tasks_do_not_import_each_other():
    package = Path(__file__).resolve().parents[2] / "mpo_agents" / "tasks"
    registry = (package / "registry.py").read_text()
    assert not any(f"mpo_agents.tasks.{name}" in registry for name in BUILT_IN)
    for name in BUILT_IN:
        assert "registry" not in (package / f"{name}.py").read_text()


def test_a_task_from_an_installed_package_is_found_and_built(fake_tasks):
    assert "limericks" in available_tasks()
    task = build_task(TaskConfig(name="limericks"), load_data=False)
    assert isinstance(task, Task) and type(task).__name__ == "Limericks"


def test_an_unknown_task_names_the_available_ones(fake_tasks):
    with pytest.raises(ConfigError, match=r"task.name: unknown task 'sonnets'\. Available: .*essay_writing"):
        build_task(TaskConfig(name="sonnets"))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing_module", r"'missing_module' \(no_such_module_here:Task\) cannot be imported"),
        ("missing_attribute", r"'missing_attribute' \(fake_tasks:NoSuchClass\) cannot be imported"),
        ("not_a_task", r"'not_a_task' \(fake_tasks:not_a_task\) is .*not a task.*subclass of mpo_agents"),
        ("misnamed", r"'misnamed' \(fake_tasks:Misnamed\) is a task named 'something_else'"),
    ],
)
def test_an_entry_point_that_gives_no_task_is_refused_by_name(fake_tasks, name, message):
    with pytest.raises(ConfigError, match=message):
        build_task(TaskConfig(name=name), load_data=False)
