"""Judging outside a training run: `mpo score` (a JSONL of completions under a rubric), `mpo rejudge` (failed
judgments of a run, again) and `mpo hacking-check` share one judge session and the training run's `Scorer`, so
what they report is what training would have seen."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mpo_agents.buffers import BufferStore, PromptRubric, items_from_data, items_from_rubric, prompt_id
from mpo_agents.errors import ConfigError
from mpo_agents.judges.failures import FAILED_STATUSES
from mpo_agents.litellm_import import release_litellm
from mpo_agents.rubrics import RubricStore, RubricVersion, parse_rubric
from mpo_agents.rundir import RunDirectory, read_checked_jsonl, read_jsonl, write_jsonl
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.state import RubricState, ScoredSample

if TYPE_CHECKING:
    from mpo_agents.config import MPOConfig
    from mpo_agents.judges.local_server import LocalServer
    from mpo_agents.tasks import Task

T = TypeVar("T")


@contextmanager
def judge_session(
    config: MPOConfig, environ: Mapping[str, str], work_dir: Path
) -> Iterator[tuple[Task, Scorer]]:
    """The task and a scorer on the configured judge (starting the local judge server if the config uses one);
    calls are logged to `work_dir/calls/judge.jsonl`."""
    from mpo_agents.judges.build import judge_panel
    from mpo_agents.judges.records import CallLog
    from mpo_agents.tasks import build_task

    task = build_task(config.task)
    with local_server_for(config, "judge", work_dir) as server:
        judge = judge_panel(
            config, environ, server, call_log=CallLog(work_dir / "calls" / "judge.jsonl"), cache=None
        )
        yield task, Scorer(task, judge, config)


@contextmanager
def local_server_for(config: MPOConfig, role: str, work_dir: Path) -> Iterator[LocalServer | None]:
    """The local model server while the block runs, when the judge role uses it (else None); its log goes to
    `work_dir/server.log`."""
    with ExitStack() as stack:
        server = None
        if config.uses_local_server(role):
            from mpo_agents.judges.local_server import local_server
            from mpo_agents.policy import resolve_model_dir

            model_dir = resolve_model_dir(config.local_server.model)
            server = stack.enter_context(
                local_server(model_dir, config.local_server, work_dir / "server.log")
            )
        yield server


def run_scoring(scorer: Scorer, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` on an event loop, then close the judge's connections and release LiteLLM's logging worker and
    cached clients (as a run does), so a later event loop in this process starts clean."""

    async def go() -> T:
        try:
            return await work()
        finally:
            await scorer.judge.aclose()
            await release_litellm()  # nothing of this loop stays reachable through LiteLLM's globals

    return asyncio.run(go())


def rubric_from_file(task: Task, path: Path) -> RubricVersion:
    """A rubric file as version 0: criteria, or for per-cluster tasks a guideline applied to every cluster."""
    if not Path(path).is_file():
        raise ConfigError(f"--rubric {path} does not exist")
    text = Path(path).read_text(encoding="utf-8")
    if task.meta_style == "per_cluster":
        initial = task.initial_rubric()
        return RubricVersion.of_guidelines(
            text, {}, low=initial.low, high=initial.high, version=0, parent=None, iteration=0
        )
    return RubricVersion.of(parse_rubric(text)[0], version=0, parent=None, iteration=0)


def rubric_for(
    task: Task, config: MPOConfig, version: RubricVersion, run_dir: Path | None = None
) -> Callable[[dict[str, Any]], RubricState]:
    """What to score a record's completions under: `version`, or with `rubric.scope: prompt` the prompt's
    buffer: the latest version `run_dir` holds for it, else its items in the data (`rubric.items_field`), else
    `version`'s criteria as weighted items."""
    if config.rubric.scope != "prompt":
        return lambda record: version.to_state()
    store = BufferStore(RunDirectory(Path(run_dir)).prompt_rubrics_dir) if run_dir else None
    field = config.rubric.items_field

    def buffer_of(record: dict[str, Any]) -> RubricState:
        pid = prompt_id(task.prompt_text(record))
        versions = store.versions(pid) if store else []
        if versions:
            buffer = versions[-1]
        else:
            items = (
                items_from_data(record[field], f"rubric.items_field '{field}'")
                if field and field in record
                else items_from_rubric(version)
            )
            buffer = PromptRubric(pid, 0, tuple(items), None, 0, prompt=task.prompt_text(record))
        return buffer.rubric_state(version.version, config.rubric.aggregate)

    return buffer_of


def pending_sample(
    key: str,
    index: int,
    task: Task,
    record: dict[str, Any],
    completion: str,
    truncated: bool,
    rubric_version: int,
) -> ScoredSample:
    return ScoredSample(
        key=key,
        prompt_index=index,
        prompt=task.prompt_text(record),
        completion=completion,
        truncated=truncated,
        score=None,
        reward=None,
        status="pending",
        rationale="",
        rubric_version=rubric_version,
    )


