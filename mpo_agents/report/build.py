"""Read run directories into plain data for the report (no plotting, no HTML)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpo_agents.buffers import BufferStore
from mpo_agents.errors import ConfigError
from mpo_agents.rubrics import RubricStore, RubricVersion, diff_rubrics
from mpo_agents.rundir import CONFIG_FILE, META_LEVELS_FILE, METRICS_FILE, read_checked_jsonl

_ITER_DIR = re.compile(r"iter-(\d+)$")


@dataclass
class VersionInfo:
    """A stored rubric version and its unified diff against its parent, each line with a CSS class."""

    rubric: RubricVersion
    diff: list[tuple[str, str]]


@dataclass
class MetaCase:
    id: str
    cluster: str | None
    scores: list[float | None]  # the judge's scores of the case's samples
    prescreen: str | None  # the meta-judge's quick verdict (flawed / fine) when prescreening ran
    analysis: str | None  # None: the meta-judge failed on it (or the stage has not run yet)
    candidate: str | None


@dataclass
class MetaStep:
    iteration: int
    cases: list[MetaCase]
    merge_method: str | None
    outcome: str  # "accepted", "rejected" or "pending"
    version: int | None  # the version it produced, when accepted
    reasons: list[str]  # why it was rejected (rubrics/rejected.jsonl)


@dataclass
class BufferSummary:
    """A per-prompt run's buffers (`rubric.scope: prompt`): how many prompts have one, their versions, their
    items now, and the item churn over the run."""

    prompts: int
    versions: int
    items_mean: float  # items per buffer, latest versions
    evolved_mean: float
    changes: dict[str, int]  # added, pruned, evicted over the run

    @classmethod
    def of(cls, directory: Path) -> BufferSummary | None:
        store = BufferStore(directory)
        latest = [store.versions(pid) for pid in store.prompts()]
        if not latest:
            return None
        changes = [c["change"] for versions in latest for v in versions[1:] for c in v.changes]
        return cls(
            prompts=len(latest),
            versions=sum(len(versions) for versions in latest),
            items_mean=sum(len(v[-1].items) for v in latest) / len(latest),
            evolved_mean=sum(len(v[-1].evolved) for v in latest) / len(latest),
            changes={kind: changes.count(kind) for kind in ("added", "pruned", "evicted")},
        )


PARADIGMS = {"task": "task rubric", "prompt": "per-prompt buffers"}


@dataclass
class RunData:
    name: str
    path: Path
    task: str
    policy_model: str
    judge_model: str
    meta_judge_model: str
    iterations_planned: int | None
    metrics: list[dict[str, Any]]
    versions: list[VersionInfo]
    meta_steps: list[MetaStep]
    decisions: list[dict[str, Any]]  # meta_levels.jsonl entries that say something (verdict, alarm, error)
    quiet_decisions: int  # entries where a node looked and had nothing to say
    sample_rewards: dict[int, list[float]]  # iteration -> rewards of the samples that entered the update
    evals: list[Path] = field(default_factory=list)  # eval summaries found in RUN_DIR/eval/
    scope: str = "task"  # rubric.scope
    scoring_mode: str = "per_item"  # scoring.mode
    buffers: BufferSummary | None = None  # rubric.scope: prompt

    @property
    def paradigm(self) -> str:
        """How the run's reward was made: the rubric's scope and the judge's scoring mode."""
        return f"{PARADIGMS.get(self.scope, self.scope)}, {self.scoring_mode.replace('_', ' ')}"

    def per_iteration(self, *keys: str) -> float | None:
        """The mean over iterations of the sum of `keys` (e.g. judge and meta-judge calls); None without
        iterations."""
        return self.total_of(*keys) / len(self.metrics) if self.metrics else None

    def total_of(self, *keys: str) -> float:
        return sum(self.total(key) for key in keys)

    @property
    def calls_per_sample(self) -> float | None:
        """Judge calls (scoring, not the meta-judge) per sample of the batches (those a guard or exact match
        decided included)."""
        samples = self.total_of("judged", "judge_failures")
        return self.total("judge_calls") / samples if samples > 0 else None

    @property
    def iterations_done(self) -> int:
        return len(self.metrics)

    def total(self, key: str) -> float:
        return sum(m.get(key) or 0 for m in self.metrics)

    @property
    def judge_wait_share(self) -> float | None:
        """The share of judge time the loop waited for (all of it in the synchronous loop); None without
        timings."""
        timed = [
            m for m in self.metrics if m.get("judge_seconds") and m.get("judge_wait_seconds") is not None
        ]
        judging = sum(m["judge_seconds"] for m in timed)
        return sum(m["judge_wait_seconds"] for m in timed) / judging if judging else None

    @property
    def final_reward(self) -> float | None:
        return self.metrics[-1].get("reward_mean") if self.metrics else None


def read_jsonl_file(path: Path) -> list[dict[str, Any]]:
    """Records of a run's JSONL file (none if it is absent); a last line still being appended is skipped."""
    if not path.exists():
        return []
    return read_checked_jsonl(path, (), "a run file", torn_tail_ok=True)


