"""The run directory: where every artifact of a run lives, and crash-safe ways to write them."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpo_agents.errors import ConfigError, RunFileError, StorageError

# Every file a run directory holds, named once (the folders are SUBDIRS below).
CONFIG_FILE = "config.yaml"
CHECKPOINT_DB = "checkpoints.sqlite"
METRICS_FILE = "metrics.jsonl"  # one line per finished iteration
TIMINGS_FILE = "timings.jsonl"  # seconds per node, for `mpo report`
META_LEVELS_FILE = "meta_levels.jsonl"  # what each meta-level plug-in decided
LEDGER_FILE = "batches.jsonl"  # each batch's way: generated -> judged -> trained
REJECTED_FILE = "rejected.jsonl"  # in rubrics/: rewrites that were refused, and why
RUN_LOG = "run.log"
UPDATE_REWARDS = "rewards"  # key of an update's stats file (`updates/iter-N.json`) holding its rewards
SUBDIRS = ("rubrics", "samples", "rollouts", "policy", "updates", "meta", "calls")

# What an operating-system write failure means, and what the user can do about it.
_STORAGE_FAILURES = {
    errno.ENOSPC: ("no space left on the device", "free space on that file system"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or raise the quota"),
    errno.EFBIG: ("the file grew past the file system's limit", "move the run directory to another disk"),
    errno.EROFS: (
        "the file system is read-only",
        "remount it read-write, or copy the run directory elsewhere",
    ),
    errno.EACCES: ("permission denied", "make the run directory writable by this user"),
    errno.EPERM: ("operation not permitted", "make the run directory writable by this user"),
    errno.EIO: ("an input/output error (a failing disk or a lost network mount)", "check the disk or mount"),
}
# SQLite reports the same failures in words; safetensors (Rust) reports the OS error code in its message.
_SQLITE_FAILURES = {
    "database or disk is full": errno.ENOSPC,
    "readonly database": errno.EROFS,
    "disk i/o error": errno.EIO,
    "unable to open database file": errno.EACCES,
}
_OS_CODE = re.compile(r"code: (\d+)")


def log_to_file(path: Path) -> None:
    """Send this process's log records (INFO and up; chatty HTTP and LLM client libraries WARNING and up) to a
    run's log file: `run.log`, or a follower process's `run.rank<N>.log`."""
    with writing(path):
        handler = _QuietFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    for noisy in ("LiteLLM", "litellm", "httpx", "httpcore", "openai", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _QuietFileHandler(logging.FileHandler):
    """A log file that never prints a traceback of its own: when the disk is full, the run's StorageError
    says so once, in words, instead of a logging traceback per record."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


# --- writing: atomic or appended, and OS failures as StorageError ---------------------------------------------
def storage_error(exc: BaseException, path: Path | str) -> StorageError | None:
    """The StorageError that `exc`, raised while writing `path`, stands for; None when it is no OS-level write
    failure (a bug, or bad data, must keep its own traceback)."""
    code = None
    if isinstance(exc, OSError):
        code = exc.errno
    elif isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        code = next((c for words, c in _SQLITE_FAILURES.items() if words in message), None)
    elif type(exc).__name__ == "SafetensorError":  # safetensors' Rust I/O error carries the OS code in words
        match = _OS_CODE.search(str(exc))
        code = int(match.group(1)) if match else None
    if code not in _STORAGE_FAILURES:
        return None
    reason, fix = _STORAGE_FAILURES[code]
    return StorageError(path, reason, fix)


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an OS-level failure while writing `path` into a StorageError that names it."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from exc


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a kill mid-write never leaves a half-written file behind."""
    path = Path(path)
    with writing(path):
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


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line, durably (fsynced). See `open_appended` and `append_line`."""
    path = Path(path)
    with writing(path), open_appended(path) as handle:
        append_line(handle, record, durable=True)


def open_appended(path: Path) -> Any:
    """Open a JSONL log for appending (unbuffered binary: a failed write must not linger in a buffer that
    closing the file would try again). A last line cut short earlier (a kill or a full disk mid-append) is
    dealt with first, so a new line never lands after a broken one."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "ab", buffering=0)  # noqa: SIM115 (the caller keeps it open)
        repair_torn_tail(path, handle)
    return handle


def append_line(handle: Any, record: dict[str, Any], *, durable: bool = False) -> None:
    """Write one record to a file from `open_appended`. A failed write takes its partial bytes back, so a log
    never gets a broken line in its middle."""
    data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    with writing(handle.name):
        end = os.fstat(handle.fileno()).st_size
        try:
            written = 0
            while written < len(data):
                written += handle.write(data[written:]) or 0
            if durable:
                os.fsync(handle.fileno())
        except BaseException:
            handle.truncate(end)
            raise


def repair_torn_tail(path: Path, handle: Any) -> int:
    """Make an appended file end at a line break: a last line without one is completed when it is a whole
    record, else cut off. Returns the file's length afterwards."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb") as reader:  # a call log may be large: read its last byte, and all only if torn
        reader.seek(size - 1)
        if reader.read(1) == b"\n":
            return size
        content = path.read_bytes()
    start = content.rfind(b"\n") + 1
    if _record_or_none(content[start:]) is not None:
        handle.write(b"\n")
        return size + 1
    handle.truncate(start)
    logging.getLogger(__name__).warning("%s: removed a last line cut short by an interrupted write", path)
    return start


