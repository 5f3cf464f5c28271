"""Shared test helpers: the repository's folders, the environment tests run with, and fast-run overrides.

The rest, by what they stand in for or drive: `judge_server` (the scripted OpenAI-compatible judge),
`tiny_model` (the policy), `judge_client` (a JudgeClient on that server), `scoring` (one completion scored),
`runs` (a whole run in this process), `cli` (`mpo` in a child process), `distributed_update` (a policy
update in several processes). No test module imports another: what two of them share lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TEST_ENV = {"TEST_JUDGE_KEY": "sk-test-secret-123"}
# A rubric the scripted judge's keyword rule ("good") scores predictably: per criterion, the count, clipped.
TWO_CRITERIA = "Criterion 1: Uses the word good well. (0-5 points)\nCriterion 2: Stays on topic. (0-3 points)"


def run_overrides(model_dir: Any, judge_url: str, **extra: Any) -> list[str]:
    """`--set` overrides for a fast run of the tiny model against a test judge server."""
    settings = {
        "policy.model": str(model_dir),
        "policy.generation.max_new_tokens": 8,
        "judge.model": "openai/test-judge",
        "judge.api_base": judge_url,
        "judge.api_key_env": "TEST_JUDGE_KEY",
        "judge.timeout": 5,
        "judge.retries": 2,
        "judge.retry_backoff": 0.01,
        "meta_judge.model": "openai/test-judge",
        "meta_judge.api_base": judge_url,
        "meta_judge.api_key_env": "TEST_JUDGE_KEY",
        "meta_judge.timeout": 5,
        "meta_judge.retries": 2,
        "meta_judge.retry_backoff": 0.01,
        "trainer.num_generations": 4,
        "trainer.prompts_per_iteration": 2,
        "task.max_prompts": 16,
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]
