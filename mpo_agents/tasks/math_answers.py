"""Grading of MATH-dataset answers (Hendrycks et al., 2021): boxed-answer extraction and equivalence.

A MATH gold answer is the first ``\\boxed{...}`` of the reference solution, and a policy's answer is the last
``\\boxed{...}`` of its response. The two are LaTeX strings written by different hands, so an exact string
comparison would mark ``\\frac12`` wrong against ``\\frac{1}{2}`` or ``10\\text{ cm}`` wrong against ``10``.
This module maps both sides to one canonical string (the same idea as the string normaliser that ships with
the MATH benchmark, re-implemented here) and, for plain numbers, compares values instead of spellings.

Deliberate choices, all of which are exercised by ``tests/unit/test_math_answers.py``:

* ``1,000`` is a thousands separator only when the *whole* answer looks like a grouped number
  (``-?d{1,3}(,ddd)+``); ``1,2`` or ``(1,000)`` keep their commas and are lists/tuples, so ``1,2`` is not ``12``.
* A bare comma list (``1, -2``: "list all solutions") is compared as a multiset, order-insensitively; a
  bracketed one (``(1,2)``, ``[1,4)``) is a tuple or interval, compared element by element in order, with the
  same bracket types required.
* Plain numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``, a mixed number such as ``1\\frac{1}{10}``, with
  an optional sign) are equal when their exact values differ by at most ``1e-9``; so ``0.75`` equals
  ``\\dfrac{3}{4}``. Symbolic answers (``\\sqrt{2}``, ``\\pi``, polynomials) are compared as strings only.
* Units and words written with ``\\text``/``\\mbox``/``\\textrm`` after a number are dropped (``10\\text{ cm}``
  is ``10``); elsewhere such wrappers are unwrapped (``\\text{(A)}`` is ``(A)``, then ``A``).
* A single short variable on the left (``x = 5``, ``k=5``, ``\\theta = 3``) is dropped; letter case is kept.
* An empty or missing prediction is never correct, and grading never raises: on an unexpected error it falls
  back to comparing the stripped raw strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

__all__ = [
    "answers_equivalent",
    "boxed_answers",
    "final_boxed_answer",
    "first_boxed_answer",
    "normalize_answer",
    "reasoning_without_answer",
]

# -- boxed extraction -----------------------------------------------------------------------------------------

# `\boxed` and `\fbox`, but not a longer command that merely starts with those letters (`\boxedx`).
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the `}` closing the `{` at `open_index`, or None when it is never closed.

    Escaped braces (`\\{`, `\\}`) are literal set braces, not grouping, so a backslash skips the next character.
    """
    depth = 0
    i = open_index
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """Every boxed answer as (start, end, content): the span covers the whole command, so it can be cut out."""
    spans: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        match = _BOX_COMMAND.search(text, pos)
        if match is None:
            return spans
        start, i = match.start(), match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            close = _matching_brace(text, i)
            if close is None:
                # Unclosed: not an answer. Keep scanning right after the command so a well-formed box nested
                # inside the broken one is still found.
                pos = match.end()
                continue
            spans.append((start, close + 1, text[i + 1 : close]))
            pos = close + 1
            continue
        # Brace-less form, `\boxed 5`: the answer runs to the next whitespace or `$`.
        end = i
        while end < len(text) and not text[end].isspace() and text[end] != "$":
            end += 1
        content = text[i:end].rstrip(".,;:")
        if content:
            spans.append((start, i + len(content), content))
        pos = max(end, match.end())


def boxed_answers(text: str) -> list[str]:
    """Contents of every `\\boxed{...}`, `\\fbox{...}` and brace-less `\\boxed 5`, in order of appearance.

    Braces are balanced (so `\\boxed{\\frac{1}{2}}` yields `\\frac{1}{2}`, not `\\frac{1`), and an unclosed
    `\\boxed{` yields nothing: a truncated response has not committed to an answer.
    """
    return [content for _, _, content in _boxed_spans(text)]


def final_boxed_answer(text: str) -> str | None:
    """The last boxed answer of a response: a policy that boxes intermediate results means its final one."""
    answers = boxed_answers(text)
    return answers[-1] if answers else None


def first_boxed_answer(text: str) -> str | None:
    """The first boxed answer: how the gold answer is read from a MATH `solution` (some box it twice)."""
    answers = boxed_answers(text)
    return answers[0] if answers else None


