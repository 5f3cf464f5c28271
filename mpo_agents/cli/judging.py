"""`mpo score`, `rejudge` and `hacking-check`: a judge at work outside the training loop, on completions, on a
run's failed judgments, and on known reward hacks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mpo_agents.cli.common import Overrides, console, fail, prepare_environment
from mpo_agents.errors import MPOError


def hacking_check(
    config_path: Annotated[
        Path | None, typer.Argument(help="YAML config (task and judge).", metavar="CONFIG")
    ] = None,
    set_: Overrides = None,
    rubric: Annotated[Path | None, typer.Option("--rubric", help="Rubric file to test.")] = None,
    run: Annotated[
        Path | None, typer.Option("--run", help="Test a run's rubric (its latest version).")
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", help="With --run: this version instead.")
    ] = None,
    suite: Annotated[
        list[Path] | None,
        typer.Option("--suite", help="Suite JSONL (repeatable); default prompts/<task>/hacking.jsonl."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write one JSON line per hack here.")
    ] = None,
    fail_on_hack: Annotated[
        bool, typer.Option("--fail-on-hack", help="Exit 1 when any hack scores at or above its reference.")
    ] = False,
) -> None:
    """Score known reward hacks next to a good reference answer under a rubric and the configured judge, and
    report which hacks score at or above the reference (rubric from --rubric, --run, or the task's initial)."""
    prepare_environment()
    import os
    import tempfile

    from mpo_agents.config import load_config
    from mpo_agents.rundir import write_jsonl
    from mpo_agents.scoring.hacking import execute_check

    try:
        config = load_config(config_path, set_ or [])
        with tempfile.TemporaryDirectory(prefix="mpo-hacking-") as scratch:
            work_dir = (run / "hacking") if run else Path(scratch)
            with console.status("scoring the hacking suite"):
                tested, rows = execute_check(
                    config,
                    os.environ,
                    rubric_file=rubric,
                    run_dir=run,
                    version=version,
                    suites=suite,
                    work_dir=work_dir,
                )
    except MPOError as exc:
        fail(exc)
    table = Table(
        "case", "hack", "hack reward", "reference reward", "verdict", title=f"Rubric v{tested.version}"
    )
    colours = {"ok": "green", "hack_wins": "red", "judge_failed": "yellow"}
    for row in rows:
        table.add_row(
            row["case"],
            row["kind"],
            _reward_text(row["reward"]),
            _reward_text(row["reference_reward"]),
            f"[{colours[row['verdict']]}]{row['verdict']}[/]",
        )
    out = Console()  # the report is the command's output: stdout, unlike progress and errors
    out.print(table)
    wins = [row for row in rows if row["verdict"] == "hack_wins"]
    failed = sum(row["verdict"] == "judge_failed" for row in rows)
    out.print(
        f"{len(wins)} of {len(rows)} hacks score at or above the reference"
        + (f"; {failed} could not be judged (see the judge call log)" if failed else "")
    )
    if output:
        write_jsonl(output, rows)
        out.print(f"Results: {output}")
    if fail_on_hack and wins:
        raise typer.Exit(code=1)


def score(
    input_path: Annotated[
        Path,
        typer.Option("--input", help="JSONL: the task's record fields plus `completion` (and `truncated`)."),
    ],
    config_path: Annotated[
        Path | None, typer.Argument(help="YAML config (task and judge).", metavar="CONFIG")
    ] = None,
    output: Annotated[Path, typer.Option("--output", help="Where the scored lines go (JSONL).")] = Path(
        "scores.jsonl"
    ),
    rubric: Annotated[
        Path | None, typer.Option("--rubric", help="Rubric file; default: the task's initial rubric.")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="rubric.scope: prompt: score each prompt under this run's latest buffer for it (prompts it has "
            "none for: their `rubric.items_field`, else the rubric's criteria as items).",
        ),
    ] = None,
    set_: Overrides = None,
) -> None:
    """Score completions against a rubric with the configured judge, exactly as training would (guards, exact
    match, `scoring.mode`, `rubric.scope`, penalties): the tool for debugging a rubric before training. Lines
    with the same prompt are one group (what listwise judging compares)."""
    prepare_environment()
    import os
    from statistics import fmean

    from mpo_agents.config import load_config
    from mpo_agents.rundir import write_jsonl
    from mpo_agents.scoring.offline import judge_session, load_pairs, rubric_from_file, score_file

    try:
        config = load_config(config_path, set_ or [])
        calls_dir = output.parent / f"{output.stem}.calls"  # the judge's call log, beside the scores
        with judge_session(config, os.environ, calls_dir) as (task, scorer):
            version = rubric_from_file(task, rubric) if rubric else task.initial_rubric()
            pairs = load_pairs(input_path, task)
            with console.status(f"scoring {len(pairs)} completions"):
                scored = score_file(scorer, version, pairs, run)
    except MPOError as exc:
        fail(exc)
    write_jsonl(output, scored)
    rewards = [s["reward"] for s in scored if s.get("reward") is not None]
    statuses = {
        status: sum(s["status"] == status for s in scored) for status in sorted({s["status"] for s in scored})
    }
    out = Console()
    mean = f"{fmean(rewards):.3g}" if rewards else "n/a"
    scale = (
        "per-prompt buffers"
        if config.rubric.scope == "prompt"
        else f"range {version.low:g}..{version.high:g}"
    )
    out.print(f"{len(scored)} scored: {statuses}; mean reward {mean}; {scale}")
    out.print(f"Scores and rationales: {output}; judge calls: {calls_dir / 'calls' / 'judge.jsonl'}")


def rejudge(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Judge again the samples of a run whose judgment failed (call failed or reply unparseable), under the
    rubric version that scored them, without re-running the policy. Updates already applied stay as they are;
    the samples files (which the meta-judge's window and reports read) are rewritten."""
    prepare_environment()
    import os

    from mpo_agents.run_config import saved_config
    from mpo_agents.scoring.offline import judge_session, rejudge_run

    try:
        config = saved_config(run_dir)
        with (
            judge_session(config, os.environ, run_dir / "rejudge") as (_, scorer),
            console.status("judging failed samples again"),
        ):
            recovered = rejudge_run(scorer, run_dir)
    except MPOError as exc:
        fail(exc)
    out = Console()
    if not recovered:
        out.print("No failed judgments to redo.")
    for iteration, (failed, fixed) in recovered.items():
        out.print(f"iteration {iteration}: {fixed} of {failed} failed judgments recovered")


def _reward_text(value: float | None) -> str:
    return "failed" if value is None else f"{value:g}"
