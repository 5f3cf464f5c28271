"""`mpo`: run, resume and inspect MPO runs. Thin: parses arguments, shows progress, calls the runner.

Heavy libraries (torch, trl, litellm, langgraph) are imported inside the commands, so `mpo --help` is instant.
"""

from __future__ import annotations

import itertools
import os
import signal
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from mpo_agents.errors import MPOError, StorageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Meta Policy Optimization: GRPO with an evolving LLM-judge rubric.",
)
console = Console(stderr=True)
EXIT_STORAGE = (
    74  # sysexits' EX_IOERR: the run directory cannot be written (disk full, read-only, no permission)
)


# Options of every command that can continue a run (run, resume, review), for several processes.
NumProcesses = Annotated[
    int | None,
    typer.Option(
        "--num-processes",
        help="Run across this many processes (one per GPU) through `accelerate launch`; see docs/scaling.md.",
    ),
]
AccelerateConfig = Annotated[
    Path | None,
    typer.Option(
        "--accelerate-config", help="An accelerate config file for the launch (examples/accelerate/)."
    ),
]


def _prepare_environment() -> None:
    from dotenv import load_dotenv

    # Provider keys (OPENAI_API_KEY, ...) may live in ./.env; variables already set win over the file.
    load_dotenv(Path.cwd() / ".env", override=False)
    # LiteLLM fetches a price map from the internet at import unless told not to; runs must work offline.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # transformers 5 deprecation notices about TRL's calls are for TRL's maintainers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    # `kill` (SIGTERM) unwinds like Ctrl-C's second press, so the local judge server is stopped on the way out.
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class _ProgressView:
    """A rich progress bar over iterations with the latest reward, judge failures and rubric version."""

    def __init__(self, total: int, done: list[dict[str, Any]]):
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("rollout", total=total, completed=len(done), stats="")
        self.failures = _judge_failures(done)  # a resumed run keeps counting
        self.tokens = sum((m.get("judge_tokens") or 0) + (m.get("meta_judge_tokens") or 0) for m in done)
        self.cost = sum((m.get("judge_cost_usd") or 0) + (m.get("meta_judge_cost_usd") or 0) for m in done)

    def on_event(self, node: str, update: dict[str, Any]) -> None:
        if node == "__over_budget__":
            self.progress.console.print(
                f"[yellow]Judge budget reached[/]: ${update['spent_usd']:.4f} of ${update['budget_usd']:.4f} "
                "(schedule.budget_usd); stopping at this checkpoint."
            )
            return
        if node == "__stop_requested__":
            self.progress.console.print(
                "[yellow]Stopping after the current node (Ctrl-C again to abort now)…"
            )
            return
        following = {
            "rollout": "score",
            "score": "meta step / update",
            "prescreen": "meta-analyze: analyze",
            "analyze": "rubric-rewrite: refine",
            "meta_analyze": "rubric-rewrite: refine",
            "refine": "rubric-rewrite: merge",
            "merge": "rubric-rewrite: decision",
            "commit": "update",
            "rubric_rewrite": "update",
            "policy_update": "rollout",
        }
        self.progress.update(self.task, description=following.get(node, node))
        if node == "merge" and not update.get("proposal"):
            self.progress.console.print("  meta-judge rubric rewrite rejected (see rubrics/rejected.jsonl)")
        if node == "commit" and "rubric" in update:
            metrics = update.get("metrics", {})
            self.progress.console.print(
                f"  rubric rewrite accepted → v{update['rubric']['version']} ({metrics.get('rubric_items')} "
                f"items, {metrics.get('rubric_tokens')} tokens)"
            )
        elif node == "commit" and update.get("metrics", {}).get("rubric_rewrite_accepted") == 0:
            self.progress.console.print("  rubric rewrite rejected (see rubrics/rejected.jsonl)")
        if node == "__review__":
            self.progress.console.print("  [yellow]a rubric change waits for review[/]")
        if node == "policy_update":
            metrics = update.get("metrics", {})
            self.failures += metrics.get("judge_failures", 0) or 0
            reward = metrics.get("reward_mean")
            shown = "n/a" if reward is None else f"{reward:.2f}"
            self.tokens += (metrics.get("judge_tokens") or 0) + (metrics.get("meta_judge_tokens") or 0)
            self.cost += (metrics.get("judge_cost_usd") or 0) + (metrics.get("meta_judge_cost_usd") or 0)
            stats = (
                f"reward {shown} | judge failures {self.failures} | rubric v{metrics.get('rubric_version', 0)} "
                f"| judge tokens {self.tokens / 1000:.1f}k ${self.cost:.4f}"
            )
            self.progress.update(self.task, advance=1, stats=stats)


