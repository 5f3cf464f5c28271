"""Verify a run directory as `git fsck` verifies a repository: what is damaged, what `mpo resume` mends by
itself, and what a person has to do. `mpo check` prints the findings; `mpo resume` acts on them before any
model loads."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mpo_agents.errors import CheckpointError, MPOError, RunFileError
from mpo_agents.judges.cache import CACHE_FILE
from mpo_agents.rundir import (
    CONFIG_FILE,
    LEDGER_FILE,
    META_LEVELS_FILE,
    METRICS_FILE,
    REJECTED_FILE,
    TIMINGS_FILE,
    RunDirectory,
    read_jsonl,
)

Level = Literal["error", "warning", "repair", "note"]
# Files the run appends to line by line: a last line without its line break is an interrupted append.
APPENDED = (METRICS_FILE, TIMINGS_FILE, META_LEVELS_FILE, REJECTED_FILE, LEDGER_FILE)


@dataclass(frozen=True)
class Finding:
    """One thing `mpo check` found. `error`: a resume cannot go on until a person acts; `warning`: damaged,
    but the run does not need it; `repair`: a resume mends it by itself; `note`: for information."""

    level: Level
    path: str  # relative to the run directory
    problem: str
    action: str


@dataclass
class RunCheck:
    """The findings, and what a resume does about the policy: which checkpoint it loads (verified), which
    newer ones it moves aside, and which updates it applies again."""

    root: Path
    findings: list[Finding] = field(default_factory=list)
    checkpoint: Path | None = None
    damaged: list[Path] = field(default_factory=list)
    replay: range = range(0)
    damaged_cache: bool = False

    @property
    def blocking(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.level == "error"]

    def refuse_if_blocked(self) -> None:
        """Raise CheckpointError, naming each problem and its fix, when a resume cannot go on as things are."""
        if self.blocking:
            problems = "\n".join(f"  {f.path}: {f.problem}. Fix: {f.action}" for f in self.blocking)
            raise CheckpointError(f"{self.root} cannot be resumed as it is:\n{problems}")

    def add(self, level: Level, path: Path | str, problem: str, action: str) -> None:
        where = Path(path)
        shown = where.relative_to(self.root).as_posix() if where.is_relative_to(self.root) else str(where)
        self.findings.append(Finding(level, shown, problem, action))


def check_run(run_dir: Path, environ: Mapping[str, str], *, thorough: bool = True) -> RunCheck:
    """Everything `mpo check` verifies. Without `thorough` (what `mpo resume` asks), only what a resume reads:
    policy checkpoints newest first until one is good, and of the JSONL files the small logs and the rollouts
    and samples the next nodes or a replay read (not those of finished iterations, nor the judge call logs,
    which grow large; a damaged one there is named when something reads it)."""
    from mpo_agents.run_config import saved_config

    directory = RunDirectory(Path(run_dir))
    check = RunCheck(directory.root)
    try:
        config = saved_config(directory.root)
    except (MPOError, ValueError) as exc:
        check.add("error", CONFIG_FILE, str(exc).splitlines()[0], "")  # the message says what to do
        return check
    state = _graph_state(check, config, directory, environ)
    if state is not None:
        _check_state_paths(check, directory, state)
        _check_buffers(check, directory, state)
        _check_policy(check, config, directory, state, thorough)  # sets what a resume replays
    _check_jsonl_files(check, directory, _needed_files(directory, state, check.replay), thorough)
    _check_rubrics(check, directory)
    _check_judge_cache(check, directory)
    return check


# --- the graph's checkpoints ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphState:
    values: dict[str, Any]
    next: tuple[str, ...]

    @property
    def iteration(self) -> int:
        """The iteration the graph is in (its policy update not yet committed)."""
        return int(self.values.get("iteration", 1))


def _graph_state(check: RunCheck, config: Any, directory: RunDirectory, environ: Mapping[str, str]):
    if config.output.checkpointer == "sqlite":
        database = directory.checkpoint_db
        if not database.is_file():
            check.add("note", database, "no graph checkpoint yet", "start the run again with `mpo run`")
            return None
        problem = sqlite_problem(database)
        if problem:
            check.add(
                "error",
                database,
                f"the graph's checkpoint database is damaged ({problem})",
                "restore it from a copy, or try `sqlite3 checkpoints.sqlite .recover | sqlite3 "
                "recovered.sqlite` and move recovered.sqlite in its place; the policy checkpoints, rubrics "
                "and samples are not in it and stay as they are",
            )
            return None
    try:
        return asyncio.run(_read_state(config, directory, environ))
    except MPOError as exc:
        check.add("error", directory.checkpoint_db, str(exc), "fix what the message names, then check again")
    except (sqlite3.DatabaseError, ValueError, KeyError) as exc:
        check.add(
            "error",
            directory.checkpoint_db,
            f"the graph state cannot be read ({type(exc).__name__}: {exc})",
            "restore checkpoints.sqlite from a copy",
        )
    return None


async def _read_state(config: Any, directory: RunDirectory, environ: Mapping[str, str]) -> GraphState:
    from mpo_agents.graph_checkpoints import open_checkpointer, refuse_unknown_nodes
    from mpo_agents.graphs.mpo import loop_graph

    async with open_checkpointer(config, directory, environ) as (saver, thread):
        app = loop_graph(config).compile(checkpointer=saver)
        await refuse_unknown_nodes(app, {"configurable": {"thread_id": thread}})
        snapshot = await app.aget_state({"configurable": {"thread_id": thread}})
        return GraphState(dict(snapshot.values), tuple(snapshot.next))


def sqlite_problem(path: Path) -> str | None:
    """What SQLite's own integrity check says is wrong with a database file; None when it is sound."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        db.close()
    verdict = "; ".join(str(row[0]) for row in rows[:3])
    return None if verdict == "ok" else verdict