def load_pairs(path: Path, task: Task) -> list[tuple[dict[str, Any], str, bool]]:
    """(record, completion, truncated) per line of a JSONL whose lines hold the task's record fields plus
    `completion` (and optionally `truncated`)."""
    if not Path(path).is_file():
        raise ConfigError(f"--input {path} does not exist")
    pairs = []
    for number, raw in enumerate(read_checked_jsonl(path, (), "completions to score"), start=1):
        if "completion" not in raw:
            raise ConfigError(f"--input {path} line {number} has no 'completion' field")
        record = task.normalize_record({k: v for k, v in raw.items() if k not in ("completion", "truncated")})
        problem = task.record_problem(record)
        if problem is not None:
            raise ConfigError(
                f"--input {path} line {number} {problem} (task {task.name} reads {', '.join(task.required_fields)})"
            )
        pairs.append((record, str(raw["completion"]), bool(raw.get("truncated", False))))
    if not pairs:
        raise ConfigError(f"--input {path} holds no lines")
    records = task.prepare_records([record for record, _, _ in pairs])
    return [(record, completion, truncated) for record, (_, completion, truncated) in zip(records, pairs)]


def score_file(
    scorer: Scorer, rubric: RubricVersion, pairs: list[tuple[dict, str, bool]], run_dir: Path | None = None
) -> list[ScoredSample]:
    """Score each (record, completion, truncated); lines with the same prompt form one group (what listwise
    judging compares), numbered by the prompt's first line. `run_dir`: a run whose buffers to use (prompt
    scope)."""
    state_of = rubric_for(scorer.task, scorer.config, rubric, run_dir)
    first_line: dict[str, int] = {}
    groups: dict[int, list[tuple[dict, ScoredSample]]] = {}
    for i, (record, completion, truncated) in enumerate(pairs):
        group = first_line.setdefault(scorer.task.prompt_text(record), i)
        sample = pending_sample(
            f"line-{i + 1}", group, scorer.task, record, completion, truncated, rubric.version
        )
        groups.setdefault(group, []).append((record, sample))

    async def work() -> list[ScoredSample]:
        judged = await asyncio.gather(
            *(
                scorer.score_group(
                    state_of(members[0][0]), members[0][0], [s for _, s in members], iteration=0
                )
                for members in groups.values()
            )
        )
        by_key = {sample["key"]: sample for group in judged for sample in group}
        return [by_key[f"line-{i + 1}"] for i in range(len(pairs))]

    return run_scoring(scorer, work)


def rejudge_run(scorer: Scorer, run_dir: Path) -> dict[int, tuple[int, int]]:
    """Judge again every sample of a run whose judgment failed, under the rubric version that scored its batch,
    and rewrite its samples file in place (atomically). Returns {iteration: (failed before, recovered)}.

    The policy is not re-run and updates already applied are not redone: this repairs the record that the
    meta-judge's window, reports and analyses read.
    """
    versions = {v.version: v for v in RubricStore(run_dir / "rubrics").versions()}
    buffers = BufferStore(RunDirectory(run_dir).prompt_rubrics_dir)
    per_iteration = scorer.config.trainer.prompts_per_iteration

    def rubric_of(sample: ScoredSample) -> RubricState:
        version = versions[sample["rubric_version"]]
        if "buffer_version" not in sample:
            return version.to_state()
        buffer = buffers.load(sample["prompt_id"], sample["buffer_version"])
        return buffer.rubric_state(version.version, scorer.config.rubric.aggregate)

    async def one_file(path: Path) -> tuple[int, tuple[int, int]] | None:
        iteration = int(path.stem.split("-")[1])
        samples = read_jsonl(path)
        failed = [i for i, s in enumerate(samples) if s["status"] in FAILED_STATUSES]
        if not failed:
            return None
        records = scorer.task.batch(iteration, per_iteration)
        groups: dict[int, list[int]] = {}  # a listwise group failed whole: judged again whole
        for i in failed:
            groups.setdefault(samples[i]["prompt_index"], []).append(i)
        judged = await asyncio.gather(
            *(
                scorer.score_group(
                    rubric_of(samples[members[0]]),
                    records[group],
                    [{**samples[i], "status": "pending"} for i in members],
                    iteration,
                )
                for group, members in groups.items()
            )
        )
        results = [result for group in judged for result in group]
        failed = [i for members in groups.values() for i in members]
        for i, result in zip(failed, results, strict=True):
            samples[i] = result
        write_jsonl(path, samples)
        return iteration, (len(failed), sum(r["status"] not in FAILED_STATUSES for r in results))

    async def work() -> dict[int, tuple[int, int]]:
        found = [await one_file(path) for path in sorted((run_dir / "samples").glob("iter-*.jsonl"))]
        return dict(item for item in found if item)

    return run_scoring(scorer, work)
