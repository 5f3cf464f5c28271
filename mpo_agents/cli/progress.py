"""What a person watches while the loop runs: a progress bar over iterations, and the counting bars of the
evaluation commands."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from mpo_agents.cli.common import console
from mpo_agents.events import BudgetExhausted, NodeFinished, ReviewRequested, RunEvent, StopRequested

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

    from mpo_agents.config import MetaNodeConfig


# What the bar says while a node runs, by node name; the order of the nodes is the graph's own (`next_nodes`).
# A node not named here (a meta-level plug-in) shows its own name.
LABELS = {
    "meta_analyze": "meta-analyze",
    "prescreen": "meta-analyze: prescreen",
    "analyze": "meta-analyze: analyze",
    "rubric_rewrite": "rubric-rewrite",
    "refine": "rubric-rewrite: refine",
    "merge": "rubric-rewrite: merge",
    "commit": "rubric-rewrite: decision",
    "policy_update": "update",
    "judge_dispatch": "judging starts",
    "judge_collect": "judging",
}


class ProgressView:
    """A rich progress bar over iterations with the latest reward, judge failures and rubric version; it shows
    the `runner.execute` events it is handed (`on_event`)."""

    def __init__(
        self,
        total: int,
        done: list[dict[str, Any]],
        meta_nodes: list[MetaNodeConfig],
        pipeline: str = "off",
        scope: str = "task",
    ):
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
        self.failures = judge_failures(done)  # a resumed run keeps counting
        self.tokens = sum((m.get("judge_tokens") or 0) + (m.get("meta_judge_tokens") or 0) for m in done)
        self.cost = sum((m.get("judge_cost_usd") or 0) + (m.get("meta_judge_cost_usd") or 0) for m in done)
        self.meta_nodes = meta_nodes
        self.pipeline = pipeline
        self.scope = scope
        self.judge_seconds = sum(m.get("judge_seconds") or 0 for m in done)
        self.waited_seconds = sum(m.get("judge_wait_seconds") or 0 for m in done)

    @functools.cached_property
    def following(self) -> dict[str, list[str]]:
        """The nodes that may run after each node, asked of the run's graph when the first node finishes (by
        then the run has loaded its meta-level nodes, so a bad one fails there, not here)."""
        from mpo_agents.graphs.mpo import build_graph
        from mpo_agents.plugins import load_meta_nodes

        return next_nodes(build_graph(load_meta_nodes(self.meta_nodes), self.pipeline, self.scope).compile())

    def on_event(self, event: RunEvent) -> None:
        say = self.progress.console.print
        match event:
            case NodeFinished(node=node, update=update):
                self._node_finished(node, update)
            case BudgetExhausted(spent_usd=spent, budget_usd=budget):
                say(
                    f"[yellow]Judge budget reached[/]: ${spent:.4f} of ${budget:.4f} (schedule.budget_usd); "
                    "stopping at this checkpoint."
                )
            case StopRequested():
                say("[yellow]Stopping after the current node (Ctrl-C again to abort now)…")
            case ReviewRequested():
                say("  [yellow]a rubric change waits for review[/]")

    def _node_finished(self, node: str, update: dict[str, Any]) -> None:
        after = [LABELS.get(name, name) for name in self.following.get(node, [])]
        self.progress.update(self.task, description=" / ".join(after) or node)
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
        if node == "policy_update":
            metrics = update.get("metrics", {})
            self.failures += metrics.get("judge_failures", 0) or 0
            reward = metrics.get("reward_mean")
            shown = "n/a" if reward is None else f"{reward:.2f}"
            self.tokens += (metrics.get("judge_tokens") or 0) + (metrics.get("meta_judge_tokens") or 0)
            self.cost += (metrics.get("judge_cost_usd") or 0) + (metrics.get("meta_judge_cost_usd") or 0)
            self.judge_seconds += metrics.get("judge_seconds") or 0
            self.waited_seconds += metrics.get("judge_wait_seconds") or 0
            stats = (
                f"reward {shown} | judge failures {self.failures} | rubric v{metrics.get('rubric_version', 0)} "
                f"| judge tokens {self.tokens / 1000:.1f}k ${self.cost:.4f}"
            )
            # The pipelined loop: how much of the judging it waited for
            if self.pipeline == "one_step" and self.judge_seconds:
                stats += f" | judge wait {self.waited_seconds / self.judge_seconds:.0%}"
            self.progress.update(self.task, advance=1, stats=stats)


def next_nodes(graph: CompiledStateGraph) -> dict[str, list[str]]:
    """Each node's possible successors in a compiled graph, in the graph's node order. A subgraph's stages are
    included: a stage is followed by the next stage, the last stage by the node after the subgraph."""
    following: dict[str, list[str]] = {}
    # With xray the subgraph's stages appear (as `meta_analyze:prescreen`, ...) in place of the subgraph's node;
    # the plain drawing's edges (`score` -> `meta_analyze`) win over the xray's (`score` -> `meta_analyze:prescreen`).
    for drawing in (graph.get_graph(xray=1), graph.get_graph()):
        order = list(drawing.nodes)
        found: dict[str, list[str]] = {}
        for edge in sorted(drawing.edges, key=lambda edge: order.index(edge.target)):
            if edge.target != "__end__":
                found.setdefault(_local(edge.source), []).append(_local(edge.target))
        following.update(found)
    return following


def _local(name: str) -> str:
    """A drawn node's own name: `rubric_rewrite:merge` -> `merge`."""
    return name.rpartition(":")[2]


def judge_failures(metrics: list[dict[str, Any]]) -> int:
    return sum(m.get("judge_failures") or 0 for m in metrics)


def counting_progress(description: str) -> tuple[Progress, Any]:
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
