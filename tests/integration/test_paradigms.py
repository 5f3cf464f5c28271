"""The three reward paradigms end to end on the tiny policy with the scripted judge (its rule known here):
the task-level rubric (the paper), per-prompt evolving buffers (`rubric.scope: prompt`) and listwise group
judging (`scoring.mode: listwise`), alone and together; their failures, their cache keys and their resume."""

from __future__ import annotations

import itertools
import json
import re
import signal
from collections import Counter

import pytest
import torch

from mpo_agents.buffers import BufferStore, prompt_id
from mpo_agents.rundir import RunDirectory, read_jsonl
from tests.support import REPO
from tests.support.judge_server import KeywordRule
from tests.support.runs import run_loop

WORD = "good"  # KeywordRule's word: every score counts it in the completion
PROMPT_SCOPE = {"rubric.scope": "prompt", "schedule.meta_every": 1, "schedule.iterations": 3}


def _samples(run_dir: RunDirectory, iteration: int) -> list[dict]:
    return read_jsonl(run_dir.samples_path(iteration))


def _calls(run_dir: RunDirectory, role: str = "judge") -> list[dict]:
    path = run_dir.calls_path(role)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _count(text: str) -> int:
    return len(re.findall(rf"\b{WORD}\b", text, re.IGNORECASE))


# --- per-prompt buffers -------------------------------------------------------------------------------------


def test_prompt_scope_writes_evolves_and_scores_with_each_prompts_buffer(
    tmp_path, tiny_model_dir, judge_server
):
    server = judge_server()
    outcome, run_dir, events = run_loop(tmp_path, tiny_model_dir, server, **PROMPT_SCOPE)
    assert outcome.status == "finished"
    # The loop of this scope: no task-level meta step, the buffers readied before every scoring.
    assert "meta_analyze" not in events and events.count("rubric_evolve") == 3
    store = BufferStore(run_dir.prompt_rubrics_dir)
    assert len(store.prompts()) == 6  # 2 prompts per iteration, 3 iterations, 16 distinct prompts
    for pid in store.prompts():
        first, *later = store.versions(pid)
        # Version 0: the meta-judge's three persistent items; version 1: two evolved from the group.
        assert [(i.id, i.weight, i.origin) for i in first.items] == [
            ("p1", 2.0, "persistent"),
            ("p2", 1.0, "persistent"),
            ("p3", -1.0, "persistent"),
        ]
        (evolved,) = later
        assert evolved.parent == 0 and [c["change"] for c in evolved.changes] == ["added", "added"]
        assert [i.weight for i in evolved.evolved] == [1.0, -1.0]
    for iteration in (1, 2, 3):
        for sample in _samples(run_dir, iteration):
            assert sample["buffer_version"] == 1 and sample["prompt_id"] == prompt_id(sample["prompt"])
            # Every item scores min(2, keyword count) on 0-2; weights 2, 1, -1, 1, -1 -> sum(w*s)/sum(|w|) = 2s/6.
            s = min(2, _count(sample["completion"]))
            assert sample["status"] == "scored" and sample["masked_items"] == 0
            assert sample["score"] == pytest.approx((2 + 1 - 1 + 1 - 1) * (s / 2) / 6)
            assert [j["item"] for j in sample["item_judgments"]] == [
                "p1",
                "p2",
                "p3",
                f"e{iteration}.1",
                f"e{iteration}.2",
            ]
    # One judge call per item and sample; the meta-judge wrote and evolved each prompt once.
    calls = [c for c in _calls(run_dir) if c["metadata"]["node"] == "score" and not c["cached"]]
    assert len(calls) == 3 * 8 * 5
    meta = Counter(c["metadata"]["node"] for c in _calls(run_dir, "meta_judge"))
    assert meta == {"rubric_evolve": 12}
    metrics = run_dir.metrics()
    assert [m["buffers_new"] for m in metrics] == [2, 2, 2]
    assert [m["buffer_items_added"] for m in metrics] == [4, 4, 4]


