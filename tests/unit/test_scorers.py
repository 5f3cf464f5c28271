"""The named scorers: registered by name, chosen by `scoring.mode` unless the task names its own, and the
ensemble's per-criterion combining."""

from __future__ import annotations

from typing import ClassVar

import pytest

from mpo_agents.config import MPOConfig, ScoringConfig, TaskConfig
from mpo_agents.errors import ConfigError
from mpo_agents.judges.ensemble import combine_items, nearest
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.scoring.scorers import SCORERS, plan_then_execute
from mpo_agents.tasks import Task, build_task


class Sonnets(Task):
    name: ClassVar[str] = "sonnets"
    default_data_file: ClassVar[str] = "essay_prompts.jsonl"
    judge_scorer: ClassVar[str | None] = "rhyme_counter"


def test_the_four_scorers_are_registered_by_name():
    assert set(SCORERS) == {"holistic", "per_item", "json", "plan_then_execute"}


@pytest.mark.parametrize("mode", ["holistic", "per_item", "json"])
def test_the_configured_mode_picks_the_scorer(mode):
    config = MPOConfig(task=TaskConfig(name="essay_writing"), scoring=ScoringConfig(mode=mode))
    assert Scorer(build_task(config.task, load_data=False), None, config).judge_scorer is SCORERS[mode]


def test_the_math_task_names_its_two_step_judge_whatever_the_mode():
    config = MPOConfig(task=TaskConfig(name="math_reasoning"), scoring=ScoringConfig(mode="per_item"))
    task = build_task(config.task, load_data=False)
    assert Scorer(task, None, config).judge_scorer is plan_then_execute
    assert task.reference_of({"problem": "1+1?", "solution": "It is $\\boxed{2}$."}) == "It is $\\boxed{2}$."
    assert build_task(TaskConfig(name="essay_writing"), load_data=False).reference_of({"prompt": "p"}) is None


def test_a_task_that_names_an_unknown_scorer_is_refused():
    config = MPOConfig(task=TaskConfig(name="sonnets"))
    with pytest.raises(
        ConfigError, match=r"task sonnets: judge_scorer: no scorer named 'rhyme_counter'.*holistic"
    ):
        Scorer(Sonnets(config=config.task, load_data=False), None, config)


def test_ensemble_items_combine_per_criterion_with_the_nearest_members_rationale():
    members = [
        [
            {"criterion": 1, "score": 4.0, "rationale": "a1"},
            {"criterion": 2, "score": 1.0, "rationale": "a2"},
        ],
        [
            {"criterion": 1, "score": 2.0, "rationale": "b1"},
            {"criterion": 2, "score": 1.0, "rationale": "b2"},
        ],
        [
            {"criterion": 1, "score": 3.0, "rationale": "c1"},
            {"criterion": 2, "score": 3.0, "rationale": "c2"},
        ],
    ]
    assert combine_items(members, "median") == [
        {"criterion": 1, "score": 3.0, "rationale": "c1"},
        {"criterion": 2, "score": 1.0, "rationale": "a2"},  # a tie between members goes to the first
    ]
    assert nearest([5.0, 2.0, 2.5], 2.4) == 2
