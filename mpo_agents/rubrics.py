"""Rubric versions: parse a rubric into criteria with point ranges, validate a rewrite, store, list and diff."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mpo_agents.errors import RubricRejected
from mpo_agents.rundir import REJECTED_FILE, append_jsonl, atomic_write_text, read_jsonl

# "Criterion 2: text (0-5 points)"; also accepts "- text (0-5 points)" bullets, "(-3 to 0 points)", "[0-5 pts]".
_ITEM_HEADER = re.compile(r"^\s*(?:[-*•]\s*|\d+[.)]\s*)?\**\s*criterion\s+\d+\s*\**\s*[:.)]", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_RANGE = re.compile(
    r"[(\[]\s*(?P<low>[-+−]?\d+(?:\.\d+)?)\s*(?:-|–|—|to)\s*(?P<high>[-+−]?\d+(?:\.\d+)?)\s*(?:points?|pts?)\s*[)\]]",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z0-9']+")


@dataclass(frozen=True)
class Criterion:
    text: str  # the criterion line without its number, point range included
    low: float
    high: float


@dataclass(frozen=True)
class RubricItem:
    """One thing a rubric checks, whatever its scope: a task rubric's criterion (a point range, `low`..`high`)
    or an item of a prompt's buffer (a signed `weight`: positive rewards what it describes, negative penalises
    it)."""

    id: str  # "c2" (criterion 2 of a task rubric), "p1" (persistent), "e7.2" (evolved at iteration 7)
    title: str
    description: str
    weight: float | None = None
    low: float | None = None
    high: float | None = None
    origin: str = "initial"  # initial (a task criterion), persistent or evolved (a buffer item)
    iteration: int = 0  # the iteration it was written at (0: before training)

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, data: dict) -> RubricItem:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class Rubric:
    criteria: tuple[Criterion, ...]

    def items(self, origin: str = "initial", iteration: int = 0) -> tuple[RubricItem, ...]:
        """The criteria in the shared item form (a task rubric is the `task` scope of one rubric model)."""
        return tuple(
            RubricItem(
                f"c{n}", f"Criterion {n}", c.text, low=c.low, high=c.high, origin=origin, iteration=iteration
            )
            for n, c in enumerate(self.criteria, start=1)
        )

    @property
    def low(self) -> float:
        return sum(c.low for c in self.criteria)

    @property
    def high(self) -> float:
        return sum(c.high for c in self.criteria)

    def render(self) -> str:
        """Canonical text: one numbered criterion per line, the form the prompts show to judges."""
        return "\n".join(f"Criterion {i}: {c.text}" for i, c in enumerate(self.criteria, start=1))


def _number(raw: str) -> float:
    return float(raw.replace("−", "-"))


def _split_items(text: str) -> list[str]:
    """Criterion blocks: a header line starts a block; continuation lines belong to the block above."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        starts = _ITEM_HEADER.match(line) or (_BULLET.match(line) and _RANGE.search(line))
        if starts or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return [" ".join(part.strip() for part in block) for block in blocks]


def parse_rubric(text: str) -> tuple[Rubric, list[str]]:
    """Parse criteria with point ranges. Returns the rubric and notes on what was dropped.

    A trailing criterion without a point range is dropped (a reply cut off by the token limit); one in the
    middle makes the rubric unparseable, because the judge could not know what it is worth.
    """
    notes: list[str] = []
    items = _split_items(text)
    criteria: list[Criterion] = []
    for index, item in enumerate(items):
        body = _BULLET.sub("", _ITEM_HEADER.sub("", item, count=1), count=1).strip()
        match = _RANGE.search(body)
        if match is None:
            if index == len(items) - 1 and criteria:
                notes.append(f"dropped an unfinished last criterion: {body[:60]!r}")
                continue
            raise RubricRejected(
                f"criterion {index + 1} has no point range like '(0-5 points)': {body[:80]!r}"
            )
        low, high = sorted((_number(match["low"]), _number(match["high"])))
        description = body[: match.start()].strip(" .:-")
        if len(_WORD.findall(description)) < 3:
            raise RubricRejected(f"criterion {index + 1} does not say what it rewards: {body[:80]!r}")
        if low == high:
            raise RubricRejected(f"criterion {index + 1} has an empty point range {match.group(0)}")
        criterion = Criterion(text=f"{description}. {match.group(0)}".replace("..", "."), low=low, high=high)
        if criterion_key(criterion) in {criterion_key(c) for c in criteria}:
            notes.append(f"dropped a duplicate of criterion: {description[:60]!r}")
            continue
        criteria.append(criterion)
    if not criteria:
        raise RubricRejected("no criteria found; expected lines like 'Criterion 1: ... (0-5 points)'")
    return Rubric(tuple(criteria)), notes