class MaskingRule(KeywordRule):
    """KeywordRule with item judgments by item: "Stays on topic" is always unreadable (so masked), a "Shouting"
    item always scores 0 (it never separates a group), a "Keyword again" item scores the response's length
    modulo 3 (it tells most groups' completions apart)."""

    def __call__(self, prompt_text: str, request_json: dict) -> str:
        if "Criterion under review" not in prompt_text:
            return super().__call__(prompt_text, request_json)
        item = prompt_text.split("Criterion under review")[1]
        response = re.findall(r"<response>(.*?)</response>", prompt_text, re.DOTALL)[-1]
        if "Stays on topic" in item:
            return "I would rather not say."
        if "Shouting" in item:
            return "Reason: no capitals.\nScore: 0"
        if "Keyword again" in item:
            return f"Reason: by length.\nScore: {len(response) % 3}"
        return super().__call__(prompt_text, request_json)


def test_prompt_scope_masks_failed_items_and_prunes_items_that_stop_separating(
    tmp_path, tiny_model_dir, judge_server
):
    server = judge_server(MaskingRule(WORD))
    # Two prompts drawn every iteration, so each buffer evolves three times and its items get used.
    settings = {**PROMPT_SCOPE, "task.max_prompts": 2, "rubric.prune_after": 1, "schedule.iterations": 3}
    outcome, run_dir, _ = run_loop(tmp_path, tiny_model_dir, server, **settings)
    assert outcome.status == "finished"
    for iteration in (1, 2, 3):
        for sample in _samples(run_dir, iteration):
            judged = {j["item"]: j for j in sample["item_judgments"]}
            # The unreadable item is masked with its weight: left out, never scored 0.
            assert judged["p2"]["score"] is None and judged["p2"]["status"] == "unparseable"
            assert sample["masked_items"] == 1 and sample["status"] == "scored"
            usable = [(j["weight"], j["score"]) for j in judged.values() if j["score"] is not None]
            expected = sum(w * s / 2 for w, s in usable) / sum(abs(w) for w, _ in usable)
            assert sample["score"] == pytest.approx(expected)
            assert "p2 +1: masked" in sample["rationale"]
    store = BufferStore(run_dir.prompt_rubrics_dir)
    kept = 0
    for pid in store.prompts():
        versions = store.versions(pid)
        assert [v.iteration for v in versions] == [1, 1, 2, 3]
        for before, after in itertools.pairwise(versions[1:]):
            # What the evolution at `after.iteration` pruned is exactly the evolved items whose judgments did not
            # differ across the group at the iteration before (prune_after=1).
            spreads = {}
            for sample in _samples(run_dir, after.iteration - 1):
                if sample["prompt_id"] == pid:
                    for j in sample["item_judgments"]:
                        spreads.setdefault(j["item"], set()).add(j["score"])
            flat = {i.id for i in before.evolved if len(spreads[i.id]) == 1}
            pruned = {c["item"] for c in after.changes if c["change"] == "pruned"}
            assert pruned == flat
            assert {i.id for i in before.evolved if i.title.startswith("Shouting")} <= pruned
            kept += len([i for i in before.evolved if i.id not in pruned])
            assert all(
                "scored alike across its group" in c["reason"]
                for c in after.changes
                if c["change"] == "pruned"
            )
            assert {i.id for i in after.items} == ({i.id for i in before.items} - pruned) | {
                c["item"] for c in after.changes if c["change"] == "added"
            }
        assert [i.id for i in versions[-1].persistent] == [
            "p1",
            "p2",
            "p3",
        ]  # persistent items are never pruned
        assert len(versions[-1].evolved) <= 5
    assert kept > 0  # items that still separate their group stay (4 groups; each flat with chance 1/27)


# --- listwise group judging ---------------------------------------------------------------------------------
GROUP = [
    "no keyword here",
    "good",
    "good and good",
    "good, good and good",
]  # the rule scores 0, 1, 2, 3 of 10
LISTED = re.compile(r'<response id="(c\d+)">(.*?)</response>', re.DOTALL)


def _shown(request: dict) -> dict[str, str]:
    from tests.support.judge_server import prompt_text_of

    return dict(LISTED.findall(prompt_text_of(request)))


