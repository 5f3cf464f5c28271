"""The four paper tasks: data loaders in their real formats, guards, the judging modes, and each task end to end
on the tiny policy against a local judge whose scoring rule the tests know (tests/support/judge_server.py)."""

from __future__ import annotations

import json

import pytest

from mpo_agents.config import MPOConfig, TaskConfig
from mpo_agents.errors import ConfigError
from mpo_agents.rubrics import RubricStore
from mpo_agents.rundir import read_jsonl, write_jsonl
from mpo_agents.scoring.scorer import Scorer
from mpo_agents.tasks import available_tasks, build_task
from tests.support import run_overrides
from tests.support.runs import run_in_process
from tests.support.scoring import score_once

TASKS = ["essay_writing", "summarization", "ethical_reasoning", "math_reasoning"]
GOOD_REASONING = " ".join(["The action weighs honesty against kindness, and the good outcome matters."] * 4)


def test_all_four_tasks_are_registered_and_load_their_shipped_data():
    assert set(TASKS) <= set(available_tasks())
    counts = {name: len(build_task(TaskConfig(name=name)).records) for name in TASKS}
    assert counts["essay_writing"] == 300 and counts["math_reasoning"] == 300
    assert counts["summarization"] == 8
    assert counts["ethical_reasoning"] == 9  # the INFO anecdote has no right answer and is skipped


def test_scruples_records_are_normalised():
    task = build_task(TaskConfig(name="ethical_reasoning"))
    record = task.records[0]
    assert isinstance(record["action"], str) and record["gold_verdict"] in ("RIGHT", "WRONG")
    rendered = task.prompt_variables(record)["task_input"]
    assert record["title"] in rendered and record["action"] in rendered


def test_billsum_clean_fields_are_accepted(tmp_path):
    path = tmp_path / "billsum.jsonl"
    write_jsonl(
        path, [{"clean_text": "SECTION 1. SHORT TITLE. The Act.", "clean_summary": "It acts.", "title": "T"}]
    )
    task = build_task(TaskConfig(name="summarization", data_path=path))
    assert (
        task.records[0]["text"] == "SECTION 1. SHORT TITLE. The Act."
        and task.records[0]["summary"] == "It acts."
    )


def test_parquet_and_datasets_directories_load_like_jsonl(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"Write about topic {i}.", "id": str(i)} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "essays.parquet")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}
    ).save_to_disk(str(tmp_path / "essays_ds"))
    from_parquet = build_task(TaskConfig(data_path=tmp_path / "essays.parquet", shuffle_seed=1)).records
    from_dir = build_task(TaskConfig(data_path=tmp_path / "essays_ds", shuffle_seed=1)).records
    assert from_parquet == from_dir and len(from_dir) == 5
    assert len(build_task(TaskConfig(data_path=tmp_path / "essays_ds", split="test")).records) == 2
    with pytest.raises(ConfigError, match="task.split: 'dev' is not in .*train, test"):
        build_task(TaskConfig(data_path=tmp_path / "essays_ds", split="dev"))


def test_a_record_without_the_task_field_is_named(tmp_path):
    path = tmp_path / "math.jsonl"
    write_jsonl(path, [{"question": "1+1?"}])
    with pytest.raises(
        ConfigError, match=r"line 1 has no 'problem', 'solution', 'answer' fields.*reads problem"
    ):
        build_task(TaskConfig(name="math_reasoning", data_path=path))


def test_ethics_guards_missing_verdict_and_thin_reasoning():
    task = build_task(TaskConfig(name="ethical_reasoning"))
    record = task.records[0]
    assert task.guard(record, GOOD_REASONING).score == -10  # no verdict tag
    assert "fewer than 30" in task.guard(record, "Fine by me. <verdict>RIGHT</verdict>").reason
    assert task.guard(record, GOOD_REASONING + " <verdict>WRONG</verdict>") is None
    custom = build_task(TaskConfig(name="ethical_reasoning", guard_score=-3, min_reasoning_words=2))
    assert custom.guard(record, "Bad idea. <verdict>WRONG</verdict>") is None
    assert custom.guard(record, "Bad.").score == -3


