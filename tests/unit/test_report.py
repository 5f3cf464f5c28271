"""`render_report`: a run directory written by the real writers, and evaluation summaries, into one
self-contained HTML page; a headless Chromium screenshot shows it renders."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mpo_agents.config import MPOConfig
from mpo_agents.errors import ConfigError
from mpo_agents.plugins.api import Decision
from mpo_agents.report import render_report
from mpo_agents.rubrics import RubricStore, RubricVersion, parse_rubric
from mpo_agents.rundir import RunDirectory, atomic_write_text, write_jsonl
from mpo_agents.runner import new_run_dir

V0 = "Criterion 1: The essay states a clear thesis and keeps to it. (0-5 points)"
V1 = V0 + "\nCriterion 2: Every claim is backed by a concrete example or source. (0-5 points)"
REJECTED = V1 + "\nCriterion 3: The essay mentions the word excellence often. (0-5 points)"
REWARDS = {1: [1.0, 2.0, 2.0, 3.0], 2: [2.0, 3.0, 3.0, 3.0], 3: [5.0, 6.0, 6.5, 7.0], 4: [7.0, 7.0, 8.0, 8.5]}


def _metrics(iteration: int, version: int) -> dict[str, Any]:
    rewards = REWARDS[iteration]
    high = 5.0 if version == 0 else 10.0
    return {
        "iteration": iteration,
        "rubric_version": version,
        "reward_mean": sum(rewards) / len(rewards),
        "normalized_reward_mean": sum(rewards) / len(rewards) / high,
        "judged": len(rewards),
        "judge_failures": 1 if iteration == 3 else 0,
        "judge_tokens": 1000 * iteration,
        "judge_cost_usd": 0.0125,
        "meta_judge_tokens": 800 if iteration in (2, 4) else 0,
        "meta_judge_cost_usd": 0.02 if iteration in (2, 4) else 0.0,
        # A pipelined run: 4 s of judging per batch, of which the loop waited 0.5 s from the second on
        "rollout_seconds": 5.0,
        "judge_seconds": 4.0,
        "judge_wait_seconds": 4.0 if iteration == 1 else 0.5,
        "update_seconds": 10.0,
        "update_staleness": 0 if iteration == 1 else 1,
    }


def _entry(iteration: int, node: str, stage: str, decision: Decision) -> dict[str, Any]:
    """A meta_levels.jsonl line as nodes/plugin.py writes it."""
    return {"iteration": iteration, "node": node, "stage": stage, **dataclasses.asdict(decision)}


def make_run(root: Path) -> Path:
    """A four-iteration run: v0 scored 1-2, a meta step at 2 accepted as v1, one at 4 rejected by the gate."""
    config = MPOConfig(
        task={"name": "essay_writing"},
        policy={"model": "tiny-policy-7m"},
        judge={"model": "openai/judge-model-x"},
        meta_judge={"model": "openai/meta-model-y"},
    )
    run = new_run_dir(config, root)
    store = RubricStore(run.rubrics_dir)
    store.save(RubricVersion.of(parse_rubric(V0)[0], version=0, parent=None, iteration=0))
    store.save(
        RubricVersion.of(
            parse_rubric(V1)[0], version=1, parent=0, iteration=2, origin="merge", evidence="meta/iter-0002"
        )
    )
    store.log_rejection(4, "rejected by rubric_gate: hacks now score at least their reference", REJECTED)
    for iteration in range(1, 5):
        version = 0 if iteration <= 2 else 1
        run.record_metrics(_metrics(iteration, version))
        write_jsonl(
            run.samples_path(iteration),
            [
                {"key": f"it{iteration:04d}-p0-g{g}", "reward": r, "score": r, "status": "scored"}
                for g, r in enumerate(REWARDS[iteration])
            ]
            + [{"key": f"it{iteration:04d}-p1-g0", "reward": None, "score": None, "status": "judge_failed"}],
        )
    for iteration, analysis in ((2, "The judge pays for length; <script>alert(1)</script>"), (4, "Fine.")):
        meta = run.meta_dir(iteration)
        case = {"id": f"it{iteration:04d}-p0-g1", "cluster": None, "samples": [{"score": 3.0}]}
        atomic_write_text(meta / "cases.json", json.dumps([case]))
        atomic_write_text(
            meta / "analyze" / f"{case['id']}.json", json.dumps({"id": case["id"], "value": analysis})
        )
        atomic_write_text(meta / "refine" / f"{case['id']}.json", json.dumps({"id": case["id"], "value": V1}))
        atomic_write_text(meta / "merge.json", json.dumps({"method": "merge", "version": 1, "text": V1}))
    write_jsonl(
        run.root / "meta_levels.jsonl",
        [
            _entry(1, "hacking_alarm", "after_score", Decision()),
            _entry(
                3,
                "hacking_alarm",
                "after_score",
                Decision(alarm="length collapse: 3.0 words", trigger_meta=True),
            ),
            _entry(
                4,
                "rubric_gate",
                "after_rewrite",
                Decision("reject", reason="hacks now score at least their reference: essay/keyword_stuffing"),
            ),
        ],
    )
    return run.root


def elo_summary() -> dict[str, Any]:
    return {
        "kind": "elo",
        "systems": ["mpo", "fixed"],
        "judge": {
            "model": "openai/arena-judge",
            "calls": 40,
            "failed": 2,
            "cached": 0,
            "attempts_total": 42,
            "tokens_total": 12345,
            "cost_usd_total": 0.031,
        },
        "prompts": 10,
        "judgments": 38,
        "matches": 19,
        "k": 4.0,
        "runs": 5,
        "elo": {
            "mpo": {"mean": 1012.4, "std": 3.1, "finals": [1010.0, 1015.0]},
            "fixed": {"mean": 987.6, "std": 3.1, "finals": [990.0, 985.0]},
        },
        "bradley_terry": {
            "mpo": {"rating": 1033.3, "low": 990.5, "high": 1080.2},
            "fixed": {"rating": 966.7, "low": 919.8, "high": 1009.5},
        },
        "position_bias": {
            "first_wins": 12,
            "second_wins": 6,
            "ties": 1,
            "first_win_rate": 0.6316,
            "consistent_pairs": 7,
            "pairs_both_orders": 9,
            "consistency": 0.7778,
        },
        "win_matrix": {
            "mpo": {"fixed": {"wins": 11, "losses": 6, "ties": 2}},
            "fixed": {"mpo": {"wins": 6, "losses": 11, "ties": 2}},
        },
        "verdicts": "eval/verdicts.jsonl",
    }


def rouge_summary(system: str, rouge1: float) -> dict[str, Any]:
    return {
        "kind": "rouge",
        "system": system,
        "task": "summarization",
        "items": 8,
        "rouge1": rouge1,
        "rouge2": 18.04,
        "rougeL": 30.1,
        "rougeLsum": 35.5,
        "generations": f"eval/{system}.jsonl",
    }


def accuracy_summary(system: str, correct: int) -> dict[str, Any]:
    return {
        "kind": "accuracy",
        "system": system,
        "task": "math_reasoning",
        "items": 10,
        "correct": correct,
        "accuracy": correct / 10,
        "no_answer": 2,
        "generations": f"eval/{system}.jsonl",
    }


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def report_inputs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Two runs (one found eval summary in the first, one run with no iterations) and explicit summaries."""
    run = make_run(tmp_path / "mpo-run")
    write_json(run / "eval" / "elo.json", elo_summary())  # found by the report itself
    write_json(run / "eval" / "verdicts.json", [{"winner": "mpo"}])  # not a summary: ignored
    write_json(
        run / "eval" / "bleu.json", {"kind": "bleu", "system": "mpo"}
    )  # a kind it does not know: noted
    empty = new_run_dir(MPOConfig(task={"name": "essay_writing"}), tmp_path / "just-started").root
    files = [
        write_json(tmp_path / "rouge-mpo.json", rouge_summary("mpo", 41.23)),
        write_json(tmp_path / "rouge-fixed.json", rouge_summary("fixed", 38.66)),
        write_json(tmp_path / "acc-mpo.json", accuracy_summary("mpo", 6)),
        write_json(tmp_path / "acc-base.json", accuracy_summary("base", 4)),
    ]
    return [run, empty], files