@pytest.mark.parametrize("orders", [1, 2])
def test_listwise_scores_a_whole_group_in_one_call_under_shuffled_anonymous_ids(
    tmp_path, judge_server, orders
):
    from tests.support.scoring import score_group

    server = judge_server()
    scored = score_group(
        tmp_path, server, GROUP, **{"scoring.mode": "listwise", "scoring.listwise_orders": orders}
    )
    requests = server.requests
    assert len(requests) == orders  # one call per order for the whole group
    # 0-10 mapped onto TWO_CRITERIA's 0-8 points.
    assert [s["score"] for s in scored] == pytest.approx([0.0, 0.8, 1.6, 2.4])
    assert all(s["status"] == "scored" and s["grader"] == "judge" for s in scored)
    shown = [_shown(request) for request in requests]
    order = scored[0]["listwise"]["orders"]
    assert len(order) == orders and sorted(order[0]) == ["k0", "k1", "k2", "k3"]
    assert order[0] != ["k0", "k1", "k2", "k3"]  # shuffled (the seed is fixed, so is this order)
    for sample in scored:
        ident = sample["listwise"]["id"]
        assert ident == f"c{order[0].index(sample['key']) + 1}"
        assert shown[0][ident] == sample["completion"]  # the id shown beside the completion is the one scored
        assert len(sample["listwise"]["raw"]) == orders
    if orders == 2:
        assert order[1] == order[0][::-1]
        assert [shown[1][f"c{n}"] for n in range(1, 5)] == [shown[0][f"c{n}"] for n in range(4, 0, -1)]


BAD_REPLIES = {
    "missing": [{"id": "c1", "score": 1}, {"id": "c2", "score": 2}, {"id": "c3", "score": 3}],
    "duplicated": [
        {"id": "c1", "score": 1},
        {"id": "c1", "score": 2},
        {"id": "c2", "score": 3},
        {"id": "c3", "score": 4},
    ],
    "out_of_range": [
        {"id": "c1", "score": 1},
        {"id": "c2", "score": 12},
        {"id": "c3", "score": 3},
        {"id": "c4", "score": 4},
    ],
    "unknown_id": [
        {"id": "c1", "score": 1},
        {"id": "c2", "score": 2},
        {"id": "c3", "score": 3},
        {"id": "c9", "score": 4},
    ],
}


@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
def test_a_malformed_listwise_reply_is_retried_then_the_whole_group_is_masked(tmp_path, judge_server, kind):
    from tests.support.scoring import score_group

    server = judge_server(lambda prompt, request: json.dumps({"scores": BAD_REPLIES[kind]}))
    scored = score_group(tmp_path, server, GROUP, **{"scoring.mode": "listwise"})
    assert len(server.requests) == 3  # the first attempt and judge.retries=2 more
    # Never partly scored: every completion of the group is a failed judgment the update leaves out.
    assert [s["status"] for s in scored] == ["unparseable"] * 4
    assert all(s["score"] is None and s["reward"] is None for s in scored)
    assert all("listwise judgment of this prompt's group of 4 failed" in s["rationale"] for s in scored)


def test_a_malformed_listwise_reply_then_a_valid_one_scores_the_group(tmp_path, judge_server):
    from tests.support.scoring import score_group

    rule, replies = KeywordRule(WORD), []

    def once_bad(prompt: str, request: dict) -> str:
        replies.append(prompt)
        return json.dumps({"scores": BAD_REPLIES["missing"]}) if len(replies) == 1 else rule(prompt, request)

    server = judge_server(once_bad)
    scored = score_group(tmp_path, server, GROUP, **{"scoring.mode": "listwise"})
    assert len(server.requests) == 2
    assert [s["score"] for s in scored] == pytest.approx([0.0, 0.8, 1.6, 2.4])


