"""The run directory: where every artifact of a run lives, and crash-safe ways to write them."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
CHECKPOINT_DB = "checkpoints.sqlite"


def log_to_file(path: Path) -> None:
    """Send this process's log records (INFO and up; chatty HTTP and LLM client libraries WARNING and up) to a
    run's log file: `run.log`, or a follower process's `run.rank<N>.log`."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    for noisy in ("LiteLLM", "litellm", "httpx", "httpcore", "openai", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a kill mid-write never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); these are ordinary results, readable like any other file.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace `path` with these records, atomically (re-running a node rewrites its file, never appends twice)."""
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_checked_jsonl(
    path: Path, required: Sequence[str], what: str, *, torn_tail_ok: bool = False
) -> list[dict[str, Any]]:
    """Rows of a JSONL file that a person may have written or edited: errors name the file, the line and the
    missing fields (`what` says what the file should be). With `torn_tail_ok`, an unreadable *last* line (a kill
    mid-append: it has no newline after it yet) is skipped instead of refused."""
    from mpo_agents.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist ({what})")
    lines = path.read_text(encoding="utf-8").split("\n")  # a complete file ends in "\n": its last piece is ""
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail_ok and number == len(lines):
                break
            raise ConfigError(f"{path} line {number} is not JSON: {exc.msg}") from exc
        missing = [name for name in required if name not in row]
        if missing:
            raise ConfigError(f"{path} line {number} has no {', '.join(missing)} field ({what})")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RunDirectory:
    root: Path

    def __post_init__(self) -> None:
        for sub in ("rubrics", "samples", "rollouts", "policy", "updates", "meta", "calls"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def checkpoint_db(self) -> Path:
        return self.root / CHECKPOINT_DB

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def policy_dir(self) -> Path:
        return self.root / "policy"

    @property
    def rubrics_dir(self) -> Path:
        return self.root / "rubrics"

    def rollouts_path(self, iteration: int) -> Path:
        return self.root / "rollouts" / f"iter-{iteration:04d}.jsonl"

    def samples_path(self, iteration: int) -> Path:
        return self.root / "samples" / f"iter-{iteration:04d}.jsonl"

    def meta_dir(self, iteration: int) -> Path:
        """One meta step's work: selected cases, each analysis and candidate as it completes, the merge."""
        return self.root / "meta" / f"iter-{iteration:04d}"

    def update_stats_path(self, iteration: int) -> Path:
        """What the policy update of an iteration reported (kept so a resumed run can still log it)."""
        return self.root / "updates" / f"iter-{iteration:04d}.json"

    def calls_path(self, role: str) -> Path:
        return self.root / "calls" / f"{role}.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files, when `trainer.report_to` names tensorboard (not created otherwise)."""
        return self.root / "tensorboard"

    def record_metrics(self, metrics: dict[str, Any]) -> bool:
        """Append one iteration's metrics unless that iteration is already recorded (a re-run node after a
        crash must not duplicate the line). True when the line was written now."""
        done = {record.get("iteration") for record in read_jsonl(self.metrics_path)}
        if metrics["iteration"] in done:
            return False
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return True
