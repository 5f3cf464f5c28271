"""Evaluation: ratings against hand-computed numbers, a tournament judged by a real local HTTP judge (through
LiteLLM and our judge layer), ROUGE and accuracy on fixtures with known answers, and `mpo generate`."""

from __future__ import annotations

import json
import random
import re

import pytest

from mpo_agents.config import load_config
from mpo_agents.errors import ConfigError
from mpo_agents.evaluation import rerate, run_elo, score_generations
from mpo_agents.evaluation.metrics import accuracy, ethics_verdict, rouge
from mpo_agents.evaluation.ratings import (
    Match,
    bradley_terry_intervals,
    elo_ratings,
    elo_runs,
    matches_of,
    position_bias,
)
from mpo_agents.evaluation.tournament import parse_winner
from tests.support import TEST_ENV
from tests.support.cli import as_options, mpo

# -- ratings ----------------------------------------------------------------------------------------------------


def verdict(prompt_id, first, second, winner):
    return {"prompt_id": prompt_id, "first": first, "second": second, "winner": winner}


def test_elo_updates_match_a_hand_computation():
    matches = [Match("1", "x", "y", 1.0), Match("2", "x", "y", 0.0), Match("3", "x", "y", 0.5)]
    ratings = elo_ratings(matches, ["x", "y"], k=4)
    # By hand, E_a = 1 / (1 + 10^((R_b - R_a) / 400)), R_a += K (S_a - E_a):
    # match 1: E = 0.5, x = 1000 + 4 * 0.5 = 1002, y = 998
    # match 2: E_y = 1 / (1 + 10^(4/400)) = 0.4942438..., y = 998 + 4 * 0.5057562 = 1000.0230248, x = 999.9769752
    # match 3 (a tie): E_x = 1 / (1 + 10^(0.0460497/400)) = 0.4999337..., x += 4 * 0.0000663 = 999.9772402
    assert ratings["x"] == pytest.approx(999.9772402, abs=1e-6)
    assert ratings["y"] == pytest.approx(1000.0227598, abs=1e-6)
    assert ratings["x"] + ratings["y"] == pytest.approx(2000.0)


def test_verdicts_merge_into_matches_across_both_orders():
    verdicts = [
        verdict("p1", "x", "y", "first"),  # x wins shown first...
        verdict("p1", "y", "x", "second"),  # ...and second: a clean win
        verdict("p2", "x", "y", "first"),  # x wins first, y wins first: position decided it, a tie
        verdict("p2", "y", "x", "first"),
        verdict("p3", "y", "x", "tie"),  # a tie and a win: three quarters
        verdict("p3", "x", "y", "first"),
        verdict("p4", "x", "y", None),  # failed: no match
    ]
    assert matches_of(verdicts) == [
        Match("p1", "x", "y", 1.0),
        Match("p2", "x", "y", 0.5),
        Match("p3", "x", "y", 0.75),
    ]
    bias = position_bias(verdicts)
    assert (bias["first_wins"], bias["second_wins"], bias["ties"]) == (4, 1, 1)
    assert bias["first_win_rate"] == pytest.approx(0.8)
    assert (bias["pairs_both_orders"], bias["consistent_pairs"]) == (3, 1)


def test_elo_runs_shuffle_independently_and_report_mean_and_std():
    matches = [Match(str(i), "x", "y", 1.0 if i % 3 else 0.0) for i in range(30)]
    result = elo_runs(matches, ["x", "y"], k=4, runs=5, seed=0)
    finals = result["x"]["finals"]
    assert len(finals) == 5 and len(set(finals)) > 1  # the order changes the final rating
    assert result["x"]["mean"] == pytest.approx(sum(finals) / 5)
    assert result["x"]["std"] > 0
    assert result["x"]["mean"] > 1000 > result["y"]["mean"]  # x won two thirds


def test_bradley_terry_recovers_known_strengths():
    truth = {"a": 1150.0, "b": 1050.0, "c": 950.0, "d": 850.0}  # centred on 1000, as the fit is
    rng = random.Random(7)
    matches = []
    for number in range(4000):
        a, b = rng.sample(sorted(truth), 2)
        p_a = 1 / (1 + 10 ** ((truth[b] - truth[a]) / 400))
        matches.append(Match(str(number), a, b, 1.0 if rng.random() < p_a else 0.0))
    fitted = bradley_terry_intervals(matches, sorted(truth), resamples=200, seed=1)
    for system, rating in truth.items():
        assert fitted[system]["rating"] == pytest.approx(rating, abs=20)
        assert fitted[system]["low"] <= rating <= fitted[system]["high"]
        assert fitted[system]["high"] - fitted[system]["low"] < 80