def _judge_failures(metrics: list[dict[str, Any]]) -> int:
    return sum(m.get("judge_failures") or 0 for m in metrics)


def _run(
    config: Any, run_dir: Any, fresh: bool, review: dict[str, Any] | None = None, check: Any = None
) -> None:
    from mpo_agents.rubrics import RubricStore
    from mpo_agents.rundir import log_to_file
    from mpo_agents.runner import execute

    log_to_file(run_dir.root / "run.log")
    total = config.schedule.iterations
    view = _ProgressView(total, run_dir.metrics())
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
            on_warning=lambda message: view.progress.console.print(f"[yellow]warning:[/] {message}"),
        )
    verb = {"finished": "finished", "awaiting_review": "paused for review"}.get(outcome.status, "stopped")
    metrics = run_dir.metrics()  # totals over the whole run, also across resumes
    failures = _judge_failures(metrics)
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


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/] {exc}")
    raise typer.Exit(code=2)


def _storage_failed(exc: StorageError, run_dir: Path | None) -> None:
    """A write the OS refused: say what, what is kept and how to go on, here and in run.log; exit 74."""
    import logging

    from mpo_agents.policy import latest_checkpoint

    kept = "nothing yet (no policy checkpoint was completed)"
    if run_dir is not None and (latest := latest_checkpoint(Path(run_dir) / "policy")) is not None:
        kept = f"every step up to the last complete policy checkpoint, {latest.relative_to(run_dir)}"
    message = (
        f"cannot write {exc.path}: {exc.reason}. The run stopped at once; nothing half-written is ever read. "
        f"Kept: {kept}, and the graph's state after its last completed node. "
        f"Fix: {exc.fix}, then `mpo resume {run_dir or 'RUN_DIR'}`."
    )
    logging.getLogger("mpo_agents.cli").error(message)  # run.log, if the disk still takes a line
    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=EXIT_STORAGE)


@app.command()
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
    """Start an MPO run: rollout → score → meta (prescreen, analyze, refine, merge) → policy_update, checkpointed."""
    _prepare_environment()
    arguments = ["run", *([str(config_path)] if config_path else []), *_repeat("--set", set_)]
    if _launch_or_follow(
        [*arguments, *_repeat("--run-dir", [run_dir] if run_dir else [])], num_processes, accelerate_config
    ):
        return
    from mpo_agents.config import load_config
    from mpo_agents.runner import new_run_dir

    directory = None
    try:
        config = load_config(config_path, set_ or [])
        directory = new_run_dir(config, run_dir)
        _run(config, directory, fresh=True)
    except StorageError as exc:
        _storage_failed(exc, directory.root if directory else run_dir)
    except MPOError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted(directory.root if directory else None)


def _repeat(flag: str, values: list[Any] | None) -> list[str]:
    return [item for value in values or [] for item in (flag, str(value))]


def _launch_or_follow(
    arguments: list[str], num_processes: int | None, accelerate_config: Path | None
) -> bool:
    """Multi-process runs. Asked for several processes: re-launch `mpo <arguments>` under `accelerate launch`
    (never returns). Inside such a launch, a process other than 0 serves its policy replica and returns True:
    the command ends there, process 0 does the rest."""
    from mpo_agents import parallel

    try:
        if parallel.launched_world_size(os.environ) <= 1 and (
            (num_processes or 1) > 1 or accelerate_config is not None
        ):
            parallel.relaunch(arguments, num_processes, accelerate_config)
        channel = parallel.join(os.environ)
    except MPOError as exc:
        _fail(exc)
    if channel is None or channel.is_main:
        return False
    parallel.follow(channel)
    return True


def _interrupted(run_dir: Path | None) -> None:
    console.print(
        f"[yellow]Interrupted.[/] Checkpoints are consistent; continue with: mpo resume {run_dir or 'RUN_DIR'}"
    )
    raise typer.Exit(code=130)


@app.command()
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
    _prepare_environment()
    budget = [] if budget_usd is None else [str(budget_usd)]
    if _launch_or_follow(
        ["resume", str(run_dir), *_repeat("--budget-usd", budget)], num_processes, accelerate_config
    ):
        return
    from mpo_agents.graph_checkpoints import has_graph_checkpoints
    from mpo_agents.rundir import RunDirectory
    from mpo_agents.runner import saved_config, update_saved_config

    try:
        config = saved_config(run_dir)
        if budget_usd is not None:
            config = update_saved_config(run_dir, config, schedule={"budget_usd": budget_usd})
        if not has_graph_checkpoints(config, RunDirectory(run_dir)):
            raise MPOError(f"{run_dir} has no graph checkpoint yet; start it again with `mpo run`")
        _run(config, RunDirectory(run_dir), fresh=False, check=_checked(run_dir))
    except StorageError as exc:
        _storage_failed(exc, run_dir)
    except MPOError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted(run_dir)


