"""Several endpoints behind one judge role through LiteLLM's Router: failover to the role's other deployments,
cooldown of a failing one, ordered fallbacks, and every deployment cooled down reported as a failed judgment.
All against real local HTTP servers."""

from __future__ import annotations

import asyncio
import json

import pytest

from mpo_agents.config import JudgeConfig, load_config
from mpo_agents.judges.build import judge_client
from mpo_agents.judges.parsing import parse_score
from mpo_agents.judges.records import CallLog
from tests.support import TEST_ENV, run_overrides
from tests.support.cli import mpo
from tests.support.runs import run_in_process

KEY = "TEST_JUDGE_KEY"
MESSAGES = [
    {"role": "user", "content": "Score it from 0 to 5.\n<response>good good</response>\n<score>N</score>"}
]


def parse(reply: str) -> float | None:
    return parse_score(reply, 0, 5)


def routed_client(tmp_path, primary, others=(), fallbacks=(), **settings):
    """A judge client built from config alone, as a run builds it: `primary` serves judge.model."""
    cfg = JudgeConfig.model_validate(
        {
            "model": "openai/primary",
            "api_base": primary.url,
            "api_key_env": KEY,
            "retries": 0,
            "deployments": [
                {"model": f"openai/other{n}", "api_base": s.url, "api_key_env": KEY}
                for n, s in enumerate(others)
            ],
            "fallbacks": [
                {"model": f"openai/fallback{n}", "api_base": s.url, "api_key_env": KEY}
                for n, s in enumerate(fallbacks)
            ],
            **settings,
        }
    )
    return judge_client("judge", cfg, TEST_ENV, None, call_log=CallLog(tmp_path / "calls.jsonl"), cache=None)


def judge_many(client, count: int):
    async def go():
        try:
            return await asyncio.gather(*(client.complete(MESSAGES, parse=parse) for _ in range(count)))
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_failing_deployment_fails_over_to_the_others_and_then_cools_down(tmp_path, judge_server):
    broken, healthy = judge_server(), judge_server()
    broken.inject(*["500"] * 100)
    client = routed_client(tmp_path, broken, [healthy], routing={"allowed_fails": 1, "cooldown_s": 60})

    async def two_batches():
        try:
            first = await asyncio.gather(*(client.complete(MESSAGES, parse=parse) for _ in range(12)))
            sent_to_broken = broken.counts["requests"]
            second = await asyncio.gather(*(client.complete(MESSAGES, parse=parse) for _ in range(12)))
            return first, sent_to_broken, second
        finally:
            await client.aclose()

    first, sent_to_broken, second = asyncio.run(two_batches())
    assert all(r.ok and r.value == 2 for r in first + second)  # no judgment lost to the broken endpoint
    assert sent_to_broken >= 1
    assert broken.counts["requests"] == sent_to_broken  # cooled down: the second batch never went there
    assert healthy.counts["requests"] == 24
    served = {record["served_by"] for record in CallLog.read(tmp_path / "calls.jsonl")}
    assert served and all(healthy.url in s for s in served)


def test_fallbacks_are_tried_in_order_after_every_deployment_fails(tmp_path, judge_server):
    first, second, fallback_one, fallback_two = (judge_server() for _ in range(4))
    for server in (first, second, fallback_one):
        server.inject(*["503"] * 100)
    client = routed_client(tmp_path, first, [second], [fallback_one, fallback_two], routing={"cooldown_s": 0})

    results = judge_many(client, 6)

    assert all(r.ok and r.value == 2 for r in results)
    assert first.counts["requests"] + second.counts["requests"] >= 6  # each call tried the role's own first
    assert fallback_one.counts["requests"] == 6  # then the first fallback, for every call
    assert fallback_two.counts["requests"] == 6  # and only after it failed, the second
    records = CallLog.read(tmp_path / "calls.jsonl")
    assert {r["error"] for r in records} == {None} and all(
        fallback_two.url in r["served_by"] for r in records
    )


def test_a_healthy_first_fallback_leaves_the_later_ones_alone(tmp_path, judge_server):
    primary, fallback_one, fallback_two = (judge_server() for _ in range(3))
    primary.inject(*["500"] * 100)
    client = routed_client(tmp_path, primary, [], [fallback_one, fallback_two], routing={"cooldown_s": 0})

    results = judge_many(client, 5)

    assert all(r.ok for r in results)
    assert fallback_one.counts["requests"] == 5 and fallback_two.counts["requests"] == 0


