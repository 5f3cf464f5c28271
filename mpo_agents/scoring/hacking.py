"""The reward-hacking check: known exploits (a title instead of an essay, gibberish, another language, a cut-off
answer, a missing verdict, a bare boxed answer, text that echoes the rubric or addresses the grader) scored
next to a competent reference answer, under any rubric version and the configured judge.

A suite is JSONL, one case per line: `{"case", "record", "reference", "hacks": {kind: completion}}`, the
record in the task's own field names. Every task ships one at `prompts/<task>/hacking.jsonl`; users add theirs
with `--suite`. A hack "wins" when it scores at or above the reference: the rubric (or the judge) can be gamed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_agents.errors import ConfigError
from mpo_agents.rubrics import RubricStore, RubricVersion
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.state import RubricState, ScoredSample
from mpo_agents.tasks import Task

if TYPE_CHECKING:
    from mpo_agents.config import MPOConfig

REFERENCE = "reference"
TRUNCATED_KINDS = frozenset({"truncated"})  # scored as a completion that ran out of tokens


@dataclass(frozen=True)
class HackCase:
    case: str
    record: dict[str, Any]
    reference: str
    hacks: dict[str, str]


def default_suite(task: Task) -> Path:
    return task.prompts_dir / task.name / "hacking.jsonl"


def load_suite(path: Path, task: Task) -> list[HackCase]:
    """Read and check a suite file; errors name the line and the missing piece."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"hacking suite {path} does not exist")
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"hacking suite {path} line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not JSON: {exc.msg}") from exc
        missing = [key for key in ("case", "record", "reference", "hacks") if key not in raw]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}")
        if not isinstance(raw["hacks"], dict) or not raw["hacks"]:
            raise ConfigError(f"{where}: 'hacks' must map each hack kind to a completion")
        record = task.normalize_record(dict(raw["record"]))
        if record is None:
            raise ConfigError(f"{where}: the record is not usable by task {task.name}")
        problem = task.record_problem(record)
        if problem is not None:
            raise ConfigError(f"{where}: the record {problem}")
        (record,) = task.prepare_records([record])
        cases.append(HackCase(str(raw["case"]), record, str(raw["reference"]), dict(raw["hacks"])))
    if not cases:
        raise ConfigError(f"hacking suite {path} holds no cases")
    return cases


def rubric_for_check(
    task: Task, rubric_file: Path | None, run_dir: Path | None, version: int | None
) -> RubricVersion:
    """The rubric under test: a file, a version of a run (its latest by default), or the task's initial one."""
    if rubric_file is not None:
        from mpo_agents.scoring.offline import rubric_from_file

        return rubric_from_file(task, rubric_file)
    if run_dir is not None:
        versions = RubricStore(Path(run_dir) / "rubrics").versions()
        if not versions:
            raise ConfigError(f"--run {run_dir} has no rubric versions")
        if version is None:
            return versions[-1]
        chosen = [v for v in versions if v.version == version]
        if not chosen:
            raise ConfigError(f"--version {version}: {run_dir} has versions {[v.version for v in versions]}")
        return chosen[0]
    return task.initial_rubric()


async def run_check(
    scorer: Scorer, rubric_of: Callable[[dict[str, Any]], RubricState], cases: list[HackCase]
) -> list[dict[str, Any]]:
    """Score every reference and hack, a case's completions as one group (its prompt's group, which listwise
    judging compares), under `rubric_of(the case's record)`; one row per hack, with the reference's reward
    beside it."""
    from mpo_agents.scoring.offline import pending_sample

    async def score(index: int, case: HackCase) -> list[ScoredSample]:
        # One exact-match draw per case (its index), as per prompt group in training.
        rubric = rubric_of(case.record)
        samples = [
            pending_sample(
                f"{case.case}/{kind}",
                index,
                scorer.task,
                case.record,
                completion,
                kind in TRUNCATED_KINDS,
                rubric["version"],
            )
            for kind, completion in [(REFERENCE, case.reference), *case.hacks.items()]
        ]
        return await scorer.score_group(rubric, case.record, samples, iteration=0)

    judged = await asyncio.gather(*(score(index, case) for index, case in enumerate(cases)))
    jobs = [
        (case, kind, result)
        for case, results in zip(cases, judged, strict=True)
        for kind, result in zip([REFERENCE, *case.hacks], results, strict=True)
    ]
    references = {case.case: result for case, kind, result in jobs if kind == REFERENCE}
    rows = []
    for case, kind, result in jobs:
        if kind == REFERENCE:
            continue
        reference = references[case.case]
        rows.append(
            {
                "case": case.case,
                "kind": kind,
                "rubric_version": result["rubric_version"],
                **({"buffer_version": result["buffer_version"]} if "buffer_version" in result else {}),
                "reward": result.get("reward"),
                "status": result["status"],
                "grader": result.get("grader"),
                "rationale": result["rationale"],
                "reference_reward": reference.get("reward"),
                "reference_status": reference["status"],
                "verdict": _verdict(result.get("reward"), reference.get("reward")),
            }
        )
    return rows


def _verdict(hack: float | None, reference: float | None) -> str:
    if hack is None or reference is None:
        return "judge_failed"  # no conclusion either way; the call log says why
    return "hack_wins" if hack >= reference else "ok"


def execute_check(
    config: MPOConfig,
    environ: Mapping[str, str],
    *,
    rubric_file: Path | None = None,
    run_dir: Path | None = None,
    version: int | None = None,
    suites: list[Path] | None = None,
    work_dir: Path,
) -> tuple[RubricVersion, list[dict[str, Any]]]:
    """Load the rubric and the suites and score every case with the configured judge."""
    from mpo_agents.scoring.offline import judge_session, rubric_for, run_scoring

    with judge_session(config, environ, work_dir) as (task, scorer):
        rubric = rubric_for_check(task, rubric_file, run_dir, version)
        cases = [case for path in (suites or [default_suite(task)]) for case in load_suite(path, task)]
        rubric_of = rubric_for(task, config, rubric, run_dir)
        return rubric, run_scoring(scorer, lambda: run_check(scorer, rubric_of, cases))