def reasoning_without_answer(response: str) -> str:
    """The response with every boxed expression cut out, for counting the words of the reasoning alone.

    Spans are removed by position: replacing the answer text globally would also delete the same digits
    wherever they occur in the reasoning (an answer `2` would eat every `2` in the working).
    """
    pieces: list[str] = []
    last = 0
    for start, end, _ in _boxed_spans(response):
        pieces.append(response[last:start])
        last = end
    pieces.append(response[last:])
    return "".join(pieces)


# -- normalisation --------------------------------------------------------------------------------------------

# `\\` (a matrix row break) must survive, so it is matched first and kept. `\!` and `\,` vanish outright
# because MATH writes digit groups with them (`371,\!043`, `1\,000`); `\ `, `\;`, `\:`, `\quad` are spaces.
_SPACING = re.compile(r"\\\\|\\[ ,;:!]|\\q?quad(?![A-Za-z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])")
_DEGREES = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])|°"
)
_PRIME = re.compile(r"\^\s*\{\s*\\prime\s*\}|\^\s*\\prime(?![A-Za-z])|\\prime(?![A-Za-z])")
_TEXT_WRAPPERS = ("text", "textrm", "textbf", "textit", "textnormal", "textsf", "mbox", "mathrm", "mathbf")
_UNIT_WRAPPERS = frozenset({"text", "textrm", "mbox"})
_TEXT_COMMAND = re.compile(r"\\(" + "|".join(_TEXT_WRAPPERS) + r")(?![A-Za-z])\s*\{")
_UNIT_WORDS = re.compile(r"[A-Za-z][A-Za-z.\s]*")
_UNIT_POWER = re.compile(r"\s*\^\s*(?:\{\s*[23]\s*\}|[23])")
_GREEK = (
    "alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|xi|pi|rho"
    "|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Pi|Sigma|Phi|Psi|Omega"
)
# One short variable on the left of `=` (`x`, `k_1`, `a'`, `\theta`), which the gold answer usually omits.
_VARIABLE_ASSIGNMENT = re.compile(
    r"^(?:[A-Za-z]|\\(?:" + _GREEK + r"))(?:_\{?[A-Za-z0-9]+\}?)?'*\s*=(.*)$", re.DOTALL
)
_VARIABLE_MEMBERSHIP = re.compile(r"^(?:[A-Za-z]|\\(?:" + _GREEK + r"))\s*\\in(?![A-Za-z])(.*)$", re.DOTALL)
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_CHOICE_LETTER = re.compile(r"^\(([A-Za-z])\)$")
_INTEGER_RATIO = re.compile(r"^([+-]?)(\d+)/(\d+)$")
_LEADING_POINT = re.compile(r"(?<![\d.])\.(\d)")
_ZERO_DECIMALS = re.compile(r"(?<![\d.])(\d+)\.0*(?![\d.])")
_TRAILING_ZEROS = re.compile(r"(?<![\d.])(\d+\.\d*?[1-9])0+(?![\d.])")


def _latex_argument(s: str, i: int) -> tuple[str, int] | None:
    """One macro argument starting at `s[i]`: a `{...}` group (returned without braces), a `\\command`, or a
    single character. Returns (argument, index after it), or None when there is none or the group is unclosed.
    """
    if i >= len(s):
        return None
    if s[i] == "{":
        close = _matching_brace(s, i)
        if close is None:
            return None
        return s[i + 1 : close], close + 1
    if s[i] == "\\":
        match = re.match(r"\\(?:[A-Za-z]+|.)", s[i:], re.DOTALL)
        return None if match is None else (match.group(), i + match.end())
    if s[i] in "}^_":
        return None
    return s[i], i + 1


def _fix_macro_arguments(s: str, macro: str, count: int) -> str:
    """Brace every argument of `\\macro`, so `\\frac12` and `\\frac1{2}` both read `\\frac{1}{2}`."""
    pattern = re.compile(re.escape("\\" + macro) + r"(?![A-Za-z])")
    out: list[str] = []
    pos = 0
    while True:
        match = pattern.search(s, pos)
        if match is None:
            out.append(s[pos:])
            return "".join(out)
        out.append(s[pos : match.end()])
        i = match.end()
        if macro == "sqrt" and i < len(s) and s[i] == "[":  # \sqrt[3]{x}: leave the index alone
            pos = i
            continue
        arguments: list[str] = []
        for _ in range(count):
            parsed = _latex_argument(s, i)
            if parsed is None:
                break
            argument, i = parsed
            arguments.append(argument)
        if len(arguments) < count:
            pos = match.end()  # malformed: leave it as written
            continue
        out.append("".join("{" + argument + "}" for argument in arguments))
        pos = i