def test_every_deployment_cooling_down_is_a_recorded_rate_limit_not_a_crash(tmp_path, judge_server):
    one, two = judge_server(), judge_server()
    for server in (one, two):
        server.inject(*["500"] * 100)
    client = routed_client(tmp_path, one, [two], routing={"allowed_fails": 0, "cooldown_s": 60})

    async def two_batches():
        try:
            first = await asyncio.gather(*(client.complete(MESSAGES, parse=parse) for _ in range(4)))
            sent = one.counts["requests"] + two.counts["requests"]
            second = await asyncio.gather(*(client.complete(MESSAGES, parse=parse) for _ in range(4)))
            return first, sent, second
        finally:
            await client.aclose()

    first, sent, second = asyncio.run(two_batches())

    assert {r.error for r in first} == {"server_error"}
    assert {r.error for r in second} == {"rate_limited"}  # refused by the Router, recorded, retryable later
    assert one.counts["requests"] + two.counts["requests"] == sent  # cooled down: nothing more reached them


def test_rate_limited_deployments_spread_calls_by_rpm(tmp_path, judge_server):
    small, large = judge_server(), judge_server()
    cfg = JudgeConfig.model_validate(
        {
            "model": "openai/small",
            "api_base": small.url,
            "api_key_env": KEY,
            "rpm": 10,
            "retries": 0,
            "deployments": [{"model": "openai/large", "api_base": large.url, "api_key_env": KEY, "rpm": 990}],
        }
    )
    weighted = judge_client("judge", cfg, TEST_ENV, None, call_log=None, cache=None)
    assert weighted.routed
    results = judge_many(weighted, 60)
    assert all(r.ok for r in results)
    assert small.counts["requests"] < large.counts["requests"]  # rpm weighs simple-shuffle's draw


def test_mpo_score_routes_by_config_alone(tmp_path, judge_server):
    """Two deployments and a fallback, written in YAML only: `mpo score` spreads over them."""

    one, two, fallback = judge_server(), judge_server(), judge_server()
    config = tmp_path / "routed.yaml"
    config.write_text(
        f"""
judge:
  model: openai/one
  api_base: {one.url}
  api_key_env: {KEY}
  api: chat
  deployments:
    - model: openai/two
      api_base: {two.url}
      api_key_env: {KEY}
  fallbacks:
    - model: openai/backup
      api_base: {fallback.url}
      api_key_env: {KEY}
scoring:
  mode: holistic
"""
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"Essay topic {n}", "completion": "good " * (n % 4)}) + "\n"
            for n in range(16)
        )
    )
    out = tmp_path / "scores.jsonl"
    result = mpo("score", str(config), "--input", str(pairs), "--output", str(out), env=TEST_ENV)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.open()]
    assert [row["score"] for row in rows] == [n % 4 for n in range(16)]
    assert one.counts["requests"] > 0 and two.counts["requests"] > 0 and fallback.counts["requests"] == 0


@pytest.mark.parametrize("field", ["deployments", "fallbacks"])
def test_a_deployment_without_a_provider_prefix_is_named_in_the_error(tmp_path, field):
    from mpo_agents.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"judge\.{field}\.0\.model.*openai/qwen"):
        load_config(None, [f"judge.{field}=[{{model: qwen}}]"])


def test_a_run_with_deployments_writes_which_one_served_each_call(tmp_path, tiny_model_dir, judge_server):

    one, two = judge_server(), judge_server()
    sets = run_overrides(
        tiny_model_dir,
        one.url,
        **{"schedule.iterations": 1, "schedule.meta_every": 0},
    )
    sets.append(f"judge.deployments=[{{model: openai/two, api_base: '{two.url}', api_key_env: {KEY}}}]")
    _, run_dir = run_in_process(sets, tmp_path / "run")
    records = CallLog.read(run_dir.calls_path("judge"))
    assert records and all(r["served_by"] for r in records)
    assert one.counts["requests"] + two.counts["requests"] == len(records)