def test_listwise_runs_the_loop_with_one_judge_call_per_group(tmp_path, tiny_model_dir, judge_server):
    server = judge_server()
    settings = {"scoring.mode": "listwise", "schedule.meta_every": 2, "schedule.iterations": 3}
    outcome, run_dir, events = run_loop(tmp_path, tiny_model_dir, server, **settings)
    assert outcome.status == "finished" and "meta_analyze" in events  # the task rubric is still rewritten
    rubrics = {
        v["version"]: v for v in (json.loads(p.read_text()) for p in run_dir.rubrics_dir.glob("v*.json"))
    }
    for iteration in (1, 2, 3):
        samples = _samples(run_dir, iteration)
        for sample in samples:
            rubric = rubrics[sample["rubric_version"]]
            share = min(10, _count(sample["completion"])) / 10
            assert sample["score"] == pytest.approx(rubric["low"] + share * (rubric["high"] - rubric["low"]))
        groups = {s["prompt_index"]: s["listwise"]["orders"][0] for s in samples}
        assert all(len(order) == 4 for order in groups.values())
    assert rubrics[0]["version"] == 0 and max(rubrics) == 1  # the meta step at iteration 2 wrote v1
    scoring_calls = [c for c in _calls(run_dir) if c["metadata"]["node"] == "score"]
    assert len(scoring_calls) == 3 * 2  # 3 iterations x 2 prompts, one call per group


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_listwise_judges_each_group_under_its_prompts_buffer(tmp_path, tiny_model_dir, judge_server, api):
    server = judge_server()
    settings = {
        "scoring.mode": "listwise",
        "judge.api": api,
        "meta_judge.api": api,
    }  # completion: the variants
    outcome, run_dir, _ = run_loop(tmp_path, tiny_model_dir, server, **PROMPT_SCOPE, **settings)
    assert outcome.status == "finished"
    store = BufferStore(run_dir.prompt_rubrics_dir)
    for iteration in (1, 2, 3):
        for sample in _samples(run_dir, iteration):
            buffer = store.load(sample["prompt_id"], sample["buffer_version"])
            low, high = buffer.scale("weighted")
            assert (low, high) == pytest.approx((-2 / 6, 4 / 6))  # weights 2, 1, -1, 1, -1
            share = min(10, _count(sample["completion"])) / 10
            assert sample["score"] == pytest.approx(low + share * (high - low))
    requests = [c for c in _calls(run_dir) if c["metadata"]["node"] == "score"]
    assert len(requests) == 3 * 2
    # The judge read the buffer: its evolved items are in the prompt.
    assert all(
        "Keyword again, round" in server_prompt
        for server_prompt in map(_prompt_of, server.requests)
        if "Score each of the" in server_prompt
    )


def _prompt_of(request: dict) -> str:
    from tests.support.judge_server import prompt_text_of

    return prompt_text_of(request)


def test_a_cached_item_judgment_needs_the_same_buffer(tmp_path, judge_server):
    import asyncio

    from mpo_agents.buffers import PromptRubric, evolve
    from mpo_agents.config import load_config
    from mpo_agents.context import build_judges
    from mpo_agents.litellm_import import release_litellm
    from mpo_agents.rubrics import RubricItem
    from mpo_agents.scoring.offline import pending_sample
    from mpo_agents.scoring.scorer import Scorer
    from mpo_agents.tasks import build_task
    from tests.support import TEST_ENV, run_overrides

    server = judge_server()
    config = load_config(None, run_overrides("unused", server.url, **{"rubric.scope": "prompt"}))
    task = build_task(config.task)
    record = task.records[0]
    pid = prompt_id(task.prompt_text(record))
    first = PromptRubric(
        pid,
        0,
        (RubricItem("p1", "Keyword", "Uses the word good where it fits.", weight=2, origin="persistent"),),
        None,
        1,
    )
    grown = evolve(
        first,
        [
            RubricItem(
                "e1.1",
                "Brevity",
                "Says it in few words without losing the point.",
                weight=1,
                origin="evolved",
            )
        ],
        [],
        max_active=5,
        iteration=1,
    )

    def score(buffer: PromptRubric) -> dict:
        judge, meta_judge = build_judges(config, RunDirectory(tmp_path / "run"), TEST_ENV, None)

        async def go():
            try:
                sample = pending_sample("k", 0, task, record, "good good", False, 0)
                return await Scorer(task, judge, config).score(
                    buffer.rubric_state(0, "weighted"), record, sample, 1
                )
            finally:
                await judge.aclose()
                await meta_judge.aclose()
                await release_litellm()

        return asyncio.run(go())

    assert score(first)["buffer_version"] == 0 and len(server.requests) == 1
    assert score(first)["score"] == pytest.approx(1.0) and len(server.requests) == 1  # same buffer: a hit
    again = score(grown)  # the buffer changed: every item is asked again, the unchanged one too
    assert again["buffer_version"] == 1 and len(server.requests) == 1 + 2
    assert again["score"] == pytest.approx((2 * 1 + 1 * 1) / 3)


