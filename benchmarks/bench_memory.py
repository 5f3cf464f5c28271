"""Peak memory of the policy process over a quickstart-like run, against the floor its tensors need.

A 6-iteration run of the real loop (`mpo_agents.runner.execute`): SmolLM2-135M-Instruct (the quickstart's
policy, fp32 on CPU), 2 prompts x 4 generations, 48 new tokens, no meta steps, policy checkpoints at the
default cadence (`output.checkpoint_every`: so one, after the last iteration), and an instant judge (a local
OpenAI-compatible server in this process, reached through LiteLLM).
The run happens in a child process, so what is measured is that process's own memory. Printed per iteration:
`update_memory_mb` (resident size right after the update) and `update_peak_memory_mb` (the peak resident size
since the previous update), then the floor: weights + gradients + AdamW's two moments + TRL's frozen reference
copy, from the parameter count and dtype. The last lines are `peak: N MB` and `peak over floor: X`
(target: <= 2, and the per-iteration numbers flat).

`--phases` also prints, for each phase of each iteration (rollout, TRL's scoring passes, the loss forward,
backward, optimizer step, checkpoint), the resident size before and after and the peak within it (the
kernel's high-water mark, reset through /proc/self/clear_refs at each phase start; Linux only). The reset
also resets `update_peak_memory_mb`, which then reads as the peak since the last phase began.

    python benchmarks/bench_memory.py [--model smollm2-135m|DIR] [--iterations 6] [--tokens 48] [--phases]
                                      [--set policy.gradient_checkpointing=true ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loop_bench import judge_reply, loop_overrides

from mpo_agents.config import OutputConfig


def overrides(args: argparse.Namespace, url: str) -> list[str]:
    return [
        *loop_overrides(args.model, args.tokens, url, args.iterations),
        "policy.device=cpu",
        "output.keep_last=2",
        f"output.checkpoint_every={OutputConfig.model_fields['checkpoint_every'].default}",
        *args.set,
    ]


# --- the child: one run, measured ----------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Phases:
    """Per-phase resident size: before, after, and the kernel's high-water mark within the phase."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.iteration = 0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with open("/proc/self/clear_refs", "w") as handle:  # "5": reset VmHWM (and ru_maxrss) to VmRSS
            handle.write("5")
        before = _status_kb("VmRSS")
        try:
            yield
        finally:
            after, peak = _status_kb("VmRSS"), _status_kb("VmHWM")
            self.records.append(
                {"iteration": self.iteration, "phase": name, "before": before, "peak": peak, "after": after}
            )

    def wrap(self, owner: Any, attribute: str, name: str, hook: Callable[[], None] | None = None) -> None:
        original = getattr(owner, attribute)
        phases = self

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if hook is not None:
                hook()
            with phases.phase(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, wrapped)


def instrument(phases: Phases) -> None:
    """Time-free phase boundaries: wrap the calls each phase is made of (phases do not nest)."""
    import accelerate
    from accelerate.optimizer import AcceleratedOptimizer
    from trl import GRPOTrainer

    from mpo_agents.policy import grpo, weight_checkpoints

    def next_iteration() -> None:
        phases.iteration += 1

    phases.wrap(grpo.TRLGRPOPolicy, "generate", "rollout", hook=next_iteration)
    phases.wrap(GRPOTrainer, "_generate_and_score_completions", "scoring passes (policy + reference)")
    phases.wrap(GRPOTrainer, "compute_loss", "loss forward")
    phases.wrap(accelerate.Accelerator, "backward", "backward")
    phases.wrap(AcceleratedOptimizer, "step", "optimizer step")
    phases.wrap(weight_checkpoints, "_write_contents", "checkpoint: write")
    phases.wrap(weight_checkpoints, "_fsync_tree", "checkpoint: fsync")
    phases.wrap(weight_checkpoints, "_manifest", "checkpoint: hash")