def test_bradley_terry_stays_finite_when_one_system_wins_everything():
    matches = [Match(str(i), "x", "y", 1.0) for i in range(10)]
    fitted = bradley_terry_intervals(matches, ["x", "y"], resamples=0, seed=0)
    assert 1000 < fitted["x"]["rating"] < 3000 and fitted["y"]["rating"] == pytest.approx(
        2000 - fitted["x"]["rating"]
    )


@pytest.mark.parametrize(
    ("reply", "winner"),
    [
        ("B is clearer.\n<winner>B</winner>", "second"),
        ("<winner> a </winner>", "first"),
        ("Neither stands out. <winner>Tie</winner>", "tie"),
        ("Winner: A\n\nResponse A: ...", "first"),
        ("Winner: **B**", "second"),
        ("I prefer the first one.", None),
        ("<winner>Response C</winner>", None),
    ],
)
def test_parse_winner(reply, winner):
    assert parse_winner(reply) == winner


def test_rerating_a_verdict_file_needs_no_judge(tmp_path):
    verdicts = tmp_path / "verdicts.jsonl"
    rows = [verdict(f"p{i}", "x", "y", "first") for i in range(6)] + [verdict("p9", "y", "x", "tie")]
    verdicts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = mpo("eval", "elo", "--verdicts", str(verdicts), "--set", "evaluation.elo.k=16")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "elo.json").read_text())
    assert summary["k"] == 16 and summary["matches"] == 7 and summary["judgments"] == 7
    # Six wins for x then a tie, in any order: x must end above y, and the numbers come from the K given.
    expected = elo_runs(matches_of(rows), ["x", "y"], k=16, runs=5, seed=0)
    assert summary["elo"]["x"]["mean"] == pytest.approx(expected["x"]["mean"])
    assert summary["elo"]["x"]["mean"] > 1000 + 16  # more than one K-step above the start
    assert "Position bias" in result.stdout and "x" in result.stdout


# -- the tournament, judged over HTTP -------------------------------------------------------------------------


