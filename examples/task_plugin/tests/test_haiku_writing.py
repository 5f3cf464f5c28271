"""The example task as mpo-agents sees it once the package is installed: found by name, its own prompts and
data, its guard."""

from __future__ import annotations

from mpo_agents.config import TaskConfig
from mpo_agents.tasks import available_tasks, build_task


def test_the_task_is_found_through_its_entry_point():
    assert "haiku_writing" in available_tasks()


def test_it_reads_its_own_data_and_prompt_files():
    task = build_task(TaskConfig(name="haiku_writing"))
    assert len(task.records) == 12 and all(record["topic"] for record in task.records)
    record = next(record for record in task.records if record["topic"] == "cicadas at noon")
    conversation = task.policy_conversation(record)
    assert "haiku" in conversation[0]["content"] and "Topic: cicadas at noon" in conversation[-1]["content"]
    assert task.prompt_variables(record)["persona"].startswith("You are a poetry teacher")
    assert [c.high for c in task.initial_rubric().parsed().criteria] == [2, 3]


def test_a_poem_of_more_than_three_lines_is_scored_without_the_judge():
    task = build_task(TaskConfig(name="haiku_writing"), load_data=False)
    record = {"topic": "rain"}
    assert task.guard(record, "rain on the tin roof\nthe kettle starts to murmur\nwe do not get up") is None
    guarded = task.guard(record, "one\ntwo\nthree\nfour")
    assert guarded is not None and guarded.score == 0.0 and "4 lines" in guarded.reason