def load_run(path: Path) -> RunData:
    """Everything the report shows of one run directory. Raises ConfigError if `path` is not one."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() and not (path / METRICS_FILE).is_file():
        raise ConfigError(
            f"{path} is not a run directory (it has neither config.yaml nor metrics.jsonl); "
            "pass the folder given to `mpo run --run-dir`"
        )
    config = _config(path)
    metrics = sorted(read_jsonl_file(path / METRICS_FILE), key=lambda m: m.get("iteration", 0))
    store_dir = path / "rubrics"
    # RubricStore creates its folder; a run without one is left untouched.
    store = RubricStore(store_dir) if store_dir.is_dir() else None
    versions = store.versions() if store else []
    decisions = read_jsonl_file(path / META_LEVELS_FILE)
    telling = [
        d for d in decisions if d.get("verdict") or d.get("alarm") or d.get("error") or d.get("reason")
    ]
    return RunData(
        name=path.resolve().name,
        path=path,
        task=str((config.get("task") or {}).get("name", "unknown")),
        policy_model=str((config.get("policy") or {}).get("model", "unknown")),
        judge_model=_judge_name(config, "judge"),
        meta_judge_model=_judge_name(config, "meta_judge"),
        iterations_planned=(config.get("schedule") or {}).get("iterations"),
        metrics=metrics,
        versions=_with_diffs(versions),
        meta_steps=_meta_steps(path, versions, store.rejections() if store else []),
        decisions=telling,
        quiet_decisions=len(decisions) - len(telling),
        sample_rewards=_sample_rewards(path / "samples"),
        evals=sorted((path / "eval").glob("*.json")),
        scope=str((config.get("rubric") or {}).get("scope", "task")),
        scoring_mode=str((config.get("scoring") or {}).get("mode", "per_item")),
        buffers=BufferSummary.of(path / "rubrics" / "prompts"),
    )


def _config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not file.is_file():
        return {}
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    return config if isinstance(config, dict) else {}


def _judge_name(config: dict[str, Any], role: str) -> str:
    """The model a judge role really called: the local server's model when it used that."""
    endpoint = config.get(role) or {}
    if not endpoint:
        return "unknown"
    name = endpoint.get("model", "unknown")
    if endpoint.get("use_local_server"):
        name = f"{(config.get('local_server') or {}).get('model', 'local model')} (local server)"
    members = (endpoint.get("ensemble") or {}).get("members") or []
    if members:
        others = ", ".join(str(m.get("model", "?")) for m in members)
        name += f" + ensemble of {others} ({endpoint['ensemble'].get('aggregate', 'mean')})"
    return name


def _with_diffs(versions: list[RubricVersion]) -> list[VersionInfo]:
    by_number = {v.version: v for v in versions}
    infos = []
    for version in versions:
        parent = by_number.get(version.parent) if version.parent is not None else None
        lines = diff_rubrics(parent, version).splitlines() if parent else []
        infos.append(VersionInfo(version, [(_diff_class(line), line) for line in lines]))
    return infos


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "file"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "ctx")


def _iteration_of(directory: Path) -> int | None:
    match = _ITER_DIR.search(directory.name)
    return int(match.group(1)) if match else None


def _meta_steps(path: Path, versions: list[RubricVersion], rejections: list[dict]) -> list[MetaStep]:
    directories = {_iteration_of(d): d for d in (path / "meta").glob("iter-*") if d.is_dir()}
    directories.pop(None, None)
    iterations = sorted(set(directories) | {r["iteration"] for r in rejections})
    steps = []
    for iteration in iterations:
        directory = directories.get(iteration, path / "meta" / f"iter-{iteration:04d}")
        merge = _json(directory / "merge.json") or {}
        produced = [v.version for v in versions if v.parent is not None and v.iteration == iteration]
        reasons = [r["reason"] for r in rejections if r["iteration"] == iteration]
        outcome = "accepted" if produced else "rejected" if reasons else "pending"
        steps.append(
            MetaStep(
                iteration=iteration,
                cases=_meta_cases(directory),
                merge_method=merge.get("method"),
                outcome=outcome,
                version=produced[-1] if produced else None,
                reasons=reasons,
            )
        )
    return steps


def _meta_cases(directory: Path) -> list[MetaCase]:
    def values(stage: str) -> dict[str, Any]:
        found = (_json(file) for file in sorted((directory / stage).glob("*.json")))
        return {item["id"]: item.get("value") for item in found if item and "id" in item}

    analyses, candidates, prescreen = values("analyze"), values("refine"), values("prescreen")
    cases = _json(directory / "cases.json") or []
    return [
        MetaCase(
            id=case["id"],
            cluster=case.get("cluster"),
            scores=[s.get("score") for s in case.get("samples", [])],
            prescreen=prescreen.get(case["id"]),
            analysis=analyses.get(case["id"]),
            candidate=candidates.get(case["id"]),
        )
        for case in cases
    ]


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg}); is the file damaged?") from exc


def _sample_rewards(directory: Path) -> dict[int, list[float]]:
    rewards = {}
    for file in sorted(directory.glob("iter-*.jsonl")):
        iteration = _iteration_of(file.with_suffix(""))
        if iteration is not None:
            samples = read_jsonl_file(file)
            rewards[iteration] = [s["reward"] for s in samples if s.get("reward") is not None]
    return rewards