def criterion_key(criterion: Criterion) -> str:
    """What makes two criteria the same for de-duplication: their words and range, ignoring case and
    punctuation (a merge that repeats a criterion with a different comma still repeats it)."""
    return " ".join(_WORD.findall(criterion.text.lower())) + f"|{criterion.low:g}|{criterion.high:g}"


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def join_under_word_limit(texts: list[str], budget: int) -> tuple[list[str], int]:
    """Texts taken in order while their total stays within `budget` words; a text that would cross it is
    dropped whole, as are all after it. Returns (kept, number dropped)."""
    kept: list[str] = []
    used = 0
    for text in texts:
        words = word_count(text)
        if used + words > budget:
            break
        kept.append(text)
        used += words
    return kept, len(texts) - len(kept)


def merge_in_order(rubrics: list[Rubric], *, max_items: int, max_words: int) -> Rubric:
    """All criteria of `rubrics`, first occurrence kept, in order, cut to the item and word limits.

    The deterministic merge: used on the meta-judge's merged rubric (to drop repeats it left in) and in its
    place when its merge cannot be used.
    """
    seen: set[str] = set()
    kept: list[Criterion] = []
    words = 0
    for criterion in (c for rubric in rubrics for c in rubric.criteria):
        key = criterion_key(criterion)
        cost = word_count(f"Criterion {len(kept) + 1}: {criterion.text}")
        if key in seen or len(kept) >= max_items or words + cost > max_words:
            continue
        seen.add(key)
        kept.append(criterion)
        words += cost
    if not kept:
        raise RubricRejected("no criteria left to merge")
    return Rubric(tuple(kept))


def _longest_shared_run(a: list[str], b: list[str]) -> int:
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return max((block.size for block in matcher.get_matching_blocks()), default=0)


def validate_rewrite(
    text: str,
    *,
    previous: Rubric,
    samples: list[str],
    max_words: int,
    max_items: int,
    copy_run_words: int,
) -> tuple[Rubric, list[str]]:
    """Accept a rewritten rubric or raise `RubricRejected` saying why."""
    if not text.strip():
        raise RubricRejected("the meta-judge returned an empty rubric")
    rubric, notes = parse_rubric(text)
    if len(rubric.criteria) > max_items:
        raise RubricRejected(f"{len(rubric.criteria)} criteria, more than rubric.max_items={max_items}")
    words = _WORD.findall(rubric.render().lower())
    if len(words) > max_words:
        raise RubricRejected(f"{len(words)} words, more than rubric.max_words={max_words}")
    if rubric.render() == previous.render():
        raise RubricRejected("the rewrite is identical to the current rubric")
    if rubric.high <= rubric.low:
        raise RubricRejected(f"the score range {rubric.low:g}..{rubric.high:g} is empty")
    check_no_copy(rubric.render(), samples, copy_run_words)
    return rubric, notes


def check_no_copy(text: str, samples: list[str], copy_run_words: int) -> None:
    """Raise `RubricRejected` if `text` repeats `copy_run_words` consecutive words of a graded sample: a rubric
    or guideline must describe qualities, not quote answers (nor carry text a completion smuggled in)."""
    words = _WORD.findall(text.lower())
    for sample in samples:
        run = _longest_shared_run(words, _WORD.findall(sample.lower()))
        if run >= copy_run_words:
            raise RubricRejected(
                f"the rewrite copies {run} consecutive words of a graded sample (limit rubric.copy_run_words="
                f"{copy_run_words}); a rubric must describe qualities, not quote answers"
            )


