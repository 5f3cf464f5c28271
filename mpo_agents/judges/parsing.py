"""Reading a judge's verdict out of its reply: a score in a range, the content of an XML-ish tag, every
criterion's score from a JSON reply, every completion's score from a listwise reply, and the rationale before
the score line."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpo_agents.rubrics import Criterion

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
# An optional scale after the number: "4/5", "4 / 5", "4 out of 5".
_SCALE = rf"(?:\s*(?:/|out\s+of)\s*(?P<den>{_NUMBER}))?"
_LABEL = re.compile(
    r"(?P<final>\b(?:final|overall|total)\s+)?\b(?:score|grade|rating)\b"
    r"(?:\s*\([^)\n]{0,30}\)|\s+out\s+of\s+\d+)?"  # "Score (0-5): 4", "Score out of 5: 4"
    r"[\s*_`]*(?::|=|\bis\b|-|–)?[\s*_`]*"  # "Score: 4", "score = 4", "**Score:** 4", "score is 4"
    rf"(?P<num>{_NUMBER})(?!\d){_SCALE}",
    re.IGNORECASE,
)
# A reply that is the number itself, as a completion after "Score (0-5):" tends to be: " 4\n...".
_LEADING = re.compile(
    rf"^\s*[*_#`\"'\[(]*\s*(?P<num>{_NUMBER}){_SCALE}"
    # What may follow: end of line, punctuation, "points". Not "N. more text": that is a numbered list item.
    r"(?=\s*(?:$|\n|[.)\]]\s*(?:$|\n)|[,;:!*_`\"'—–-]|points?\b|pts\b))",
    re.IGNORECASE,
)
_FRACTION = re.compile(
    rf"(?<![\w./])(?P<num>{_NUMBER})\s*(?:/|out\s+of)\s*(?P<den>{_NUMBER})(?![\w/]|\.\d)", re.IGNORECASE
)
_SCORE_LINE = re.compile(r"^\W*score\b.*$", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_JSON_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_ID_LINE = re.compile(rf"^\W*(c\d+)\W*[:=-]\s*({_NUMBER})\b", re.MULTILINE)


def extract_tag(reply: str, tag: str) -> str | None:
    """Content of the last `<tag>...</tag>` in `reply`, stripped; None if there is no closed tag.

    The last one wins because models often restate the requested format before answering.
    """
    name = re.escape(tag)
    found = re.findall(rf"<{name}\s*>(.*?)</{name}\s*>", reply, re.IGNORECASE | re.DOTALL)
    return found[-1].strip() if found else None


def parse_score(reply: str, low: float, high: float) -> float | None:
    """The judge's score in [low, high], or None when the reply does not state one clearly.

    Tried in order; the first rule that finds a score decides, even if that score is out of range (then None:
    a verdict outside the scale is a broken verdict, and some other number in the text is not a substitute):
    1. `<score>N</score>` (the last one);
    2. a labelled score: `Score: N`, `score = N`, `**Score:** N`, `Final score: N/5`, `rating is 4 out of 5`
       (a final/overall/total label beats a plain one; otherwise the last label wins);
    3. a reply that starts with the number (`" 4\\n..."`), but not a numbered list item (`"1. Clarity: ..."`);
    4. a single `N/high` (or `N out of high`) fraction anywhere in the text.
    A stated scale (`N/M`) must equal `high`. Never clips, never defaults.
    """
    tagged = extract_tag(reply, "score")
    if tagged is not None:
        match = _LEADING.match(tagged)
        return _in_range(match, low, high) if match else None

    labelled = list(_LABEL.finditer(reply))
    if labelled:
        finals = [m for m in labelled if m.group("final")]
        return _in_range((finals or labelled)[-1], low, high)

    leading = _LEADING.match(reply)
    if leading:
        return _in_range(leading, low, high)

    values = {
        float(m.group("num")) for m in _FRACTION.finditer(reply) if float(m.group("den")) == float(high)
    }
    if len(values) == 1:
        value = values.pop()
        return value if low <= value <= high else None
    return None


def _in_range(match: re.Match[str], low: float, high: float) -> float | None:
    value = float(match.group("num"))
    denominator = match.group("den")
    if denominator is not None and float(denominator) != float(high):
        return None  # scored on another scale; rescaling would invent precision the judge did not give
    return value if low <= value <= high else None


def rationale_of(reply: str) -> str:
    """The judge's reasoning: its reply up to the score line, without the 'Reason:' label."""
    text = _SCORE_LINE.split(reply, maxsplit=1)[0].strip()
    return re.sub(r"^\W*reason\W*", "", text, flags=re.IGNORECASE).strip()


def _json_value(reply: str) -> Any:
    """The first JSON object or list in `reply` (inside a code fence or surrounded by prose), or None."""
    fenced = _JSON_FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    return data


def parse_listwise(reply: str, ids: list[str], low: float, high: float) -> dict[str, dict[str, Any]] | None:
    """Every listed completion's score and explanation from a listwise reply, keyed by its id; None (so the
    call is retried, then the group fails whole) unless every id in `ids` appears exactly once, no other id
    appears, and every score is a number in [low, high].

    Accepts `{"scores": [...]}` or a bare list of `{"id": "c3", "explanation": "...", "score": 7}`, or (what
    small models served for completion write) one `c3: 7` line per completion.
    """
    data = _json_value(reply)
    entries = data.get("scores") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        entries = [{"id": key, "score": float(score)} for key, score in _ID_LINE.findall(reply)]
    if not entries:
        return None
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        key, score = str(entry.get("id", "")).strip(), entry.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not low <= score <= high:
            return None
        if key not in ids or key in found:
            return None
        found[key] = {"score": float(score), "explanation": str(entry.get("explanation", ""))}
    return found if len(found) == len(ids) else None


def parse_item_scores(reply: str, criteria: tuple[Criterion, ...]) -> list[dict[str, Any]] | None:
    """Every criterion's rationale and score from a JSON reply, or None if any is missing or out of range.

    Accepts `{"items": [...]}` or a bare list, each entry `{"criterion": N, "rationale": "...", "score": S}`,
    inside a code fence or surrounded by prose.
    """
    data = _json_value(reply)
    entries = data.get("items") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        return None
    found: dict[int, dict[str, Any]] = {}
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            return None
        number = entry.get("criterion", position)
        score = entry.get("score")
        if not isinstance(number, int) or isinstance(score, bool) or not isinstance(score, int | float):
            return None
        if not 1 <= number <= len(criteria) or number in found:
            return None
        criterion = criteria[number - 1]
        if not criterion.low <= score <= criterion.high:
            return None
        found[number] = {
            "criterion": number,
            "score": float(score),
            "rationale": str(entry.get("rationale", "")),
        }
    if len(found) != len(criteria):
        return None
    return [found[n] for n in sorted(found)]
