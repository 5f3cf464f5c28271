"""One MPO policy step taken by one process against the same step shared by N processes (mpo_agents/parallel.py).

Both sides run `tests/support/distributed_update.py` under torchrun, on the same model, prompts, rollouts and rewards: the
baseline as one process with N torch threads, the other as N processes with one thread each (the same cores).
On CPU the processes talk over gloo, on GPUs over NCCL (one GPU per process). Printed: seconds of the
`generate` and `update` commands on each side, and last `ratio: X` = N-process update seconds / one-process
update seconds (below 1 means sharing the step paid off).

    python benchmarks/bench_processes.py [--model smollm2-135m|DIR] [--processes 2] [--prompts 4] [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "support" / "distributed_update.py"


def launch(processes: int, threads: int, config: Path, batch: Path, out: Path) -> dict:
    from mpo_agents.judges.local_server import free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    command += ["--master-port", str(free_port()), str(SCRIPT), str(config), str(batch), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{processes}-process run failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (a multiple of --processes)")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per completion")
    args = parser.parse_args()

    import torch

    from mpo_agents.config import MPOConfig
    from mpo_agents.policy import build_policy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = MPOConfig(
        policy={"model": args.model, "device": device, "generation": {"max_new_tokens": args.tokens}},
        trainer={"num_generations": 4, "prompts_per_iteration": args.prompts, "max_prompt_length": 256},
    )
    conversations = [
        [{"role": "user", "content": f"Write three sentences about the number {n} and why it matters."}]
        for n in range(args.prompts)
    ]
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as tmp:
        work = Path(tmp)
        policy = build_policy(config.policy, config.trainer, work / "sampler")
        rollouts = policy.generate(conversations, 4, seed=1, key_prefix="it0001")
        rewards = [float(len(r.completion_ids) % 7) for r in rollouts]
        del policy
        (work / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
        batch = {
            "conversations": conversations,
            "rollouts": [r.to_dict() for r in rollouts],
            "rewards": rewards,
        }
        (work / "batch.json").write_text(json.dumps(batch))
        cores = args.processes if device == "cpu" else 1
        one = launch(1, cores, work / "config.json", work / "batch.json", work / "one")
        many = launch(args.processes, 1, work / "config.json", work / "batch.json", work / "many")
    tokens = sum(len(r.completion_ids) for r in rollouts)
    print(f"model {args.model} on {device}: {len(rollouts)} rollouts, {tokens} completion tokens")
    for name, result in (("1 process", one), (f"{args.processes} processes", many)):
        seconds = result["seconds"]
        print(
            f"{name:>12}: generate {seconds['generate']:.2f} s, update {seconds['update']:.2f} s, "
            f"peak memory {result['stats']['peak_memory_mb']:.0f} MB"
        )
    print(f"ratio: {many['seconds']['update'] / one['seconds']['update']:.3f}")


if __name__ == "__main__":
    main()
