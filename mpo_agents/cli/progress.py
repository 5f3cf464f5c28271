"""What a person watches while the loop runs: a progress bar over iterations, and the counting bars of the
evaluation commands."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from mpo_agents.cli.common import console


class ProgressView:
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
        self.failures = judge_failures(done)  # a resumed run keeps counting
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
            "meta_prescreen": "meta: analyze",
            "meta_analyze": "meta: refine",
            "meta_refine": "meta: merge",
            "meta_merge": "rubric decision",
            "meta": "rubric decision",
            "rubric_commit": "update",
            "policy_update": "rollout",
        }
        self.progress.update(self.task, description=following.get(node, node))
        if node == "meta_merge" and not update.get("proposal"):
            self.progress.console.print("  meta-judge rubric rewrite rejected (see rubrics/rejected.jsonl)")
        if node == "rubric_commit" and "rubric" in update:
            metrics = update.get("metrics", {})
            self.progress.console.print(
                f"  rubric rewrite accepted → v{update['rubric']['version']} ({metrics.get('rubric_items')} "
                f"items, {metrics.get('rubric_tokens')} tokens)"
            )
        elif node == "rubric_commit" and update.get("metrics", {}).get("rubric_rewrite_accepted") == 0:
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
