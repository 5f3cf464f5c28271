"""Shared fixtures. The environment is set first: no test may reach the network or fetch model files."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.judge_server import JudgeServer

# -- workers ------------------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The default suite runs on 2 pytest-xdist workers (`--dist loadgroup`): the tests of one `xdist_group`
    run on one worker, one after the other. Tests with the real SmolLM2 policy or judge (`slow`) each need several GB
    of memory, and `gpu` tests share one GPU: neither kind runs beside another of its kind."""
    for item in items:
        for kind in ("slow", "gpu"):
            if item.get_closest_marker(kind) is not None:
                item.add_marker(pytest.mark.xdist_group(kind))


# -- judges ---------------------------------------------------------------------------------------------------


@pytest.fixture
def judge_server() -> Iterator[Callable[..., JudgeServer]]:
    """Factory: `judge_server(reply_fn=None, latency=0.0, **kw)` starts a scripted OpenAI-compatible server on
    127.0.0.1 (see tests/support/judge_server.py); every server started is stopped at the end of the test."""
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
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny-model tests: they gain nothing from more, and on a busy 2-core
    machine OpenMP's spinning barriers made such a module 3-4x slower (31 s vs 8.5 s measured). Restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
