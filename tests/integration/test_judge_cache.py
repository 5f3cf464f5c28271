"""The judgment cache: a repeated judgment sends no request (in the same process, a new process, or a run that
starts from the same cache), failures are never cached, and anything that changes the reply changes the key."""

from __future__ import annotations

import asyncio
import json
import shutil

from mpo_agents.config import JudgeConfig
from mpo_agents.judges.cache import JudgmentCache
from mpo_agents.judges.client import JudgeClient
from mpo_agents.judges.parsing import parse_score
from mpo_agents.judges.records import CallLog
from mpo_agents.rundir import read_jsonl
from mpo_agents.runner import execute
from tests.support import TEST_ENV, run_overrides
from tests.support.judge_client import API_KEY
from tests.support.runs import prepared_run, run_in_process

GRADED = "Grade from 0 to 5.\n<response>A good essay, good structure, good ending.</response>"  # scores 3


def client_with_cache(server, tmp_path, store: JudgmentCache, **overrides) -> JudgeClient:
    settings = {
        "model": "hosted_vllm/test-judge",
        "timeout": 5.0,
        "retries": 1,
        "retry_backoff": 0.01,
        **overrides,
    }
    return JudgeClient(
        "judge",
        JudgeConfig(**settings),
        api_base=server.url,
        api_key=API_KEY,
        call_log=CallLog(tmp_path / "calls.jsonl"),
        cache=store,
    )


def ask(client: JudgeClient, text: str):
    async def go():
        try:
            return await client.complete(
                [{"role": "user", "content": text}], parse=lambda reply: parse_score(reply, 0, 5)
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_repeated_judgment_sends_no_request_even_in_a_new_cache_object(tmp_path, judge_server):
    server = judge_server()
    path = tmp_path / "judge_cache.sqlite"
    first = ask(client_with_cache(server, tmp_path, JudgmentCache(path)), GRADED)
    assert first.ok and server.counts["requests"] == 1
    again = ask(client_with_cache(server, tmp_path, JudgmentCache(path)), GRADED)  # as after a restart
    assert again.ok and again.value == first.value and again.attempts == 0
    assert server.counts["requests"] == 1
    records = [json.loads(line) for line in (tmp_path / "calls.jsonl").open()]
    assert [r["cached"] for r in records] == [False, True] and records[1]["prompt_tokens"] == 0


def test_failures_are_not_cached_and_other_inputs_miss(tmp_path, judge_server):
    server = judge_server()
    cache = JudgmentCache(tmp_path / "c.sqlite")
    server.inject("garbage", "garbage")  # both attempts unparseable
    assert not ask(client_with_cache(server, tmp_path, cache), GRADED).ok
    assert len(cache) == 0
    assert ask(client_with_cache(server, tmp_path, cache), GRADED).ok  # asked again, not served a failure
    other_completion = GRADED.replace("good", "fine", 1)
    ask(client_with_cache(server, tmp_path, cache), other_completion)
    ask(client_with_cache(server, tmp_path, cache, temperature=0.3), GRADED)  # decoding params are in the key
    ask(client_with_cache(server, tmp_path, cache, model="hosted_vllm/other-judge"), GRADED)
    assert server.counts["requests"] == 2 + 1 + 3 and len(cache) == 4


def test_cache_can_be_switched_off(tmp_path, judge_server):
    server = judge_server()
    cache = JudgmentCache(tmp_path / "c.sqlite")
    for _ in range(2):
        ask(client_with_cache(server, tmp_path, cache, cache=False), GRADED)
    assert server.counts["requests"] == 2 and len(cache) == 0


def test_a_run_with_the_same_cache_sends_no_judge_request(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    sets = run_overrides(tiny_model_dir, server.url, **{"schedule.iterations": 2, "schedule.meta_every": 0})
    _, first = run_in_process(sets, tmp_path / "first")
    sent = server.counts["requests"]
    assert sent > 0

    config, second = prepared_run(sets, tmp_path / "second")
    shutil.copy(first.root / "judge_cache.sqlite", second.root / "judge_cache.sqlite")
    execute(config, second, TEST_ENV, fresh=True)
    assert server.counts["requests"] == sent  # same seeds, same rollouts: every judgment from the cache
    assert read_jsonl(second.samples_path(2)) == read_jsonl(first.samples_path(2))