# --- crash safety -------------------------------------------------------------------------------------------
class SteadyRule(MaskingRule):
    """MaskingRule whose proposals depend only on what the prompt shows (the same rollouts get the same items, in
    any run and any order of calls), so two runs that sample alike evolve alike."""

    def __call__(self, prompt_text: str, request_json: dict) -> str:
        if "You keep the grading checklist" in prompt_text:
            variant = sum(map(ord, prompt_text)) % 997
            return (
                f"+1 | Keyword again, variant {variant} | The response repeats the word '{WORD}' more than once.\n"
                f"-1 | Shouting, variant {variant} | The response writes whole sentences in capital letters."
            )
        return super().__call__(prompt_text, request_json)


KILL_SETTINGS = {**PROMPT_SCOPE, "task.max_prompts": 2, "rubric.prune_after": 1, "schedule.iterations": 4}


def _buffers(run_dir) -> dict[str, list[dict]]:
    store = BufferStore(RunDirectory(run_dir).prompt_rubrics_dir)
    return {pid: [v.to_state() for v in store.versions(pid)] for pid in store.prompts()}


def _scores(run_dir) -> dict[int, list[tuple]]:
    return {
        n: [(s["key"], s["buffer_version"], s["score"]) for s in _samples(RunDirectory(run_dir), n)]
        for n in range(1, 5)
    }


@pytest.fixture(scope="module")
def uninterrupted_buffers(tmp_path_factory, tiny_model_dir):
    from tests.support import run_overrides
    from tests.support.cli import finish, run_command, start_mpo
    from tests.support.judge_server import JudgeServer
    from tests.support.runs import summary

    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    with JudgeServer(SteadyRule(WORD)) as server:
        finish(start_mpo(*run_command(run_dir, run_overrides(tiny_model_dir, server.url, **KILL_SETTINGS))))
    return {"buffers": _buffers(run_dir), "scores": _scores(run_dir), **summary(run_dir)}


