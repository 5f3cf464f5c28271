"""`mpo config`, `graph` and `rubrics`: look at a resolved config, the run's graph, and a run's rubric history
without running anything."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from mpo_agents.cli.common import Overrides, fail, prepare_environment
from mpo_agents.errors import MPOError


def graph(
    config_path: Annotated[Path | None, typer.Argument(help="YAML config.", metavar="CONFIG")] = None,
    set_: Overrides = None,
) -> None:
    """Print the run's graph as Mermaid: the loop's steps, the stages inside meta_analyze and rubric_rewrite, and
    the configured meta-level nodes."""
    prepare_environment()
    from mpo_agents.config import load_config
    from mpo_agents.graphs.mpo import loop_graph

    try:
        config = load_config(config_path, set_ or [])
        compiled = loop_graph(config).compile()
        typer.echo(compiled.get_graph(xray=1).draw_mermaid())
    except MPOError as exc:
        fail(exc)


def config(
    config_path: Annotated[Path | None, typer.Argument(help="YAML config.", metavar="CONFIG")] = None,
    set_: Overrides = None,
    reference: Annotated[
        bool, typer.Option("--reference", help="Print the reference of every field (Markdown).")
    ] = False,
) -> None:
    """Print the resolved config (file, then environment, then --set) as YAML, or the field reference."""
    prepare_environment()
    import yaml

    from mpo_agents.config import config_reference, load_config, redacted_dump

    if reference:
        typer.echo(config_reference())
        return
    try:
        typer.echo(yaml.safe_dump(redacted_dump(load_config(config_path, set_ or [])), sort_keys=False))
    except MPOError as exc:
        fail(exc)


def rubrics(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    diff: Annotated[
        bool, typer.Option("--diff/--no-diff", help="Show the diff between consecutive versions.")
    ] = True,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="rubric.scope: prompt: one prompt's buffer history (its id, or the start of it), or `all` for "
            "a table of every prompt's buffer.",
        ),
    ] = None,
) -> None:
    """The rubric history of a run, with a diff between consecutive versions and the rejected rewrites; with
    --prompt, the history of per-prompt buffers."""
    from mpo_agents.rubrics import RubricStore, diff_rubrics

    if prompt is not None:
        _buffer_history(run_dir, prompt, diff)
        return

    store = RubricStore(run_dir / "rubrics")
    versions = store.versions()
    if not versions:
        fail(MPOError(f"{run_dir} has no rubrics/ versions"))
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


def _buffer_history(run_dir: Path, prompt: str, diff: bool) -> None:
    """`mpo rubrics RUN --prompt ID|all`."""
    from mpo_agents.buffers import BufferStore, diff_buffers
    from mpo_agents.rundir import RunDirectory

    store = BufferStore(RunDirectory(run_dir).prompt_rubrics_dir)
    prompts = store.prompts()
    if not prompts:
        fail(
            MPOError(
                f"{run_dir} has no per-prompt buffers (rubrics/prompts/); it ran with rubric.scope: task"
            )
        )
    out = Console()
    if prompt == "all":
        table = Table(
            Column("prompt id", no_wrap=True, min_width=12),
            *(
                Column(name, min_width=len(name))
                for name in ("versions", "items", "added", "pruned", "evicted")
            ),
            Column("prompt", no_wrap=True, overflow="ellipsis", max_width=12),
        )
        for pid in prompts:
            versions = store.versions(pid)
            changes = [c["change"] for v in versions[1:] for c in v.changes]
            table.add_row(
                pid,
                str(len(versions)),
                str(len(versions[-1].items)),
                *(str(changes.count(kind)) for kind in ("added", "pruned", "evicted")),
                " ".join(versions[-1].prompt.split())[:60],
            )
        out.print(table)
        return
    matches = [pid for pid in prompts if pid.startswith(prompt)]
    if len(matches) != 1:
        found = "no prompt" if not matches else f"{len(matches)} prompts ({', '.join(matches[:5])})"
        fail(MPOError(f"--prompt {prompt}: {found} in {run_dir} has that id; `--prompt all` lists them"))
    versions = store.versions(matches[0])
    out.print(f"[bold]{matches[0]}[/]: {' '.join(versions[-1].prompt.split())[:200]}", highlight=False)
    table = Table("version", "parent", "iteration", "items", "evolved", "changes")
    for version in versions:
        table.add_row(
            f"v{version.version}",
            "-" if version.parent is None else f"v{version.parent}",
            str(version.iteration),
            str(len(version.items)),
            str(len(version.evolved)),
            ", ".join(f"{c['change']} {c['item']}" for c in version.changes),
        )
    out.print(table)
    out.print(
        f"\n[bold]v{versions[0].version}[/] ({versions[0].changes[0]['reason'] if versions[0].changes else ''})"
    )
    out.print(versions[0].render(), markup=False, highlight=False)
    for old, new in itertools.pairwise(versions):
        out.print(f"\n[bold]v{old.version} → v{new.version}[/] (iteration {new.iteration})")
        if diff:
            out.print(diff_buffers(old, new), markup=False, highlight=False)