def generations_file(path, system, responses, task="essay_writing"):
    rows = [
        {
            "id": f"essay-{i}",
            "system": system,
            "task": task,
            "prompt": f"Write about topic {i}.",
            "response": r,
        }
        for i, r in enumerate(responses)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


RESPONSE = re.compile(r"\[Response (A|B)\]\n(.*?)\n\[End of response", re.DOTALL)


def prefers(word):
    """A judge that prefers the response containing `word` (a tie when both or neither do)."""

    def reply(prompt_text, request_json):
        responses = dict(RESPONSE.findall(prompt_text))
        has = {label: word in text for label, text in responses.items()}
        if has.get("A") == has.get("B"):
            return "They are equally good.\n<winner>tie</winner>"
        return f"One uses the key word.\n<winner>{'A' if has['A'] else 'B'}</winner>"

    return reply


def always_first(prompt_text, request_json):
    return "The first one reads better.\n<winner>A</winner>"


def elo_config(url, **extra):
    sets = {
        "evaluation.elo.judge.model": "openai/test-judge",
        "evaluation.elo.judge.api_base": url,
        "evaluation.elo.judge.api_key_env": "TEST_JUDGE_KEY",
        "evaluation.elo.judge.retries": 1,
        "evaluation.elo.judge.retry_backoff": 0.01,
        "evaluation.elo.bootstrap": 50,
        **extra,
    }
    return load_config(None, [f"{key}={value}" for key, value in sets.items()])


@pytest.fixture
def three_systems(tmp_path):
    return [
        generations_file(tmp_path / "good.jsonl", "good", [f"A GOOD essay {i}." for i in range(4)]),
        generations_file(tmp_path / "mixed.jsonl", "mixed", ["GOOD one.", "plain.", "GOOD two.", "plain."]),
        generations_file(tmp_path / "plain.jsonl", "plain", [f"plain essay {i}." for i in range(4)]),
    ]


def test_tournament_judges_both_orders_and_ranks_the_systems(tmp_path, judge_server, three_systems):
    server = judge_server(prefers("GOOD"))
    summary = run_elo(three_systems, elo_config(server.url), TEST_ENV, tmp_path / "elo")
    assert len(server.requests) == 4 * 3 * 2  # prompts x pairs x both orders
    prompts = [json.dumps(r) for r in server.requests]
    assert not any(name in p for p in prompts for name in ('"good"', '"mixed"', '"plain"'))  # anonymous
    assert summary["judgments"] == 24 and summary["failed"] == 0 and summary["matches"] == 12
    elo = summary["elo"]
    assert elo["good"]["mean"] > elo["mixed"]["mean"] > elo["plain"]["mean"]
    bt = summary["bradley_terry"]
    assert bt["good"]["rating"] > bt["mixed"]["rating"] > bt["plain"]["rating"]
    assert summary["win_matrix"]["good"]["plain"] == {"wins": 4, "losses": 0, "ties": 0}
    assert summary["win_matrix"]["good"]["mixed"] == {"wins": 2, "losses": 0, "ties": 2}
    bias = summary["position_bias"]  # an unbiased judge: the first response wins exactly half the decisions
    assert bias["first_win_rate"] == pytest.approx(0.5) and bias["consistency"] == 1.0
    assert summary["judge"]["calls"] == 24 and summary["judge"]["cached"] == 0
    assert json.loads((tmp_path / "elo" / "elo.json").read_text())["elo"] == elo
    assert len((tmp_path / "elo" / "calls" / "elo_judge.jsonl").read_text().splitlines()) == 24


def test_position_swap_doubles_the_calls_and_exposes_a_biased_judge(tmp_path, judge_server, three_systems):
    server = judge_server(always_first)
    one_order = run_elo(
        three_systems,
        elo_config(server.url, **{"evaluation.elo.both_orders": False}),
        TEST_ENV,
        tmp_path / "one",
    )
    single_calls = len(server.requests)
    server.reset()
    both = run_elo(three_systems, elo_config(server.url), TEST_ENV, tmp_path / "both")
    assert single_calls == 12 and len(server.requests) == 2 * single_calls
    warned = mpo("eval", "elo", "--verdicts", str(tmp_path / "one" / "verdicts.jsonl"))
    assert "The judge strongly favours the first response" in " ".join(warned.stdout.split())
    assert "judge both orders" in " ".join(warned.stdout.split())
    assert one_order["position_bias"]["pairs_both_orders"] == 0
    bias = both["position_bias"]
    assert bias["first_win_rate"] == 1.0 and bias["consistency"] == 0.0 and bias["first_wins"] == 24
    # With both orders a judge that always picks the first response decides nothing: every match is a tie.
    assert {s: round(r["mean"], 6) for s, r in both["elo"].items()} == {
        "good": 1000,
        "mixed": 1000,
        "plain": 1000,
    }
    assert all(cell["ties"] == 4 for row in both["win_matrix"].values() for cell in row.values())


def test_failed_verdicts_are_left_out_and_asked_again_on_resume(tmp_path, judge_server, three_systems):
    judge_well = prefers("GOOD")
    broken = {"on": True}

    def flaky(prompt_text, request_json):
        # Both orders of (good, plain) on topic 1 get an answer without a verdict, on every attempt.
        responses = dict(RESPONSE.findall(prompt_text))
        if (
            broken["on"]
            and "topic 1." in prompt_text
            and {"A GOOD essay 1.", "plain essay 1."} == set(responses.values())
        ):
            return "Both have merits; I cannot decide."
        return judge_well(prompt_text, request_json)

    server = judge_server(flaky)
    first = run_elo(three_systems, elo_config(server.url), TEST_ENV, tmp_path / "elo")
    assert first["failed"] == 2 and first["judgments"] == 24 and first["matches"] == 11
    assert first["judge"]["failed"] == 2 and len(server.requests) == 22 + 2 * 2  # each failure retried once
    lines = [json.loads(line) for line in (tmp_path / "elo" / "verdicts.jsonl").read_text().splitlines()]
    assert sum(v["winner"] is None for v in lines) == 2
    assert {v["status"] for v in lines if v["winner"] is None} == {"unparseable"}
    broken["on"] = False
    server.reset()
    again = run_elo(three_systems, elo_config(server.url), TEST_ENV, tmp_path / "elo")
    assert len(server.requests) == 2  # only the two failed judgments went to the judge again
    assert again["failed"] == 0 and again["judgments"] == 24 and again["matches"] == 12


def test_cli_tournament_prints_ratings_and_rerates(tmp_path, judge_server, three_systems):
    server = judge_server(prefers("GOOD"))
    sets = [
        "evaluation.elo.judge.model=openai/test-judge",
        f"evaluation.elo.judge.api_base={server.url}",
        "evaluation.elo.judge.api_key_env=TEST_JUDGE_KEY",
        "evaluation.elo.bootstrap=20",
    ]
    args = as_options(sets)
    result = mpo(
        "eval", "elo", *map(str, three_systems), "--output", str(tmp_path / "t"), *args, env=TEST_ENV
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "good" in result.stdout and "Position bias: the first response won 50%" in result.stdout
    shown = " ".join(result.stdout.split())  # rich wraps long lines
    assert "24 calls now (0 cached, 0 failed); the whole tournament so far: 24 attempts" in shown
    again = mpo(
        "eval", "elo", *map(str, three_systems), "--output", str(tmp_path / "t2"), *args, env=TEST_ENV
    )
    assert again.returncode == 0 and len(server.requests) == 48  # a new output dir has its own cache
    mpo("eval", "elo", "--verdicts", str(tmp_path / "t" / "verdicts.jsonl"), "--set", "evaluation.elo.k=8")
    beside = json.loads((tmp_path / "t" / "elo.json").read_text())
    assert beside["k"] == 8 and beside["judge"]["attempts_total"] == 24  # re-rated in place, judge facts kept
    rerated = rerate(
        tmp_path / "t" / "verdicts.jsonl", load_config(None, ["evaluation.elo.k=32"]), tmp_path / "r.json"
    )
    first = json.loads((tmp_path / "t2" / "elo.json").read_text())
    assert rerated["matches"] == first["matches"]
    assert (
        rerated["elo"]["good"]["mean"] - 1000 > first["elo"]["good"]["mean"] - 1000
    )  # a larger K moves further


def test_tournament_refuses_unaligned_or_single_systems(tmp_path, judge_server):
    a = generations_file(tmp_path / "a.jsonl", "a", ["x"])
    with pytest.raises(ConfigError, match="at least two"):
        run_elo([a], elo_config("http://127.0.0.1:9"), TEST_ENV, tmp_path / "elo")
    other = tmp_path / "b.jsonl"
    other.write_text(json.dumps({"id": "elsewhere", "system": "b", "response": "y"}) + "\n")
    with pytest.raises(ConfigError, match="share no prompt id"):
        run_elo([a, other], elo_config("http://127.0.0.1:9"), TEST_ENV, tmp_path / "elo")


# -- ROUGE and accuracy ---------------------------------------------------------------------------------------


def rows_of(task, pairs):
    return [
        {"id": str(i), "task": task, "response": response, "reference": reference}
        for i, (response, reference) in enumerate(pairs)
    ]


def test_rouge_on_known_answers():
    items, summary = rouge(
        rows_of(
            "summarization",
            [
                ("the cat sat on the mat", "the cat sat on the mat"),  # identical: 100
                ("dogs bark loudly", "the cat sat on the mat"),  # nothing shared: 0
                ("the cat sat", "the cat sat on the mat"),  # unigrams: P 3/3, R 3/6, F 2/3
                ("cats running", "cat run"),  # equal after Porter stemming
            ],
        )
    )
    assert [round(item["rouge1"], 2) for item in items] == [100.0, 0.0, 66.67, 100.0]
    assert items[2]["rouge2"] == pytest.approx(
        100 * 2 * (2 / 2 * 2 / 5) / (2 / 2 + 2 / 5)
    )  # bigrams 2/2, 2/5
    assert summary["kind"] == "rouge" and summary["items"] == 4
    assert summary["rouge1"] == pytest.approx((100 + 0 + 200 / 3 + 100) / 4)


def test_ethics_accuracy_reads_tags_then_bare_words():
    assert ethics_verdict("I think so. <verdict>RIGHT</verdict>") == ("RIGHT", "tag")
    assert ethics_verdict("The author was WRONG here.") == ("WRONG", "word")
    assert ethics_verdict("Partly RIGHT, partly WRONG.") == (None, "both words")
    assert ethics_verdict("Hard to say.") == (None, "none")
    items, summary = accuracy(
        "ethical_reasoning",
        rows_of(
            "ethical_reasoning",
            [
                ("<verdict>WRONG</verdict>", "WRONG"),
                ("<verdict>RIGHT</verdict>", "WRONG"),
                ("clearly RIGHT", "RIGHT"),
                ("RIGHT and WRONG", "RIGHT"),
            ],
        ),
    )
    assert [item["correct"] for item in items] == [True, False, True, False]
    assert (summary["correct"], summary["accuracy"], summary["no_answer"]) == (2, 0.5, 1)


def test_math_accuracy_uses_the_equivalence_normaliser():
    items, summary = accuracy(
        "math_reasoning",
        rows_of(
            "math_reasoning",
            [
                (r"So the answer is \boxed{\frac12}.", r"\frac{1}{2}"),
                (r"First \boxed{3}, finally \boxed{4}.", "4"),  # the final boxed answer counts
                (r"\boxed{5}", "6"),
                ("no box at all: 7", "7"),
            ],
        ),
    )
    assert [item["correct"] for item in items] == [True, True, False, False]
    assert summary["accuracy"] == 0.5 and summary["no_answer"] == 1


def test_score_generations_writes_items_and_summary_and_names_missing_references(tmp_path):
    path = tmp_path / "mpo.test.jsonl"
    rows = [
        {"id": "a", "system": "mpo", "task": "math_reasoning", "response": r"\boxed{2}", "reference": "2"}
    ]
    path.write_text(json.dumps(rows[0]) + "\n")
    summary = score_generations("accuracy", path)
    assert summary["system"] == "mpo" and summary["accuracy"] == 1.0
    assert json.loads((tmp_path / "mpo.test.accuracy.json").read_text())["correct"] == 1
    assert json.loads((tmp_path / "mpo.test.accuracy.jsonl").read_text())["predicted"] == "2"
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"id": "b", "task": "summarization", "response": "text"}) + "\n")
    with pytest.raises(ConfigError, match="no `reference`"):
        score_generations("rouge", bare)
    with pytest.raises(ConfigError, match="accuracy is defined for"):
        accuracy("essay_writing", rows_of("essay_writing", [("x", "y")]))


