"""A task's data read and checked before anything heavy loads: every line or row named when it is unusable
(not UTF-8, not JSON, not an object, a field missing or empty), then prompts measured as the policy sees them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mpo_agents.errors import ConfigError
from mpo_agents.rundir import jsonl_lines

SHOWN_PROBLEMS = 10  # a whole file of bad lines would bury the message; the count says how many more
SHOWN_LONG_PROMPTS = 3

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Row:
    """One line of a JSONL file or one row of a table, with where it is for messages ("line 7")."""

    where: str
    value: Any  # the parsed line or row; None when it could not be read
    problem: str | None = None  # why it could not be read: not UTF-8, not JSON


def read_rows(path: Path, split: str) -> list[Row]:
    """Rows of a JSONL or Parquet file, or of a Hugging Face `datasets` directory (`save_to_disk`). A JSONL line
    that cannot be read comes back with its problem, so that every bad line is named at once."""
    path = Path(path)
    if path.is_dir():
        return [Row(f"row index {n}", row) for n, row in enumerate(_dataset_rows(path, split))]
    if not path.is_file():
        raise ConfigError(f"task.data_path: {path} does not exist (a JSONL or Parquet file, or a directory)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [Row(f"row index {n}", row) for n, row in enumerate(pq.read_table(path).to_pylist())]
    return _jsonl_rows(path.read_bytes())


def _dataset_rows(path: Path, split: str) -> Any:
    import datasets  # heavy; only for this input form

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"task.data_path: {path} is not a `datasets` directory ({exc})") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ConfigError(f"task.split: '{split}' is not in {path}; it has {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded


def _jsonl_rows(data: bytes) -> list[Row]:
    rows = []
    for line in jsonl_lines(data):
        where = f"line {line.number}"
        if isinstance(line.error, UnicodeDecodeError):
            byte, at = line.error.object[line.error.start], line.offset + line.error.start
            rows.append(
                Row(where, None, f"is not valid UTF-8 (byte 0x{byte:02x} at byte offset {at} of the file)")
            )
        elif line.error is not None:
            rows.append(Row(where, None, f"is not JSON: {line.error.msg} (column {line.error.colno})"))
        else:
            rows.append(Row(where, line.value))
    return rows


def shape_problem(value: Any) -> str | None:
    """Why a parsed line or row cannot be a record, or None if it is a mapping."""
    if isinstance(value, Mapping):
        return None
    kinds = {
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return f"is a JSON {kinds.get(type(value), type(value).__name__)}, not an object"


def is_empty(value: Any) -> bool:
    """A field that is present but holds nothing: null, blank text, an empty list or mapping."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list | tuple | dict) and not value


def fields_problem(record: Mapping[str, Any], required: tuple[str, ...]) -> str | None:
    """Which required fields a record lacks and which it has but empty, or None if it has them all."""
    missing = [name for name in required if name not in record]
    empty = [name for name in required if name in record and is_empty(record[name])]
    parts = []
    if missing:
        parts.append(f"no {_names(missing)} field{'s' if len(missing) > 1 else ''}")
    if empty:
        parts.append(f"an empty {_names(empty)} field{'s' if len(empty) > 1 else ''}")
    return f"has {' and '.join(parts)}" if parts else None


def _names(fields: list[str]) -> str:
    return ", ".join(repr(name) for name in fields)


def unusable_records_error(
    path: Path, problems: list[str], task: str, required: tuple[str, ...]
) -> ConfigError:
    """One error naming every unusable line or row (the first SHOWN_PROBLEMS of them)."""
    reads = f"task {task} reads {', '.join(required)}"
    if len(problems) == 1:
        return ConfigError(f"task.data_path: {path} {problems[0]} ({reads}); fix or remove it")
    shown = "\n".join(f"  {problem}" for problem in problems[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    rule = (
        "line must be one JSON object, in UTF-8,"
        if problems[0].startswith("line")
        else "row must be a record"
    )
    return ConfigError(
        f"task.data_path: {path} has {len(problems)} unusable records ({reads}):\n{shown}{more}\n"
        f"Fix or remove them: each {rule} holding those fields, none of them empty."
    )


# -- prompt lengths ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptBudget:
    """The longest prompt the policy takes (`trainer.max_prompt_length`), and how it counts a prompt's tokens:
    the task's policy conversation through the policy tokenizer's chat template, as the policy encodes it."""

    max_tokens: int
    measure: Callable[[Conversation], int]


@dataclass(frozen=True)
class PromptLengths:
    """How the prompts a run uses measure against the policy's limit; reported before anything heavy loads."""

    prompts: int  # prompts measured
    too_long: int
    longest: int
    limit: int
    action: Literal["drop", "truncate"]
    examples: tuple[str, ...]  # the longest few over the limit: "line 7 (20512 tokens)"

    def summary(self) -> str:
        limit = f"trainer.max_prompt_length ({self.limit} tokens)"
        if not self.too_long:
            return f"{self.prompts} prompts checked; the longest has {self.longest} tokens, within {limit}"
        which = ", ".join(self.examples) + (", ..." if self.too_long > len(self.examples) else "")
        head = f"{self.too_long} of {self.prompts} prompts are longer than {limit}: {which}; "
        if self.action == "drop":
            return head + f"dropped (task.long_prompts: drop), {self.prompts - self.too_long} remain"
        return (
            head + f"the policy sees only their last {self.limit} tokens, without their start "
            "(task.long_prompts: truncate)"
        )


def fit_prompt_lengths(
    located: list[tuple[str, dict[str, Any]]],
    conversation: Callable[[dict[str, Any]], Conversation],
    budget: PromptBudget,
    action: Literal["drop", "truncate"],
) -> tuple[list[tuple[str, dict[str, Any]]], PromptLengths]:
    """The records the run uses (all of them with `truncate`, those that fit with `drop`) and the report. The
    decision depends only on the data, the config and the tokenizer, so a resumed run gets the same list."""
    lengths = [budget.measure(conversation(record)) for _, record in located]
    over = sorted(
        (
            (length, where)
            for (where, _), length in zip(located, lengths, strict=True)
            if length > budget.max_tokens
        ),
        reverse=True,
    )
    report = PromptLengths(
        prompts=len(located),
        too_long=len(over),
        longest=max(lengths, default=0),
        limit=budget.max_tokens,
        action=action,
        examples=tuple(f"{where} ({length} tokens)" for length, where in over[:SHOWN_LONG_PROMPTS]),
    )
    if action == "truncate" or not over:
        return located, report
    kept = [item for item, length in zip(located, lengths, strict=True) if length <= budget.max_tokens]
    if not kept:
        raise ConfigError(
            f"task.data_path: all {len(located)} prompts are longer than trainer.max_prompt_length "
            f"({budget.max_tokens} tokens, counted with the policy's chat template; the shortest has "
            f"{min(lengths)}), so task.long_prompts: drop leaves none. Raise trainer.max_prompt_length, "
            "use shorter prompts, or set task.long_prompts: truncate"
        )
    return kept, report
