"""The judgment cache's group commit: judgments stored in one turn of the event loop share one commit, each is
committed (visible to another connection) when its `store` returns, and a failed commit fails every caller."""

from __future__ import annotations

import asyncio

import pytest

from mpo_agents.judges.cache import JudgmentCache


def test_judgments_stored_in_one_turn_share_one_commit_and_are_committed_on_return(tmp_path, monkeypatch):
    cache = JudgmentCache(tmp_path / "cache.sqlite")
    commits = []
    commit = cache._commit
    monkeypatch.setattr(
        cache, "_commit", lambda loop: commits.append(len(cache._batches[loop].rows)) or commit(loop)
    )

    async def judge(number: int) -> None:
        await cache.store(f"k{number}", f"reply {number}")
        # Once `store` returned, a process started now (another connection) finds the judgment.
        assert JudgmentCache(tmp_path / "cache.sqlite").get(f"k{number}") == f"reply {number}"

    async def go() -> None:
        await asyncio.gather(*(judge(n) for n in range(5)))
        await judge(5)

    asyncio.run(go())
    assert commits == [5, 1] and len(cache) == 6


def test_a_failed_commit_fails_every_caller_and_stores_none_of_its_judgments(tmp_path):
    cache = JudgmentCache(tmp_path / "cache.sqlite")
    cache._db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON judgments WHEN NEW.key = 'bad' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )

    async def go() -> list[BaseException | None]:
        return await asyncio.gather(cache.store("good", "a"), cache.store("bad", "b"), return_exceptions=True)

    outcomes = asyncio.run(go())
    assert all(isinstance(outcome, Exception) and "refused" in str(outcome) for outcome in outcomes)
    assert len(cache) == 0
    asyncio.run(cache.store("good", "a"))  # the connection is usable again
    assert cache.get("good") == "a"


def test_a_cancelled_caller_leaves_the_others_judgments_stored(tmp_path):
    cache = JudgmentCache(tmp_path / "cache.sqlite")

    async def go() -> None:
        first = asyncio.ensure_future(cache.store("a", "1"))
        second = asyncio.ensure_future(cache.store("b", "2"))
        await asyncio.sleep(0)  # both are waiting for the commit
        first.cancel()
        await second
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(go())
    assert cache.get("b") == "2"
