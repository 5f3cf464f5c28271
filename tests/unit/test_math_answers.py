"""MATH answer grading: boxed extraction, normalisation and equivalence, checked on hard cases and real data."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mpo_agents.tasks.math_answers import (
    answers_equivalent,
    boxed_answers,
    final_boxed_answer,
    first_boxed_answer,
    normalize_answer,
    reasoning_without_answer,
)
from tests.support import REPO

MATH_DATA = REPO / "examples" / "data" / "math.jsonl"

# (predicted, gold, equivalent?)
EQUIVALENCE_CASES: list[tuple[str | None, str, bool]] = [
    # fractions written differently
    (r"\frac12", r"\frac{1}{2}", True),
    (r"\frac 9{20}", r"\frac{9}{20}", True),
    (r"\frac9{5}", r"\dfrac{9}{5}", True),
    (r"\tfrac{3}{4}", r"\frac34", True),
    (r"\dfrac{3}{4}", "0.75", True),
    ("1/2", r"\frac{1}{2}", True),
    ("0.5", r"\frac{1}{2}", True),
    (".5", "0.5", True),
    (r"-\frac{1}{3}", "-1/3", True),
    (r"\frac{-1}{3}", r"-\frac{1}{3}", True),
    (r"\frac{2}{4}", r"\frac{1}{2}", True),  # plain numbers compare by value
    ("1.1", r"1\frac{1}{10}", True),  # MATH writes mixed numbers
    (r"\frac{1}{2}", r"\frac{1}{3}", False),
    (r"\frac{1}{2}", r"\frac{2}{1}", False),
    ("0.333", r"\frac{1}{3}", False),
    # integers and decimals
    ("5.0", "5", True),
    ("5.", "5", True),
    ("3.210", "3.21", True),
    ("+7", "7", True),
    ("2", "3", False),
    ("0.15", "0.015", False),
    # thousands separators vs lists
    ("1,000", "1000", True),
    (r"371,\!043,\!400", "371043400", True),
    (r"40{,}000", "40000", True),
    ("1,2", "12", False),  # not a grouped number: a list of two answers
    ("(1,000)", "1000", False),  # inside brackets a comma separates elements
    # tuples, intervals, lists
    ("(1,2)", "(1, 2)", True),
    (r"\left( 1, 2 \right)", "(1,2)", True),
    (r"\left[ \frac{1}{2}, \frac{3}{2} \right]", "[0.5, 1.5]", True),
    ("(1,2)", "(2,1)", False),
    ("[1,4)", "[1,4]", False),
    ("(0.5, -2)", r"\left( \frac12, -2 \right)", True),
    ("1, -2", "-2,1", True),  # a bare "list all solutions" answer is order-insensitive
    ("1, -2", "-2, 1, 3", False),
    (r"45^\circ, 135^\circ", "135,45", True),
    # roots, pi, symbolic answers
    (r"\sqrt2", r"\sqrt{2}", True),
    (r"2 \sqrt{3}", r"2\sqrt3", True),
    (r"\sqrt[3]{2}", r"\sqrt{2}", False),
    (r"8\pi - 16", r"8 \pi-16", True),
    (r"\sqrt{2}", "1.41421356", False),  # symbolic answers are never evaluated
    ("-2n^2 - n", "-2n^2-n", True),
    # units, percent, degrees, money
    (r"10\%", "10", True),
    ("25%", r"25\%", True),
    (r"90^\circ", "90", True),
    (r"90^{\circ}", r"90^\circ", True),
    (r"10\text{ cm}", "10", True),
    (r"12\text{ cm}^2", "12", True),
    (r"3 \mbox{ inches}", "3", True),
    (r"\$ 139", "139", True),
    (r"\$139.00", "139", True),
    ("$x$", "x", True),
    # text answers and choices
    (r"\text{(C)}", "C", True),
    ("(C)", r"\text{(C)}", True),
    (r"\text{(C)}", "D", False),
    (r"\text{June 20}", "June 20", True),
    (r"\textbf{odd}", r"\text{odd}", True),
    (r"\text{B, E, G}", "B,E,G", True),
    # variable prefixes
    ("x=3", "3", True),
    ("x = -1", "-1", True),
    ("k=5", "5", True),
    (r"\theta = \frac{\pi}{2}", r"\frac{\pi}{2}", True),
    ("x=3", "4", False),
    (r"x \in [1, 4]", "[1,4]", True),
    # layout noise
    (r"\displaystyle \frac{1}{2}", r"\frac{1}{2}", True),
    (r"  \!1\,000 ", "1000", True),
    ("{5}", "5", True),
    ("The answer.", "The answer", True),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}2\\1\end{pmatrix}", False),
    # no answer
    (None, "5", False),
    ("", "5", False),
    ("   ", "5", False),
    ("$ $", "5", False),
]


@pytest.mark.parametrize(("predicted", "gold", "expected"), EQUIVALENCE_CASES)
def test_answers_equivalent(predicted: str | None, gold: str, expected: bool) -> None:
    assert answers_equivalent(predicted, gold) is expected
    if predicted is not None:
        # equivalence must not depend on which side is the prediction
        assert answers_equivalent(gold, predicted) is (expected and bool(predicted.strip("$ ")))


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        (r"\frac12", r"\frac{1}{2}"),
        (r"\dfrac{3}{7}", r"\frac{3}{7}"),
        ("3/5", r"\frac{3}{5}"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"\left[ \frac{1}{2}, \frac{3}{2} \right]", r"[\frac{1}{2},\frac{3}{2}]"),
        (r"371,\!043,\!400", "371043400"),
        ("1,3", "1,3"),
        ("b=0", "0"),
        (r"\text{(B)}", "B"),
        (r"18^\circ", "18"),
        ("5.0", "5"),
        (".25", "0.25"),
        (r"10\text{ cm}", "10"),
        (r"1\text{ and }2", "1and2"),  # a word between numbers is not a unit
        (r"f^{\prime}(x)", "f'(x)"),
        (r"\begin{pmatrix} 11 \\ -13 \end{pmatrix}", r"\begin{pmatrix}11\\-13\end{pmatrix}"),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize(
    "garbage",
    [
        "\\",
        "{",
        "}}}{{{",
        r"\boxed{",
        r"\frac",
        r"\frac{",
        r"\frac{1}",
        r"\sqrt",
        r"\text{",
        r"\text{ cm",
        "=",
        "x=",
        "==",
        "1/0",
        r"\frac{1}{0}",
        "9" * 10_000,
        "1," * 5_000,
        "(" * 500 + ")" * 499,
        "\x00\uffff",
        "$$$",
    ],
)
def test_garbage_never_raises(garbage: str) -> None:
    assert isinstance(normalize_answer(garbage), str)
    assert answers_equivalent(garbage, "5") in (True, False)
    assert answers_equivalent("5", garbage) in (True, False)
    assert answers_equivalent(garbage, garbage) in (True, False)
    boxed_answers(garbage)
    reasoning_without_answer(garbage)


def test_non_string_prediction_does_not_raise() -> None:
    bad: Any = 5
    assert answers_equivalent(bad, "5") is True
    assert answers_equivalent(object(), "5") is False

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no string for you")

    hostile: Any = Hostile()
    assert answers_equivalent(hostile, "5") is False
    assert answers_equivalent("5", hostile) is False


def test_division_by_zero_is_not_a_number() -> None:
    assert answers_equivalent(r"\frac{1}{0}", r"\frac{2}{0}") is False
    assert answers_equivalent(r"\frac{1}{0}", r"\frac{1}{0}") is True  # identical strings


# -- boxed extraction -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $x = \boxed{5}$.", ["5"]),
        (r"$\boxed{\frac{1}{2}}$", [r"\frac{1}{2}"]),
        (r"\boxed{\left\{ 1, 2 \right\}}", [r"\left\{ 1, 2 \right\}"]),
        (r"\boxed{\sqrt{\frac{a^{2}}{b}}} and then", [r"\sqrt{\frac{a^{2}}{b}}"]),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", ["1", "2", "3"]),
        (r"\fbox{7}", ["7"]),
        (r"\boxed{1} \fbox{2}", ["1", "2"]),
        (r"$\boxed 5$", ["5"]),
        (r"the answer is \boxed 42.", ["42"]),
        (r"\boxed {8}", ["8"]),
        (r"\boxed{5", []),
        (r"\boxed{\frac{1}{2}", []),
        (r"\boxed{ broken \boxed{4}", ["4"]),  # the unclosed outer box is skipped, the inner one is kept
        ("no box at all: 5", []),
        (r"\boxedx{5}", []),
        ("", []),
    ],
)
def test_boxed_answers(text: str, expected: list[str]) -> None:
    assert boxed_answers(text) == expected


def test_first_and_final_boxed_answer() -> None:
    text = r"Try $\boxed{3}$. No wait: $\boxed{\frac{7}{2}}$, so the answer is $\boxed{\frac{7}{2}}$. Or \boxed{4"
    assert first_boxed_answer(text) == "3"
    assert final_boxed_answer(text) == r"\frac{7}{2}"
    assert first_boxed_answer("no answer") is None
    assert final_boxed_answer("no answer") is None
    assert final_boxed_answer(r"\boxed{") is None


def test_reasoning_without_answer_cuts_by_position() -> None:
    response = r"We have 2 apples and 2 pears, 2+2=4 fruit. So the answer is $\boxed{4}$ and $\fbox{4}$."
    reasoning = reasoning_without_answer(response)
    assert reasoning == "We have 2 apples and 2 pears, 2+2=4 fruit. So the answer is $$ and $$."
    assert "boxed" not in reasoning and "fbox" not in reasoning
    assert reasoning.count("2") == 4 and reasoning.count("4") == 1


def test_reasoning_without_answer_nested_and_braceless() -> None:
    response = r"Half of 1 is $\boxed{\frac{1}{2}}$; or $\boxed 0.5$; unclosed \boxed{1 stays"
    assert reasoning_without_answer(response) == r"Half of 1 is $$; or $$; unclosed \boxed{1 stays"
    assert reasoning_without_answer("plain text 5") == "plain text 5"


# -- real MATH data -------------------------------------------------------------------------------------------


def _math_records() -> list[dict[str, Any]]:
    with MATH_DATA.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_math_data_gold_answers_are_read_and_self_equivalent() -> None:
    records = _math_records()
    assert len(records) == 300
    for record in records:
        answer = first_boxed_answer(record["solution"])
        assert answer == record["answer"], record["id"]
        assert answers_equivalent(record["answer"], record["answer"]), record["id"]
        assert answers_equivalent(final_boxed_answer(record["solution"]), record["answer"]), record["id"]
        assert normalize_answer(record["answer"]), record["id"]