def _is_number_end(before: str) -> bool:
    """Whether text so far ends like a quantity, so a following `\\text{...}` word is a unit."""
    stripped = before.rstrip()
    return bool(stripped) and (stripped[-1] in "0123456789})" or stripped.endswith("\\pi"))


def _rewrite_text_commands(s: str) -> str:
    """Drop unit words after a number (`10\\text{ cm}^2` -> `10`) and unwrap every other text wrapper."""
    out: list[str] = []
    pos = 0
    while True:
        match = _TEXT_COMMAND.search(s, pos)
        if match is None:
            out.append(s[pos:])
            return "".join(out)
        open_index = match.end() - 1
        close = _matching_brace(s, open_index)
        if close is None:
            out.append(s[pos:])
            return "".join(out)
        out.append(s[pos : match.start()])
        content = s[open_index + 1 : close]
        after = close + 1
        power = _UNIT_POWER.match(s, after)
        after_unit = power.end() if power else after
        rest = s[after_unit:].lstrip()
        is_unit = (
            match.group(1) in _UNIT_WRAPPERS
            and _UNIT_WORDS.fullmatch(content.strip()) is not None
            and _is_number_end("".join(out))
            and (not rest or rest[0] in ",;)]")
        )
        if is_unit:
            pos = after_unit
        else:
            out.append(_rewrite_text_commands(content))
            pos = after


def _strip_outer_braces(s: str) -> str:
    """`{5}` -> `5`, only when the first brace closes at the very end (`{1}{2}` is left alone)."""
    while len(s) >= 2 and s[0] == "{" and _matching_brace(s, 0) == len(s) - 1:
        s = s[1:-1]
    return s


def _spacing_replacement(match: re.Match[str]) -> str:
    token = match.group()
    if token == "\\\\":
        return token
    return "" if token in ("\\!", "\\,") else " "