# --- reading: every failure names the file and the line ------------------------------------------------------
def read_jsonl(path: Path, *, torn_tail_ok: bool = False) -> list[dict[str, Any]]:
    """Every record of a run file. A file that is missing, not UTF-8, or has a line that is no JSON object is
    a RunFileError that names the file, the line and what to do. With `torn_tail_ok` (files appended line by
    line), a last line without its line break that does not parse (an append cut short) is skipped."""
    rows = _read_rows(Path(path), torn_tail_ok, lambda message: RunFileError(f"{message}; {_advice(path)}"))
    return [row for _, row in rows]


def read_checked_jsonl(
    path: Path, required: Sequence[str], what: str, *, torn_tail_ok: bool = False
) -> list[dict[str, Any]]:
    """Rows of a JSONL file that a person may have written or edited: errors (ConfigError) name the file, the
    line and the missing fields (`what` says what the file should be). `torn_tail_ok` as for `read_jsonl`."""
    path = Path(path)
    rows = _read_rows(path, torn_tail_ok, lambda message: ConfigError(f"{message} ({what})"))
    for number, row in rows:
        missing = [name for name in required if name not in row]
        if missing:
            raise ConfigError(f"{path} line {number} has no {', '.join(missing)} field ({what})")
    return [row for _, row in rows]