# --- run files -----------------------------------------------------------------------------------------------
def _check_jsonl_files(check: RunCheck, directory: RunDirectory, needed: set[Path], thorough: bool) -> None:
    for path in sorted(directory.root.rglob("*.jsonl")):
        if not thorough and path not in needed and path.name not in APPENDED:
            continue
        appended = path.name in APPENDED or path.parent.name == "calls"
        try:
            read_jsonl(path, torn_tail_ok=appended)
        except RunFileError as exc:
            required = path in needed or appended and path.parent.name != "eval"
            level: Level = "error" if required and path.name != TIMINGS_FILE else "warning"
            problem, _, advice = str(exc).partition("; ")
            check.add(level, path, problem.replace(f"{path} ", "", 1), advice)
            continue
        if appended and _torn_tail(path):
            check.add(
                "repair",
                path,
                "its last line was cut short by an interrupted write",
                "it is left out when read and removed by the next append",
            )


def _torn_tail(path: Path) -> bool:
    content = path.read_bytes()
    return bool(content) and not content.endswith(b"\n")


def _needed_files(directory: RunDirectory, state: GraphState | None, replay: range) -> set[Path]:
    """Run files a resumed run reads: the window's samples, the rollouts of the iteration in progress (and, in
    the pipelined loop, of the batches sampled ahead of it), and the rollouts and samples of the updates it
    applies again."""
    if state is None:
        return set()
    paths = {directory.locate(entry) for entry in state.values.get("window", [])}
    if state.values.get("rollout_path"):
        paths.add(directory.locate(state.values["rollout_path"]))
    paths |= {directory.locate(ref["rollout_path"]) for ref in _batches_ahead(state)}
    for iteration in replay:
        paths |= {directory.rollouts_path(iteration), directory.samples_path(iteration)}
    return paths


def _check_rubrics(check: RunCheck, directory: RunDirectory) -> None:
    from mpo_agents.rubrics import RubricVersion

    stored: dict[int, RubricVersion] = {}
    for path in sorted(directory.rubrics_dir.glob("v*.json")):
        try:
            stored[int(path.stem[1:])] = RubricVersion.from_state(
                json.loads(path.read_text(encoding="utf-8"))
            )
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            check.add(
                "error",
                path,
                f"the rubric version's record is unreadable ({exc})",
                "restore it from a copy (the graph state holds the rubric in force; the record is its lineage)",
            )
    for number, version in sorted(stored.items()):
        text_file = directory.rubrics_dir / f"v{number:04d}.md"
        if version.version != number:
            check.add(
                "error", text_file.with_suffix(".json"), f"it says it is v{version.version}", "restore it"
            )
        if version.parent is not None and version.parent not in stored:
            check.add(
                "warning", text_file.with_suffix(".json"), f"its parent v{version.parent} is missing", ""
            )
        if not text_file.is_file():
            check.add("warning", text_file, "missing (the .json beside it holds the same text)", "")
        elif text_file.read_text(encoding="utf-8", errors="replace").strip() != version.full_text().strip():
            check.add(
                "warning",
                text_file,
                "differs from its .json record (edited by hand?)",
                "the run uses the .json record; edit rubrics through `mpo review --edit`",
            )


