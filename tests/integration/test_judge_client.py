"""JudgeClient over real HTTP: LiteLLM talking to the scripted server of tests/support/judge_server.py."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from mpo_agents.errors import JudgeError
from mpo_agents.judges import JudgeResult
from mpo_agents.judges.failures import FAILED_STATUSES
from mpo_agents.state import SampleStatus
from tests.support import REPO
from tests.support.judge_client import API_KEY, MESSAGES, judge, log_lines, make_client, score_0_5


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_scores_round_trip_through_litellm(judge_server, tmp_path, api):
    server = judge_server()
    client = make_client(server, tmp_path, api=api)

    result = judge(client, metadata={"iteration": 2, "node": "score", "key": "p0-g1"})

    assert result.ok and result.value == 3.0 and result.error is None
    assert result.attempts == 1 and result.prompt_tokens > 0 and result.completion_tokens > 0
    assert "<score>3</score>" in result.reply
    assert server.counts[api] == 1
    sent = server.requests[0]
    assert sent["model"] == "test-judge" and sent["temperature"] == 0.0 and sent["max_tokens"] == 512
    if api == "completion":  # one text, the messages joined by blank lines
        assert sent["prompt"] == MESSAGES[0]["content"] + "\n\n" + MESSAGES[1]["content"]
    else:
        assert sent["messages"] == MESSAGES
    (record,) = log_lines(tmp_path)
    assert record["role"] == "judge" and record["api"] == api and record["attempt"] == 1
    assert record["metadata"] == {"iteration": 2, "node": "score", "key": "p0-g1"}
    assert record["reply"] == result.reply and record["error"] is None
    assert (record["messages"] is not None) == (api == "chat")
    assert (record["prompt"] is not None) == (api == "completion")
    assert record["prompt_tokens"] == result.prompt_tokens and record["latency_s"] > 0


def test_max_tokens_and_stop_are_sent(judge_server, tmp_path):
    server = judge_server()
    judge(make_client(server, tmp_path, api="completion"), max_tokens=7, stop=["\n\n"])
    assert server.requests[0]["max_tokens"] == 7 and server.requests[0]["stop"] == ["\n\n"]


def test_concurrency_never_exceeds_the_bound(judge_server, tmp_path):
    server = judge_server(latency=0.1)
    client = make_client(server, tmp_path, max_concurrency=3)

    async def many() -> list[JudgeResult[float]]:
        return await asyncio.gather(*(client.complete(MESSAGES, parse=score_0_5) for _ in range(12)))

    results = asyncio.run(many())

    assert all(r.ok for r in results)
    assert server.max_in_flight == 3  # reached, never exceeded


def test_timeout_is_retried_then_succeeds(judge_server, tmp_path):
    server = judge_server()
    server.inject("timeout")
    # 2 s, not less: on a loaded CI machine a healthy retry must not itself time out (the fault holds 30 s).
    client = make_client(server, tmp_path, timeout=2.0)

    result = judge(client)

    assert result.ok and result.value == 3.0 and result.attempts == 2
    assert [r["error"] for r in log_lines(tmp_path)] == ["timeout", None]
    assert server.counts["requests"] == 2


@pytest.mark.parametrize(
    ("fault", "kind"),
    [("500", "server_error"), ("502", "server_error"), ("503", "server_error"), ("429", "rate_limited")],
)
def test_http_errors_are_retried(judge_server, tmp_path, fault, kind):
    server = judge_server()
    server.inject(fault, fault)
    client = make_client(server, tmp_path)

    result = judge(client)

    assert result.ok and result.value == 3.0 and result.attempts == 3
    assert server.counts["requests"] == 3  # no hidden retries inside LiteLLM or the OpenAI SDK
    assert [r["error"] for r in log_lines(tmp_path)] == [kind, kind, None]


def test_garbage_is_retried_at_a_warmer_temperature(judge_server, tmp_path):
    server = judge_server()
    server.inject("garbage")
    client = make_client(server, tmp_path, temperature=0.0)

    result = judge(client)

    assert result.ok and result.value == 3.0 and result.attempts == 2
    first, second = log_lines(tmp_path)
    assert first["error"] == "unparseable" and first["temperature"] == 0.0
    assert second["error"] is None and second["temperature"] == 0.7
    assert [r["temperature"] for r in server.requests] == [0.0, 0.7]


def test_persistent_garbage_fails_without_a_score(judge_server, tmp_path):
    server = judge_server()
    server.inject("garbage", "garbage", "garbage")
    client = make_client(server, tmp_path, retries=2)

    result = judge(client)

    assert not result.ok
    assert result.value is None  # never a default such as 0
    assert result.error == "unparseable" and result.attempts == 3
    assert result.reply is not None and "no verdict" in result.reply
    assert len(log_lines(tmp_path)) == 3
    stats = client.stats()
    assert (stats.calls, stats.failures, stats.attempts) == (1, 1, 3)
    assert stats.errors == {"unparseable": 3}


@pytest.mark.parametrize(("fault", "kind"), [("empty", "empty"), ("truncated", "truncated")])
def test_empty_and_truncated_replies_are_failures(judge_server, tmp_path, fault, kind):
    server = judge_server()
    server.inject(fault, fault)
    client = make_client(server, tmp_path, retries=1)

    result = judge(client)

    assert not result.ok and result.value is None and result.error == kind and result.attempts == 2


def test_stalled_server_without_retries_returns_within_the_timeout(judge_server, tmp_path):
    server = judge_server()
    server.inject("timeout")
    client = make_client(server, tmp_path, timeout=0.5, retries=0)

    started = time.perf_counter()
    result = judge(client)
    elapsed = time.perf_counter() - started

    assert not result.ok and result.error == "timeout" and result.attempts == 1
    assert (
        elapsed < 5.0
    )  # 0.5 s timeout + client overhead (loaded CI); the server would hold the request 30 s
    started = time.perf_counter()
    server.stop()  # the held request must not hold up shutdown either
    assert time.perf_counter() - started < 5.0  # uvicorn graceful shutdown is 1 s; slack for a loaded machine


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_trickling_server_is_cut_off_by_the_hard_timeout(judge_server, tmp_path, api):
    # One byte every 0.1 s keeps every socket read busy, so LiteLLM's own timeout never fires (measured:
    # it waits for the whole 30 s); the client's outer asyncio.wait_for must end the call.
    server = judge_server()
    server.inject("trickle")
    client = make_client(server, tmp_path, api=api, timeout=0.5, retries=0)

    started = time.perf_counter()
    result = judge(client)

    assert result.error == "timeout" and time.perf_counter() - started < 6.0  # vs 30 s of trickle


def test_unreachable_endpoint_is_a_connection_failure(tmp_path):
    class Closed:  # a port nothing listens on
        url = "http://127.0.0.1:9/v1"

    client = make_client(Closed(), tmp_path, retries=1)

    result = judge(client)

    assert not result.ok and result.error == "connection" and result.attempts == 2


def test_wrong_api_key_raises_a_judge_error_that_names_the_fix(judge_server, tmp_path):
    server = judge_server(api_key="the-right-key")
    client = make_client(server, tmp_path)

    with pytest.raises(JudgeError) as caught:
        judge(client)

    message = str(caught.value)
    assert "judge" in message and "authentication" in message and "judge.api_key_env" in message
    assert server.counts["requests"] == 1  # not retried
    assert log_lines(tmp_path)[0]["error"] == "auth"


@pytest.mark.parametrize(("fault", "words"), [("404", "judge.model"), ("400", "bad request")])
def test_configuration_errors_raise_without_retrying(judge_server, tmp_path, fault, words):
    server = judge_server()
    server.inject(fault)
    client = make_client(server, tmp_path, api="completion")

    with pytest.raises(JudgeError, match=words):
        judge(client)

    assert server.counts["requests"] == 1


def test_api_key_never_reaches_the_call_log(judge_server, tmp_path):
    server = judge_server()
    server.inject("500", "garbage", "401")
    client = make_client(server, tmp_path, retries=3)

    with pytest.raises(JudgeError) as caught:
        judge(client, metadata={"note": "key check"})
    judge(client)

    text = (tmp_path / "judge_calls.jsonl").read_text()
    assert len(text.splitlines()) == 4
    assert API_KEY not in text and API_KEY not in str(caught.value)


def test_stats_add_up_over_calls(judge_server, tmp_path):
    server = judge_server()
    server.inject("429")
    client = make_client(server, tmp_path)

    results = [judge(client) for _ in range(3)]

    stats = client.stats()
    assert (stats.calls, stats.failures, stats.attempts) == (3, 0, 4)
    assert stats.prompt_tokens == sum(r.prompt_tokens for r in results)
    assert stats.completion_tokens == sum(r.completion_tokens for r in results)
    assert stats.errors == {"rate_limited": 1} and stats.latency_s > 0


def test_one_client_serves_several_event_loops(judge_server, tmp_path):
    # asyncio primitives and HTTP pools are bound to a loop; a run may call asyncio.run more than once.
    server = judge_server()
    client = make_client(server, tmp_path, api="completion", max_concurrency=2)

    first = asyncio.run(client.complete(MESSAGES, parse=score_0_5))  # no aclose: the pool stays behind
    second = asyncio.run(client.complete(MESSAGES, parse=score_0_5))

    assert first.ok and second.ok and server.counts["completion"] == 2


def test_throughput_of_concurrent_calls(judge_server, tmp_path):
    # A loose bound (see docs: 2 cores run both client and server); the ideal is 64 / 32 * 0.2 s = 0.4 s.
    server = judge_server(latency=0.2)
    client = make_client(server, tmp_path, max_concurrency=32)

    async def many() -> float:
        await client.complete(MESSAGES, parse=score_0_5)  # warm up
        started = time.perf_counter()
        results = await asyncio.gather(*(client.complete(MESSAGES, parse=score_0_5) for _ in range(64)))
        assert all(r.ok for r in results)
        return time.perf_counter() - started

    assert asyncio.run(many()) < 5.0
    assert server.max_in_flight == 32


def test_standalone_server_scores_and_rewrites(tmp_path):
    # The mode resume tests use: `python tests/support/judge_server.py --port P --rule keyword:WORD` in a subprocess.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = REPO / "tests" / "support" / "judge_server.py"
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--rule", "keyword:essay"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "standalone server did not start"
            time.sleep(0.1)

        class Standalone:
            url = f"http://127.0.0.1:{port}/v1"

        client = make_client(Standalone(), tmp_path, api="completion")

        async def exchange() -> list[JudgeResult[Any]]:
            text = "Grade it.\n<response>An essay about essays: essay, ESSAY.</response>\nScore (0-5):"
            score = await client.complete([{"role": "user", "content": text}], parse=score_0_5)
            analysis = await client.complete(
                [{"role": "user", "content": "Write a critique of at most 100 words: samples..."}]
            )
            rubrics = [
                await client.complete(
                    [{"role": "user", "content": "Using the critique, write an improved rubric ..."}]
                )
                for _ in "ab"
            ]
            return [score, analysis, *rubrics]

        score, analysis, first, second = asyncio.run(exchange())
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert score.value == 3.0  # "essay" 3 times in the response: whole words ("essays" is not), any case
    assert analysis.ok and "rubric" in analysis.reply and "Criterion" not in analysis.reply
    for rubric in (first, second):
        lines = rubric.reply.splitlines()
        assert len(lines) == 2
        assert lines[0].startswith("Criterion 1:") and lines[0].endswith("(0-5 points)")
        assert lines[1].startswith("Criterion 2:") and lines[1].endswith("(0-3 points)")
    assert first.reply != second.reply


def test_importing_judges_does_not_load_litellm():
    # The CLI imports this package; LiteLLM alone takes seconds to import, so it waits for the first call.
    code = "import sys, mpo_agents.judges; print(sorted({'litellm', 'openai'} & set(sys.modules)))"
    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert probe.stdout.strip() == "[]"


ROOT = Path(__file__).resolve().parents[1]
KEEPALIVE = "AIOHTTP_KEEPALIVE_TIMEOUT"
KEEPALIVE_PROBE = """
import asyncio, os, sys
import mpo_agents, mpo_agents.cli, mpo_agents.judges
from mpo_agents.config import JudgeConfig
from mpo_agents.judges import JudgeClient

