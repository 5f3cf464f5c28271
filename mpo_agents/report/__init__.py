"""`mpo report`: one self-contained HTML page on one or more runs and their evaluations."""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mpo_agents.errors import ConfigError
from mpo_agents.report import plots
from mpo_agents.report.build import RunData, load_run
from mpo_agents.report.evals import EvalSummary, elo_rows, is_eval_summary, load_eval, side_by_side
from mpo_agents.rundir import atomic_write_text

__all__ = ["render_report"]

logger = logging.getLogger(__name__)
TEMPLATE = "template.html.j2"


def render_report(
    run_dirs: list[Path], eval_files: list[Path], output: Path, title: str | None = None
) -> Path:
    """Write one HTML file (no network needed to view it: styles and figures are inline) on `run_dirs`, the
    evaluation summaries `eval_files`, and any summaries found in `RUN_DIR/eval/*.json`. Returns its path.

    Raises ConfigError naming the path when a run directory is not one, or an evaluation file cannot be read
    or is of an unknown kind. Summaries found in `eval/` that cannot be used are listed on the page instead.
    """
    runs = [load_run(Path(path)) for path in run_dirs]
    if not runs and not eval_files:
        raise ConfigError("nothing to report: give at least one run directory or evaluation file")
    summaries = [load_eval(Path(path)) for path in eval_files]
    seen = {s.path.resolve() for s in summaries}
    skipped: list[str] = []
    for path in (p for run in runs for p in run.evals):
        if path.resolve() in seen or not is_eval_summary(path):
            continue
        seen.add(path.resolve())
        try:
            summaries.append(load_eval(path))
        except ConfigError as exc:
            logger.warning("report: skipping %s", exc)
            skipped.append(str(exc))
    if title is None:
        title = "MPO report: " + ", ".join(run.name for run in runs) if runs else "MPO evaluation report"
    template = _environment().get_template(TEMPLATE)
    page = template.render(
        title=title,
        runs=[_run_view(run, index) for index, run in enumerate(runs)],
        overview=_overview(runs) if len(runs) > 1 else None,
        evals=_eval_view(summaries),
        skipped=skipped,
    )
    output = Path(output)
    atomic_write_text(output, page)
    return output


def _run_view(run: RunData, index: int) -> dict[str, Any]:
    """A run and its figures, as the template uses them."""
    figures = {}
    if run.metrics:
        figures["reward"] = plots.reward_curve(run, f"run{index}-reward")
        figures["judge"] = plots.judge_health(run, f"run{index}-judge")
    if run.versions:
        figures["rubric"] = plots.rubric_growth(run.versions, f"run{index}-rubric")
    if run.buffers is not None and any(m.get("buffer_items_mean") is not None for m in run.metrics):
        figures["buffers"] = plots.buffer_growth(run, f"run{index}-buffers")
    versions_used = {m.get("rubric_version") for m in run.metrics}
    ranges = {v.rubric.version: (v.rubric.low, v.rubric.high) for v in run.versions}
    return {
        "data": run,
        "anchor": f"run-{index + 1}",
        "figures": figures,
        "per_version": [
            _version_rewards(run, version, ranges.get(version))
            for version in sorted(v for v in versions_used if v is not None)
        ],
        "alarms": sum(1 for d in run.decisions if d.get("alarm")),
        "rejects": sum(1 for d in run.decisions if d.get("verdict") == "reject"),
    }


def _version_rewards(run: RunData, version: int, scale: tuple[float, float] | None) -> dict[str, Any]:
    rows = [m for m in run.metrics if m.get("rubric_version") == version]
    rewards = [m["reward_mean"] for m in rows if m.get("reward_mean") is not None]
    return {
        "version": version,
        "first": rows[0]["iteration"],
        "last": rows[-1]["iteration"],
        "count": len(rows),
        "mean": statistics.fmean(rewards) if rewards else None,
        "final": rewards[-1] if rewards else None,
        "scale": scale,
    }


def _overview(runs: list[RunData]) -> dict[str, Any]:
    figure, measure = plots.combined_rewards(runs, "overview-reward")
    return {"figure": figure, "measure": measure, "calls": plots.judge_calls(runs, "overview-calls")}


def _eval_view(summaries: list[EvalSummary]) -> dict[str, Any]:
    tournaments = [
        {
            "summary": s,
            "facts": _elo_facts(s.data),
            "rows": elo_rows(s),
            "figure": plots.elo_ratings(s, f"elo{index}"),
        }
        for index, s in enumerate(x for x in summaries if x.kind == "elo")
    ]
    return {
        "elo": tournaments,
        "rouge": side_by_side(summaries, "rouge"),
        "accuracy": side_by_side(summaries, "accuracy"),
        "count": len(summaries),
    }


def _elo_facts(data: dict[str, Any]) -> list[str]:
    """The one-line setting of a tournament: who played, judged by what, how many games, at what cost."""
    facts = [" vs ".join(map(str, data["systems"]))]
    if data.get("task"):
        facts.append(f"task {data['task']}")
    judge = data.get("judge") or {}
    if judge.get("model"):
        facts.append(f"judge {judge['model']}")
    for key, label in (("prompts", "prompts"), ("judgments", "judgments"), ("matches", "matches")):
        if data.get(key) is not None:
            facts.append(f"{fmt_number(data[key])} {label}")
    if data.get("k") is not None:
        facts.append(f"K = {fmt_number(data['k'])}")
    if data.get("runs") is not None:
        facts.append(f"Elo over {fmt_number(data['runs'])} shuffled match orders")
    bias = data.get("position_bias") or {}
    if bias:
        facts.append(
            "each pair judged in both orders" if bias.get("pairs_both_orders") else "one order per pair"
        )
    if data.get("judgments") is not None:
        facts.append(
            f"{fmt_number(data['judgments'])} judgments ({fmt_number(data.get('failed', 0))} failed)"
        )
    if judge.get("attempts_total") is not None:
        facts.append(
            f"{fmt_number(judge['attempts_total'])} judge calls, {fmt_number(judge.get('tokens_total'))} tokens, "
            f"{fmt_usd(judge.get('cost_usd_total'))}"
        )
    return facts


# -- number formatting (Jinja filters) -----------------------------------------------------------------------
def fmt_number(value: Any, digits: int = 3) -> str:
    """At most `digits` decimals, trailing zeros dropped; thousands separated; "–" for nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    text = f"{value:,.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_fixed(value: Any, digits: int = 1) -> str:
    """A fixed number of decimals (columns of ratings and scores line up)."""
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_usd(value: Any) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "$0"
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


def fmt_pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=True,  # rubric text, analyses and reasons come from LLMs: never trusted as HTML
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(num=fmt_number, fixed=fmt_fixed, usd=fmt_usd, pct=fmt_pct)
    return environment