@dataclass(frozen=True)
class RubricVersion:
    """One stored version and its lineage; what the graph state carries."""

    version: int
    text: str
    low: float
    high: float
    parent: int | None
    iteration: int  # iteration after whose scoring it was written (0 for the initial rubric)
    kind: str = "criteria"  # "criteria", or "guidelines" (math: prose per cluster, one 0-5 score)
    guidelines: dict[str, str] = field(default_factory=dict)
    items: int = 0  # criteria, or guidelines kept per cluster
    tokens: int = 0  # length in tokens (cl100k), the paper's measure of rubric growth
    origin: str = "initial"
    evidence: str | None = None  # path of the meta record (analyses, candidates) behind this version
    review: str | None = None  # who decided on it beyond the meta-judge (meta-level nodes, a person) and how

    @classmethod
    def of(
        cls,
        rubric: Rubric,
        *,
        version: int,
        parent: int | None,
        iteration: int,
        origin: str = "initial",
        evidence: str | None = None,
    ) -> RubricVersion:
        """A stored version of a parsed rubric, in its canonical text."""
        text = rubric.render()
        return cls(
            version,
            text,
            rubric.low,
            rubric.high,
            parent,
            iteration,
            "criteria",
            {},
            len(rubric.criteria),
            count_tokens(text),
            origin,
            evidence,
        )

    @classmethod
    def of_guidelines(
        cls,
        default: str,
        guidelines: dict[str, str],
        *,
        low: float,
        high: float,
        version: int,
        parent: int | None,
        iteration: int,
        origin: str = "initial",
        evidence: str | None = None,
    ) -> RubricVersion:
        """A version of per-cluster guidelines on a fixed score scale (math)."""
        tokens = count_tokens("\n".join([default, *guidelines.values()]))
        return cls(
            version,
            default.strip(),
            low,
            high,
            parent,
            iteration,
            "guidelines",
            dict(guidelines),
            len(guidelines),
            tokens,
            origin,
            evidence,
        )

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, data: dict) -> RubricVersion:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def parsed(self) -> Rubric:
        return parse_rubric(self.text)[0]

    def full_text(self) -> str:
        """Everything a judge may see: the criteria, or every cluster's guideline under its name."""
        if self.kind != "guidelines":
            return self.text
        parts = [f"[default]\n{self.text}"]
        parts += [f"[{key}]\n{text}" for key, text in sorted(self.guidelines.items())]
        return "\n\n".join(parts)


def rubric_view(rubric: dict, cluster: str | None) -> str:
    """A rubric state's text as a judge or the meta-judge reads it for one case: the criteria (or a prompt's
    buffer), or for a per-cluster task the cluster's guideline (the default one when the cluster has none)."""
    if rubric.get("kind") == "guidelines":
        return rubric.get("guidelines", {}).get(cluster or "", rubric["text"])
    return rubric["text"]


def count_tokens(text: str) -> int:
    """Tokens of `text` in the cl100k encoding LiteLLM ships (offline); words x 1.3 if that is unavailable."""
    try:
        from mpo_agents.litellm_import import import_litellm

        return int(import_litellm().token_counter(model="gpt-3.5-turbo", text=text))
    except Exception:  # noqa: BLE001 - a length statistic must never stop a run
        return round(len(_WORD.findall(text)) * 1.3)


class RubricStore:
    """`rubrics/v0000.md` (+ `.json` metadata) per version; `rubrics/rejected.jsonl` logs refused rewrites."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, version: RubricVersion) -> None:
        # Written before the graph commits the new version, and idempotent, so a crash in between is harmless.
        stem = self.directory / f"v{version.version:04d}"
        atomic_write_text(stem.with_suffix(".md"), version.full_text() + "\n")
        atomic_write_text(stem.with_suffix(".json"), json.dumps(version.to_state(), indent=2))

    def log_rejection(self, iteration: int, reason: str, text: str) -> None:
        """Append a refused rewrite; a node re-run after a crash logging the same refusal adds nothing."""
        record = {"iteration": iteration, "reason": reason, "text": text}
        if record in self.rejections():
            return
        append_jsonl(self.directory / REJECTED_FILE, record)

    def versions(self) -> list[RubricVersion]:
        return [
            RubricVersion.from_state(json.loads(path.read_text()))
            for path in sorted(self.directory.glob("v*.json"))
        ]

    def rejections(self) -> list[dict]:
        path = self.directory / REJECTED_FILE
        return read_jsonl(path, torn_tail_ok=True) if path.exists() else []


def diff_rubrics(old: RubricVersion, new: RubricVersion) -> str:
    """A unified diff between two versions' texts."""
    return "\n".join(
        difflib.unified_diff(
            old.full_text().splitlines(),
            new.full_text().splitlines(),
            f"v{old.version}",
            f"v{new.version}",
            lineterm="",
        )
    )
