"""Per-prompt rubrics (`rubric.scope: prompt`): a buffer of signed-weight items per prompt, how a proposal
becomes items, how items are pruned and aggregated, and the versioned store under `rubrics/prompts/`."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from mpo_agents.errors import ConfigError, RubricRejected
from mpo_agents.rubrics import RubricItem, RubricVersion, check_no_copy
from mpo_agents.rundir import atomic_write_text

Aggregate = Literal["weighted", "points"]  # rubric.aggregate
ITEM_SCALE = 2.0  # an item is judged 0 (not met / absent), 1 (partly), 2 (fully / clearly present)
MAX_WEIGHT = 5.0
PERSISTENT, EVOLVED = "persistent", "evolved"  # item origins here (a task criterion's is "initial")
# "+1 | Title | what it rewards" (bullets and a unicode minus allowed)
_ITEM_LINE = re.compile(
    r"^\s*(?:[-*•]\s+|\d+[.)]\s+)?(?P<weight>[+\-−]?\s*\d+(?:\.\d+)?)\s*\|\s*(?P<title>[^|]+?)\s*\|\s*(?P<text>.+?)\s*$"
)
_WORDS = re.compile(r"[a-z0-9']+")
_PROSE = re.compile(r"[^\W\d_]{2,}")  # a word of letters (any script), two or more
_LETTER = re.compile(r"[^\W\d_]")


def prompt_id(prompt_text: str) -> str:
    """A prompt's stable id: the start of the hash of its text (the same prompt in any run, any order)."""
    return hashlib.sha256(prompt_text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class PromptRubric:
    """One version of one prompt's buffer, and what changed from its parent (with the reasons)."""

    prompt_id: str
    version: int
    items: tuple[RubricItem, ...]
    parent: int | None
    iteration: int  # the iteration it was written at
    changes: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # {"change", "item", "reason"}
    prompt: str = ""  # the prompt's text, for people reading the store

    @property
    def persistent(self) -> list[RubricItem]:
        return [item for item in self.items if item.origin != EVOLVED]

    @property
    def evolved(self) -> list[RubricItem]:
        return [item for item in self.items if item.origin == EVOLVED]

    def render(self) -> str:
        """The buffer as the judges read it: one item per line with its weight."""
        return "\n".join(
            f"{render_weight(item.weight)} {item.title}: {item.description}" for item in self.items
        )

    def scale(self, how: Aggregate) -> tuple[float, float]:
        """The lowest and highest reward the buffer can give when every item is judged."""
        return scale_of([item.weight or 0.0 for item in self.items], how)

    def to_state(self) -> dict:
        return {
            **asdict(self),
            "items": [item.to_state() for item in self.items],
            "changes": list(self.changes),
        }

    @classmethod
    def from_state(cls, data: dict) -> PromptRubric:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["items"] = tuple(RubricItem.from_state(item) for item in data["items"])
        values["changes"] = tuple(data.get("changes", ()))
        return cls(**values)

    def rubric_state(self, task_version: int, how: Aggregate) -> dict[str, Any]:
        """What the scorer is handed for this prompt: a rubric state of scope `prompt` (the task rubric's version
        stays the samples' `rubric_version`; `buffer_version` is this one)."""
        low, high = self.scale(how)
        return {
            "version": task_version,
            "text": self.render(),
            "low": low,
            "high": high,
            "parent": self.parent,
            "iteration": self.iteration,
            "scope": "prompt",
            "prompt_id": self.prompt_id,
            "buffer_version": self.version,
            "prompt_items": [item.to_state() for item in self.items],
        }


def render_weight(weight: float | None) -> str:
    return f"[{weight or 0:+g}]"


def scale_of(weights: Sequence[float], how: Aggregate) -> tuple[float, float]:
    """The reward range of items with these weights: penalties all shown to all met rewards, as `aggregate`."""
    low = sum(w for w in weights if w < 0)
    high = sum(w for w in weights if w > 0)
    if how == "weighted" and high - low:
        return low / (high - low), high / (high - low)
    return low, high


def aggregate(judged: Iterable[tuple[float, float]], how: Aggregate) -> float | None:
    """A sample's reward from its usable item judgments, each (weight, score on 0..ITEM_SCALE): sum(w*s)/sum(|w|)
    (`weighted`) or sum(w*s) (`points`), s read as 0..1. None when no item was judged: a failed judgment."""
    pairs = [(weight, score / ITEM_SCALE) for weight, score in judged]
    if not pairs:
        return None
    total = sum(weight * share for weight, share in pairs)
    if how == "points":
        return total
    return total / sum(abs(weight) for weight, _ in pairs)


def _key(title: str, description: str) -> str:
    return " ".join(_WORDS.findall(f"{title} {description}".lower()))


def check_item(title: str, description: str, weight: float, where: str) -> None:
    """Raise RubricRejected when an item could not be judged: a title without a word, a description of fewer
    than 3 words (numbers and dates are not words: small models fill a table with them) or holding another
    column, a zero or outsized weight."""
    if not _LETTER.search(title):
        raise RubricRejected(f"{where}: the title {title!r} names nothing")
    if len(_PROSE.findall(description)) < 3 or "|" in description:
        raise RubricRejected(f"{where}: the description {description!r} does not say what to look for")
    if weight == 0 or abs(weight) > MAX_WEIGHT:
        raise RubricRejected(f"{where}: weight {weight:g} must be non-zero and within ±{MAX_WEIGHT:g}")


def parse_proposal(
    text: str,
    *,
    buffer: PromptRubric,
    iteration: int,
    samples: Sequence[str],
    copy_run_words: int,
    limit: int,
) -> tuple[list[RubricItem], list[str]]:
    """The new items in a meta-judge's proposal ("+1 | Title | description" lines), at most `limit`, and a note
    on each line left out (unreadable, a repeat of an item in the buffer, a copy of a completion)."""
    seen = {_key(item.title, item.description) for item in buffer.items}
    items: list[RubricItem] = []
    notes: list[str] = []
    for line in text.splitlines():
        match = _ITEM_LINE.match(line)
        if match is None:
            if "|" in line:
                notes.append(f"not an item line: {line.strip()[:80]!r}")
            continue
        weight = float(match["weight"].replace("−", "-").replace(" ", ""))
        title, description = match["title"].strip(" *"), match["text"].strip()
        try:
            check_item(title, description, weight, f"proposed item {title[:40]!r}")
            check_no_copy(f"{title} {description}", samples, copy_run_words)
        except RubricRejected as exc:
            notes.append(str(exc))
            continue
        key = _key(title, description)
        if key in seen:
            notes.append(f"repeats an item already in the buffer: {title[:60]!r}")
            continue
        if len(items) >= limit:
            notes.append(f"over rubric.max_new_items={limit}: {title[:60]!r}")
            continue
        seen.add(key)
        items.append(
            RubricItem(
                f"e{iteration}.{len(items) + 1}",
                title,
                description,
                weight=weight,
                origin=EVOLVED,
                iteration=iteration,
            )
        )
    return items, notes


def parse_persistent(text: str, iteration: int, limit: int) -> list[RubricItem]:
    """The persistent items a meta-judge wrote for a prompt (same line form as a proposal); RubricRejected when
    none is usable."""
    empty = PromptRubric("", 0, (), None, iteration)
    items, notes = parse_proposal(
        text, buffer=empty, iteration=iteration, samples=(), copy_run_words=10**6, limit=limit
    )
    if not items:
        raise RubricRejected(
            "no usable item lines like '+1 | Title | what it rewards'" + (f" ({notes[0]})" if notes else "")
        )
    return [replace(item, id=f"p{n}", origin=PERSISTENT) for n, item in enumerate(items, start=1)]


def items_from_data(value: Any, where: str) -> list[RubricItem]:
    """Persistent items supplied in a record (`rubric.items_field`): a list of {title, description, weight}
    (also read: `criterion`/`name` for the description/title). ConfigError names the entry and the fix."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is text that is not a JSON list of items: {exc.msg}") from exc
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list of {{title, description, weight}} items")
    items = []
    for n, raw in enumerate(value, start=1):
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} item {n} is not an object with title, description and weight")
        description = str(raw.get("description") or raw.get("criterion") or "").strip()
        title = str(raw.get("title") or raw.get("name") or " ".join(description.split()[:6])).strip()
        try:
            weight = float(raw.get("weight", 1))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where} item {n}: weight {raw.get('weight')!r} is not a number") from exc
        try:
            check_item(title, description, weight, f"{where} item {n}")
        except RubricRejected as exc:
            raise ConfigError(str(exc)) from exc
        items.append(RubricItem(f"p{n}", title, description, weight=weight, origin=PERSISTENT))
    return items


def check_data_items(records: Sequence[dict[str, Any]], field: str, prompt_of: Callable[[dict], str]) -> None:
    """Before a run starts: every record's persistent items in `field` are usable; ConfigError names the first
    record that has none or a broken one (its prompt's start) and what is wrong."""
    for record in records:
        where = f"rubric.items_field '{field}' of the record {' '.join(prompt_of(record).split())[:60]!r}"
        if field not in record:
            raise ConfigError(
                f"{where}: the record has no such field; add it or set rubric.items_field: null"
            )
        items_from_data(record[field], where)


def items_from_rubric(version: RubricVersion) -> list[RubricItem]:
    """A task rubric's criteria as persistent items: a criterion worth up to N points weighs N, a penalty
    criterion (-3 to 0) weighs -3. ConfigError for a rubric of guidelines, which has no criteria."""
    if version.kind != "criteria":
        raise ConfigError(
            "this task grades with guidelines, not criteria, so its rubric cannot stand in for a prompt's items; "
            "give the items in the data (rubric.items_field) or let the meta-judge write them"
        )
    return [
        RubricItem(
            f"p{n}",
            f"Criterion {n}",
            item.description,
            weight=item.high if item.high > 0 else item.low,
            origin=PERSISTENT,
        )
        for n, item in enumerate(version.parsed().items(), start=1)
    ]


def spread_of(scores: Sequence[float]) -> float | None:
    """How far an item's scores differ across one group (max - min); None with fewer than two judgments."""
    return max(scores) - min(scores) if len(scores) >= 2 else None


def prune(buffer: PromptRubric, uses: dict[str, list[tuple[int, float]]], after: int) -> list[dict[str, Any]]:
    """The evolved items that no longer tell the group's completions apart: scored alike across the group in
    each of their last `after` uses (`uses[item id]`: (iteration, spread), oldest first). One change record,
    with its reason, per item to drop."""
    changes = []
    for item in buffer.evolved:
        recent = uses.get(item.id, [])[-after:]
        if len(recent) == after and all(spread == 0 for _, spread in recent):
            where = ", ".join(str(iteration) for iteration, _ in recent)
            changes.append(
                {
                    "change": "pruned",
                    "item": item.id,
                    "reason": f"scored alike across its group in its last {after} use(s) (iterations {where})",
                }
            )
    return changes


def evolve(
    buffer: PromptRubric,
    new: Sequence[RubricItem],
    pruned: Sequence[dict[str, Any]],
    *,
    max_active: int,
    iteration: int,
) -> PromptRubric | None:
    """The buffer's next version: pruned items removed, `new` added, and the oldest evolved items evicted
    beyond `max_active`; None when nothing changed."""
    dropped = {change["item"] for change in pruned}
    evolved = [item for item in buffer.evolved if item.id not in dropped] + list(new)
    changes = list(pruned) + [
        {"change": "added", "item": item.id, "reason": "proposed from the group"} for item in new
    ]
    while len(evolved) > max_active:
        oldest = evolved.pop(0)
        changes.append(
            {
                "change": "evicted",
                "item": oldest.id,
                "reason": f"oldest evolved item beyond rubric.max_active={max_active}",
            }
        )
    if not changes:
        return None
    return replace(
        buffer,
        version=buffer.version + 1,
        items=(*buffer.persistent, *evolved),
        parent=buffer.version,
        iteration=iteration,
        changes=tuple(changes),
    )


class BufferStore:
    """`rubrics/prompts/<prompt id>/v0000.json` (and a `.md` rendering) per buffer version."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def save(self, buffer: PromptRubric) -> None:
        # Written before the graph commits the pointer to it, and idempotent: a crash in between is harmless.
        stem = self.directory / buffer.prompt_id / f"v{buffer.version:04d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stem.with_suffix(".md"), buffer.render() + "\n")
        atomic_write_text(stem.with_suffix(".json"), json.dumps(buffer.to_state(), indent=2))

    def load(self, prompt: str, version: int) -> PromptRubric:
        path = self.directory / prompt / f"v{version:04d}.json"
        return PromptRubric.from_state(json.loads(path.read_text(encoding="utf-8")))

    def prompts(self) -> list[str]:
        return (
            sorted(path.name for path in self.directory.glob("*") if path.is_dir())
            if self.directory.is_dir()
            else []
        )

    def versions(self, prompt: str) -> list[PromptRubric]:
        return [
            PromptRubric.from_state(json.loads(path.read_text(encoding="utf-8")))
            for path in sorted((self.directory / prompt).glob("v*.json"))
        ]


def diff_buffers(old: PromptRubric, new: PromptRubric) -> str:
    """A unified diff between two versions of a prompt's buffer, followed by the recorded reasons."""
    lines = list(
        difflib.unified_diff(
            old.render().splitlines(),
            new.render().splitlines(),
            f"v{old.version}",
            f"v{new.version}",
            lineterm="",
        )
    )
    lines += [f"# {c['change']} {c['item']}: {c['reason']}" for c in new.changes]
    return "\n".join(lines)
