"""Read evaluation summaries (Elo tournaments, ROUGE, accuracy) into plain data and side-by-side tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpo_agents.errors import ConfigError

EVAL_KEYS = {  # what each kind of evaluation summary must hold for the report to show it
    "elo": ("systems", "elo"),
    "rouge": ("system", "task", "rouge1", "rouge2", "rougeL"),
    "accuracy": ("system", "task", "items", "correct", "accuracy"),
}


@dataclass
class EvalSummary:
    kind: str
    path: Path
    data: dict[str, Any]


def load_eval(path: Path) -> EvalSummary:
    """One evaluation summary (`mpo eval ...` output). Raises ConfigError if it cannot be read or its kind is
    not one the report knows."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read evaluation summary {path}: {exc}") from exc
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in EVAL_KEYS:
        found = f"kind {kind!r}" if kind is not None else "no 'kind' key"
        raise ConfigError(
            f"{path} is not an evaluation summary the report knows ({found}); expected kind "
            f"{', '.join(EVAL_KEYS)} as written by the eval commands"
        )
    missing = [key for key in EVAL_KEYS[kind] if key not in data]
    if missing:
        raise ConfigError(f"evaluation summary {path} (kind {kind}) lacks {', '.join(missing)}")
    return EvalSummary(kind, path, data)


def is_eval_summary(path: Path) -> bool:
    """Whether a file found in RUN_DIR/eval/ is a summary (a JSON object with `kind`), not some other JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "kind" in data


@dataclass
class Row:
    label: str
    values: list[float | None]
    style: str  # how the template formats the numbers: "score", "pct", "int"
    best: int | None = None  # column of the best value, where "best" means something


@dataclass
class SideBySide:
    """Summaries of one kind and task, one column per system."""

    kind: str
    task: str
    columns: list[str]
    rows: list[Row]
    sources: list[Path]


def side_by_side(summaries: list[EvalSummary], kind: str) -> list[SideBySide]:
    """ROUGE or accuracy summaries as tables per task, one column per system."""
    tasks: dict[str, list[EvalSummary]] = {}
    for summary in (s for s in summaries if s.kind == kind):
        tasks.setdefault(str(summary.data["task"]), []).append(summary)
    tables = []
    for task, group in tasks.items():
        names = [str(s.data["system"]) for s in group]
        columns = [n if names.count(n) == 1 else f"{n} ({_source(s.path)})" for n, s in zip(names, group)]
        if kind == "rouge":
            spec = [(key, key, "score", True) for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")]
            spec.append(("items", "items", "int", False))
        else:
            spec = [
                ("accuracy", "accuracy", "pct", True),
                ("correct", "correct", "int", False),
                ("no answer", "no_answer", "int", False),
                ("items", "items", "int", False),
            ]
        rows = []
        for label, key, style, rank in spec:
            values = [s.data.get(key) for s in group]
            if all(v is None for v in values):
                continue
            known = [(v, i) for i, v in enumerate(values) if v is not None]
            best = max(known)[1] if rank and len(known) > 1 and len({v for v, _ in known}) > 1 else None
            rows.append(Row(label, values, style, best))
        tables.append(SideBySide(kind, task, columns, rows, [s.path for s in group]))
    return tables


def _source(path: Path) -> str:
    """A short name for where a summary came from: its run directory, else the file's name."""
    return path.parent.parent.name if path.parent.name == "eval" else path.stem


def elo_rows(summary: EvalSummary) -> list[dict[str, Any]]:
    """One row per system of an Elo tournament, best first: Elo mean and spread over shuffled orders,
    Bradley-Terry rating with its interval, and wins, losses and ties over all opponents."""
    data = summary.data
    rows = []
    for system in data["systems"]:
        elo = data["elo"].get(system, {})
        bt = (data.get("bradley_terry") or {}).get(system, {})
        record = (data.get("win_matrix") or {}).get(system, {})
        rows.append(
            {
                "system": system,
                "elo": elo.get("mean"),
                "elo_std": elo.get("std"),
                "bt": bt.get("rating"),
                "bt_low": bt.get("low"),
                "bt_high": bt.get("high"),
                **{k: sum(r.get(k, 0) for r in record.values()) for k in ("wins", "losses", "ties")},
            }
        )
    return sorted(rows, key=lambda r: -(r["elo"] if r["elo"] is not None else float("-inf")))
