"""`mpo run`, `resume`, `review` and `check`: start a run, continue it, decide a rubric change it waits on,
and verify its directory before it goes on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from mpo_agents.cli.common import (
    console,
    fail,
    interrupted,
    prepare_environment,
    stops_reported,
    storage_failed,
)
from mpo_agents.cli.launch import AccelerateConfig, NumProcesses, launch_or_follow, repeat
from mpo_agents.cli.progress import ProgressView, judge_failures
from mpo_agents.errors import MPOError, StorageError
from mpo_agents.rundir import CONFIG_FILE

if TYPE_CHECKING:
    from mpo_agents.parallel import ControlChannel


def run(
    config_path: Annotated[
        Path | None,
        typer.Argument(
            help="YAML config (e.g. examples/quickstart.yaml); defaults apply without.", metavar="CONFIG"
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field: --set trainer.beta=0.02 (repeatable)."),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run directory (default: runs/<time>-<task>).")
    ] = None,
    num_processes: NumProcesses = None,
    accelerate_config: AccelerateConfig = None,
) -> None:
    """Start an MPO run: rollout → score → meta_analyze → rubric_rewrite → policy_update, checkpointed."""
    prepare_environment()
    arguments = ["run", *([str(config_path)] if config_path else []), *repeat("--set", set_)]
    channel = launch_or_follow(
        [*arguments, *repeat("--run-dir", [run_dir] if run_dir else [])], num_processes, accelerate_config
    )
    from mpo_agents.config import load_config
    from mpo_agents.runner import new_run_dir

    directory = None
    try:
        config = load_config(config_path, set_ or [])
        directory = new_run_dir(config, run_dir)
        _run(config, directory, channel, fresh=True)
    except StorageError as exc:
        storage_failed(exc, directory.root if directory else run_dir)
    except MPOError as exc:
        fail(exc)
    except KeyboardInterrupt:
        interrupted(directory.root if directory else None)


def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `mpo run`.")],
    budget_usd: Annotated[
        float | None,
        typer.Option(
            "--budget-usd", help="A new judge budget in USD for the whole run (schedule.budget_usd)."
        ),
    ] = None,
    num_processes: NumProcesses = None,
    accelerate_config: AccelerateConfig = None,
) -> None:
    """Continue a stopped or killed run where its last checkpoint left it (no update is lost or repeated)."""
    prepare_environment()
    budget = [] if budget_usd is None else [str(budget_usd)]
    channel = launch_or_follow(
        ["resume", str(run_dir), *repeat("--budget-usd", budget)], num_processes, accelerate_config
    )
    from mpo_agents.graph_checkpoints import has_graph_checkpoints
    from mpo_agents.run_config import saved_config, update_saved_config
    from mpo_agents.rundir import RunDirectory

    with stops_reported(run_dir):
        config = saved_config(run_dir)
        if budget_usd is not None:
            config = update_saved_config(run_dir, config, schedule={"budget_usd": budget_usd})
        if not has_graph_checkpoints(config, RunDirectory(run_dir)):
            raise MPOError(f"{run_dir} has no graph checkpoint yet; start it again with `mpo run`")
        _run(config, RunDirectory(run_dir), channel, fresh=False, check=_checked(run_dir))


def review(
    run_dir: Annotated[Path, typer.Argument(help="A run directory paused for review.")],
    accept: Annotated[bool, typer.Option("--accept", help="Use the proposed rubric.")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Keep the current rubric.")] = False,
    edit: Annotated[
        Path | None, typer.Option("--edit", help="Use this rubric file instead of the proposal.")
    ] = None,
    note: Annotated[str, typer.Option("--note", help="Why; kept in the rubric's lineage.")] = "",
    num_processes: NumProcesses = None,
    accelerate_config: AccelerateConfig = None,
) -> None:
    """Show the rubric changes a run waits on (diff, evidence, meta-level verdicts), or decide and continue."""
    prepare_environment()
    flags = [flag for flag, on in (("--accept", accept), ("--reject", reject)) if on]
    arguments = ["review", str(run_dir), *flags, *repeat("--edit", [edit] if edit else []), "--note", note]
    deciding = bool(flags) or edit is not None  # only a decision continues the run; showing needs no policy
    channel = launch_or_follow(arguments, num_processes, accelerate_config) if deciding else None
    from mpo_agents.run_config import saved_config
    from mpo_agents.rundir import RunDirectory
    from mpo_agents.runner import pending_reviews

    with stops_reported(run_dir):
        pending = pending_reviews(run_dir)
        chosen = [name for name, on in (("accept", accept), ("reject", reject), ("edit", edit)) if on]
        if not pending:
            raise MPOError(f"{run_dir} has no rubric change waiting for review")
        if not chosen:
            for item in pending:
                _show_review(item)
            console.print(
                f"Decide with: mpo review {run_dir} --accept | --reject | --edit FILE [--note TEXT]"
            )
            return
        if len(chosen) > 1:
            raise MPOError("choose one of --accept, --reject and --edit")
        decision: dict[str, Any] = {"decision": chosen[0], "note": note, "reviewer": "human review"}
        if edit is not None:
            if not edit.is_file():
                raise MPOError(f"--edit {edit} does not exist")
            decision["text"] = edit.read_text(encoding="utf-8")
        _run(
            saved_config(run_dir),
            RunDirectory(run_dir),
            channel,
            fresh=False,
            review=decision,
            check=_checked(run_dir),
        )


def _show_review(item: dict[str, Any]) -> None:
    console.print(
        f"[bold]Iteration {item['iteration']}: v{item['current_version']} → v{item['proposed_version']}[/] "
        f"(suggested: {item['suggested']}; evidence: {item.get('evidence')})"
    )
    console.print(item["diff"], markup=False, highlight=False)
    for decision in item.get("decisions", []):
        console.print(f"  {decision['node']}: {decision.get('verdict')} {decision.get('reason') or ''}")
    for node in item.get("failed_nodes", []):
        console.print(f"  {node}: [red]failed[/] (see meta_levels.jsonl)")


def check(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Verify a run directory: policy checkpoints against their markers, every JSONL file, the SQLite
    databases, rubric files against their lineage, the files the graph state names. Says what is wrong and
    how to recover; exits 1 when `mpo resume` could not continue."""
    prepare_environment()
    from mpo_agents.integrity import check_run

    if not (run_dir / CONFIG_FILE).is_file():
        fail(MPOError(f"{run_dir} is not a run directory (no {CONFIG_FILE})"))
    with console.status("checking the run directory"):
        result = check_run(run_dir, os.environ)
    out = Console()
    colours = {"error": "red", "warning": "yellow", "repair": "cyan", "note": "dim"}
    for f in result.findings:
        out.print(f"[{colours[f.level]}]{f.level}[/] {f.path}: {f.problem}", highlight=False)
        if f.action:
            out.print(f"    -> {f.action}", highlight=False)
    if result.blocking:
        out.print(f"[red]{len(result.blocking)} problem(s) stop `mpo resume` until fixed.[/]")
        raise typer.Exit(code=1)
    restored = f"policy/{result.checkpoint.name}" if result.checkpoint else "the base model"
    replay = f", then applies {len(result.replay)} update(s) again" if result.replay else ""
    out.print(f"[green]{run_dir} can be resumed[/]: the policy is restored from {restored}{replay}.")


