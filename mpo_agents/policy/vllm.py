"""Rollouts sampled by vLLM, through TRL's own vLLM helper (`trl.generation.vllm_generation.VLLMGeneration`).

`policy.rollout.backend: vllm` swaps only who samples: the graph still gets token ids it can replay, and the
update is still TRL's `training_step` on those ids (our GRPOConfig keeps `use_vllm=False`, so the loss is the
one `tests/integration/test_policy_grpo.py` checks against `GRPOTrainer.train()`). vLLM's sampling log-probs
are kept with each rollout as its behaviour log-probs: an update on a batch sampled before the previous update
weights its tokens' loss by them (truncated importance sampling, policy/grpo.py); an on-policy update does not
use them, as TRL with `vllm_importance_sampling_correction=False`.

The two modes are TRL's:
- `server`: a separate `trl vllm-serve --model <policy.model>` process on its own GPU(s). Process 0 sends the
  prompts, and the new weights over an NCCL group (`group_port`).
- `colocate`: a vLLM engine inside every training process, on that process's GPU; weights are loaded into it
  in place.

Weights reach vLLM as TRL pushes them (`sync_weights`: LoRA adapters merged first, sharded parameters gathered):
before the first rollout (vLLM started from the base model on disk, and a resumed policy differs from it) and
before the first rollout after every update or checkpoint load. Like TRL's own generation, this is collective:
every process of a multi-process run takes part (mpo_agents/parallel.py runs `generate` on all of them).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from mpo_agents.config import GenerationConfig, RolloutConfig, TrainerConfig, VLLMConfig
from mpo_agents.errors import ConfigError

logger = logging.getLogger(__name__)

VLLM_INSTALL_HINT = "pip install 'trl[vllm]'"


def check_vllm(rollout_cfg: RolloutConfig, device: str) -> None:
    """Refuse `backend: vllm` where it cannot run, before the model loads: TRL needs the `vllm` package in the
    training process in both modes (server mode too: weights go out over vLLM's NCCL transfer engine), and a
    CUDA GPU."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "policy.rollout.backend is 'vllm' but the vllm package is not installed in this environment; "
            f"`{VLLM_INSTALL_HINT}` on a CUDA machine, or set policy.rollout.backend to 'transformers'"
        )
    if not device.startswith("cuda"):
        raise ConfigError(
            f"policy.rollout.backend 'vllm' needs the policy on a CUDA GPU (policy.device resolved to '{device}'); "
            "set policy.rollout.backend to 'transformers'"
        )


def trl_vllm_generation(
    trainer: Any, vllm_cfg: VLLMConfig, generation_cfg: GenerationConfig, batch_rows: int
) -> Any:
    """TRL's helper, configured from `policy.rollout.vllm` and `policy.generation` (the same sampling settings
    the trainer's logps use)."""
    from trl.generation.vllm_generation import VLLMGeneration

    return VLLMGeneration(
        model=trainer.model,
        accelerator=trainer.accelerator,
        processing_class=trainer.processing_class,
        mode=vllm_cfg.mode,
        server_base_url=vllm_cfg.server_base_url,
        server_host=vllm_cfg.server_host,
        server_port=vllm_cfg.server_port,
        server_timeout=vllm_cfg.server_timeout,
        group_port=vllm_cfg.group_port,
        tensor_parallel_size=vllm_cfg.tensor_parallel_size,
        gpu_memory_utilization=vllm_cfg.gpu_memory_utilization,
        max_model_length=vllm_cfg.max_model_length,
        max_num_seqs=batch_rows * vllm_cfg.tensor_parallel_size,
        enable_sleep_mode=vllm_cfg.enable_sleep_mode,
        temperature=generation_cfg.temperature,
        top_p=generation_cfg.top_p,
        top_k=generation_cfg.top_k,
        max_completion_length=generation_cfg.max_new_tokens,
        generation_kwargs={},
    )


class VLLMRollouts:
    """Sampling through a vLLM engine that follows the policy's weights."""

    def __init__(
        self,
        trainer: Any,
        vllm_cfg: VLLMConfig,
        generation_cfg: GenerationConfig,
        trainer_cfg: TrainerConfig,
        engine_factory: Callable[..., Any] = trl_vllm_generation,
    ) -> None:
        """`engine_factory(trainer, vllm_cfg, generation_cfg, batch_rows)` builds the engine (TRL's helper; a
        stand-in in tests, where vLLM cannot run)."""
        batch_rows = trainer_cfg.prompts_per_iteration * trainer_cfg.num_generations
        self.engine = engine_factory(trainer, vllm_cfg, generation_cfg, batch_rows)
        self.mode = vllm_cfg.mode
        self._stale = True  # vLLM starts from the base weights on disk
        self.syncs = 0

    def weights_changed(self) -> None:
        """The policy's weights moved (an update, a checkpoint load): push them before the next rollout."""
        self._stale = True

    def generate(
        self, prompts: list[list[int]], num_generations: int, seed: int
    ) -> tuple[list[list[int]], list[list[float] | None]]:
        """`num_generations` sampled completions (token ids, EOS kept) per prompt, prompt-major, and each
        completion's token log-probs as the engine reports them (TRL asks vLLM for processed log-probs: after
        temperature), None for a row where the engine gave a NaN."""
        if self._stale:
            self.engine.sync_weights()
            self._stale = False
            self.syncs += 1
        rows = [list(prompt) for prompt in prompts for _ in range(num_generations)]
        if self.mode == "server":
            # The server samples a prompt's whole group from one seeded request (n = G): a fixed seed per
            # iteration makes a re-run iteration sample the same batch. Colocated engines sample each of a
            # group's G rows as its own request under one SamplingParams, where a seed would make the G
            # completions identical; they draw from the engine's own stream instead.
            self.engine.generation_kwargs = {**(self.engine.generation_kwargs or {}), "seed": seed}
        _, completion_ids, logprobs, _ = self.engine.generate(rows, None, num_generations)
        if len(completion_ids) != len(rows):
            raise RuntimeError(f"vLLM returned {len(completion_ids)} completions for {len(rows)} rows")
        return [list(ids) for ids in completion_ids], [
            sampled_logprobs(row) for row in logprobs or [None] * len(rows)
        ]


def sampled_logprobs(row: list[list[float | None]] | None) -> list[float] | None:
    """The sampled token's log-prob at each position (TRL's vLLM client puts it first when it asks for none
    other), or None when the row has none or a NaN (reported as None) among them."""
    if row is None:
        return None
    values = [position[0] if position else None for position in row]
    return None if any(value is None for value in values) else [float(value) for value in values]
