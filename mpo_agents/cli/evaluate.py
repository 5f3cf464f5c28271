"""`mpo generate`, `eval elo|rouge|accuracy` and `report`: a policy's answers to test prompts, their
evaluation, and one HTML page over runs and evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mpo_agents.cli.common import Overrides, console, fail, prepare_environment
from mpo_agents.cli.progress import counting_progress
from mpo_agents.errors import MPOError


def generate(
    source: Annotated[
        str,
        typer.Argument(
            help="A run directory (its newest policy checkpoint) or a model (`policy.model` form)."
        ),
    ],
    task: Annotated[
        str | None, typer.Option("--task", help="Task (default: the run's, or the config's).")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Data split (default: evaluation.generation).")
    ] = None,
    config_path: Annotated[
        Path | None, typer.Option("--config", help="YAML config for a model source (a run uses its own).")
    ] = None,
    set_: Overrides = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="JSONL to write (default: RUN_DIR/eval/generations.<split>.jsonl)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="System name (default: run dir or model name).")
    ] = None,
) -> None:
    """Write a policy's responses to a task's test prompts (id, prompt, response, reference) with fixed decoding
    settings (`evaluation.generation`); batched, and resumable: run it again to finish an interrupted file."""
    prepare_environment()
    from mpo_agents.config import load_config
    from mpo_agents.evaluation.generate import generate as write_generations
    from mpo_agents.evaluation.generate import resolve_source
    from mpo_agents.rundir import CONFIG_FILE

    overrides = list(set_ or [])
    if task:
        overrides.append(f"task.name={task}")
    if split:
        overrides.append(f"evaluation.generation.split={split}")
    is_run = (Path(source) / CONFIG_FILE).is_file()
    try:
        config = load_config(Path(source) / CONFIG_FILE if is_run else config_path, overrides)
        resolved = resolve_source(source, config, name)
        split_name = config.evaluation.generation.split
        if output is None:
            if not is_run:
                raise typer.BadParameter(
                    "--output is needed when the source is a model", param_hint="--output"
                )
            output = Path(source) / "eval" / f"generations.{split_name}.jsonl"
        progress, on_progress = counting_progress(f"generating ({resolved.system})")
        with progress:
            written, total = write_generations(resolved, config, output, on_progress)
    except MPOError as exc:
        fail(exc)
    Console().print(f"{total} generations of {resolved.system} ({written} new): {output}")


def eval_elo(
    generations: Annotated[
        list[Path] | None, typer.Argument(help="Generation files of the systems (two or more).")
    ] = None,
    config_path: Annotated[
        Path | None, typer.Option("--config", help="YAML config: `evaluation.elo` (judge, K, runs, ...).")
    ] = None,
    set_: Overrides = None,
    output: Annotated[
        Path, typer.Option("--output", help="Directory for verdicts.jsonl, elo.json and the judge's log.")
    ] = Path("elo"),
    verdicts: Annotated[
        Path | None,
        typer.Option(
            "--verdicts", help="Re-rate this verdicts file without a judge (writes elo.json beside it)."
        ),
    ] = None,
) -> None:
    """An Elo tournament: the judge compares every pair of systems on every shared prompt (in both orders by
    default), then Elo over several shuffled runs (mean and std) and a Bradley-Terry fit with bootstrap
    intervals. Resumes from OUTPUT/verdicts.jsonl; judgments are cached."""
    prepare_environment()
    import os

    from mpo_agents.config import load_config
    from mpo_agents.evaluation import SUMMARY_NAME, rerate, run_elo

    try:
        config = load_config(config_path, set_ or [])
        if verdicts is not None:
            if generations:
                raise typer.BadParameter("give generation files or --verdicts, not both")
            summary = rerate(verdicts, config, verdicts.with_name(SUMMARY_NAME))
            where = verdicts.with_name(SUMMARY_NAME)
        else:
            if not generations or len(generations) < 2:
                raise typer.BadParameter("a tournament needs two or more generation files (or --verdicts)")
            progress, on_progress = counting_progress("judging pairs")
            with progress:
                summary = run_elo(generations, config, os.environ, output, on_progress)
            where = output / SUMMARY_NAME
    except MPOError as exc:
        fail(exc)
    _show_elo(summary)
    Console().print(f"Ratings: {where}; verdicts: {summary['verdicts']}")
    if summary["matches"] == 0:
        console.print(
            "[red]No usable verdict[/]: every judgment failed, so these ratings mean nothing. The judge's replies "
            f"are in {Path(summary['verdicts']).parent / 'calls' / 'elo_judge.jsonl'}; run the command again to "
            "retry them (a small model often does better with evaluation.elo.judge.api=completion)."
        )
        raise typer.Exit(code=1)


def _show_elo(summary: dict[str, Any]) -> None:
    out = Console()
    table = Table(title=f"Elo (K={summary['k']:g}, {summary['runs']} runs, {summary['matches']} matches)")
    for column in ("system", "Elo mean ± std", "Bradley-Terry [95% CI]", "wins", "losses", "ties"):
        table.add_column(column, justify="left" if column == "system" else "right")
    ranked = sorted(summary["systems"], key=lambda s: -summary["elo"][s]["mean"])
    for system in ranked:
        elo, bt = summary["elo"][system], summary["bradley_terry"][system]
        interval = f" [{bt['low']:.1f}, {bt['high']:.1f}]" if "low" in bt else ""
        record = summary["win_matrix"][system].values()
        table.add_row(
            system,
            f"{elo['mean']:.1f} ± {elo['std']:.1f}",
            f"{bt['rating']:.1f}{interval}",
            *(str(sum(r[key] for r in record)) for key in ("wins", "losses", "ties")),
        )
    out.print(table)
    bias = summary["position_bias"]
    rate = "n/a" if bias["first_win_rate"] is None else f"{bias['first_win_rate']:.0%}"
    consistency = "n/a" if bias["consistency"] is None else f"{bias['consistency']:.0%}"
    out.print(
        f"Position bias: the first response won {rate} of decided verdicts ({bias['first_wins']} first, "
        f"{bias['second_wins']} second, {bias['ties']} ties); both orders agreed on {consistency} of "
        f"{bias['pairs_both_orders']} pairs. Failed judgments: {summary['failed']} of {summary['judgments']}."
    )
    decided = bias["first_wins"] + bias["second_wins"]
    if decided >= 10 and abs(bias["first_win_rate"] - 0.5) >= 0.25:
        side = "first" if bias["first_win_rate"] > 0.5 else "second"
        advice = (
            "both orders are judged, so a split pair counts as a tie"
            if bias["pairs_both_orders"]
            else "with one order, the ratings mostly reflect who was shown first: judge both orders"
        )
        out.print(f"[yellow]The judge strongly favours the {side} response[/]; {advice}.")
    judge = summary.get("judge")
    if judge:
        out.print(
            f"Judge {judge['model']}: {judge['calls']} calls now ({judge['cached']} cached, {judge['failed']} "
            f"failed); the whole tournament so far: {judge['attempts_total']} attempts, {judge['tokens_total']} "
            f"tokens, ${judge['cost_usd_total']:.4f}"
        )


def eval_rouge(
    generations: Annotated[list[Path], typer.Argument(help="Generation files (summarization).")],
) -> None:
    """ROUGE-1/2/L/Lsum F-measure (stemmed, x100) of each file against its reference summaries; writes
    `<file>.rouge.jsonl` (per item) and `<file>.rouge.json` (summary) beside it."""
    _score_files("rouge", generations, None)


def eval_accuracy(
    generations: Annotated[
        list[Path], typer.Argument(help="Generation files (ethical_reasoning, math_reasoning).")
    ],
    task: Annotated[str | None, typer.Option("--task", help="Task, if the rows do not name it.")] = None,
) -> None:
    """Accuracy of ethics verdicts or math boxed answers against the references; writes
    `<file>.accuracy.jsonl` (per item) and `<file>.accuracy.json` (summary) beside each file."""
    _score_files("accuracy", generations, task)


def _score_files(kind: str, paths: list[Path], task: str | None) -> None:
    from mpo_agents.evaluation import score_generations

    try:
        summaries = [score_generations(kind, path, task) for path in paths]
    except MPOError as exc:
        fail(exc)
    columns = (
        ("rouge1", "rouge2", "rougeL", "rougeLsum")
        if kind == "rouge"
        else ("accuracy", "correct", "no_answer")
    )
    table = Table(title=kind)
    for column in ("system", "items", *columns):
        table.add_column(column, justify="left" if column == "system" else "right")
    for summary in summaries:
        cells = [f"{summary[c]:.2f}" if isinstance(summary[c], float) else str(summary[c]) for c in columns]
        table.add_row(summary["system"], str(summary["items"]), *cells)
    Console().print(table)


def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to report on, side by side.")],
    eval_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--eval", help="Evaluation summaries (elo.json, *.rouge.json, *.accuracy.json); repeatable."
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
) -> None:
    """One self-contained HTML page: reward curves per rubric version, judge failures and cost, rubric growth
    and diffs, meta-judge analyses, alarms and gate verdicts, and evaluation results side by side."""
    from mpo_agents.report import render_report

    try:
        with console.status("rendering the report"):
            written = render_report(list(run_dirs), list(eval_files or []), output, title)
    except MPOError as exc:
        fail(exc)
    Console().print(f"Report: {written.resolve()}")
