"""Prompt files: turns, named placeholders, prefills and per-API variants."""

from __future__ import annotations

import pytest

from mpo_agents.errors import ConfigError
from mpo_agents.prompts import load_prompt, prompt_path


def test_shipped_essay_prompts_render_with_their_placeholders():
    judge = load_prompt("essay_writing", "judge").render(
        prompt="P", rubric="R", low="0", high="5", response="X"
    )
    assert [m["role"] for m in judge.messages] == ["system", "user"]
    assert "<response>X</response>" in judge.messages[-1]["content"]
    assert judge.messages[-1]["content"].endswith(
        "Reason:"
    )  # no trailing newline: completion models continue it
    assert judge.prefill is None


def test_completion_variant_is_preferred_for_completion_api_and_has_a_prefill():
    assert prompt_path("essay_writing", "meta_refine", "completion").name == "meta_refine.completion.md"
    assert prompt_path("essay_writing", "meta_refine", "chat").name == "meta_refine.md"
    assert prompt_path("essay_writing", "meta_refine", "chat").parent.name == "_common"  # shared by tasks
    assert prompt_path("essay_writing", "judge", "chat").parent.name == "essay_writing"  # task file wins
    rendered = load_prompt("essay_writing", "meta_refine", "completion").render(
        rubric="Criterion 1: A. (0-5 points)", analysis="too lenient", next_item=2
    )
    assert rendered.prefill == "Criterion 1: A. (0-5 points)\nCriterion 2:"
    assert rendered.full_reply(" Evidence. (0-3 points)").endswith("Criterion 2: Evidence. (0-3 points)")


def test_missing_placeholder_names_the_file_and_the_variable():
    with pytest.raises(ConfigError, match="rubric"):
        load_prompt("essay_writing", "judge").render(prompt="P", low="0", high="5", response="X")


def test_custom_prompts_dir_and_missing_role(tmp_path):
    (tmp_path / "mytask").mkdir()
    (tmp_path / "mytask" / "judge.md").write_text("Grade {{ response }}\n--- assistant ---\nScore:")
    rendered = load_prompt("mytask", "judge", prompts_dir=tmp_path).render(response="hi")
    assert rendered.messages == [
        {"role": "user", "content": "Grade hi"},
        {"role": "assistant", "content": "Score:"},
    ]
    with pytest.raises(ConfigError, match="no prompt file"):
        load_prompt("mytask", "policy", prompts_dir=tmp_path)


def test_a_new_task_gets_the_shared_framing_until_it_writes_its_own(tmp_path):
    from mpo_agents.config import TaskConfig
    from mpo_agents.tasks.base import Task

    class Poems(Task):
        name = "poems"
        default_data_file = "essay_prompts.jsonl"

    (tmp_path / "poems").mkdir()
    task = Poems(config=TaskConfig(name="poems", prompts_dir=tmp_path, max_prompts=2))
    variables = task.prompt_variables(task.records[0])
    assert variables["task_input"] == f"Task: {task.records[0]['prompt']}"
    assert "impartial grader" in variables["persona"]
    (tmp_path / "poems" / "persona.md").write_text("You are a poet who grades poems.")
    assert task.prompt_variables(task.records[0])["persona"] == "You are a poet who grades poems."