def test_math_guard_and_exact_match():
    task = build_task(TaskConfig(name="math_reasoning"))
    record = next(r for r in task.records if r["answer"] == "14")
    assert task.guard(record, r"\boxed{14}").score == 0  # a bare answer is not a solution
    work = " ".join(["We expand the expression and collect like terms carefully."] * 4)
    assert task.guard(record, work + r" So the answer is \boxed{14}.") is None
    assert task.exact_match_score(record, work + r" \boxed{14.0}").score == 5
    assert task.exact_match_score(record, work + r" \boxed{15}").score == 0
    assert task.exact_match_score(record, work).reason.startswith("no \\boxed")
    assert record["cluster"] == record["domain"]  # task.cluster_by: subject


# -- judging modes (tests/support/scoring.py) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected", "calls"), [("per_item", 4 + 3, 2), ("json", 4 + 3, 1), ("holistic", 4, 1)]
)
def test_scoring_modes_sum_items_as_the_paper_or_score_once(tmp_path, judge_server, mode, expected, calls):
    server = judge_server()  # scores occurrences of "good", clipped to each range asked for
    scored = score_once(tmp_path, server, mode, "good good good good essay")
    assert scored["status"] == "scored" and scored["score"] == expected and scored["reward"] == expected
    assert scored["normalized_reward"] == pytest.approx(expected / 8)  # the rubric's range is 0..8
    assert server.counts["requests"] == calls
    if mode != "holistic":
        assert [item["score"] for item in scored["items"]] == [4, 3]


def test_one_failed_criterion_fails_the_sample_not_a_zero(tmp_path, judge_server):
    server = judge_server()
    server.inject("500")
    scored = score_once(tmp_path, server, "per_item", "good good", **{"judge.retries": 0})
    assert scored["status"] == "judge_failed" and scored["score"] is None and scored["reward"] is None
    assert scored["rationale"].startswith("criterion ")


def test_a_judge_prompt_over_the_context_fails_the_sample_unsent(tmp_path, judge_server):
    server = judge_server()
    scored = score_once(tmp_path, server, "holistic", "good " * 300, **{"judge.context_tokens": 400})
    assert scored["status"] == "judge_failed" and scored["score"] is None and scored["reward"] is None
    assert scored["rationale"].startswith("context_window: prompt of ")
    assert "exceeds the judge's context of 400 tokens (judge.context_tokens)" in scored["rationale"]
    assert server.counts["requests"] == 0


def test_math_plans_then_executes_with_the_reference_solution(tmp_path, judge_server):
    prompts: list[str] = []

    def reply(prompt: str, request: dict) -> str:
        prompts.append(prompt)
        if "prepare a grading plan" in prompt:
            return "1. Check the expansion. 2. Check the boxed value."
        return "The steps follow the plan and the result matches.\nScore: 4"

    work = " ".join(["We expand the expression and collect like terms carefully."] * 4)
    scored = score_once(
        tmp_path,
        judge_server(reply),
        "per_item",
        work + r" \boxed{7}",
        task="math_reasoning",
        **{"task.exact_match_fraction": 0},
    )
    assert scored["status"] == "scored" and scored["score"] == 4 and scored["grader"] == "judge"
    assert len(prompts) == 2 and "Reference solution" in prompts[0]
    assert "1. Check the expansion." in prompts[1]  # the plan is carried into the execute call
    assert "Plan:" in scored["rationale"] and "Execution:" in scored["rationale"]


def test_exact_match_is_drawn_once_per_prompt_group():
    config = MPOConfig(task=TaskConfig(name="math_reasoning", exact_match_fraction=0.5))
    scorer = Scorer(build_task(config.task), None, config)
    draws = [scorer.uses_exact_match(3, group) for group in range(200)]
    assert 60 < sum(draws) < 140  # about half
    assert draws == [scorer.uses_exact_match(3, group) for group in range(200)]  # same draw on resume