def _checked(run_dir: Path) -> Any:
    """`mpo check`'s verification before a run continues, before any model loads: what it will mend is said,
    what a person must fix stops it here (CheckpointError)."""
    from mpo_agents.errors import CheckpointError
    from mpo_agents.integrity import check_run

    with console.status("checking the run directory"):
        check = check_run(run_dir, os.environ, thorough=False)
    for finding in check.findings:
        if finding.level in ("repair", "warning"):
            console.print(
                f"[yellow]{finding.level}:[/] {finding.path}: {finding.problem}; {finding.action}",
                highlight=False,
            )
    if check.blocking:
        problems = "\n".join(f"  {f.path}: {f.problem}. Fix: {f.action}" for f in check.blocking)
        raise CheckpointError(f"{run_dir} cannot be resumed as it is:\n{problems}")
    return check


@app.command()
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
    _prepare_environment()
    flags = [flag for flag, on in (("--accept", accept), ("--reject", reject)) if on]
    arguments = ["review", str(run_dir), *flags, *_repeat("--edit", [edit] if edit else []), "--note", note]
    deciding = bool(flags) or edit is not None  # only a decision continues the run; showing needs no policy
    if deciding and _launch_or_follow(arguments, num_processes, accelerate_config):
        return
    from mpo_agents.rundir import RunDirectory
    from mpo_agents.runner import pending_reviews, saved_config

    try:
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
            fresh=False,
            review=decision,
            check=_checked(run_dir),
        )
    except StorageError as exc:
        _storage_failed(exc, run_dir)
    except MPOError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted(run_dir)


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


