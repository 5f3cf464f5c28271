"""A judge prompt that cannot fit the judge's context: a failed judgment with the reason in the call log, and no
request (the scripted server of tests/support/judge_server.py counts what it receives)."""

from __future__ import annotations

import asyncio
import re

import pytest

from mpo_agents.config import JudgeConfig
from mpo_agents.judges import CallLog
from mpo_agents.judges.build import judge_client, resolve_endpoint
from mpo_agents.judges.context_window import litellm_window
from mpo_agents.judges.local_server import LocalServer
from mpo_agents.litellm_import import import_litellm
from tests.support.judge_client import MESSAGES, judge, log_lines, make_client

LONG = [{"role": "user", "content": "<response>" + "a good essay " * 400 + "</response>"}]


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_a_prompt_over_the_context_fails_without_a_request(judge_server, tmp_path, api):
    server = judge_server()
    client = make_client(server, tmp_path, api=api, context_tokens=300, max_tokens=64)

    async def calls():
        try:
            return await client.complete(MESSAGES), await client.complete(LONG, metadata={"sample": "s1"})
        finally:
            await client.aclose()

    short, long = asyncio.run(calls())

    assert short.ok and server.counts["requests"] == 1  # the long prompt was never sent
    assert not long.ok and long.error == "context_window" and long.attempts == 0 and long.value is None
    reason = r"prompt of \d+ tokens \+ max_tokens 64 exceeds the judge's context of 300 tokens \(judge.context_tokens\)"
    assert re.fullmatch(reason + "; not sent", long.detail)
    record = log_lines(tmp_path)[-1]
    assert record["error"] == "context_window" and record["error_detail"] == long.detail
    assert record["attempt"] == 0 and record["metadata"] == {"sample": "s1"} and record["prompt_tokens"] == 0
    stats = client.stats()
    assert (stats.calls, stats.failures, stats.attempts) == (2, 1, 1)
    assert stats.errors == {"context_window": 1}


def test_the_reply_budget_counts_against_the_context(judge_server, tmp_path):
    litellm = import_litellm()
    server = judge_server()
    prompt_tokens = litellm.token_counter(model="hosted_vllm/test-judge", messages=MESSAGES)
    fits = make_client(server, tmp_path, context_tokens=prompt_tokens + 16, max_tokens=16)
    assert judge(fits).ok
    over = make_client(server, tmp_path, context_tokens=prompt_tokens + 15, max_tokens=16)
    result = judge(over)
    assert (
        result.error == "context_window"
        and f"prompt of {prompt_tokens} tokens + max_tokens 16" in result.detail
    )
    assert server.counts["requests"] == 1


def test_litellm_tells_the_context_of_the_models_it_knows():
    assert litellm_window("openai/gpt-4o-mini").tokens == 128_000
    assert litellm_window("hosted_vllm/test-judge") is None  # self-hosted: nothing is checked


def test_the_local_server_context_is_its_model_or_its_kv_cache_and_counts_with_its_tokenizer(
    judge_server, tmp_path, tiny_model_dir
):
    server = judge_server()
    local = JudgeConfig(use_local_server=True, max_tokens=32, retries=0, timeout=5)
    # The tiny model has 512 positions; continuous batching's cache is smaller here, so it bounds a call.
    without_cache = resolve_endpoint("judge", local, {}, LocalServer(server.url, tiny_model_dir)).window
    assert (without_cache.tokens, without_cache.source) == (
        512,
        f"max_position_embeddings of {tiny_model_dir.name}",
    )
    batching = LocalServer(server.url, tiny_model_dir, kv_cache_tokens=256)
    client = judge_client(
        "judge", local, {}, batching, call_log=CallLog(tmp_path / "judge_calls.jsonl"), cache=None
    )

    async def calls():
        try:
            return await client.complete(MESSAGES), await client.complete(LONG)
        finally:
            await client.aclose()

    short, long = asyncio.run(calls())
    assert short.ok and server.counts["requests"] == 1
    assert (
        long.error == "context_window"
        and "context of 256 tokens (local_server.kv_cache_tokens)" in long.detail
    )
    configured = resolve_endpoint(
        "judge", local.model_copy(update={"context_tokens": 100}), {}, batching
    ).window
    assert (configured.tokens, configured.tokenizer_dir) == (100, tiny_model_dir)
