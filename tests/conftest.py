"""Shared fixtures. The environment is set first: no test may reach the network or fetch model files."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from judge_server import JudgeServer  # tests/ is on sys.path (rootdir conftest)

# -- judges ---------------------------------------------------------------------------------------------------


@pytest.fixture
def judge_server() -> Iterator[Callable[..., JudgeServer]]:
    """Factory: `judge_server(reply_fn=None, latency=0.0, **kw)` starts a scripted OpenAI-compatible server on
    127.0.0.1 (see tests/judge_server.py); every server started is stopped at the end of the test."""
    started: list[JudgeServer] = []

    def start(reply_fn: Any = None, latency: float = 0.0, **kwargs: Any) -> JudgeServer:
        server = JudgeServer(reply_fn, latency, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- policies -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny causal LM + tokenizer with a chat template, built offline once per test session."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


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


TEST_ENV = {"TEST_JUDGE_KEY": "sk-test-secret-123"}