# -- generations -----------------------------------------------------------------------------------------------


def generation_config(model_dir, *extra):
    return load_config(
        None,
        [
            f"policy.model={model_dir}",
            "evaluation.generation.max_new_tokens=6",
            "evaluation.generation.limit=5",
            "evaluation.generation.batch_size=2",
            *extra,
        ],
    )


def test_generate_writes_rows_and_resumes_an_interrupted_file(tmp_path, tiny_model_dir):
    from mpo_agents.evaluation.generate import generate, resolve_source

    config = generation_config(tiny_model_dir, "evaluation.generation.skip=2")
    source = resolve_source(str(tiny_model_dir), config, "base")
    full = tmp_path / "full.jsonl"
    progress = []
    assert generate(source, config, full, lambda done, total: progress.append((done, total))) == (5, 5)
    rows = [json.loads(line) for line in full.read_text().splitlines()]
    assert [row["id"] for row in rows] == [
        f"essay-test-{i}" for i in range(2, 7)
    ]  # file order after the skip
    assert {row["system"] for row in rows} == {"base"} and rows[0]["task"] == "essay_writing"
    assert rows[0]["prompt"].startswith("Writing prompt: Write an essay")
    # The untrained tiny model emits special tokens greedily, which decode to nothing: count tokens instead.
    assert all(row["completion_tokens"] == 6 and row["truncated"] for row in rows)
    assert progress[-1] == (5, 5) and len(progress) == 1 + 3  # batches of 2: 2, 2, 1

    # A kill mid-batch leaves two whole rows and a torn one: the rerun keeps the two and writes the rest.
    partial = tmp_path / "partial.jsonl"
    generate(source, config, partial)
    kept = partial.read_text().splitlines()[:2]
    partial.write_text("\n".join(kept) + '\n{"id": "essay-te')
    assert generate(source, config, partial) == (3, 5)
    assert partial.read_text() == full.read_text()  # greedy decoding: the same rows as one uninterrupted pass
    assert generate(source, config, partial) == (0, 5)

    other = generation_config(tiny_model_dir, "evaluation.generation.max_new_tokens=9")
    with pytest.raises(ConfigError, match="other settings .*decoding"):
        generate(source, other, partial)


