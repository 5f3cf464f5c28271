"""Evaluation as the paper does it, done right: test generations (`mpo generate`), an LLM-judged Elo tournament
with Bradley-Terry intervals (`mpo eval elo`), ROUGE and accuracy (`mpo eval rouge|accuracy`).

Output files, all read by `mpo report`:
- `<generations>.jsonl`: one row per test prompt (`id`, `system`, `task`, `prompt`, `response`, `reference`, ...)
- `<elo dir>/verdicts.jsonl` (one per judge call) and `<elo dir>/elo.json` (`kind: elo`)
- `<generations>.rouge.jsonl` / `.rouge.json` (`kind: rouge`), `<generations>.accuracy.jsonl` / `.json`
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_agents.errors import ConfigError
from mpo_agents.evaluation.generate import read_generations, system_name

if TYPE_CHECKING:
    from mpo_agents.config import MPOConfig

ELO_ROLE = "evaluation.elo.judge"
SUMMARY_NAME = "elo.json"
VERDICTS_NAME = "verdicts.jsonl"


def load_systems(paths: Sequence[Path]) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """Each file's rows under its system name, and the task they share (None if the rows do not say)."""
    systems: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        rows = read_generations(path)
        name = system_name(path, rows)
        if name in systems:
            raise ConfigError(f"two generation files are both system '{name}'; rename one with --name")
        systems[name] = rows
    tasks = {row.get("task") for rows in systems.values() for row in rows} - {None}
    if len(tasks) > 1:
        raise ConfigError(f"the generation files are of different tasks ({', '.join(sorted(tasks))})")
    return systems, (tasks.pop() if tasks else None)


def run_elo(
    paths: Sequence[Path],
    config: MPOConfig,
    environ: Mapping[str, str],
    output_dir: Path,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Judge the tournament (resuming from `output_dir/verdicts.jsonl`), rate it, write `elo.json`."""
    from mpo_agents.evaluation.tournament import Tournament, summarize
    from mpo_agents.judges.build import judge_client
    from mpo_agents.judges.cache import JudgmentCache
    from mpo_agents.judges.records import CallLog
    from mpo_agents.scoring.offline import local_server_for
    from mpo_agents.tasks import build_task

    generations, task_name = load_systems(paths)
    task_cfg = config.task.model_copy(update={"name": task_name}) if task_name else config.task
    task = build_task(task_cfg, load_data=False)
    settings = config.evaluation.elo
    output_dir.mkdir(parents=True, exist_ok=True)
    with local_server_for(config, ELO_ROLE, output_dir) as server:
        judge = judge_client(
            "elo_judge",
            settings.judge,
            environ,
            server,
            call_log=CallLog(output_dir / "calls" / "elo_judge.jsonl"),
            cache=JudgmentCache(output_dir / "judge-cache.sqlite"),
            where=ELO_ROLE,
        )
        tournament = Tournament(task, judge, generations, settings, output_dir / VERDICTS_NAME)

        async def judged() -> list[dict[str, Any]]:
            try:
                return await tournament.run(on_progress)
            finally:
                await judge.aclose()

        verdicts = asyncio.run(judged())
    stats = judge.stats()
    summary = summarize(verdicts, tournament.systems, settings)
    summary["task"] = task.name
    # Calls of this invocation, and what the whole tournament cost so far (its call log spans every resume).
    logged = [r for r in CallLog.read(judge.call_log.path) if not r.get("cached")] if judge.call_log else []
    summary["judge"] = {
        "model": judge.cfg.model,  # the model actually called (the local server's, when it is used)
        "calls": stats.calls,
        "failed": stats.failures,
        "cached": stats.cached,
        "attempts_total": len(logged),
        "tokens_total": sum(r.get("prompt_tokens", 0) + r.get("completion_tokens", 0) for r in logged),
        "cost_usd_total": sum(r.get("cost_usd") or 0.0 for r in logged),
    }
    summary["generations"] = {name: str(Path(path)) for name, path in zip(generations, paths, strict=True)}
    summary["verdicts"] = str(output_dir / VERDICTS_NAME)
    write_summary(output_dir / SUMMARY_NAME, summary)
    return summary


def rerate(verdicts_path: Path, config: MPOConfig, output: Path) -> dict[str, Any]:
    """Ratings of an existing verdicts file, without a judge (e.g. with another K or more runs)."""
    from mpo_agents.evaluation.tournament import read_verdicts, summarize

    verdicts = read_verdicts(verdicts_path)
    if not verdicts:
        raise ConfigError(f"{verdicts_path} holds no verdicts")
    systems = sorted({v["first"] for v in verdicts} | {v["second"] for v in verdicts})
    summary = summarize(verdicts, systems, config.evaluation.elo)
    if output.is_file():  # re-rating the tournament beside it: keep what only the judged run knew
        earlier = json.loads(output.read_text(encoding="utf-8"))
        if earlier.get("kind") == "elo":
            summary.update({key: earlier[key] for key in ("task", "judge", "generations") if key in earlier})
    summary["verdicts"] = str(verdicts_path)
    write_summary(output, summary)
    return summary


def score_generations(kind: str, path: Path, task: str | None = None) -> dict[str, Any]:
    """ROUGE or accuracy of one generations file: `<file>.<kind>.jsonl` per item, `<file>.<kind>.json`."""
    from mpo_agents.evaluation.metrics import accuracy, rouge
    from mpo_agents.rundir import write_jsonl

    rows = read_generations(path)
    task = task or next((row["task"] for row in rows if row.get("task")), None)
    if kind == "rouge":
        items, summary = rouge(rows)
    else:
        if task is None:
            raise ConfigError(f"{path}: the rows name no task; pass --task")
        items, summary = accuracy(task, rows)
    stem = path.name.removesuffix(".jsonl")
    summary = {**summary, "system": system_name(path, rows), "task": task, "generations": str(path)}
    write_jsonl(path.with_name(f"{stem}.{kind}.jsonl"), items)
    write_summary(path.with_name(f"{stem}.{kind}.json"), summary)
    return summary


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    from mpo_agents.rundir import atomic_write_text

    atomic_write_text(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
