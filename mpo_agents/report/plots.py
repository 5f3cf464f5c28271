"""The report's figures, drawn with matplotlib and returned as inline SVG text."""

from __future__ import annotations

import io
import re
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: figures are only ever written to SVG

import matplotlib.pyplot as plt  # only after matplotlib.use: the backend is fixed when pyplot loads
from matplotlib.figure import Figure

from mpo_agents.report.build import RunData, VersionInfo
from mpo_agents.report.evals import EvalSummary, elo_rows

PALETTE = plt.get_cmap("tab10").colors
MAX_DOTS = 3000
_ID = re.compile(r'(?P<attr>\bid)="(?P<id>[^"]+)"')
_REF = re.compile(r'(?P<open>url\(|xlink:href="|\bhref=")#(?P<id>[^)"]+)')
STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller files, selectable labels
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#9ca3af",
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "legend.frameon": False,
    "legend.fontsize": 8,
    "axes.axisbelow": True,  # grid lines behind bars
}


@contextmanager
def _figure(
    name: str, figsize: tuple[float, float] = (6, 2.8), ncols: int = 1
) -> Iterator[tuple[Figure, Any]]:
    """A figure in the report's style; `name` salts the SVG ids, so the output is reproducible and no two
    figures of a page share an id."""
    with plt.rc_context({**STYLE, "svg.hashsalt": f"mpo-report/{name}"}):
        fig, axes = plt.subplots(1, ncols, figsize=figsize, layout="constrained")
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def _svg(fig: Figure, name: str) -> str:
    """The figure as an `<svg>` element for inlining into HTML: no XML prolog, no date, and every id (each
    figure has its own `figure_1`, `axes_1`, ...) prefixed with `name`, so ids stay unique on the page."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = _ID.sub(lambda m: f'{m["attr"]}="{name}-{m["id"]}"', text)
    return _REF.sub(lambda m: f"{m['open']}#{name}-{m['id']}", text)


def version_colour(version: int) -> tuple[float, float, float]:
    return PALETTE[version % len(PALETTE)]


def reward_curve(run: RunData, name: str) -> str:
    """Reward mean per iteration, one colour per rubric version, over the spread of the samples' rewards."""
    with _figure(name) as (fig, ax):
        _sample_spread(ax, run.sample_rewards)
        marker = "o" if len(run.metrics) <= 40 else ""
        segments: list[list[dict[str, Any]]] = []
        for row in run.metrics:
            if segments and segments[-1][-1].get("rubric_version") == row.get("rubric_version"):
                segments[-1].append(row)
            else:
                segments.append([row])
        labelled = set()
        for segment in segments:
            version = segment[0].get("rubric_version", 0)
            points = [(r["iteration"], r["reward_mean"]) for r in segment if r.get("reward_mean") is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            label = None if version in labelled else f"rubric v{version}"
            labelled.add(version)
            ax.plot(xs, ys, marker=marker, ms=3.5, lw=1.6, color=version_colour(version), label=label)
        for index, step in enumerate(run.meta_steps):
            label = "meta step" if index == 0 else None
            ax.axvline(step.iteration + 0.5, color="#6b7280", lw=0.8, ls=":", zorder=0, label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("reward")
        ax.set_title("Reward mean per iteration, by rubric version", loc="left")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
        _integer_ticks(ax)
        return _svg(fig, name)


def _sample_spread(ax: Any, rewards: dict[int, list[float]]) -> None:
    """Every sample's reward as a dot; past `MAX_DOTS` samples (the SVG would grow by megabytes) the band
    from the 10th to the 90th percentile instead."""
    rewards = {i: r for i, r in sorted(rewards.items()) if r}
    if sum(len(r) for r in rewards.values()) <= MAX_DOTS:
        for index, (iteration, values) in enumerate(rewards.items()):
            label = "samples" if index == 0 else None
            ax.scatter(
                [iteration] * len(values), values, s=14, color="#9ca3af", alpha=0.45, lw=0, label=label
            )
        return
    bands = [
        (i, statistics.quantiles(r, n=10, method="inclusive") if len(r) > 1 else r * 9)
        for i, r in rewards.items()
    ]
    lows, highs = [b[0] for _, b in bands], [b[-1] for _, b in bands]
    ax.fill_between([i for i, _ in bands], lows, highs, color="#e5e7eb", lw=0, label="samples, 10-90th pct.")


def judge_health(run: RunData, name: str) -> str:
    """Judge failures per iteration, and what the judges cost (or, when nothing was billed, the tokens)."""
    iterations = [m["iteration"] for m in run.metrics]
    with _figure(name, ncols=2) as (fig, (left, right)):
        failures = [m.get("judge_failures") or 0 for m in run.metrics]
        left.bar(iterations, failures, color="#dc2626", width=0.7)
        left.set_title("Judge failures", loc="left")
        left.set_xlabel("iteration")
        left.set_ylim(bottom=0, top=max([1, *failures]) * 1.15)
        left.yaxis.get_major_locator().set_params(integer=True)
        cost = run.total("judge_cost_usd") + run.total("meta_judge_cost_usd")
        unit, key, title = (
            ("USD", "cost_usd", "Cost per iteration") if cost else ("tokens", "tokens", "Tokens")
        )
        judge = [m.get(f"judge_{key}") or 0 for m in run.metrics]
        meta = [m.get(f"meta_judge_{key}") or 0 for m in run.metrics]
        right.bar(iterations, judge, color="#2563eb", width=0.7, label="judge")
        right.bar(iterations, meta, bottom=judge, color="#f59e0b", width=0.7, label="meta-judge")
        right.set_title(f"{title} ({'no cost recorded' if not cost else unit})", loc="left")
        right.set_xlabel("iteration")
        if any(judge) or any(meta):
            right.legend(loc="upper left")
            right.set_ylim(0, max(j + m for j, m in zip(judge, meta)) * 1.25)  # room for the legend
        else:
            right.text(
                0.5, 0.5, f"no {unit} recorded", transform=right.transAxes, ha="center", color="#6b7280"
            )
            right.set_yticks([])
        for ax in (left, right):
            _integer_ticks(ax)
        return _svg(fig, name)


def rubric_growth(versions: list[VersionInfo], name: str) -> str:
    """Items and tokens of each rubric version, as labelled bars."""
    labels = [f"v{v.rubric.version}" for v in versions]
    colours = [version_colour(v.rubric.version) for v in versions]
    with _figure(name, figsize=(6, 2.4), ncols=2) as (fig, (left, right)):
        for ax, values, title in (
            (left, [v.rubric.items for v in versions], "Items per version"),
            (right, [v.rubric.tokens for v in versions], "Tokens per version"),
        ):
            bars = ax.bar(labels, values, color=colours, width=0.6)
            ax.bar_label(bars, fmt="{:,.0f}", padding=2, fontsize=8)
            ax.set_title(title, loc="left")
            ax.set_ylim(0, max([1, *values]) * 1.2)
            ax.set_xlim(-0.6, max(len(versions), 3) - 0.4)  # one or two bars stay bars, not walls
            ax.grid(axis="x", visible=False)
            ax.yaxis.get_major_locator().set_params(integer=True)
        return _svg(fig, name)


def combined_rewards(runs: list[RunData], name: str) -> tuple[str, str]:
    """Every run's reward curve on one axis. Runs judged on different rubrics have different scales, so the
    rewards are mapped to 0..1 by each rubric's range when every run recorded that. Returns (svg, measure)."""
    key = "normalized_reward_mean"
    if not all(m.get(key) is not None for run in runs for m in run.metrics):
        key = "reward_mean"
    measure = "reward mapped to 0..1 by the rubric's range" if key != "reward_mean" else "reward mean"
    with _figure(name) as (fig, ax):
        for index, run in enumerate(runs):
            points = [(m["iteration"], m[key]) for m in run.metrics if m.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, "-o", ms=3, lw=1.6, color=PALETTE[index % len(PALETTE)], label=run.name)
        ax.set_xlabel("iteration")
        ax.set_ylabel(measure.split(" mapped")[0])
        ax.set_title(measure[:1].upper() + measure[1:], loc="left")
        ax.legend(loc="best")
        _integer_ticks(ax)
        return _svg(fig, name), measure


def judge_calls(runs: list[RunData], name: str) -> str:
    """Every run's judge and meta-judge calls per iteration on one axis: what each reward paradigm costs."""
    with _figure(name) as (fig, ax):
        for index, run in enumerate(runs):
            points = [
                (m["iteration"], (m.get("judge_calls") or 0) + (m.get("meta_judge_calls") or 0))
                for m in run.metrics
            ]
            if points:
                xs, ys = zip(*points)
                label = f"{run.name} ({run.paradigm})"
                ax.plot(xs, ys, "-o", ms=3, lw=1.6, color=PALETTE[index % len(PALETTE)], label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("calls")
        ax.set_title("Judge + meta-judge calls per iteration", loc="left")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best")
        _integer_ticks(ax)
        return _svg(fig, name)


def buffer_growth(run: RunData, name: str) -> str:
    """A per-prompt run's buffers over its iterations: items per buffer drawn, and items added, pruned and
    evicted."""
    rows = [m for m in run.metrics if m.get("buffer_items_mean") is not None]
    xs = [m["iteration"] for m in rows]
    with _figure(name, figsize=(6, 2.4), ncols=2) as (fig, (left, right)):
        left.plot(xs, [m["buffer_items_mean"] for m in rows], "-o", ms=3, lw=1.6, color=PALETTE[0])
        left.set_title("Items per buffer drawn", loc="left")
        left.set_ylim(bottom=0)
        bottom = [0.0] * len(rows)
        for offset, kind in enumerate(("added", "pruned", "evicted")):
            values = [m.get(f"buffer_items_{kind}") or 0 for m in rows]
            right.bar(xs, values, bottom=bottom, color=PALETTE[offset + 1], width=0.6, label=kind)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        right.set_title("Item churn", loc="left")
        right.legend(loc="best")
        right.grid(axis="x", visible=False)
        for ax in (left, right):
            ax.set_xlabel("iteration")
            _integer_ticks(ax)
        return _svg(fig, name)


def elo_ratings(summary: EvalSummary, name: str) -> str:
    """Elo mean ± std over shuffled match orders, beside the Bradley-Terry rating and its interval."""
    systems = list(summary.data["systems"])
    rows = elo_rows(summary)[::-1]  # best on top
    height = max(2.0, 0.45 * len(rows) + 1.2)
    with _figure(name, figsize=(6, height), ncols=2) as (fig, (left, right)):
        for ax, value, title in (
            (left, "elo", "Elo (mean ± std)"),
            (right, "bt", "Bradley-Terry (interval)"),
        ):
            for y, row in enumerate(rows):
                if row[value] is None:
                    continue
                if value == "elo":
                    spread = row["elo_std"] or 0
                    err = [[spread], [spread]]
                elif row["bt_low"] is not None and row["bt_high"] is not None:
                    err = [[row["bt"] - row["bt_low"]], [row["bt_high"] - row["bt"]]]
                else:
                    err = None
                colour = PALETTE[systems.index(row["system"]) % len(PALETTE)]
                ax.errorbar(row[value], y, xerr=err, fmt="o", color=colour, capsize=3, ms=5)
            ax.set_yticks(range(len(rows)), [r["system"] for r in rows])
            ax.set_title(title, loc="left")
            ax.grid(axis="y", visible=False)
            ax.margins(x=0.15, y=0.25)
        right.tick_params(labelleft=False)
        return _svg(fig, name)


def _integer_ticks(ax: Any) -> None:
    ax.xaxis.get_major_locator().set_params(integer=True)