def test_cli_generates_from_a_lora_run_and_the_chain_reaches_the_report(
    tmp_path, tiny_model_dir, judge_server
):
    """Train (LoRA), generate from the run and from the base model, run a tournament, render the report: all
    through the CLI, as a user compares MPO with a baseline."""
    from tests.support import run_overrides

    server = judge_server(prefers("the"))
    run_dir = tmp_path / "run"
    sets = run_overrides(
        tiny_model_dir,
        server.url,
        **{
            "schedule.iterations": 1,
            "policy.lora.enabled": "true",
            "policy.lora.r": 4,
            "policy.lora.alpha": 8,
        },
    )
    trained = mpo("run", "--run-dir", str(run_dir), *as_options(sets), env=TEST_ENV)
    assert trained.returncode == 0, trained.stderr[-2000:]
    decoding = ["--set", "evaluation.generation.limit=3", "--set", "evaluation.generation.max_new_tokens=6"]
    from_run = mpo("generate", str(run_dir), *decoding)
    assert from_run.returncode == 0, from_run.stderr[-2000:]
    run_rows = (run_dir / "eval" / "generations.test.jsonl").read_text().splitlines()
    assert len(run_rows) == 3 and json.loads(run_rows[0])["system"] == "run"
    base_file = tmp_path / "base.test.jsonl"
    from_model = mpo(
        "generate",
        str(tiny_model_dir),
        "--name",
        "base",
        "--output",
        str(base_file),
        *decoding,
        "--set",
        f"policy.model={tiny_model_dir}",
    )
    assert from_model.returncode == 0, from_model.stderr[-2000:]
    assert "3 generations of base (3 new)" in from_model.stdout
    assert mpo("generate", str(tiny_model_dir), *decoding).returncode == 2  # a model source needs --output

    elo_sets = [
        "evaluation.elo.judge.model=openai/test-judge",
        f"evaluation.elo.judge.api_base={server.url}",
        "evaluation.elo.judge.api_key_env=TEST_JUDGE_KEY",
        "evaluation.elo.bootstrap=20",
    ]
    judged = mpo(
        "eval",
        "elo",
        str(run_dir / "eval" / "generations.test.jsonl"),
        str(base_file),
        "--output",
        str(run_dir / "eval" / "elo"),
        *as_options(elo_sets),
        env=TEST_ENV,
    )
    assert judged.returncode == 0, judged.stderr[-2000:]
    summary = json.loads((run_dir / "eval" / "elo" / "elo.json").read_text())
    assert summary["judgments"] == 6 and set(summary["systems"]) == {"run", "base"}

    report = tmp_path / "report.html"
    rendered = mpo(
        "report", str(run_dir), "--eval", str(run_dir / "eval" / "elo" / "elo.json"), "--output", str(report)
    )
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    html = report.read_text()
    assert f"{summary['elo']['run']['mean']:.1f}" in html and "<svg" in html


def test_cli_tournament_without_a_single_verdict_exits_1_and_says_why(tmp_path, judge_server, three_systems):
    server = judge_server(lambda prompt_text, request_json: "I would rather not say.")
    sets = [
        "evaluation.elo.judge.model=openai/test-judge",
        f"evaluation.elo.judge.api_base={server.url}",
        "evaluation.elo.judge.api_key_env=TEST_JUDGE_KEY",
        "evaluation.elo.judge.retries=0",
        "evaluation.elo.max_prompts=1",
    ]
    args = as_options(sets)
    result = mpo(
        "eval", "elo", *map(str, three_systems), "--output", str(tmp_path / "t"), *args, env=TEST_ENV
    )
    assert result.returncode == 1
    assert "No usable verdict" in result.stderr and "Failed judgments: 6 of 6" in result.stdout
    assert json.loads((tmp_path / "t" / "elo.json").read_text())["failed"] == 6
