"""One completion, or one prompt's group of completions, scored under a two-criterion rubric by the run's own
Scorer and judges, outside any run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mpo_agents.config import load_config
from mpo_agents.context import build_judges
from mpo_agents.litellm_import import release_litellm
from mpo_agents.rubrics import RubricVersion, parse_rubric
from mpo_agents.rundir import RunDirectory
from mpo_agents.scoring.offline import pending_sample
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.tasks import build_task
from tests.support import TEST_ENV, TWO_CRITERIA, run_overrides


def score_once(
    tmp_path: Path, server: Any, mode: str, completion: str, task: str = "essay_writing", **extra: Any
) -> dict[str, Any]:
    """`completion` to the first prompt of `task`, scored in scoring mode `mode` by the judge at `server`
    (TWO_CRITERIA, or the math task's own guidelines); `extra` are more `--set` overrides."""
    config = load_config(
        None, run_overrides("unused", server.url, **{"task.name": task, "scoring.mode": mode, **extra})
    )
    judge, meta_judge = build_judges(config, RunDirectory(tmp_path / "run"), TEST_ENV, None)
    task_ = build_task(config.task)
    rubric = (
        RubricVersion.of(parse_rubric(TWO_CRITERIA)[0], version=0, parent=None, iteration=0)
        if task != "math_reasoning"
        else task_.initial_rubric()
    )
    record = task_.records[0]

    async def go():
        try:
            scorer = Scorer(task_, judge, config)
            return await scorer.score(
                rubric.to_state(),
                record,
                pending_sample("k", 0, task_, record, completion, False, 0),
                iteration=1,
            )
        finally:
            await judge.aclose()
            await meta_judge.aclose()
            await release_litellm()

    return asyncio.run(go())


def score_group(tmp_path: Path, server: Any, completions: list[str], **extra: Any) -> list[dict[str, Any]]:
    """`completions` to the first essay prompt, scored as one group (`Scorer.score_group`) under TWO_CRITERIA
    by the judge at `server`; samples are keyed "k0", "k1", ...; `extra` are more `--set` overrides."""
    config = load_config(None, run_overrides("unused", server.url, **extra))
    judge, meta_judge = build_judges(config, RunDirectory(tmp_path / "run"), TEST_ENV, None)
    task = build_task(config.task)
    rubric = RubricVersion.of(parse_rubric(TWO_CRITERIA)[0], version=0, parent=None, iteration=0)
    record = task.records[0]
    samples = [pending_sample(f"k{n}", 0, task, record, text, False, 0) for n, text in enumerate(completions)]

    async def go():
        try:
            return await Scorer(task, judge, config).score_group(
                rubric.to_state(), record, samples, iteration=1
            )
        finally:
            await judge.aclose()
            await meta_judge.aclose()
            await release_litellm()

    return asyncio.run(go())
