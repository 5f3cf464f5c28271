"""The example node on its own: a view with two rubric versions is all it needs."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from rubric_size_watch import RubricSizeWatch


def view(before: int, after: int | None):
    rubric = SimpleNamespace(tokens=before)
    proposal = None if after is None else SimpleNamespace(tokens=after)
    return SimpleNamespace(rubric=rubric, proposal=proposal)


def test_a_rubric_that_grows_too_fast_is_rejected():
    decision = asyncio.run(RubricSizeWatch(max_growth=0.5)(view(100, 180)))
    assert decision.verdict == "reject" and "100 to 180 tokens" in decision.reason
    assert decision.metrics == {"growth": 0.8}


def test_moderate_growth_has_no_objection():
    decision = asyncio.run(RubricSizeWatch(max_growth=0.5)(view(100, 140)))
    assert decision.verdict is None and decision.metrics == {"growth": 0.4}


def test_nothing_to_say_without_a_proposal():
    assert asyncio.run(RubricSizeWatch()(view(100, None))) is None


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_growth"):
        RubricSizeWatch(max_growth=-1)