imported = os.environ.get("AIOHTTP_KEEPALIVE_TIMEOUT")
cfg = JudgeConfig(model="hosted_vllm/test-judge", timeout=5.0, retries=0)
client = JudgeClient("judge", cfg, api_base=sys.argv[1], api_key="sk-probe", call_log=None)
built = os.environ.get("AIOHTTP_KEEPALIVE_TIMEOUT")

async def call():
    try:
        return await client.complete([{"role": "user", "content": "<response>good</response>"}])
    finally:
        await client.aclose()

result = asyncio.run(call())
from litellm.constants import AIOHTTP_KEEPALIVE_TIMEOUT as read_by_litellm
print(imported, built, os.environ.get("AIOHTTP_KEEPALIVE_TIMEOUT"), read_by_litellm, result.ok)
"""


def test_importing_mpo_agents_leaves_the_keepalive_variable_alone():
    # The package sets nothing in the environment of whoever imports it; only the first use of LiteLLM does.
    env = {k: v for k, v in os.environ.items() if k != KEEPALIVE}
    code = f"import os, mpo_agents, mpo_agents.cli, mpo_agents.judges; print(os.environ.get({KEEPALIVE!r}))"
    probe = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
        cwd=ROOT,
    )
    assert probe.stdout.strip() == "None"


@pytest.mark.parametrize(("users", "expected"), [(None, "4"), ("7", "7")])
def test_the_first_judge_call_sets_the_keepalive_default_and_keeps_a_users_own(judge_server, users, expected):
    server = judge_server()
    env = {k: v for k, v in os.environ.items() if k != KEEPALIVE}
    if users is not None:
        env[KEEPALIVE] = users
    probe = subprocess.run(
        [sys.executable, "-c", KEEPALIVE_PROBE, server.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
        cwd=ROOT,
    )
    before = "None" if users is None else users
    # Not on import nor when a client is built; on the first call, before LiteLLM is imported and reads it.
    assert probe.stdout.split() == [before, before, expected, expected, "True"], probe.stderr


def test_failed_sample_statuses_are_sample_statuses():
    assert set(FAILED_STATUSES) <= set(get_args(SampleStatus))
