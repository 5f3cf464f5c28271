"""parse_score and extract_tag on replies shaped like what real judges write."""

from __future__ import annotations

import pytest

from mpo_agents.judges import extract_tag, parse_score


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # 1. the tag we ask for
        ("<score>4</score>", 4.0),
        ("The essay is clear but thin on evidence.\n<score> 3.5 </score>", 3.5),
        ("Format: <score>N</score>. My answer: <score>2</score>", 2.0),
        ("<score>4/5</score>", 4.0),
        ("Paragraph 2 has 3 errors and 1 typo. <score>5</score>", 5.0),
        ("<SCORE>1</SCORE>", 1.0),
        # 2. a labelled score, even among unrelated numbers
        ("The essay has 3 paragraphs and 2 errors.\nScore: 4", 4.0),
        ("Score: 4/5", 4.0),
        ("score = 2", 2.0),
        ("**Score:** 5", 5.0),
        ("**Score**: 5\n\nThe writer cites 12 sources.", 5.0),
        ("Final score: 3 out of 5", 3.0),
        ("Criterion 1 score: 2\nCriterion 2 score: 1\nFinal score: 3", 3.0),
        ("Final Score: 4\n\n(Criterion 1 score: 2)", 4.0),
        ("Score (0-5): 4", 4.0),
        ("Score out of 5: 2", 2.0),
        ("My rating is 4 out of 5.", 4.0),
        ("Overall score: **4**", 4.0),
        ("Grade: 5 — excellent use of 3 examples", 5.0),
        ("Score:\n4", 4.0),
        ("Score: 5\n\nOn reflection, the ending is weak.\nScore: 2", 2.0),
        # 3. a completion-mode continuation after "Score (0-5):"
        (" 4\nThe essay is clear.", 4.0),
        ("4", 4.0),
        ("3.\n", 3.0),
        ("**4**", 4.0),
        ("4 points: solid structure", 4.0),
        ("2 - the argument has 5 gaps", 2.0),
        # 4. a single fraction on the judge's scale
        ("I give it 4/5 overall.", 4.0),
        ("A solid 3 out of 5 for this one.", 3.0),
        ("Clarity 3/5, and overall 3/5.", 3.0),
    ],
)
def test_reads_the_stated_score(reply, expected):
    assert parse_score(reply, 0, 5) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   \n",
        "The essay has 3 paragraphs and is good.",
        "No verdict: the response is empty.",
        "1. Clarity: good\n2. Structure: weak\n3. Evidence: none",  # a numbered list is not a score
        "3/5 for clarity, 4/5 for style",  # two different fractions: ambiguous
        "The response scored well. It was written on 12/05/2024.",
        "The rubric scores 0-5. I count 3 paragraphs.",
        "I think the essay deserves about four.",
        "2023 was a year of change, the essay says.",
        "<score></score>",
        "<score>N</score>",
        "<score>four</score>",
    ],
)
def test_no_clear_score_is_none(reply):
    assert parse_score(reply, 0, 5) is None


@pytest.mark.parametrize(
    "reply",
    [
        "<score>7</score>",
        "Score: 6",
        "Score: -1",
        "Score: 8/10",  # another scale: not rescaled
        "<score>4/10</score>",
        " 9\n",
        "I give it 6/5!",
    ],
)
def test_out_of_range_or_other_scale_is_none_not_clipped(reply):
    assert parse_score(reply, 0, 5) is None


def test_an_out_of_range_tag_is_not_replaced_by_another_number():
    assert parse_score("Score: 4\n<score>9</score>", 0, 5) is None


def test_negative_scores_need_a_negative_scale():
    assert parse_score("Score: -1", -2, 2) == -1.0
    assert parse_score("<score>-0.5</score>", -1, 1) == -0.5
    assert parse_score("Score: -1", 0, 5) is None


def test_scale_follows_high():
    assert parse_score("Score: 8/10", 0, 10) == 8.0
    assert parse_score("I give it 7/10.", 0, 10) == 7.0
    assert parse_score("I give it 4/5.", 0, 10) is None


def test_extract_tag_takes_the_last_closed_tag():
    reply = (
        "I will answer inside <rubric>...</rubric>.\n<rubric>\nCriterion 1: clarity (0-5 points)\n</rubric>"
    )
    assert extract_tag(reply, "rubric") == "Criterion 1: clarity (0-5 points)"
    assert extract_tag("<Analysis> short </Analysis>", "analysis") == "short"
    assert extract_tag("<rubric>cut off by max_tokens", "rubric") is None
    assert extract_tag("no tags here", "rubric") is None
