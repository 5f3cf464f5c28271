"""The judge's bill for one iteration under each reward paradigm, on the essay task with the paper's batch shape
scaled to this machine: 8 prompts x 8 completions = 64 samples (the paper's global batch is 64).

- task rubric, per item (the paper, our default): one judge call per criterion and sample, under a 5-criterion
  task rubric (`prompts/essay_writing/rubrics/expert.md`, what a grown MPO rubric looks like; the task's
  initial rubric has 1 criterion); the meta-judge's rewrite every `schedule.meta_every` iterations is not in
  the iteration's bill (the paper rewrites every 20).
- per-prompt buffers (`rubric.scope: prompt`, RLER-style, evolving every iteration as RLER does): the
  meta-judge writes each new prompt's persistent items once and proposes new items from each prompt's group;
  then one judge call per item and sample. In a run's first pass over its prompts every prompt is new, so the
  iteration measured holds both meta-judge calls per prompt, and buffers of 3 persistent + 2 evolved items
  (the scripted meta-judge's); a prompt drawn again later has up to `rubric.max_active` (5) evolved items.
- listwise (`scoring.mode: listwise`, RULER-style): one judge call per prompt's group, task rubric as above.

Every side runs the real loop (`mpo_agents.runner.execute`: rollout, the paradigm's nodes, score, update) with
a tiny local policy (or `--model`) against the scripted test judge (tests/support/judge_server.py) in a process
of its own, answering every call after `--latency` seconds (default 0.2), `judge.max_concurrency` 16, the
judgment cache off. Each run has 2 iterations; iteration 2 is measured.
Tokens are counted in cl100k on each call's messages and reply from the run's call logs. Calls and tokens do
not vary between runs; wall seconds (the score node's judging, and the rubric_evolve node's meta-judge calls)
are medians of `--runs` runs per side (default 3) in the mirrored order A B C C B A ....

Printed last: each paradigm's judge seconds over the per-item task rubric's.

    python benchmarks/bench_paradigms.py [--runs 3] [--latency 0.2] [--prompts 8] [--generations 8] [--model DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from judge_bench import judge_server_process
from loop_bench import loop_overrides

from mpo_agents.config import load_config
from mpo_agents.rubrics import count_tokens
from mpo_agents.rundir import RunDirectory, read_jsonl
from mpo_agents.runner import execute, new_run_dir

EXPERT = REPO / "prompts" / "essay_writing" / "rubrics" / "expert.md"
PARADIGMS = {
    "task rubric, per item": [f"task.initial_rubric={EXPERT}", "scoring.mode=per_item"],
    "per-prompt buffers": ["rubric.scope=prompt", "schedule.meta_every=1", "scoring.mode=per_item"],
    "listwise": [f"task.initial_rubric={EXPERT}", "scoring.mode=listwise"],
}
BASELINE = "task rubric, per item"


def run_once(name: str, model: str, url: str, args: argparse.Namespace, root: Path) -> dict[str, dict]:
    """One 2-iteration run of a paradigm: per iteration its judge and meta-judge calls, tokens and seconds."""
    sets = loop_overrides(model, 48, url, iterations=2, generations=args.generations, prompts=args.prompts)
    sets += [
        "judge.max_concurrency=16",
        "meta_judge.max_concurrency=16",
        "judge.cache=false",
        *PARADIGMS[name],
    ]
    config = load_config(None, sets)
    run_dir = new_run_dir(config, root / name.replace(" ", "-").replace(",", ""))
    outcome = execute(config, run_dir, dict(os.environ), fresh=True)
    assert outcome.status == "finished", outcome
    per_iteration: dict[int, dict] = defaultdict(lambda: defaultdict(float))
    for role in ("judge", "meta_judge"):
        for call in read_jsonl(run_dir.calls_path(role)) if run_dir.calls_path(role).exists() else []:
            if call["attempt"] == 0:
                continue
            text = "\n".join(m["content"] for m in call["messages"] or []) or call["prompt"] or ""
            tally = per_iteration[call["metadata"]["iteration"]]
            tally[f"{role}_calls"] += 1
            tally[f"{role}_tokens"] += count_tokens(text) + count_tokens(call["reply"] or "")
    for metrics in RunDirectory(run_dir.root).metrics():
        per_iteration[metrics["iteration"]]["judge_seconds"] = metrics["judge_seconds"]
    for record in read_jsonl(run_dir.timings_path):
        if record["node"] == "rubric_evolve":
            per_iteration[record["iteration"]]["meta_seconds"] += record["seconds"]
    samples = len(read_jsonl(run_dir.samples_path(2)))
    assert all(s["status"] == "scored" for s in read_jsonl(run_dir.samples_path(2))), "a judgment failed"
    return {iteration: {**tally, "samples": samples} for iteration, tally in per_iteration.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--model", default=None, help="the policy; default: a tiny model built here")
    args = parser.parse_args()
    os.environ["BENCH_KEY"] = "sk-bench"
    names = list(PARADIGMS)
    order = list(itertools.islice(itertools.cycle(names + names[::-1]), args.runs * len(names)))
    results: dict[str, list[dict]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as scratch, judge_server_process(args.latency) as url:
        model = args.model
        if model is None:
            from tests.support.tiny_model import build_tiny_model

            model = str(build_tiny_model(Path(scratch) / "tiny"))
        # Warm-up (imports, the first run's one-off costs), not measured.
        run_once(BASELINE, model, url, args, Path(scratch) / "warm-up")
        for number, name in enumerate(order):
            results[name].append(run_once(name, model, url, args, Path(scratch) / f"run-{number}"))
            print(f"  run {number + 1}/{len(order)}: {name}", flush=True)

    print(
        f"\n{args.prompts} prompts x {args.generations} completions, judge latency {args.latency} s, iteration 2:"
    )
    header = (
        f"{'paradigm':24} {'judge calls':>11} {'calls/sample':>12} {'judge tokens':>12} {'meta calls':>10}"
    )
    print(header + f" {'meta tokens':>11} {'judge s':>8} {'meta s':>7}")
    medians = {}
    for name in names:
        second = results[name][0][2]
        seconds = [run[2]["judge_seconds"] for run in results[name]]
        meta = [run[2].get("meta_seconds", 0.0) for run in results[name]]
        medians[name] = statistics.median(seconds)
        print(
            f"{name:24} {second['judge_calls']:>11.0f} {second['judge_calls'] / second['samples']:>12.2f} "
            f"{second['judge_tokens']:>12,.0f} {second.get('meta_judge_calls', 0):>10.0f} "
            f"{second.get('meta_judge_tokens', 0):>11,.0f} {medians[name]:>8.2f} {statistics.median(meta):>7.2f}"
        )
        print(f"{'':24} judge seconds per run: {', '.join(f'{s:.2f}' for s in seconds)}")
    print(json.dumps({name: results[name][0][2] for name in names}), file=sys.stderr)
    for name in names:
        if name != BASELINE:
            print(f"{name} judge seconds over {BASELINE}: {medians[name] / medians[BASELINE]:.2f}")


if __name__ == "__main__":
    main()
