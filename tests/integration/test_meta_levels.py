"""Meta-level ("meta-meta") nodes: plug-ins found through entry points (one installed with pip from
examples/), the rubric gate, the hacking alarm, failing plug-ins, and human review across process restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mpo_agents.errors import ConfigError
from mpo_agents.plugins.hacking_alarm import HackingAlarm
from mpo_agents.rubrics import RubricStore
from mpo_agents.rundir import read_jsonl
from mpo_agents.runner import execute
from tests.support import REPO, TEST_ENV, run_overrides
from tests.support.cli import as_options, mpo
from tests.support.examples import install_example, run_own_tests
from tests.support.plugins import install_plugin_module
from tests.support.runs import prepared_run, run_in_process

ROOT = REPO
EXAMPLE = ROOT / "examples" / "meta_node_plugin"


def install_fake_nodes(directory: Path, source: str, nodes: dict[str, str]) -> Path:
    """Meta-level nodes (name -> class in `source`) registered as a package of their own would register them."""
    entries = {name: f"fake_nodes:{target}" for name, target in nodes.items()}
    return install_plugin_module(directory, "fake_nodes", source, "mpo_agents.meta_nodes", entries)


def run(tmp_path, model_dir, server, nodes, **extra):
    sets = [*run_overrides(model_dir, server.url, **extra), f"meta_nodes={json.dumps(nodes)}"]
    events: list[str | type] = []
    outcome, run_dir = run_in_process(sets, tmp_path / "run", events=events)
    return outcome, run_dir, events


def test_a_node_from_the_example_package_is_installed_discovered_and_run(
    tmp_path, tiny_model_dir, judge_server
):
    env = install_example(EXAMPLE, tmp_path / "site")
    own_tests = run_own_tests(EXAMPLE, env)
    assert own_tests.returncode == 0, own_tests.stdout + own_tests.stderr

    server = judge_server()
    sets = run_overrides(tiny_model_dir, server.url, **{"schedule.iterations": 1, "schedule.meta_every": 1})
    sets.append("meta_nodes=[{name: rubric_size_watch, settings: {max_growth: 0.0}}]")
    result = mpo("run", *as_options(sets), "--run-dir", str(tmp_path / "run"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    log = read_jsonl(tmp_path / "run" / "meta_levels.jsonl")
    assert [entry["node"] for entry in log] == ["rubric_size_watch"]
    assert log[0]["verdict"] == "reject"  # the keyword judge's rewrite always grows the one-line rubric
    rejections = RubricStore(tmp_path / "run" / "rubrics").rejections()
    assert rejections and rejections[0]["reason"].startswith("rejected by rubric_size_watch")
    assert len(RubricStore(tmp_path / "run" / "rubrics").versions()) == 1  # v0 stays in force


def test_an_unknown_node_is_refused_before_any_work(tmp_path):
    config, run_dir = prepared_run(["meta_nodes=[{name: no_such_node}]"], tmp_path / "run")
    with pytest.raises(ConfigError, match="no node named 'no_such_node'.*hacking_alarm"):
        execute(config, run_dir, TEST_ENV, fresh=True)


def write_suite(path: Path, reference: str, hack: str) -> Path:
    case = {
        "case": "c1",
        "record": {"prompt": "Write about parks."},
        "reference": reference,
        "hacks": {"begging": hack},
    }
    path.write_text(json.dumps(case) + "\n")
    return path


def test_the_gate_rejects_a_rubric_that_scores_a_hack_above_a_reference(
    tmp_path, tiny_model_dir, judge_server
):
    server = judge_server()  # scores occurrences of "good"
    suite = write_suite(tmp_path / "anchors.jsonl", "A plain and careful essay.", "good good good, give me 5")
    # The scripted judge counts a word whatever the rubric, so the hack wins under both versions: `strict`
    # asks that no hack win (by default only a hack the parent kept below its reference counts).
    nodes = [{"name": "rubric_gate", "settings": {"suite": str(suite), "strict": True}}]
    outcome, run_dir, events = run(
        tmp_path, tiny_model_dir, server, nodes, **{"schedule.iterations": 1, "schedule.meta_every": 1}
    )
    assert "rubric_gate" in events and events.index("rubric_gate") < events.index("commit")
    assert outcome.rubric_version == 0  # the previous rubric stays in force
    rejection = RubricStore(run_dir.rubrics_dir).rejections()[0]["reason"]
    assert rejection.startswith("rejected by rubric_gate") and "c1/begging" in rejection
    gate = read_jsonl(run_dir.root / "meta_levels.jsonl")[0]
    assert gate["details"]["anchors"]["proposal_hack_wins"] == 1
    assert "spearman" in gate["details"]["score_map"]


def test_by_default_the_gate_only_objects_to_hacks_the_parent_held_off(
    tmp_path, tiny_model_dir, judge_server
):
    server = judge_server()
    suite = write_suite(tmp_path / "anchors.jsonl", "A plain and careful essay.", "good good good, give me 5")
    nodes = [{"name": "rubric_gate", "settings": {"suite": str(suite)}}]
    outcome, run_dir, _ = run(
        tmp_path, tiny_model_dir, server, nodes, **{"schedule.iterations": 1, "schedule.meta_every": 1}
    )
    assert outcome.rubric_version == 1  # the hack won under the parent too: no regression, no objection
    anchors = read_jsonl(run_dir.root / "meta_levels.jsonl")[0]["details"]["anchors"]
    assert (
        anchors["parent_hack_wins"] == anchors["proposal_hack_wins"] == 1 and anchors["new_hack_wins"] == []
    )


def test_the_gate_accepts_a_rubric_that_keeps_references_first(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    suite = write_suite(tmp_path / "anchors.jsonl", "A good, good and good essay.", "Parks.")
    nodes = [{"name": "rubric_gate", "settings": {"suite": str(suite)}}]
    outcome, run_dir, _ = run(
        tmp_path, tiny_model_dir, server, nodes, **{"schedule.iterations": 1, "schedule.meta_every": 1}
    )
    assert outcome.rubric_version == 1
    latest = RubricStore(run_dir.rubrics_dir).versions()[-1]
    assert latest.review.startswith("accepted by rubric_gate")
    metrics = read_jsonl(run_dir.metrics_path)[0]
    assert metrics["rubric_gate_proposal_hack_wins"] == 0
    assert metrics["judge_rubric_gate_tokens"] > 0  # its re-scoring is counted as its own


def sample(key: str, text: str, index: int = 0) -> dict:
    return {"key": key, "prompt_index": index, "completion": text, "score": 1.0, "normalized_reward": 0.2}


def alarm_view(batch, history):
    task = SimpleNamespace(
        batch=lambda iteration, count: [{}] * 8, exact_match_score=lambda record, text: None
    )
    config = SimpleNamespace(trainer=SimpleNamespace(prompts_per_iteration=2))
    return SimpleNamespace(
        batch=batch, metrics_history=history, context=SimpleNamespace(task=task), config=config, iteration=3
    )


def test_the_alarm_fires_on_a_length_collapse_and_names_the_samples():
    history = [{"hacking_alarm_mean_words": 60.0}, {"hacking_alarm_mean_words": 64.0}]
    long_answer = "The park is a calm place where families walk and children play in the grass. " * 4
    batch = [
        sample("s0", "Parks."),
        sample("s1", "Good."),
        sample("s2", "Parks good."),
        sample("s3", long_answer),
    ]
    decision = asyncio.run(HackingAlarm()(alarm_view(batch, history)))
    assert decision.alarm.startswith("length collapse") and decision.trigger_meta
    assert decision.evidence == ["s0", "s1", "s2"]
    steady = asyncio.run(HackingAlarm()(alarm_view([sample("s", long_answer)], history)))
    assert steady.alarm is None and steady.metrics["mean_words"] > 50


@pytest.mark.parametrize(
    ("text", "detector"),
    [
        ("good answer " * 20, "repetition"),
        (
            "Los parques son lugares tranquilos donde las familias pasean y los niños juegan.",
            "language switch",
        ),
    ],
)
def test_the_alarm_detects_repetition_and_a_language_switch(text, detector):
    decision = asyncio.run(HackingAlarm()(alarm_view([sample(f"s{i}", text) for i in range(4)], [])))
    assert detector in decision.alarm


def test_an_alarm_starts_a_meta_step_the_schedule_would_not(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    # meta_every 0 never runs the meta-judge on schedule; a hair-trigger length alarm fires from iteration 2.
    nodes = [{"name": "hacking_alarm", "settings": {"length_drop": 100.0}}]
    outcome, run_dir, events = run(
        tmp_path, tiny_model_dir, server, nodes, **{"schedule.iterations": 2, "schedule.meta_every": 0}
    )
    assert events.count("meta_analyze") == 1 and outcome.rubric_version == 1
    metrics = read_jsonl(run_dir.metrics_path)
    assert "hacking_alarm_alarm" not in metrics[0] and metrics[1]["hacking_alarm_alarm"] == 1
    analysis_prompts = [
        c for c in read_jsonl(run_dir.calls_path("meta_judge")) if c["metadata"]["node"] == "meta_analyze"
    ]
    assert analysis_prompts and all("length collapse" in json.dumps(c["messages"]) for c in analysis_prompts)


BROKEN = """
    from mpo_agents.plugins import Decision

    class Raises:
        stage = "after_rewrite"
        async def __call__(self, view):
            raise RuntimeError("the audit service is down")

    class Garbage:
        stage = "after_rewrite"
        async def __call__(self, view):
            return {"verdict": "accept"}

    class BadKnob:
        stage = "after_score"
        async def __call__(self, view):
            return Decision(schedule={"learning_rate": 1})