def normalize_answer(answer: str) -> str:
    """Canonical string form of a MATH answer, so that equal answers written differently compare equal.

    The steps only remove presentation (spacing, `$`, `\\left`, units, degree and percent signs, text
    wrappers, a `x =` prefix) or rewrite one spelling into another (`\\dfrac` -> `\\frac`, `\\frac12` ->
    `\\frac{1}{2}`, `1/2` -> `\\frac{1}{2}`, `.5` -> `0.5`, `5.0` -> `5`, `1,000` -> `1000`); they never
    evaluate anything, so two different answers cannot be made equal by arithmetic mistakes here.
    """
    s = str(answer).strip()
    s = s.replace("~", " ").replace("\n", " ")
    s = _SPACING.sub(_spacing_replacement, s)
    s = re.sub(r"\\displaystyle(?![A-Za-z])", "", s)
    s = s.replace("\\$", "").replace("$", "")
    s = _LEFT_RIGHT.sub("", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _DEGREES.sub("", s)
    s = _PRIME.sub("'", s)
    s = re.sub(r"\\le(?![A-Za-z])", r"\\leq", s)
    s = re.sub(r"\\ge(?![A-Za-z])", r"\\geq", s)
    s = s.replace("{,}", ",")
    s = _rewrite_text_commands(s)
    s = s.strip()
    if s.endswith(".") and not s.endswith("\\."):  # a sentence-ending period, or `5.`
        s = s[:-1].rstrip()
    if s.count("=") == 1:
        assignment = _VARIABLE_ASSIGNMENT.match(s)
        if assignment:
            s = assignment.group(1).strip()
    membership = _VARIABLE_MEMBERSHIP.match(s)
    if membership:
        s = membership.group(1).strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = re.sub(r"\s+", "", s)
    s = _strip_outer_braces(s)
    s = _fix_macro_arguments(s, "frac", 2)
    s = _fix_macro_arguments(s, "sqrt", 1)
    choice = _CHOICE_LETTER.match(s)
    if choice:
        s = choice.group(1)
    ratio = _INTEGER_RATIO.match(s)
    if ratio:
        sign, numerator, denominator = ratio.groups()
        s = f"{sign}\\frac{{{numerator}}}{{{denominator}}}"
    s = _LEADING_POINT.sub(r"0.\1", s)
    s = _TRAILING_ZEROS.sub(r"\1", s)
    s = _ZERO_DECIMALS.sub(r"\1", s)
    return s.removeprefix("+")


# -- comparison -----------------------------------------------------------------------------------------------

_TOLERANCE = Fraction(1, 10**9)
_MAX_NUMBER_LENGTH = 200  # longer "numbers" are not parsed (guards int() on pathological input)
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUMBER = re.compile(rf"^{_NUM}$")
_FRACTION = re.compile(rf"^([+-]?)\\frac\{{({_NUM})\}}\{{({_NUM})\}}$")
_SLASH_FRACTION = re.compile(rf"^({_NUM})/({_NUM})$")
_MIXED_NUMBER = re.compile(r"^([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")
_OPENERS = "([{"
_CLOSERS = ")]}"
_MAX_LIST_ITEMS = 64


def _as_number(s: str) -> Fraction | None:
    """The exact value of a normalised plain number, or None for anything symbolic or malformed."""
    if len(s) > _MAX_NUMBER_LENGTH:
        return None
    if _PLAIN_NUMBER.match(s):
        return Fraction(s)
    match = _FRACTION.match(s)
    if match:
        sign, numerator, denominator = match.groups()
        value = _ratio(numerator, denominator)
        return None if value is None else (-value if sign == "-" else value)
    match = _SLASH_FRACTION.match(s)
    if match:
        return _ratio(*match.groups())
    match = _MIXED_NUMBER.match(s)
    if match:
        sign, whole, numerator, denominator = match.groups()
        part = _ratio(numerator, denominator)
        if part is None:
            return None
        value = int(whole) + part
        return -value if sign == "-" else value
    return None


def _ratio(numerator: str, denominator: str) -> Fraction | None:
    bottom = Fraction(denominator)
    return None if bottom == 0 else Fraction(numerator) / bottom


def _top_level_split(s: str) -> list[str]:
    """Split on commas outside every bracket, so `(1,2),(3,4)` is two items and `\\frac{1}{2},3` two."""
    items: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(s):
        if ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(s[start:i])
            start = i + 1
    items.append(s[start:])
    return items


def _wrapped(s: str) -> bool:
    """Whether the first character's bracket closes only at the last one (`(1,2)` yes, `(1),(2)` no)."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return False
    depth = 0
    for i, ch in enumerate(s):
        if ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            depth -= 1
            if depth == 0 and i != len(s) - 1:
                return False
    return depth == 0


def _sequence(s: str) -> tuple[str, list[str]] | None:
    """(bracket pair, items) of a tuple/interval like `[1,4)`, or ("", items) for a bare list like `1,-2`."""
    if _wrapped(s):
        items = _top_level_split(s[1:-1])
        if len(items) >= 2:
            return s[0] + s[-1], items
        return None
    items = _top_level_split(s)
    return ("", items) if len(items) >= 2 else None


def _normalized_equal(a: str, b: str, depth: int = 0) -> bool:
    """Equality of two normalised answers: same string, same number, or same sequence of such items."""
    if a == b:
        return True
    if not a or not b:
        return False
    x, y = _as_number(a), _as_number(b)
    if x is not None and y is not None:
        return abs(x - y) <= _TOLERANCE
    if depth >= 2:
        return False
    seq_a, seq_b = _sequence(a), _sequence(b)
    if seq_a is None or seq_b is None:
        return False
    (brackets_a, items_a), (brackets_b, items_b) = seq_a, seq_b
    if brackets_a != brackets_b or len(items_a) != len(items_b) or len(items_a) > _MAX_LIST_ITEMS:
        return False
    if brackets_a:  # tuple, point or interval: order matters
        return all(_normalized_equal(p, q, depth + 1) for p, q in zip(items_a, items_b, strict=True))
    unmatched = list(items_b)  # bare "list all solutions" answer: order does not matter
    for item in items_a:
        for k, candidate in enumerate(unmatched):
            if _normalized_equal(item, candidate, depth + 1):
                del unmatched[k]
                break
        else:
            return False
    return True


def _safely(compare: Callable[[], bool], fallback: Callable[[], bool]) -> bool:
    try:
        return compare()
    except Exception:  # noqa: BLE001 - grading must never crash a training run over one odd answer
        try:
            return fallback()
        except Exception:  # noqa: BLE001 - not even when the fallback chokes (a hostile __str__)
            return False


def answers_equivalent(predicted: str | None, gold: str) -> bool:
    """Whether a predicted answer matches the gold one, after normalisation or as equal plain numbers.

    A missing or blank prediction is wrong (the policy gave no answer), as is a prediction that normalises to
    nothing (`$ $`). Never raises: on any unexpected error the stripped raw strings are compared instead, so
    a pathological response costs its own reward and nothing else.
    """
    if predicted is None:
        return False

    def compare() -> bool:
        if not str(predicted).strip():
            return False
        return _normalized_equal(normalize_answer(str(predicted)), normalize_answer(str(gold)))

    def fallback() -> bool:
        return bool(str(predicted).strip()) and str(predicted).strip() == str(gold).strip()

    return _safely(compare, fallback)
