"""Launched by tests/test_distributed.py (and benchmarks/bench_processes.py) under torchrun: one MPO policy step
shared by all launched processes, or taken by one process when launched alone.

Usage: distributed_update.py CONFIG.json BATCH.json OUT_DIR. Process 0 drives a `ShardedPolicy` exactly as the
graph would (generate, update, save); the others serve commands through `distributed.follow`. Process 0 writes
the gathered rollouts and the update's stats to OUT_DIR; the checkpoint goes to OUT_DIR/policy/iter-000001.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main(config_path: str, batch_path: str, out: str) -> None:
    import torch

    from mpo_agents import distributed
    from mpo_agents.config import MPOConfig
    from mpo_agents.policy import Rollout, build_policy
    from mpo_agents.rundir import RunDirectory

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    channel = distributed.join()  # None when launched as one process: the single-process baseline
    if channel is not None and not channel.is_main:
        distributed.follow(channel)
        return
    config = MPOConfig(**json.loads(Path(config_path).read_text()))
    run_dir = RunDirectory(Path(out))
    if channel is not None:
        distributed.check_world(config, channel)
        distributed.announce(channel, config, run_dir.root)
    local = build_policy(config.policy, config.trainer, run_dir.root / "trainer")
    policy = local if channel is None else distributed.ShardedPolicy(local, channel)
    try:
        batch = json.loads(Path(batch_path).read_text())
        started = time.perf_counter()
        sampled = policy.generate(batch["conversations"], config.trainer.num_generations, 7, "it0001")
        generated = time.perf_counter()
        stats = policy.update([Rollout.from_dict(r) for r in batch["rollouts"]], batch["rewards"])
        updated = time.perf_counter()
        policy.save(run_dir.policy_dir / "iter-000001")
    finally:
        policy.close()
    seconds = {"generate": generated - started, "update": updated - generated}
    result = {"sampled": [r.to_dict() for r in sampled], "stats": stats, "seconds": seconds}
    (run_dir.root / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])