@app.command()
def graph(
    config_path: Annotated[Path | None, typer.Argument(help="YAML config.", metavar="CONFIG")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field (repeatable).")] = None,
) -> None:
    """Print the run's graph as Mermaid: the loop's steps, the stages inside meta_analyze and rubric_rewrite, and
    the configured meta-level nodes."""
    _prepare_environment()
    from mpo_agents.config import load_config
    from mpo_agents.graphs.mpo import build_graph
    from mpo_agents.plugins import load_meta_nodes

    try:
        config = load_config(config_path, set_ or [])
        compiled = build_graph(load_meta_nodes(config.meta_nodes)).compile()
        typer.echo(compiled.get_graph(xray=1).draw_mermaid())
    except MPOError as exc:
        _fail(exc)


@app.command()
def config(
    config_path: Annotated[Path | None, typer.Argument(help="YAML config.", metavar="CONFIG")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field (repeatable).")] = None,
    reference: Annotated[
        bool, typer.Option("--reference", help="Print the reference of every field (Markdown).")
    ] = False,
) -> None:
    """Print the resolved config (file, then environment, then --set) as YAML, or the field reference."""
    _prepare_environment()
    import yaml

    from mpo_agents.config import config_reference, load_config, redacted_dump

    if reference:
        typer.echo(config_reference())
        return
    try:
        typer.echo(yaml.safe_dump(redacted_dump(load_config(config_path, set_ or [])), sort_keys=False))
    except MPOError as exc:
        _fail(exc)


@app.command()
def rubrics(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    diff: Annotated[
        bool, typer.Option("--diff/--no-diff", help="Show the diff between consecutive versions.")
    ] = True,
) -> None:
    """The rubric history of a run, with a diff between consecutive versions and the rejected rewrites."""
    from mpo_agents.rubrics import RubricStore, diff_rubrics

    store = RubricStore(run_dir / "rubrics")
    versions = store.versions()
    if not versions:
        _fail(MPOError(f"{run_dir} has no rubrics/ versions"))
    table = Table(
        "version",
        "parent",
        "iteration",
        "kind",
        "items",
        "tokens",
        "range",
        "origin",
        "evidence",
        title="Rubric growth (iteration: written after its scoring; tokens: cl100k)",
    )
    for version in versions:
        table.add_row(
            f"v{version.version}",
            "-" if version.parent is None else f"v{version.parent}",
            str(version.iteration),
            version.kind,
            str(version.items),
            str(version.tokens),
            f"{version.low:g}..{version.high:g}",
            version.origin,
            version.evidence or "-",
        )
    out = Console()
    out.print(table)
    for old, new in itertools.pairwise(versions):
        out.print(f"\n[bold]v{old.version} → v{new.version}[/]")
        if diff:
            out.print(diff_rubrics(old, new), markup=False, highlight=False)
    rejected = store.rejections()
    if rejected:
        out.print(f"\n{len(rejected)} rewrite(s) rejected:")
        for item in rejected:
            out.print(f"  iteration {item['iteration']}: {item['reason']}", markup=False)


@app.command()
def check(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Verify a run directory: policy checkpoints against their markers, every JSONL file, the SQLite
    databases, rubric files against their lineage, the files the graph state names. Says what is wrong and
    how to recover; exits 1 when `mpo resume` could not continue."""
    _prepare_environment()
    from mpo_agents.integrity import check_run

    if not (run_dir / "config.yaml").is_file():
        _fail(MPOError(f"{run_dir} is not a run directory (no config.yaml)"))
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


@app.command("hacking-check")
def hacking_check(
    config_path: Annotated[
        Path | None, typer.Argument(help="YAML config (task and judge).", metavar="CONFIG")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field (repeatable).")] = None,
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
    _prepare_environment()
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
        _fail(exc)
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


@app.command()
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
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field (repeatable).")] = None,
) -> None:
    """Score completions against a rubric with the configured judge, exactly as training would (guards, exact
    match, `scoring.mode`, penalties): the tool for debugging a rubric before training."""
    _prepare_environment()
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
                scored = score_file(scorer, version, pairs)
    except MPOError as exc:
        _fail(exc)
    write_jsonl(output, scored)
    rewards = [s["reward"] for s in scored if s.get("reward") is not None]
    statuses = {
        status: sum(s["status"] == status for s in scored) for status in sorted({s["status"] for s in scored})
    }
    out = Console()
    mean = f"{fmean(rewards):.3g}" if rewards else "n/a"
    out.print(
        f"{len(scored)} scored: {statuses}; mean reward {mean}; range {version.low:g}..{version.high:g}"
    )
    out.print(f"Scores and rationales: {output}; judge calls: {calls_dir / 'calls' / 'judge.jsonl'}")


@app.command()
def rejudge(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Judge again the samples of a run whose judgment failed (call failed or reply unparseable), under the
    rubric version that scored them, without re-running the policy. Updates already applied stay as they are;
    the samples files (which the meta-judge's window and reports read) are rewritten."""
    _prepare_environment()
    import os

    from mpo_agents.runner import saved_config
    from mpo_agents.scoring.offline import judge_session, rejudge_run

    try:
        config = saved_config(run_dir)
        with (
            judge_session(config, os.environ, run_dir / "rejudge") as (_, scorer),
            console.status("judging failed samples again"),
        ):
            recovered = rejudge_run(scorer, run_dir)
    except MPOError as exc:
        _fail(exc)
    out = Console()
    if not recovered:
        out.print("No failed judgments to redo.")
    for iteration, (failed, fixed) in recovered.items():
        out.print(f"iteration {iteration}: {fixed} of {failed} failed judgments recovered")


def _counting_progress(description: str) -> tuple[Progress, Any]:
    """A progress bar and the `on_progress(done, total)` callback that drives it."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    bar = progress.add_task(description, total=None)

    def on_progress(done: int, total: int) -> None:
        progress.update(bar, completed=done, total=total)

    return progress, on_progress


@app.command()
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
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field (repeatable).")] = None,
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
    _prepare_environment()
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
        progress, on_progress = _counting_progress(f"generating ({resolved.system})")
        with progress:
            written, total = write_generations(resolved, config, output, on_progress)
    except MPOError as exc:
        _fail(exc)
    Console().print(f"{total} generations of {resolved.system} ({written} new): {output}")


eval_app = typer.Typer(no_args_is_help=True, help="Evaluate generations: an Elo tournament, ROUGE, accuracy.")
app.add_typer(eval_app, name="eval")


@eval_app.command("elo")
def eval_elo(
    generations: Annotated[
        list[Path] | None, typer.Argument(help="Generation files of the systems (two or more).")
    ] = None,
    config_path: Annotated[
        Path | None, typer.Option("--config", help="YAML config: `evaluation.elo` (judge, K, runs, ...).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field (repeatable).")] = None,
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
    _prepare_environment()
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
            progress, on_progress = _counting_progress("judging pairs")
            with progress:
                summary = run_elo(generations, config, os.environ, output, on_progress)
            where = output / SUMMARY_NAME
    except MPOError as exc:
        _fail(exc)
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


@eval_app.command("rouge")
def eval_rouge(
    generations: Annotated[list[Path], typer.Argument(help="Generation files (summarization).")],
) -> None:
    """ROUGE-1/2/L/Lsum F-measure (stemmed, x100) of each file against its reference summaries; writes
    `<file>.rouge.jsonl` (per item) and `<file>.rouge.json` (summary) beside it."""
    _score_files("rouge", generations, None)


@eval_app.command("accuracy")
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
        _fail(exc)
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


@app.command()
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
        _fail(exc)
    Console().print(f"Report: {written.resolve()}")


def _reward_text(value: float | None) -> str:
    return "failed" if value is None else f"{value:g}"


if __name__ == "__main__":
    app()
