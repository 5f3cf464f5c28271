"""`mpo score` (completions under a rubric, as training would score them) and `mpo rejudge` (a run's failed
judgments, again, without the policy), through the CLI against a real HTTP judge."""

from __future__ import annotations

import json
import subprocess

import pytest

from mpo_agents.rundir import read_jsonl, write_jsonl
from tests.support import TEST_ENV, TWO_CRITERIA, run_overrides
from tests.support.cli import as_options, mpo
from tests.support.runs import run_in_process


def score_lines(
    tmp_path, server, lines: list[dict], **settings
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`mpo score` of `lines` under TWO_CRITERIA by the judge at `server`: the command's result and the scored
    lines."""
    (tmp_path / "rubric.md").write_text(TWO_CRITERIA)
    write_jsonl(tmp_path / "in.jsonl", lines)
    result = mpo(
        "score",
        *as_options(run_overrides("unused", server.url, **settings)),
        "--input",
        str(tmp_path / "in.jsonl"),
        "--rubric",
        str(tmp_path / "rubric.md"),
        "--output",
        str(tmp_path / "out.jsonl"),
        env=TEST_ENV,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, read_jsonl(tmp_path / "out.jsonl")


def test_score_writes_scores_and_rationales_per_line(tmp_path, judge_server):
    server = judge_server()  # per criterion: occurrences of "good", clipped to the criterion's range
    lines = [
        {"prompt": "Write about parks.", "completion": "good good good good parks"},
        {"prompt": "Write about rain.", "completion": "rain falls", "truncated": True},
        {"prompt": "Write about cities.", "completion": "good city"},
    ]
    result, scored = score_lines(tmp_path, server, lines)
    assert [s["score"] for s in scored] == [4 + 3, 0, 1 + 1]
    assert [s["reward"] for s in scored] == [7, -1, 2]  # the truncated line pays task.truncation_penalty
    assert all(len(s["items"]) == 2 and s["rationale"] for s in scored)
    assert "3 scored" in result.stdout and (tmp_path / "out.calls" / "calls" / "judge.jsonl").exists()


def test_score_judges_the_lines_of_one_prompt_as_one_listwise_group(tmp_path, judge_server):
    server = judge_server()  # listwise: each completion's "good" count of 10, mapped onto TWO_CRITERIA's 0-8
    group = ["no keyword here", "good", "good and good", "good, good and good"]
    lines = [{"prompt": "Write about parks.", "completion": text} for text in group]
    lines.append({"prompt": "Write about rain.", "completion": "good rain"})
    _, scored = score_lines(tmp_path, server, lines, **{"scoring.mode": "listwise"})
    assert [s["score"] for s in scored] == pytest.approx([0.0, 0.8, 1.6, 2.4, 0.8])
    assert len(server.requests) == 2  # two prompts, two groups, two calls
    assert [len(s["listwise"]["orders"][0]) for s in scored] == [4, 4, 4, 4, 1]


def test_score_names_a_bad_input_line(tmp_path, judge_server):
    server = judge_server()
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "P", "completion": "x"}, {"prompt": "Q"}])
    result = mpo(
        "score",
        *as_options(run_overrides("unused", server.url)),
        "--input",
        str(tmp_path / "in.jsonl"),
        env=TEST_ENV,
    )
    assert result.returncode == 2 and "line 2 has no 'completion' field" in " ".join(result.stderr.split())


def test_rejudge_recovers_failed_judgments_without_the_policy(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    server.inject("garbage", "500", "garbage")
    _, run_dir = run_in_process(
        run_overrides(
            tiny_model_dir,
            server.url,
            **{"schedule.iterations": 1, "schedule.meta_every": 0, "judge.retries": 0},
        ),
        tmp_path / "run",
    )
    before = read_jsonl(run_dir.samples_path(1))
    assert sum(s["status"] in ("judge_failed", "unparseable") for s in before) == 3

    result = mpo("rejudge", str(run_dir.root), env=TEST_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "iteration 1: 3 of 3 failed judgments recovered" in result.stdout
    after = read_jsonl(run_dir.samples_path(1))
    assert all(s["status"] == "scored" and s["score"] is not None for s in after)
    unchanged = [a for a, b in zip(after, before, strict=True) if b["status"] == "scored"]
    assert unchanged == [b for b in before if b["status"] == "scored"]  # good judgments are not redone
    calls = [json.loads(line) for line in (run_dir.root / "rejudge" / "calls" / "judge.jsonl").open()]
    assert len(calls) == 3
