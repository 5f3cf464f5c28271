"""Launched by tests/integration/test_distributed.py (and benchmarks/bench_processes.py) under torchrun: one MPO policy step
shared by all launched processes, or taken by one process when launched alone.

Usage: distributed_update.py CONFIG.json BATCH.json OUT_DIR. Process 0 drives a `ShardedPolicy` exactly as the
graph would (generate, update, save, load); the others serve commands through `parallel.follow`. Process 0
writes the gathered rollouts, the first update's stats, and whether a step taken after restoring the checkpoint
equals the same step taken before, to OUT_DIR/result.json; the checkpoint is OUT_DIR/policy/iter-000001.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main(config_path: str, batch_path: str, out: str) -> None:
    import torch

    from mpo_agents import parallel
    from mpo_agents.cli.launch import launched_world_size
    from mpo_agents.config import MPOConfig
    from mpo_agents.context import build_run_policy
    from mpo_agents.policy import Rollout, build_policy
    from mpo_agents.rundir import RunDirectory

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # None when launched as one process: the single-process baseline.
    channel = parallel.join() if launched_world_size(os.environ) > 1 else None
    if channel is not None and not channel.is_main:
        parallel.follow(channel, build_run_policy)  # the replica a follower of `mpo run` builds
        return
    config = MPOConfig(**json.loads(Path(config_path).read_text()))
    run_dir = RunDirectory(Path(out))
    if channel is not None:
        parallel.check_world(config, channel, os.environ)
        parallel.announce(channel, config, run_dir.root)
    local = build_policy(config.policy, config.trainer, run_dir.root / "trainer")
    policy = local if channel is None else parallel.ShardedPolicy(local, channel)
    try:
        batch = json.loads(Path(batch_path).read_text())
        started = time.perf_counter()
        sampled = policy.generate(batch["conversations"], config.trainer.num_generations, 7, "it0001")
        generated = time.perf_counter()
        rollouts = [Rollout.from_dict(r) for r in batch["rollouts"]]
        stats = policy.update(rollouts, batch["rewards"])
        updated = time.perf_counter()
        checkpoint = run_dir.policy_dir / "iter-000001"
        policy.save(checkpoint)
        # Resume check: a second step, then the checkpoint restored and the same second step again. GRPO
        # trains the batch again one version stale; RLOO trains on-policy batches only, so for it the batch
        # counts as sampled by the version it trains.
        second = rollouts
        if config.trainer.trainer_kind == "rloo":
            second = [dataclasses.replace(r, policy_step=local.step) for r in rollouts]
        policy.update(second, batch["rewards"])
        stepped = [p.detach().clone() for p in local.model.parameters()]
        policy.load(checkpoint)
        policy.update(second, batch["rewards"])
        again = [p.detach() for p in local.model.parameters()]
        resumed_identical = all(torch.equal(a, b) for a, b in zip(stepped, again, strict=True))
    finally:
        policy.close()
    seconds = {"generate": generated - started, "update": updated - generated}
    result = {
        "sampled": [r.to_dict() for r in sampled],
        "stats": stats,
        "seconds": seconds,
        "resumed_step_identical": resumed_identical,
    }
    (run_dir.root / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])