def floor_bytes(policy: Any) -> dict[str, int]:
    """What full fine-tuning must hold: each distinct parameter tensor once (tied ones count once)."""
    seen: set[int] = set()
    weights = trainable = 0
    for parameter in policy.model.parameters():
        if parameter.data_ptr() in seen:
            continue
        seen.add(parameter.data_ptr())
        size = parameter.numel() * parameter.element_size()
        weights += size
        trainable += size if parameter.requires_grad else 0
    ref = policy.trainer.ref_model
    reference = sum(p.numel() * p.element_size() for p in ref.parameters()) if ref is not None else 0
    # AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype.
    return {
        "weights": weights,
        "gradients": trainable,
        "adam": 2 * trainable,
        "reference": reference,
    }


def child(args: argparse.Namespace) -> None:
    from mpo_agents.config import load_config
    from mpo_agents.policy import grpo
    from mpo_agents.runner import execute, new_run_dir

    phases = Phases()
    if args.phases:
        instrument(phases)
    floor: dict[str, int] = {}
    update = grpo.TRLGRPOPolicy.update

    def measured_update(self: Any, *a: Any, **k: Any) -> Any:
        if not floor:
            floor.update(floor_bytes(self))
        return update(self, *a, **k)

    grpo.TRLGRPOPolicy.update = measured_update
    config = load_config(None, overrides(args, args.url))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = new_run_dir(config, Path(tmp) / "run")
        execute(config, run_dir, {"BENCH_KEY": "x"}, fresh=True)
        metrics = [json.loads(line) for line in run_dir.metrics_path.read_text().splitlines()]
    result = {
        "iterations": [
            {
                "iteration": m["iteration"],
                "memory_mb": m["update_memory_mb"],
                "peak_memory_mb": m["update_peak_memory_mb"],
                "seconds": m["update_seconds"],
            }
            for m in metrics
        ],
        "floor": floor,
        "phases": phases.records,
        "final_peak_mb": _status_kb("VmHWM") / 1024,
    }
    Path(args.result).write_text(json.dumps(result))


# --- the parent -------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--phases", action="store_true", help="also measure each phase (resets the peak)")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override, e.g. policy.lora.enabled=true"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from tests.support.judge_server import JudgeServer

    with tempfile.TemporaryDirectory() as tmp, JudgeServer(judge_reply) as server:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", "--url", server.url, "--result", str(result_path)]
        command += ["--model", args.model, "--iterations", str(args.iterations), "--tokens", str(args.tokens)]
        command += [f"--set={value}" for value in args.set]
        subprocess.run(command + (["--phases"] if args.phases else []), check=True)
        result = json.loads(result_path.read_text())

    if result["phases"]:
        print(f"{'iter':>4}  {'phase':<38} {'before':>7} {'peak':>7} {'after':>7}  (MB)")
        for r in result["phases"]:
            print(
                f"{r['iteration']:>4}  {r['phase']:<38} {r['before'] / 1024:>7.0f} {r['peak'] / 1024:>7.0f} "
                f"{r['after'] / 1024:>7.0f}"
            )
    print(
        f"{'iteration':>9}  {'update_memory_mb':>16}  {'update_peak_memory_mb':>21}  {'update_seconds':>14}"
    )
    for row in result["iterations"]:
        print(
            f"{row['iteration']:>9}  {row['memory_mb']:>16.0f}  {row['peak_memory_mb']:>21.0f}  "
            f"{row['seconds']:>14.1f}"
        )
    floor = result["floor"]
    floor_mb = sum(floor.values()) / 2**20
    print(
        "floor: "
        + " + ".join(f"{name} {size / 2**20:.0f}" for name, size in floor.items())
        + f" = {floor_mb:.0f} MB"
    )
    peak = max(row["peak_memory_mb"] for row in result["iterations"])
    if result["phases"]:  # the metric was reset at each phase start: the phases' own peaks are the record
        peak = max(r["peak"] for r in result["phases"]) / 1024
    else:  # the last checkpoint comes after the last metric
        peak = max(peak, result["final_peak_mb"])
    print(f"peak: {peak:.0f} MB")
    print(f"peak over floor: {peak / floor_mb:.2f}")


if __name__ == "__main__":
    main()