def _check_buffers(check: RunCheck, directory: RunDirectory, state: GraphState) -> None:
    """The per-prompt buffers in force (`rubric.scope: prompt`): the next scoring of each prompt reads its file."""
    from mpo_agents.buffers import PromptRubric

    for pid, version in sorted(state.values.get("buffers", {}).items()):
        path = directory.prompt_rubrics_dir / pid / f"v{version:04d}.json"
        try:
            PromptRubric.from_state(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            problem = "missing"
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            problem = f"unreadable ({exc})"
        else:
            continue
        check.add(
            "error",
            path,
            f"{problem}: the buffer in force for prompt {pid}, which its next scoring reads",
            "restore it from a copy of the run directory",
        )


def _check_judge_cache(check: RunCheck, directory: RunDirectory) -> None:
    path = directory.root / CACHE_FILE
    if path.is_file() and (problem := sqlite_problem(path)):
        check.damaged_cache = True
        check.add(
            "repair",
            path,
            f"the judgment cache is damaged ({problem})",
            f"`mpo resume` moves it aside as {CACHE_FILE}.damaged; judgments it held are asked again",
        )


def _batches_ahead(state: GraphState) -> list[dict[str, Any]]:
    """The pipelined loop's batches sampled or being judged, ahead of the update in progress."""
    return [ref for ref in (state.values.get("sampled"), state.values.get("judging")) if ref]


def _check_state_paths(check: RunCheck, directory: RunDirectory, state: GraphState) -> None:
    entries = [("rollout_path", state.values.get("rollout_path"))]
    entries += [("window", entry) for entry in state.values.get("window", [])]
    entries += [("ahead", ref["rollout_path"]) for ref in _batches_ahead(state)]
    for name, entry in entries:
        if not entry:
            continue
        path = directory.locate(entry)
        if Path(entry).is_absolute():
            check.add(
                "note",
                path,
                f"the graph state names it by its old absolute path {entry}",
                "read from this run directory instead (runs now store paths relative to it)",
            )
        # The iteration's own rollouts are read until its update; a graph about to sample or (pipelined) to
        # collect the next batch has trained on them.
        needed = name in ("window", "ahead") or not {"rollout", "judge_collect"} & set(state.next)
        if not path.is_file() and needed:
            what = {
                "window": "the next meta step reads these samples",
                "ahead": "a batch sampled ahead: its judging and its update read these token ids",
            }.get(name, f"iteration {state.iteration} was sampled, and its update reads these token ids")
            check.add("error", path, f"missing ({what})", "restore it from a copy of the run directory")


# --- policy checkpoints --------------------------------------------------------------------------------------
def _check_policy(
    check: RunCheck, config: Any, directory: RunDirectory, state: GraphState, thorough: bool
) -> None:
    from mpo_agents.policy.weight_checkpoints import (
        DAMAGED_SUFFIX,
        checkpoint_index,
        usable_checkpoint,
        verify_checkpoint,
    )

    chosen, damaged = usable_checkpoint(directory.policy_dir)
    check.checkpoint, check.damaged = chosen, [path for path, _ in damaged]
    for path in sorted(directory.policy_dir.glob("iter-*")):
        if path.name.endswith(".tmp"):
            check.add("note", path, "a save that was interrupted", "ignored; the next save removes it")
        elif path.name.endswith(DAMAGED_SUFFIX):
            check.add(
                "note", path, "a damaged checkpoint moved aside earlier", "delete it once you have looked"
            )
    if thorough and chosen is not None:
        older = sorted(
            p for p in directory.policy_dir.glob("iter-*") if p.is_dir() and (p / "COMPLETE").is_file()
        )
        for path in older:
            if path != chosen and path not in check.damaged and (problems := verify_checkpoint(path)):
                check.add(
                    "warning", path, "damaged: " + "; ".join(problems), "delete it; newer ones are good"
                )
    done = state.iteration - 1  # updates the graph has committed
    restored = checkpoint_index(chosen) if chosen is not None else 0
    check.replay = range(restored + 1, done + 1)
    source = f"policy/{chosen.name}" if chosen is not None else f"the base model ({config.policy.model})"
    for path, problems in damaged:
        check.add(
            "repair",
            path,
            "damaged: " + "; ".join(problems),
            f"`mpo resume` moves it aside as {path.name}{DAMAGED_SUFFIX} and restores {source}"
            + (f", then applies the update of {_span(check.replay)} again" if check.replay else ""),
        )
    if check.replay and not damaged:
        # The usual state between two checkpoints of `output.checkpoint_every`, or after a kill.
        check.add(
            "note",
            directory.policy_dir,
            f"the graph has applied {done} updates; the newest policy checkpoint holds {restored}",
            f"`mpo resume` restores {source} and applies the update of {_span(check.replay)} again from "
            "the stored rollouts and rewards",
        )
    for iteration in check.replay:
        _check_replayable(check, directory, iteration)


def _check_replayable(check: RunCheck, directory: RunDirectory, iteration: int) -> None:
    rollouts = directory.rollouts_path(iteration)
    if not rollouts.is_file():
        check.add(
            "error",
            rollouts,
            f"missing: the update of iteration {iteration} must be applied again and needs its token ids",
            "restore it from a copy of the run directory",
        )
    if directory.update_rewards(iteration) is None and not directory.samples_path(iteration).is_file():
        check.add(
            "error",
            directory.samples_path(iteration),
            f"missing: the update of iteration {iteration} must be applied again and needs its rewards",
            "restore it from a copy of the run directory",
        )


def _span(iterations: range) -> str:
    first, last = iterations.start, iterations.stop - 1
    return f"iteration {first}" if first == last else f"iterations {first}-{last}"
