"""A meta step's work in progress, in the graph state and on disk, so a stage re-run after a crash redoes only
the calls that were in flight."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mpo_agents.rundir import atomic_write_text
from mpo_agents.state import MetaProgress, MPOState


def step_progress(state: MPOState) -> MetaProgress:
    """This iteration's meta progress (cases, analyses, candidates); a fresh one if the state holds an older
    iteration's."""
    progress = state.get("meta") or {}
    return progress if progress.get("iteration") == state["iteration"] else {"iteration": state["iteration"]}


def _file_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "__", case_id) + ".json"


async def each_case(
    directory: Path, cases: list[dict], run_one: Callable[[dict], Awaitable[Any]]
) -> dict[str, Any]:
    """`run_one` for every case not already on disk, concurrently; each result is saved as it completes."""

    async def one(case: dict) -> tuple[str, Any]:
        path = directory / _file_name(case["id"])
        if path.exists():
            return case["id"], json.loads(path.read_text())["value"]
        value = await run_one(case)
        atomic_write_text(path, json.dumps({"id": case["id"], "value": value}, indent=2))
        return case["id"], value

    return dict(await asyncio.gather(*(one(case) for case in cases)))