# -- end to end -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_each_task_runs_end_to_end_with_a_meta_step(tmp_path, tiny_model_dir, judge_server, task):
    server = judge_server()
    extra = {
        "task.name": task,
        "schedule.iterations": 2,
        "schedule.meta_every": 2,
        "schedule.meta_samples": 2,
        "trainer.prompts_per_iteration": 2,
        "trainer.num_generations": 2,
    }
    if task == "math_reasoning":
        extra |= {"task.min_reasoning_words": 0, "task.exact_match_fraction": 0.5}
    if task in ("summarization", "ethical_reasoning"):
        # The tiny tokenizer's 512-token vocabulary makes every bill and anecdote prompt longer than 512 tokens
        # (SmolLM2's makes them 300-560): keep them, cut from the left, as `long_prompts: truncate` says.
        extra |= {"task.long_prompts": "truncate"}
    if task == "summarization":
        extra |= {
            "policy.lora.enabled": True,
            "policy.lora.r": 4,
        }  # the paper's LoRA policy, through the graph
    outcome, run_dir = run_in_process(run_overrides(tiny_model_dir, server.url, **extra), tmp_path / "run")

    assert outcome.status == "finished" and outcome.policy_step == 2
    if task == "summarization":
        assert {p.name for p in (run_dir.policy_dir / "iter-000002").iterdir()} >= {"adapter", "COMPLETE"}
    samples = read_jsonl(run_dir.samples_path(1)) + read_jsonl(run_dir.samples_path(2))
    assert len(samples) == 8
    for sample in samples:
        assert sample["status"] in ("scored", "guarded")
        assert sample["reward"] is not None and sample["normalized_reward"] is not None
    versions = {v.version: v for v in RubricStore(run_dir.rubrics_dir).versions()}
    assert set(versions) == {0, 1}, (
        (run_dir.rubrics_dir / "rejected.jsonl").read_text() if 1 not in versions else ""
    )
    assert versions[1].parent == 0 and versions[1].evidence == "meta/iter-0002"
    if task == "ethical_reasoning":
        # The tiny policy never writes a verdict tag: every sample gets the floor without a judge call.
        assert {s["status"] for s in samples} == {"guarded"} and {s["score"] for s in samples} == {-10}
        assert not (run_dir.root / "calls" / "judge.jsonl").exists()
    if task == "math_reasoning":
        assert versions[1].kind == "guidelines" and versions[1].origin == "per_cluster"
        clusters = {s["cluster"] for s in samples}
        assert set(versions[1].guidelines) <= clusters and versions[1].guidelines
        graders = {}
        for s in samples:
            graders.setdefault((s["key"][:6], s["prompt_index"]), set()).add(s["grader"])
        assert all(len(kinds) == 1 for kinds in graders.values())  # one way of grading per prompt group
    else:
        assert versions[1].kind == "criteria" and versions[1].items == 2


def test_fixed_rubric_baseline_from_a_file(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    _, run_dir = run_in_process(
        run_overrides(
            tiny_model_dir,
            server.url,
            **{
                "task.initial_rubric": "prompts/essay_writing/rubrics/oracle.md",
                "schedule.iterations": 1,
                "schedule.meta_every": 0,
            },
        ),
        tmp_path / "run",
    )
    (version,) = RubricStore(run_dir.rubrics_dir).versions()
    assert version.items == 3 and (version.low, version.high) == (0, 15)
    calls = (run_dir.root / "calls" / "judge.jsonl").read_text().splitlines()
    assert len(calls) == 8 * 3  # per-criterion judging: three calls per sample
    assert {json.loads(c)["metadata"]["criterion"] for c in calls} == {1, 2, 3}
    assert not (run_dir.root / "calls" / "meta_judge.jsonl").exists()


def test_unreadable_initial_rubric_is_a_config_error(tmp_path):
    bad = tmp_path / "rubric.md"
    bad.write_text("Be nice to the student.")
    with pytest.raises(ConfigError, match="task.initial_rubric: .* is not a rubric"):
        build_task(TaskConfig(initial_rubric=bad)).initial_rubric()
