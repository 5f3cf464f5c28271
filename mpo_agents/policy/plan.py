"""What a policy trains with on this device: LoRA or all weights, gradient checkpointing or not.

`policy.lora.enabled` and `policy.gradient_checkpointing` default to `auto`; this module turns `auto` into a
decision from the device and the model's size, and says why (the run log shows it). The estimate is the
memory full fine-tuning needs before any activation: weights, gradients and AdamW's two moments (all in the
policy's dtype, as accelerate keeps them), plus TRL's KL reference copy when `trainer.beta > 0`, plus PPO's value
model (the same size again, with its gradients and moments unless it trains a LoRA adapter).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from mpo_agents.config import PolicyConfig, TrainerConfig

# Full fine-tuning may take at most this share of the device: the rest is for activations, the rollouts' KV
# cache, and (colocated) vLLM.
FULL_FINETUNE_MEMORY_SHARE = 0.5
# Why a launcher that shards the parameters is refused (said by the launch checks and by the trainer): every
# process samples with its own full copy of the policy.
SHARDED_PARAMETERS = (
    "accelerate is configured for {what}, which shards the policy's parameters across processes; MPO samples "
    "rollouts with each process's full copy of the policy and writes full checkpoints, so it supports DDP and "
    "DeepSpeed ZeRO stages 1 and 2 (examples/accelerate/multi_gpu.yaml, deepspeed_zero2.yaml). For a model "
    "too large for one GPU, train a LoRA adapter (`policy.lora.enabled: true`)"
)
# Why `trainer.algorithm: ppo` is refused on several processes (parallel.check_world) and under DeepSpeed
# (policy/ppo.py).
PPO_ONE_PROCESS = (
    "trainer.algorithm ppo runs in one process: its advantages are whitened and its minibatches drawn over one "
    "process's batch, and the value model is not wrapped for DDP or DeepSpeed; start it as a single process "
    "(no --num-processes, accelerate or DeepSpeed), or pick a GRPO-family algorithm or rloo"
)


@dataclass(frozen=True)
class TrainingPlan:
    lora: bool
    gradient_checkpointing: bool
    reasons: tuple[str, ...]

    def describe(self) -> str:
        mode = "LoRA adapter" if self.lora else "full fine-tuning"
        checkpointing = "on" if self.gradient_checkpointing else "off"
        return f"{mode}, gradient checkpointing {checkpointing} ({'; '.join(self.reasons)})"


def full_finetune_bytes(parameters: int, dtype_bytes: int, beta: float, value_copies: int = 0) -> int:
    """Weights + gradients + two AdamW moments, plus the reference model when the KL term is on, plus
    `value_copies` copies for PPO's value model (4 when it trains in full, 1 with a LoRA adapter)."""
    copies = 4 + (1 if beta > 0 else 0) + value_copies
    return parameters * dtype_bytes * copies


def device_memory_bytes(device: str) -> int:
    """Total memory of the device the policy trains on (the GPU's, else the machine's RAM)."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def plan_training(
    policy_cfg: PolicyConfig,
    trainer_cfg: TrainerConfig,
    device: str,
    dtype: torch.dtype,
    parameters: int,
    memory_bytes: int,
    checkpoint_lora: bool | None = None,
) -> TrainingPlan:
    """Resolve the `auto` settings. `checkpoint_lora`: whether the checkpoint a resumed run will load holds a
    LoRA adapter (None for a fresh run); under `auto` it wins, so a resume on another machine stays loadable."""
    reasons: list[str] = []
    setting = policy_cfg.lora.enabled
    if setting != "auto":
        lora = bool(setting)
        reasons.append(f"policy.lora.enabled={str(lora).lower()}")
    elif checkpoint_lora is not None:
        lora = checkpoint_lora
        reasons.append(f"LoRA {'on' if lora else 'off'} as in the checkpoint being resumed")
    else:
        value_copies = 0 if trainer_cfg.algorithm != "ppo" else 1 if trainer_cfg.ppo.value_lora else 4
        need = full_finetune_bytes(parameters, dtype.itemsize, trainer_cfg.beta, value_copies)
        budget = FULL_FINETUNE_MEMORY_SHARE * memory_bytes
        lora = need > budget
        reasons.append(
            f"full fine-tuning needs ~{need / 2**30:.1f} GiB of the {memory_bytes / 2**30:.0f} GiB of {device}: "
            + ("over half, so LoRA" if lora else "fits")
        )
    checkpointing = policy_cfg.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = device.startswith("cuda")
        reasons.append(f"gradient checkpointing {'on for a GPU' if checkpointing else 'off on ' + device}")
    else:
        reasons.append(f"policy.gradient_checkpointing={str(checkpointing).lower()}")
    return TrainingPlan(lora=lora, gradient_checkpointing=bool(checkpointing), reasons=tuple(reasons))