def test_report_shows_the_runs_numbers_rubric_diff_decisions_and_evaluations(report_inputs, tmp_path):
    runs, files = report_inputs
    html = render_report(runs, files, tmp_path / "out" / "report.html", title="Essay study").read_text()

    assert "<title>Essay study</title>" in html
    assert 'id="overview"' in html  # several runs: the comparison comes first
    for text in ("tiny-policy-7m", "openai/judge-model-x", "openai/meta-model-y", "4 of 4 planned"):
        assert text in html
    assert "7.625" in html  # the last iteration's reward mean (7 + 7 + 8 + 8.5) / 4
    assert "Judge time waited for" in html and "34.4%" in html  # (4 + 3 x 0.5) / (4 x 4)
    assert "$0.0900" in html  # 4 x 0.0125 judge + 2 x 0.02 meta-judge
    # v1's diff against v0: its new criterion as an added line, the kept one as context
    assert re.search(r'<span class="add">\+Criterion 2: Every claim is backed', html)
    assert re.search(r'<span class="ctx"> Criterion 1: The essay states', html)
    assert "accepted: v1" in html and "hacks now score at least their reference" in html
    assert "length collapse: 3.0 words" in html and "essay/keyword_stuffing" in html
    # LLM text is escaped, never markup
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "No iterations finished yet" in html  # the run that has only just started
    # evaluations: Elo (found in the run's eval/), ROUGE and accuracy side by side
    assert "1012.4 ± 3.1" in html and "987.6 ± 3.1" in html and "990.5 – 1080.2" in html
    assert "each pair judged in both orders" in html
    assert "judge openai/arena-judge" in html and "42 judge calls, 12,345 tokens" in html
    assert "11–6–2" in html and "63.2%" in html  # win matrix cell, first-position win rate
    assert "Skipped:" in html and "kind &#39;bleu&#39;" in html
    assert "41.2" in html and "38.7" in html and "18.0" in html
    assert "60.0%" in html and "40.0%" in html
    assert (
        html.count("<svg") == 6
    )  # overview rewards and calls; reward, judge, rubric of the run with iterations; Elo
    # every id once on the page (each figure has its own), and every in-page reference finds its target
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert set(re.findall(r'(?:url\(|href=")#([^)"]+)', html)) <= set(ids)
    # self-contained: no resource fetched from the network when the page is opened
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html.replace("&lt;script", "")