def _read_rows(
    path: Path, torn_tail_ok: bool, error: Callable[[str], Exception]
) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every non-blank line."""
    if not path.is_file():
        raise error(f"{path} does not exist")
    rows = []
    for line in jsonl_lines(path.read_bytes()):
        if isinstance(line.error, UnicodeDecodeError):
            where = f"byte {line.error.start + 1} of the line"
            raise error(f"{path} line {line.number} is not UTF-8 text ({where})") from line.error
        if isinstance(line.error, json.JSONDecodeError):
            if torn_tail_ok and line.unterminated:
                break
            why = f"{line.error.msg}, column {line.error.colno}"
            raise error(f"{path} line {line.number} is not JSON ({why})") from line.error
        if not isinstance(line.value, dict):
            raise error(f"{path} line {line.number} is a JSON {type(line.value).__name__}, not an object")
        rows.append((line.number, line.value))
    return rows


@dataclass(frozen=True)
class JsonlLine:
    """One non-blank line of a JSONL file: its value, or the error that stopped it being read."""

    number: int  # 1-based
    offset: int  # of the line's first byte in the file
    unterminated: bool  # no line break after it: the file's last line, perhaps an append cut short
    value: Any = None
    error: UnicodeDecodeError | json.JSONDecodeError | None = None


def jsonl_lines(data: bytes) -> Iterator[JsonlLine]:
    """Every non-blank line of a JSONL file's bytes, parsed, or with why it could not be (not UTF-8, not JSON);
    callers word the errors. Lines are split on bytes, not text: one bad byte spoils one line only, and a JSON
    string holding a U+2028 (which `str.splitlines` breaks on) stays whole. A BOM before the first line (some
    editors write one) is not part of it."""
    pieces = data.split(b"\n")  # a complete file ends in a line break: its last piece is empty
    offset = 0
    for number, raw in enumerate(pieces, start=1):
        start, offset = offset, offset + len(raw) + 1
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw, start = raw[3:], start + 3
        unterminated = number == len(pieces)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield JsonlLine(number, start, unterminated, error=exc)
            continue
        if not text.strip():
            continue
        try:
            yield JsonlLine(number, start, unterminated, value=json.loads(text))
        except json.JSONDecodeError as exc:
            yield JsonlLine(number, start, unterminated, error=exc)


def _record_or_none(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) else None


def _advice(path: Path | str) -> str:
    """What a person can do about a damaged run file, by what the file is for."""
    path = Path(path)
    parts = set(path.parts)
    if path.name == METRICS_FILE:
        return (
            "it is the log of finished iterations (the progress bar and reports read it, training does "
            "not): fix or delete that line"
        )
    if path.name == "timings.jsonl":
        return "it only records how long nodes took: fix or delete that line"
    if path.name == LEDGER_FILE:
        return (
            "it records each batch's way (generated, judged, trained), and the run reads it back to record "
            "each step once: fix or delete that line"
        )
    if "rollouts" in parts:
        return (
            "the policy update of that iteration reads its token ids: restore the file from a copy "
            "(`mpo check RUN_DIR` says whether the update still needs it)"
        )
    if "samples" in parts:
        return "the meta-judge and the reports read it: restore it from a copy or fix that line"
    if "calls" in parts:
        return "it is a log of judge calls (the budget and the meta-level nodes read it): fix or delete that line"
    return "restore it from a copy or fix that line"


@dataclass(frozen=True)
class RunDirectory:
    root: Path

    def __post_init__(self) -> None:
        with writing(self.root):
            for sub in SUBDIRS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)

    def relative(self, path: Path | str) -> str:
        """How the graph state refers to a file of this run: relative to the run directory, so the directory
        can be moved or copied to another disk or machine and resumed there."""
        return Path(path).relative_to(self.root).as_posix()

    def locate(self, stored: str) -> Path:
        """The file a state entry refers to. Entries are relative (see `relative`); runs written before that
        stored absolute paths, which are read as the same file under this directory wherever it is now."""
        path = Path(stored)
        if not path.is_absolute():
            return self.root / path
        for depth in range(len(path.parts) - 1, 0, -1):
            if path.parts[depth - 1] in SUBDIRS:  # e.g. /old/place/run/rollouts/iter-0003.jsonl
                return self.root.joinpath(*path.parts[depth - 1 :])
        return self.root / path.name

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def checkpoint_db(self) -> Path:
        return self.root / CHECKPOINT_DB

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def policy_dir(self) -> Path:
        return self.root / "policy"

    @property
    def rubrics_dir(self) -> Path:
        return self.root / "rubrics"

    @property
    def prompt_rubrics_dir(self) -> Path:
        """Per-prompt buffers (`rubric.scope: prompt`), a folder per prompt id."""
        return self.rubrics_dir / "prompts"

    def rollouts_path(self, iteration: int) -> Path:
        return self.root / "rollouts" / f"iter-{iteration:04d}.jsonl"

    def samples_path(self, iteration: int) -> Path:
        return self.root / "samples" / f"iter-{iteration:04d}.jsonl"

    def meta_dir(self, iteration: int) -> Path:
        """One meta step's work: selected cases, each analysis and candidate as it completes, the merge."""
        return self.root / "meta" / f"iter-{iteration:04d}"

    def update_stats_path(self, iteration: int) -> Path:
        """What the policy update of an iteration reported (kept so a resumed run can still log it), and under
        `UPDATE_REWARDS` the rewards it trained on (so that it can be applied again exactly)."""
        return self.root / "updates" / f"iter-{iteration:04d}.json"

    def update_rewards(self, iteration: int) -> list[float | None] | None:
        """The rewards an applied update trained on; None where they were not kept (or are unreadable)."""
        try:
            stats = json.loads(self.update_stats_path(iteration).read_text())
        except (OSError, ValueError):
            return None
        return stats.get(UPDATE_REWARDS) if isinstance(stats, dict) else None

    def calls_path(self, role: str) -> Path:
        return self.root / "calls" / f"{role}.jsonl"

    @property
    def timings_path(self) -> Path:
        return self.root / TIMINGS_FILE

    @property
    def meta_levels_path(self) -> Path:
        return self.root / META_LEVELS_FILE

    @property
    def ledger_path(self) -> Path:
        return self.root / LEDGER_FILE

    def ledger(self) -> dict[int, dict[str, Any]]:
        """Each batch's facts so far, by the iteration that trains it; `status` is the furthest step it took."""
        batches: dict[int, dict[str, Any]] = {}
        for entry in self._ledger_entries():
            batches.setdefault(entry["batch"], {}).update(entry)
        return batches

    def record_batch(self, batch: int, status: str, **facts: Any) -> bool:
        """Append a batch's step along generated -> judged -> trained with what it adds (policy version, files,
        rubric version, judgment outcomes), unless that step is recorded already (a node run again after a
        crash writes it once). True when the line was written now."""
        if any((e["batch"], e["status"]) == (batch, status) for e in self._ledger_entries()):
            return False
        append_jsonl(self.ledger_path, {"batch": batch, "status": status, **facts})
        return True

    def _ledger_entries(self) -> list[dict[str, Any]]:
        return read_jsonl(self.ledger_path, torn_tail_ok=True) if self.ledger_path.exists() else []

    @property
    def log_path(self) -> Path:
        return self.root / RUN_LOG

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files, when `trainer.report_to` names tensorboard (not created otherwise)."""
        return self.root / "tensorboard"

    def metrics(self) -> list[dict[str, Any]]:
        """One record per finished iteration (none before the first)."""
        if not self.metrics_path.exists():
            return []
        return read_jsonl(self.metrics_path, torn_tail_ok=True)

    def record_metrics(self, metrics: dict[str, Any]) -> bool:
        """Append one iteration's metrics unless that iteration is already recorded (a re-run node after a
        crash must not duplicate the line). True when the line was written now."""
        if metrics["iteration"] in {record.get("iteration") for record in self.metrics()}:
            return False
        append_jsonl(self.metrics_path, metrics)
        return True