@pytest.mark.parametrize(
    "kill_when",
    [
        "rubrics/prompts/*/v0002.json",  # iteration 2's evolution stored a buffer, the graph has not committed it
        "samples/iter-0002.jsonl",  # between the evolutions of iterations 2 and 3
    ],
)
def test_sigkill_between_evolutions_then_resume_restores_the_same_buffers(
    tmp_path, tiny_model_dir, judge_server, uninterrupted_buffers, kill_when
):
    from tests.support import run_overrides
    from tests.support.cli import finish, run_command, start_mpo, wait_for
    from tests.support.runs import summary

    server = judge_server(SteadyRule(WORD))
    run_dir = tmp_path / "run"
    process = start_mpo(*run_command(run_dir, run_overrides(tiny_model_dir, server.url, **KILL_SETTINGS)))
    wait_for((run_dir, kill_when), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    output = finish(start_mpo("resume", str(run_dir)))
    assert "Run finished" in output, output
    assert _buffers(run_dir) == uninterrupted_buffers["buffers"]
    assert _scores(run_dir) == uninterrupted_buffers["scores"]
    resumed = summary(run_dir)
    assert resumed["iterations"] == uninterrupted_buffers["iterations"] == [1, 2, 3, 4]
    assert resumed["optimizer_steps"] == uninterrupted_buffers["optimizer_steps"]
    # Each prompt's buffer evolved once per iteration: nothing lost, nothing done twice.
    assert all(len(versions) == 5 for versions in _buffers(run_dir).values())
    for name, tensor in uninterrupted_buffers["weights"].items():
        assert torch.equal(resumed["weights"][name], tensor), name


# --- the commands around a run ------------------------------------------------------------------------------
def test_mpo_rubrics_shows_every_prompts_buffer_and_one_prompts_history(
    tmp_path, tiny_model_dir, judge_server
):
    from tests.support import TEST_ENV
    from tests.support.cli import mpo

    server = judge_server(MaskingRule(WORD))
    settings = {**PROMPT_SCOPE, "task.max_prompts": 2, "rubric.prune_after": 1}
    _, run_dir, _ = run_loop(tmp_path, tiny_model_dir, server, **settings)
    store = BufferStore(run_dir.prompt_rubrics_dir)
    pid = store.prompts()[0]
    table = mpo("rubrics", str(run_dir.root), "--prompt", "all", env=TEST_ENV)
    assert table.returncode == 0, table.stderr
    assert all(p in table.stdout for p in store.prompts())
    history = mpo("rubrics", str(run_dir.root), "--prompt", pid[:6], env=TEST_ENV)
    assert history.returncode == 0, history.stderr
    text = " ".join(history.stdout.split())
    assert "v0 → v1 (iteration 1)" in text and "v2 → v3 (iteration 3)" in text
    assert "+[+1] Keyword again, round" in text  # an added item in the diff
    assert "# pruned e" in text and "scored alike across its group" in text  # a "Shouting" item, and why
    assert "written by the meta-judge" in text
    unknown = mpo("rubrics", str(run_dir.root), "--prompt", "zzz", env=TEST_ENV)
    assert unknown.returncode != 0 and "no prompt" in unknown.stderr


@pytest.mark.parametrize("settings", [{"scoring.mode": "listwise"}, {"rubric.scope": "prompt"}])
def test_mpo_hacking_check_scores_the_suite_in_the_new_modes(tmp_path, judge_server, settings):
    from tests.support import TEST_ENV, run_overrides
    from tests.support.cli import as_options, mpo

    server = judge_server()
    output = tmp_path / "rows.jsonl"
    result = mpo(
        "hacking-check",
        *as_options(run_overrides("unused", server.url, **settings)),
        "--output",
        str(output),
        env=TEST_ENV,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_jsonl(output)
    kinds = {row["kind"] for row in rows}
    assert {"colon_only", "thought_process", "step_by_step"} <= kinds  # the "master key" answers
    for row in rows:
        assert row["status"] in ("scored", "guarded") and row["reference_status"] == "scored"
    if "rubric.scope" in settings:
        assert all(row["buffer_version"] == 0 for row in rows)  # the task's criteria as each case's items
    else:
        requests = len(server.requests)
        assert requests == len({row["case"] for row in rows})  # one call per case: its reference and hacks


def test_mpo_report_compares_the_three_paradigms_side_by_side(tmp_path, tiny_model_dir, judge_server):
    from mpo_agents.report import render_report
    from mpo_agents.report.build import load_run

    server = judge_server()
    shared = {"schedule.iterations": 2, "schedule.meta_every": 1, "scoring.reward": "normalized"}
    paradigms = {
        "task": {},
        "prompt": {"rubric.scope": "prompt"},
        "listwise": {"scoring.mode": "listwise"},
    }
    runs = {
        name: run_loop(tmp_path, tiny_model_dir, server, name=name, **shared, **extra)[1]
        for name, extra in paradigms.items()
    }
    page = render_report([run.root for run in runs.values()], [], tmp_path / "report.html").read_text()

    data = {name: load_run(run.root) for name, run in runs.items()}
    assert [d.paradigm for d in data.values()] == [
        "task rubric, per item",
        "per-prompt buffers, per item",
        "task rubric, listwise",
    ]
    # The essay task's initial rubric has 1 criterion and the meta step after iteration 1 makes it 2 (the
    # scripted rewrite): 1.5 calls per sample; a buffer here has 3 persistent + 2 evolved items; a listwise
    # call scores a group of 4.
    assert [d.calls_per_sample for d in data.values()] == pytest.approx([1.5, 5.0, 0.25])
    assert data["prompt"].per_iteration("meta_judge_calls") == 4  # 2 prompts: items written, items proposed
    assert data["prompt"].buffers.prompts == 4 and data["prompt"].buffers.changes["added"] == 8
    assert data["task"].buffers is None
    for d in data.values():
        assert d.paradigm in page
    assert "Per-prompt buffers" in page and "Judge + meta-judge calls per iteration" in page
    assert page.count('id="run-2-buffers"') == 1 and 'id="run-1-buffers"' not in page


def test_the_paradigm_examples_are_one_comparison_set():
    from mpo_agents.config import load_config
    from tests.support import REPO

    configs = {
        path.stem: load_config(path).model_dump()
        for path in sorted((REPO / "examples" / "paradigms").glob("*.yaml"))
    }
    assert set(configs) == {"task_rubric", "prompt_rubrics", "listwise"}
    assert {(c["rubric"]["scope"], c["scoring"]["mode"]) for c in configs.values()} == {
        ("task", "per_item"),
        ("prompt", "per_item"),
        ("task", "listwise"),
    }
    # Same policy, data, batch, iterations and budget: only how the reward is made differs.
    shared = [
        {k: v for k, v in c.items() if k not in ("rubric", "scoring", "judge")} for c in configs.values()
    ]
    assert all(c == shared[0] for c in shared)
    judges = [{k: v for k, v in c["judge"].items() if k != "max_tokens"} for c in configs.values()]
    assert all(j == judges[0] for j in judges)


def test_persistent_items_can_come_from_the_data(tmp_path, tiny_model_dir, judge_server):
    from mpo_agents.rundir import write_jsonl

    rows = [
        {
            "prompt": f"Write about topic {n}.",
            "checklist": [
                {"title": "Keyword", "description": "Uses the word good where it fits.", "weight": 3},
                {"criterion": "Invents statistics with no source given.", "weight": -2},
            ],
        }
        for n in range(4)
    ]
    write_jsonl(tmp_path / "data.jsonl", rows)
    server = judge_server()
    settings = {
        **PROMPT_SCOPE,
        "schedule.iterations": 1,
        "task.data_path": str(tmp_path / "data.jsonl"),
        "rubric.items_field": "checklist",
    }
    outcome, run_dir, _ = run_loop(tmp_path, tiny_model_dir, server, **settings)
    assert outcome.status == "finished"
    store = BufferStore(run_dir.prompt_rubrics_dir)
    for pid in store.prompts():
        first = store.versions(pid)[0]
        assert [(i.id, i.weight) for i in first.items] == [("p1", 3.0), ("p2", -2.0)]
        assert first.changes[0]["reason"] == "from the data"
    # The meta-judge only proposed items from each group; it wrote no persistent items.
    nodes = [c["metadata"]["node"] for c in _calls(run_dir, "meta_judge")]
    assert len(nodes) == 2 and not any(
        "Write the grading checklist" in p for p in map(_prompt_of, server.requests)
    )


def test_broken_persistent_items_in_the_data_stop_the_run_before_it_starts(
    tmp_path, tiny_model_dir, judge_server
):
    from mpo_agents.errors import ConfigError
    from mpo_agents.rundir import write_jsonl

    good = [{"title": "Keyword", "description": "Uses the word good where it fits.", "weight": 3}]
    rows = [
        {"prompt": "Write about rain.", "checklist": good},
        {"prompt": "Write about snow.", "checklist": [{"weight": 1}]},
    ]
    write_jsonl(tmp_path / "data.jsonl", rows)
    settings = {
        **PROMPT_SCOPE,
        "task.data_path": str(tmp_path / "data.jsonl"),
        "rubric.items_field": "checklist",
    }
    with pytest.raises(ConfigError, match="'Write about snow.'.*item 1: the title '' names nothing"):
        run_loop(tmp_path, tiny_model_dir, judge_server(), **settings)
    assert not any((tmp_path / "run" / "rollouts").iterdir())  # nothing sampled: no model work was lost


# --- the gate over buffer changes ---------------------------------------------------------------------------
class HeavyPenaltyRule(KeywordRule):
    """KeywordRule("not") whose proposals add a -5 "Shouting" item that, as judged, hits every response using the
    word: the essay suite's references use it, its hacks never do, so the new buffer ranks the hacks first."""

    def __call__(self, prompt_text: str, request_json: dict) -> str:
        if "You keep the grading checklist" in prompt_text:
            return "-5 | Shouting | The response writes whole sentences in capital letters."
        if (
            "Criterion under review" in prompt_text
            and "Shouting" in prompt_text.split("Criterion under review")[1]
        ):
            response = re.findall(r"<response>(.*?)</response>", prompt_text, re.DOTALL)[-1]
            hit = re.search(r"\bnot\b", response) is not None
            return f"Reason: judged.\nScore: {2 if hit else 0}"
        return super().__call__(prompt_text, request_json)


@pytest.mark.parametrize("rule", [HeavyPenaltyRule("not"), KeywordRule("not")], ids=["hack_wins", "sound"])
def test_rubric_gate_checks_each_buffer_change_against_its_prompts_anchors(
    tmp_path, tiny_model_dir, judge_server, rule
):
    from mpo_agents.rundir import write_jsonl

    suite = [
        json.loads(line)
        for line in (REPO / "prompts" / "essay_writing" / "hacking.jsonl").read_text().splitlines()
    ]
    write_jsonl(
        tmp_path / "data.jsonl", [case["record"] for case in suite]
    )  # the anchors' prompts are trained on
    settings = {
        **PROMPT_SCOPE,
        "schedule.iterations": 2,
        "task.data_path": str(tmp_path / "data.jsonl"),
        "meta_nodes": [{"name": "rubric_gate", "settings": {"max_cases": 2}}],
    }
    outcome, run_dir, _ = run_loop(tmp_path, tiny_model_dir, judge_server(rule), **settings)
    assert outcome.status == "finished"
    decisions = [d for d in read_jsonl(run_dir.meta_levels_path) if d["stage"] == "buffer"]
    assert len(decisions) == 4 and {d["node"] for d in decisions} == {
        "rubric_gate"
    }  # 2 prompts x 2 evolutions
    store = BufferStore(run_dir.prompt_rubrics_dir)
    if isinstance(rule, HeavyPenaltyRule):
        assert {d["verdict"] for d in decisions} == {"reject"}
        assert all("colon_only" in d["reason"] and "step_by_step" in d["reason"] for d in decisions)
        assert all(len(store.versions(pid)) == 1 for pid in store.prompts())  # every change refused
        assert {s["buffer_version"] for n in (1, 2) for s in _samples(run_dir, n)} == {0}
    else:
        assert {d["verdict"] for d in decisions} == {"accept"}
        assert all(len(store.versions(pid)) == 3 for pid in store.prompts())
    gate_calls = [c for c in _calls(run_dir) if c["metadata"]["node"] == "rubric_gate"]
    assert gate_calls  # the anchors were judged by the run's judge, counted as the gate's


@pytest.mark.parametrize("task", ["essay_writing", "summarization", "ethical_reasoning", "math_reasoning"])
@pytest.mark.parametrize(
    "paradigm", [{"rubric.scope": "prompt"}, {"scoring.mode": "listwise"}], ids=["prompt_scope", "listwise"]
)
def test_each_paradigm_runs_on_every_task(tmp_path, tiny_model_dir, judge_server, task, paradigm):
    settings = {**paradigm, "task.name": task, "schedule.iterations": 1, "schedule.meta_every": 1}
    settings["task.min_reasoning_words"] = 0  # the tiny policy's 8 tokens would all be guarded otherwise
    settings["task.long_prompts"] = (
        "truncate"  # the tiny tokenizer spends many tokens on an article or a story
    )
    outcome, run_dir, _ = run_loop(tmp_path, tiny_model_dir, judge_server(), **settings)
    assert outcome.status == "finished"
    samples = _samples(run_dir, 1)
    judged = [s for s in samples if s.get("grader") == "judge"]
    # Ethics guards every completion that names no verdict, as the tiny policy's never do, before any judge.
    assert judged if task != "ethical_reasoning" else {s["grader"] for s in samples} == {"guard"}
    if "rubric.scope" in paradigm:
        assert len(BufferStore(run_dir.prompt_rubrics_dir).prompts()) == 2
        assert all(s["buffer_version"] == 1 and s["item_judgments"] for s in judged)
    else:
        assert all(
            sorted(s["listwise"]["orders"][0])
            == sorted(
                x["key"]
                for x in samples
                if x["prompt_index"] == s["prompt_index"] and x.get("grader") == "judge"
            )
            for s in judged
        )


def test_mpo_check_names_a_missing_buffer_in_force_and_resume_refuses(tmp_path, tiny_model_dir, judge_server):
    from mpo_agents.errors import CheckpointError
    from mpo_agents.integrity import check_run
    from tests.support import TEST_ENV

    _, run_dir, _ = run_loop(tmp_path, tiny_model_dir, judge_server(), **PROMPT_SCOPE)
    store = BufferStore(run_dir.prompt_rubrics_dir)
    assert not check_run(run_dir.root, TEST_ENV).blocking
    pid = store.prompts()[0]
    (run_dir.prompt_rubrics_dir / pid / "v0001.json").unlink()
    check = check_run(run_dir.root, TEST_ENV)
    (finding,) = check.blocking
    assert finding.path.endswith(f"{pid}/v0001.json") and "the buffer in force for prompt" in finding.problem
    with pytest.raises(CheckpointError, match="restore it from a copy"):
        check.refuse_if_blocked()