def test_figures_are_reproducible(report_inputs, tmp_path):
    runs, files = report_inputs
    first = render_report(runs, files, tmp_path / "a.html").read_text()
    second = render_report(runs, files, tmp_path / "b.html").read_text()
    assert first == second


def test_report_renders_in_headless_chromium(report_inputs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed; .ci/run installs it")
    from PIL import Image

    runs, files = report_inputs
    page = render_report(runs, files, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=False,  # its exit status is not reliable headless; the screenshot is the evidence
    )
    assert shot.exists(), "chromium wrote no screenshot"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2400)
    pixels = list(image.resize((300, 600)).getdata())
    not_white = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    assert not_white > 0.05, f"only {not_white:.1%} of the page is not white"
    assert len(set(pixels)) > 200  # text, plot colours, table shading: not a blank or one-colour page


def test_a_folder_that_is_not_a_run_is_refused_by_name(tmp_path):
    stray = tmp_path / "holiday-photos"
    stray.mkdir()
    with pytest.raises(ConfigError, match=re.escape(str(stray))):
        render_report([stray], [], tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (json.dumps({"system": "mpo", "rouge1": 40.0}), "no 'kind' key"),
        (json.dumps({"kind": "bleu", "system": "mpo"}), "kind 'bleu'"),
        ('{"kind": "rouge", "system": ', "cannot read"),
        (
            json.dumps({"kind": "accuracy", "system": "mpo", "task": "t", "items": 3}),
            "lacks correct, accuracy",
        ),
    ],
)
def test_an_evaluation_file_the_report_cannot_use_is_refused_by_name(tmp_path, content, problem):
    run = RunDirectory(tmp_path / "run")
    run.record_metrics({"iteration": 1, "reward_mean": 1.0, "rubric_version": 0})
    summary = tmp_path / "summary.json"
    summary.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(str(summary))) as caught:
        render_report([run.root], [summary], tmp_path / "report.html")
    assert problem in str(caught.value)