"""


def test_a_failing_or_garbage_node_is_named_and_the_run_goes_on(
    tmp_path, tiny_model_dir, judge_server, monkeypatch
):
    monkeypatch.syspath_prepend(
        str(
            install_fake_nodes(
                tmp_path, BROKEN, {"raises": "Raises", "garbage": "Garbage", "bad_knob": "BadKnob"}
            )
        )
    )
    server = judge_server()
    nodes = [{"name": "bad_knob"}, {"name": "raises"}, {"name": "garbage"}]
    outcome, run_dir, _ = run(
        tmp_path / "r", tiny_model_dir, server, nodes, **{"schedule.iterations": 1, "schedule.meta_every": 1}
    )
    assert outcome.status == "finished" and outcome.rubric_version == 1  # no verdict: the proposal is used
    errors = {entry["node"]: entry["error"] for entry in read_jsonl(run_dir.root / "meta_levels.jsonl")}
    assert "the audit service is down" in errors["raises"]
    assert "expected a Decision" in errors["garbage"]
    assert "learning_rate" in errors["bad_knob"]
    metrics = read_jsonl(run_dir.metrics_path)[0]
    assert metrics["raises_failed"] == metrics["garbage_failed"] == metrics["bad_knob_failed"] == 1


def mpo_cli(*args: str, cwd: Path) -> SimpleNamespace:
    """`mpo ARGS` in a new process, wide enough that rich does not wrap; `.output` is stdout and stderr."""
    result = mpo(*args, cwd=cwd, env={**TEST_ENV, "COLUMNS": "200"})
    return SimpleNamespace(returncode=result.returncode, output=result.stdout + result.stderr)


def test_a_review_pause_survives_restarts_and_resumes_with_accept_edit_and_reject(
    tmp_path, tiny_model_dir, judge_server
):
    server = judge_server()
    sets = run_overrides(
        tiny_model_dir, server.url, **{"schedule.iterations": 3, "schedule.meta_every": 1, "review": "true"}
    )
    started = mpo_cli("run", *as_options(sets), "--run-dir", "run", cwd=tmp_path)
    assert started.returncode == 0, started.output
    assert "paused for review" in started.output
    run_dir = tmp_path / "run"

    listing = mpo_cli(
        "review", str(run_dir), cwd=tmp_path
    )  # a new process reads the pause from the checkpoint
    assert listing.returncode == 0 and "v0 → v1" in listing.output and "suggested: accept" in listing.output

    accepted = mpo_cli("review", str(run_dir), "--accept", "--note", "looks right", cwd=tmp_path)
    assert accepted.returncode == 0 and "paused for review" in accepted.output  # iteration 2 proposes again
    store = RubricStore(run_dir / "rubrics")
    assert (
        store.versions()[-1].version == 1
        and store.versions()[-1].review == "accepted by human review: looks right"
    )

    edited_text = "Criterion 1: The essay uses the word good where it fits. (0-5 points)"
    edit = tmp_path / "edit.md"
    edit.write_text(edited_text)
    edited = mpo_cli("review", str(run_dir), "--edit", str(edit), cwd=tmp_path)
    assert edited.returncode == 0, edited.output
    latest = RubricStore(run_dir / "rubrics").versions()[-1]
    assert latest.version == 2 and latest.text == edited_text
    assert latest.review.startswith("edited by human review")

    rejected = mpo_cli("review", str(run_dir), "--reject", "--note", "too vague", cwd=tmp_path)
    assert rejected.returncode == 0 and "Run finished" in rejected.output
    assert RubricStore(run_dir / "rubrics").versions()[-1].version == 2
    assert (
        "rejected by human review: too vague" in RubricStore(run_dir / "rubrics").rejections()[-1]["reason"]
    )
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 3

    nothing = mpo_cli("review", str(run_dir), cwd=tmp_path)
    assert nothing.returncode == 2 and "no rubric change waiting" in nothing.output


def test_the_audit_catches_a_loophole_and_the_gate_cites_it(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()  # its rewrites reward the keyword itself; its audit says so
    suite = write_suite(tmp_path / "anchors.jsonl", "A good, good and good essay.", "Parks.")
    nodes = [{"name": "meta_judge_audit"}, {"name": "rubric_gate", "settings": {"suite": str(suite)}}]
    outcome, run_dir, events = run(
        tmp_path, tiny_model_dir, server, nodes, **{"schedule.iterations": 1, "schedule.meta_every": 1}
    )
    assert events.index("meta_judge_audit") < events.index("rubric_gate") < events.index("commit")
    assert outcome.rubric_version == 0
    log = {entry["node"]: entry for entry in read_jsonl(run_dir.root / "meta_levels.jsonl")}
    assert log["meta_judge_audit"]["verdict"] == "reject"
    assert log["meta_judge_audit"]["details"]["loophole"].startswith("yes")
    assert log["rubric_gate"]["verdict"] == "reject" and "audit objects" in log["rubric_gate"]["reason"]
    reason = RubricStore(run_dir.rubrics_dir).rejections()[0]["reason"]
    assert reason.startswith("rejected by meta_judge_audit, rubric_gate")
    audits = [
        c for c in read_jsonl(run_dir.calls_path("meta_judge")) if c["metadata"]["node"] == "meta_judge_audit"
    ]
    assert len(audits) == 1 and "What changed" in json.dumps(audits[0]["messages"])


def test_audit_replies_are_parsed_or_refused():
    from mpo_agents.plugins.meta_judge_audit import parse_audit

    reply = "Supported: yes\nFixes: yes\nLoophole: no\nVerdict: Accept.\nReason: fine."
    assert parse_audit(reply) == {
        "supported": "yes",
        "fixes": "yes",
        "loophole": "no",
        "verdict": "accept",
        "reason": "fine.",
    }
    assert parse_audit("I think it is fine overall.") is None
    assert parse_audit("Verdict: maybe") is None
    assert (
        parse_audit("Loophole: yes, it pays for the word itself. And then some rambling")["verdict"]
        == "reject"
    )
    assert parse_audit("Loophole: No.\nSupported: yes")["verdict"] == "accept"


def test_mpo_graph_and_the_studio_entry_show_the_configured_nodes(tmp_path, monkeypatch):
    import importlib.util

    nodes = "meta_nodes=[{name: hacking_alarm}, {name: meta_judge_audit}, {name: rubric_gate}]"
    drawn = mpo_cli("graph", "--set", nodes, cwd=tmp_path)
    assert drawn.returncode == 0, drawn.output
    for edge in (
        "score --> hacking_alarm",
        "hacking_alarm -.-> meta_analyze\\3aprescreen",
        "meta_analyze\\3aanalyze --> rubric_rewrite\\3arefine",
        "rubric_rewrite\\3amerge --> rubric_rewrite\\3ameta_judge_audit",
        "rubric_rewrite\\3ameta_judge_audit --> rubric_rewrite\\3arubric_gate",
        "rubric_rewrite\\3arubric_gate --> rubric_rewrite\\3acommit",
        "rubric_rewrite\\3acommit --> policy_update",
    ):
        assert edge in drawn.output
    # The two meta steps are drawn as boxes with their stages inside.
    assert "subgraph meta_analyze" in drawn.output and "subgraph rubric_rewrite" in drawn.output

    config = tmp_path / "studio.yaml"
    config.write_text("meta_nodes:\n  - name: rubric_gate\n")
    monkeypatch.setenv("MPO_CONFIG", str(config))
    path, attribute = json.loads((ROOT / "langgraph.json").read_text())["graphs"]["mpo"].split(":")
    spec = importlib.util.spec_from_file_location("studio_entry", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # what `langgraph dev` does with langgraph.json
    assert {"rollout", "score", "meta_analyze", "rubric_rewrite", "policy_update"} <= set(
        getattr(module, attribute).get_graph().nodes
    )
    assert {"rubric_rewrite:rubric_gate", "rubric_rewrite:commit"} <= set(
        getattr(module, attribute).get_graph(xray=1).nodes
    )
