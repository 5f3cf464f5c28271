"""The protocol of one MPO run across several processes (GPUs): process 0 drives the graph, the others
serve policy replicas. Launching (`mpo run --num-processes N`, `accelerate launch -m mpo_agents run ...`) is
the CLI's job (`mpo_agents.cli.launch`); it joins each process and hands this module the channel and the
policy builder.

Process layout. Process 0 runs everything a single-process run does: the LangGraph graph, the judges and the
meta-judge, the run directory and the graph checkpoints. Every other process ("follower") only holds a replica of
the policy: it builds the same TRL trainer (so accelerate wraps the model for DDP exactly as on process 0) and
then waits for commands. Whenever the graph calls the policy, process 0 broadcasts the call and every process
runs its share of it:

- `generate`: each process samples the completions of its slice of the prompts; process 0 gathers them.
- `update`: process 0 scatters the scored rollouts (whole GRPO groups per process); each process runs TRL's
  `training_step` on its slice. TRL gathers the rewards across processes for the group advantages, and DDP
  averages the gradients, so the step equals the single-process step on the whole batch.
- `save`: process 0 writes the checkpoint, with every process's torch RNG state; replicas are compared first.
- `load`: every process restores the same checkpoint (the run directory must be on a filesystem all processes
  see; on one machine it always is).

Commands travel on a gloo group of their own, so the control plane never touches the GPUs. Judges run only on
process 0 and scores travel with the rollouts, so a rubric change needs nothing on the followers: a batch is
always scored by the rubric process 0 holds when it scores it.

Nothing here is global: `join` returns the process's `ControlChannel`, which every other function takes.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpo_agents.errors import ConfigError
from mpo_agents.policy.plan import PPO_ONE_PROCESS, SHARDED_PARAMETERS

if TYPE_CHECKING:
    from mpo_agents.config import MPOConfig
    from mpo_agents.policy.base import Rollout
    from mpo_agents.policy.grpo import TRLGRPOPolicy
    from mpo_agents.rundir import RunDirectory

# How a follower builds its replica of the run's policy, the same way process 0 builds its own.
PolicyBuilder = Callable[["MPOConfig", "RunDirectory"], "TRLGRPOPolicy"]

logger = logging.getLogger(__name__)

# Followers wait on the control group while process 0 judges; a meta step against a slow hosted judge, or a
# judge outage with long retries, can take hours, and a timeout there would kill a healthy run.
CONTROL_TIMEOUT = timedelta(days=7)
EXIT_BARRIER_TIMEOUT = timedelta(seconds=60)  # processes that ended cleanly wait this long for each other
# Relative difference of the replicas' parameter checksums above which the replicas have diverged.
REPLICA_TOLERANCE = 1e-6


@dataclass
class ControlChannel:
    """Process 0 talking to the followers: picklable objects over a dedicated gloo group."""

    rank: int
    world_size: int
    group: Any
    # Process 0's side of the conversation: followers first wait for `announce` (or `abandon`).
    greeted: bool = False  # the followers got process 0's first message: the run (`announce`) or none
    # Between the run's announcement and its clean end. A process that exits while still running failed,
    # perhaps inside a collective: it leaves its process groups alone and the launcher tears everything down.
    running: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, message: Any = None) -> Any:
        """Process 0's `message`, on every process."""
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def scatter(self, shares: Sequence[Any] | None = None) -> Any:
        """Process 0 hands `shares[r]` to process r; each process gets its own share."""
        import torch.distributed as dist

        box: list[Any] = [None]
        dist.scatter_object_list(box, list(shares) if self.is_main else None, src=0, group=self.group)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.group)

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order, on process 0 (an empty list elsewhere)."""
        import torch.distributed as dist

        collected: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, collected, dst=0, group=self.group)
        return collected or []


def join() -> ControlChannel:
    """Join the process group the launcher set up: once per process, and only in a launch of several processes
    (`mpo_agents.cli.launch` decides). The channel is this process's whole part in the protocol: keep it and
    pass it on."""
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    # accelerate picks the backend (nccl on GPUs, gloo on CPU, DeepSpeed's when its plug-in is on); TRL's
    # trainer later reuses this same state.
    state = PartialState(cpu=not torch.cuda.is_available())
    group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    channel = ControlChannel(state.process_index, state.num_processes, group)
    atexit.register(_at_exit, channel)
    return channel


def _at_exit(channel: ControlChannel) -> None:
    # Process 0 may end without starting a run (an error, `mpo review` with nothing to decide); the followers
    # wait for the run's announcement and would keep the launcher waiting for them forever.
    if channel.is_main and not channel.greeted:
        abandon(channel)
    # Process groups left to the interpreter's teardown can abort the process ("terminate called without an
    # active exception", seen in CI on a follower's exit) as their threads are destroyed while still joinable.
    if not channel.running:
        import torch.distributed as dist

        if dist.is_initialized():
            # All processes together: one that destroyed its groups while a peer was still tearing down its own
            # aborted with the same message in about 1 of 6 two-process test runs (none in 18 with the barrier).
            try:
                dist.monitored_barrier(group=channel.group, timeout=EXIT_BARRIER_TIMEOUT)
            except RuntimeError:  # a peer that never came: the launcher tears down what is left
                return
            dist.destroy_process_group()


def check_world(config: MPOConfig, channel: ControlChannel, environ: Mapping[str, str]) -> None:
    """Refuse, on process 0 and before any model loads, what several processes cannot run (`environ`: what the
    launcher exported)."""
    import torch

    if config.trainer.algorithm == "ppo":
        raise ConfigError(PPO_ONE_PROCESS)
    prompts = config.trainer.prompts_per_iteration
    if prompts % channel.world_size:
        raise ConfigError(
            f"trainer.prompts_per_iteration is {prompts}, which {channel.world_size} processes cannot share "
            f"(each takes whole GRPO groups); use a multiple of {channel.world_size}"
        )
    if torch.cuda.is_available() and config.policy.device == "cpu":
        raise ConfigError(
            "policy.device is 'cpu' but the processes were launched on GPUs; use 'auto' or 'cuda', or launch "
            "a single process"
        )
    check_sharding(environ)


def check_sharding(environ: Mapping[str, str]) -> None:
    """DDP and DeepSpeed ZeRO stages 1-2 keep the full parameters on every process, which generation, the
    replica check and `model/` checkpoints rely on; FSDP and ZeRO-3 shard them. Read from what `accelerate
    launch` exports (a ZeRO-3 stage set only in a DeepSpeed JSON file is caught when the trainer is built)."""
    if environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise ConfigError(SHARDED_PARAMETERS.format(what="FSDP"))
    deepspeed = environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if deepspeed and environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise ConfigError(SHARDED_PARAMETERS.format(what="DeepSpeed ZeRO stage 3"))


def follow(channel: ControlChannel, build_policy: PolicyBuilder) -> None:
    """A follower's whole life: learn the run from process 0, build the policy replica with `build_policy`,
    serve commands until process 0 says stop."""
    from mpo_agents.config import MPOConfig
    from mpo_agents.rundir import RunDirectory, log_to_file

    hello = channel.broadcast()
    if hello is None:  # process 0 ended before the run began (an error it has reported)
        return
    channel.running = True
    config = MPOConfig(**hello["config"])
    run_dir = RunDirectory(Path(hello["run_dir"]))
    log_to_file(run_dir.root / f"run.rank{channel.rank}.log")
    logger.info("process %d of %d follows the run in %s", channel.rank, channel.world_size, run_dir.root)
    policy = build_policy(config, run_dir)
    try:
        while True:
            command, arguments = channel.broadcast()
            if command == "stop":
                channel.running = False
                return
            _COMMANDS[command](policy, channel, arguments)
    finally:
        policy.close()


def announce(channel: ControlChannel, config: MPOConfig, run_dir: Path) -> None:
    """Process 0 tells the followers which run they serve (the exact config, also on resume)."""
    channel.broadcast({"config": config.model_dump(mode="json"), "run_dir": str(run_dir)})
    channel.greeted = True
    channel.running = True


def abandon(channel: ControlChannel) -> None:
    """Process 0 failed before `announce`: let the followers end instead of waiting for it."""
    channel.greeted = True
    channel.broadcast(None)


class ShardedPolicy:
    """The `PolicyBackend` process 0 hands to the graph: every call is broadcast and run by all processes."""

    def __init__(self, local: TRLGRPOPolicy, channel: ControlChannel) -> None:
        self.local = local
        self.channel = channel
        self._stopped = False

    @property
    def step(self) -> int:
        return self.local.step

    def _command(self, name: str, arguments: dict[str, Any]) -> Any:
        self.channel.broadcast((name, arguments))
        return _COMMANDS[name](self.local, self.channel, arguments)

    def generate(
        self, conversations: list[list[dict[str, str]]], num_generations: int, seed: int, key_prefix: str
    ) -> list[Rollout]:
        if len(conversations) % self.channel.world_size:
            raise ValueError(
                f"{len(conversations)} prompts cannot be shared by {self.channel.world_size} processes"
            )
        arguments = {
            "conversations": conversations,
            "num_generations": num_generations,
            "seed": seed,
            "key_prefix": key_prefix,
        }
        return self._command("generate", arguments)

    def update(self, rollouts: list[Rollout], rewards: list[float | None]) -> dict[str, float]:
        from mpo_agents.policy.grpo import check_batch

        # The whole batch is checked here, so a follower never refuses its share while the others step.
        check_batch(rollouts, rewards, self.local.trainer_cfg.num_generations)
        return self._command("update", {"rollouts": rollouts, "rewards": rewards})

    def save(self, directory: Path) -> None:
        self._command("save", {"directory": str(directory)})

    def load(self, directory: Path, verify: bool = True) -> None:
        self._command("load", {"directory": str(directory), "verify": verify})

    def log_metrics(self, metrics: dict[str, Any], iteration: int) -> None:
        self.local.log_metrics(metrics, iteration)  # dashboards live on process 0 only

    def close(self) -> None:
        """The run ended normally: the followers stop serving and exit."""
        if not self._stopped:
            self._stopped = True
            self.channel.broadcast(("stop", {}))
            self.channel.running = False
        self.local.close()

    def abandon(self) -> None:
        """The run failed on process 0, possibly in the middle of a command the followers are still inside
        (a collective of TRL or DDP), where they cannot receive another one. Send nothing: process 0 exits with
        an error and the launcher stops the followers."""
        self._stopped = True
        self.local.close()


# --- the commands, run by every process (process 0 gets the results) -------------------------------------------
def _share(items: Sequence[Any], channel: ControlChannel) -> tuple[int, int]:
    """The [start, end) slice of `items` that process `channel.rank` works on."""
    size = len(items) // channel.world_size
    return channel.rank * size, (channel.rank + 1) * size


def _generate(policy: TRLGRPOPolicy, channel: ControlChannel, arguments: dict[str, Any]) -> list[Rollout]:
    conversations = arguments["conversations"]
    start, end = _share(conversations, channel)
    mine = policy.generate(
        conversations[start:end],
        arguments["num_generations"],
        # One stream per process: the same seed everywhere would give two processes correlated samples.
        arguments["seed"] + 1_000_003 * channel.rank,
        arguments["key_prefix"],
        first_prompt_index=start,
    )
    return [rollout for share in channel.gather(mine) for rollout in share]


def _update(policy: TRLGRPOPolicy, channel: ControlChannel, arguments: dict[str, Any]) -> dict[str, float]:
    rollouts, rewards = arguments["rollouts"], arguments["rewards"]
    start, end = _share(rollouts, channel)
    stats = policy.update(rollouts[start:end], rewards[start:end], require_scored=False)
    everyone = channel.gather(stats)
    if not channel.is_main:
        return stats
    merged = dict(everyone[0])  # TRL's reward/KL metrics are already gathered over all processes
    merged["loss"] = sum(s["loss"] for s in everyone) / len(everyone)
    merged["num_scored"] = float(sum(r is not None for r in rewards))
    merged["num_failed"] = float(sum(r is None for r in rewards))
    merged["seconds"] = max(s["seconds"] for s in everyone)
    merged["peak_memory_mb"] = max(s["peak_memory_mb"] for s in everyone)
    merged["memory_mb"] = max(s["memory_mb"] for s in everyone)
    merged["processes"] = float(channel.world_size)
    return merged


def _save(policy: TRLGRPOPolicy, channel: ControlChannel, arguments: dict[str, Any]) -> None:
    from mpo_agents.policy.weight_checkpoints import save_checkpoint, torch_rng_states

    reports = channel.gather({"checksum": _checksum(policy), "rng": torch_rng_states()})
    if channel.is_main:
        checksums = [report["checksum"] for report in reports]
        scale = max(abs(checksums[0]), 1.0)
        diverged = any(abs(value - checksums[0]) > REPLICA_TOLERANCE * scale for value in checksums)
    else:
        diverged = None
    # Everyone learns the verdict, so that under DeepSpeed no process enters the collective save alone.
    if channel.broadcast(diverged):
        raise RuntimeError(
            f"the policy replicas diverged (parameter checksums by process: {checksums}); the checkpoint was "
            "not written. Resume from the previous checkpoint"
            if channel.is_main
            else "the policy replicas diverged; process 0 reports the checksums"
        )
    save_checkpoint(
        policy,
        Path(arguments["directory"]),
        process_rng={rank: report["rng"] for rank, report in enumerate(reports) if rank},
        rank=channel.rank,
        barrier=channel.barrier,
    )


def _load(policy: TRLGRPOPolicy, channel: ControlChannel, arguments: dict[str, Any]) -> None:
    from mpo_agents.policy.weight_checkpoints import load_checkpoint

    load_checkpoint(
        policy, Path(arguments["directory"]), rank=channel.rank, verify=arguments.get("verify", True)
    )


def _checksum(policy: TRLGRPOPolicy) -> float:
    """A float64 sum over the trainable parameters: equal on every DDP replica after every step."""
    import torch

    with torch.no_grad():
        return float(
            sum(p.detach().double().sum().item() for p in policy.model.parameters() if p.requires_grad)
        )


_COMMANDS = {"generate": _generate, "update": _update, "save": _save, "load": _load}