def _run(
    config: Any,
    run_dir: Any,
    channel: ControlChannel | None,
    fresh: bool,
    review: dict[str, Any] | None = None,
    check: Any = None,
) -> None:
    """Drive the run, with progress (on process 0 of a multi-process launch: `channel` to the others)."""
    from mpo_agents.rubrics import RubricStore
    from mpo_agents.rundir import log_to_file
    from mpo_agents.runner import execute

    log_to_file(run_dir.log_path)
    total = config.schedule.iterations
    view = ProgressView(
        total, run_dir.metrics(), config.meta_nodes, config.schedule.pipeline, config.rubric.scope
    )
    with view.progress:
        outcome = execute(
            config,
            run_dir,
            os.environ,
            fresh=fresh,
            on_event=view.on_event,
            on_status=lambda message: view.progress.update(view.task, description=message),
            review=review,
            check=check,
            channel=channel,
            on_warning=lambda message: view.progress.console.print(f"[yellow]warning:[/] {message}"),
        )
    verb = {"finished": "finished", "awaiting_review": "paused for review"}.get(outcome.status, "stopped")
    metrics = run_dir.metrics()  # totals over the whole run, also across resumes
    failures = judge_failures(metrics)
    rejected = len(RubricStore(run_dir.rubrics_dir).rejections())
    console.print(
        f"[green]Run {verb}[/]: {len(metrics)}/{total} iterations, rubric v{outcome.rubric_version} "
        f"({rejected} rewrite(s) rejected), {outcome.policy_step} optimizer steps, {failures} judge failures. "
        f"Run directory: {outcome.run_dir}"
    )
    if outcome.status == "over_budget":
        console.print(f"Continue with a larger budget: mpo resume {outcome.run_dir} --budget-usd AMOUNT")
    elif outcome.status == "awaiting_review":
        console.print(
            f"A rubric change waits for you: mpo review {outcome.run_dir}, then "
            f"mpo review {outcome.run_dir} --accept | --reject | --edit FILE"
        )
    elif outcome.status != "finished":
        console.print(f"Continue with: mpo resume {outcome.run_dir}")


def _checked(run_dir: Path) -> Any:
    """`mpo check`'s verification before a run continues, before any model loads: what it will mend is said,
    what a person must fix stops it here (CheckpointError)."""
    from mpo_agents.integrity import check_run

    with console.status("checking the run directory"):
        check = check_run(run_dir, os.environ, thorough=False)
    for finding in check.findings:
        if finding.level in ("repair", "warning"):
            console.print(
                f"[yellow]{finding.level}:[/] {finding.path}: {finding.problem}; {finding.action}",
                highlight=False,
            )
    check.refuse_if_blocked()
    return check
