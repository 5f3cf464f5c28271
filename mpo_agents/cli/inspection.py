"""`mpo config`, `graph` and `rubrics`: look at a resolved config, the run's graph, and a run's rubric history
without running anything."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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
    from mpo_agents.graphs.mpo import build_graph
    from mpo_agents.plugins import load_meta_nodes

    try:
        config = load_config(config_path, set_ or [])
        compiled = build_graph(load_meta_nodes(config.meta_nodes), config.schedule.pipeline).compile()
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
) -> None:
    """The rubric history of a run, with a diff between consecutive versions and the rejected rewrites."""
    from mpo_agents.rubrics import RubricStore, diff_rubrics

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
