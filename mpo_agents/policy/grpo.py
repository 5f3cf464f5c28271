"""The policy as TRL's `GRPOTrainer`, driven one optimizer step at a time from the graph ("path A", FACTS §2).

The trainer is built once. Each `update()` replays rollouts the graph already sampled and scored: a
`rollout_func` hands TRL the stored token ids, a reward function looks the judge's scores up by rollout key,
and TRL's own `training_step` computes rewards -> group advantages -> loss -> backward. We then do what the
HF training loop does after a step: clip, optimizer step, scheduler step, zero grads, `global_step += 1`.
`tests/integration/test_policy_grpo.py` checks that this equals `GRPOTrainer.train()` on the same inputs.
`trainer.algorithm` rloo and reinforce_pp build TRL's `RLOOTrainer` instead, replayed the same way (it has no
`rollout_func`: the replay stands in for its prompt tokenizer and sampler) and checked against its `train()`;
`ppo` keeps the GRPOTrainer for the model, reference and optimizer and updates with `PPOUpdate` (policy/ppo.py).

With `policy.lora.enabled` the trainer gets a PEFT `LoraConfig` and wraps the base model itself: only the
adapter trains, and TRL computes the KL reference with the adapter disabled, i.e. on the same base weights (no
second model copy). `tests/integration/test_lora.py` covers that mode.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mpo_agents.config import GenerationConfig, LoraConfig, PolicyConfig, RolloutConfig, TrainerConfig
from mpo_agents.errors import ConfigError
from mpo_agents.policy import allocator, logprob_tiles
from mpo_agents.policy.base import Rollout
from mpo_agents.policy.ppo import PPOUpdate
from mpo_agents.policy.tokens import cut_after_eos, encode_prompt, left_pad

if TYPE_CHECKING:
    from mpo_agents.policy.plan import TrainingPlan
    from mpo_agents.policy.vllm import VLLMRollouts

logger = logging.getLogger(__name__)

# Key of the extra rollout column that carries each row's id from `rollout_func` to the reward function.
ROLLOUT_KEY_COLUMN = "rollout_key"
# `trainer.report_to` integration -> the modules transformers accepts for it (any one will do) and the fix.
DASHBOARD_PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb"),
    "trackio": (("trackio",), "pip install trackio"),
}


def _on_policy_thread(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a `TRLGRPOPolicy` method on that policy's one worker thread, whichever thread calls it.

    The graph runs sync nodes on a pool of executor threads, whichever is free, so the rollouts and updates of
    a run would otherwise hop between OS threads; each thread new to torch pays again for its per-thread state
    (OpenMP team, malloc arena, the math libraries' per-thread buffers), and an update on such a thread was
    measured 1.5-2 s slower (docs/benchmarks.md, `bench_iteration.py`). TRL's own loop runs every step on one
    thread; this gives path A the same. `build_policy` loads the model on that thread too, so it is the only
    thread that starts an OpenMP team."""

    @functools.wraps(method)
    def on_thread(self: TRLGRPOPolicy, *args: Any, **kwargs: Any) -> Any:
        if getattr(_running, "policy", None) is self:
            return method(self, *args, **kwargs)  # already there (e.g. a policy method calling another)
        return self._policy_thread().submit(method, self, *args, **kwargs).result()

    return on_thread


# Which policy's worker thread this is (`_on_policy_thread`).
_running = threading.local()


def _mark_thread(policy: TRLGRPOPolicy) -> None:
    _running.policy = policy


def _new_policy_thread() -> ThreadPoolExecutor:
    """A policy's single worker thread, not yet bound to a policy (`TRLGRPOPolicy._adopt_thread`)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpo-policy")


class BehaviourLogprobs:
    """A logits processor for `generate` that records each sampled token's log-prob as TRL's loss scores it:
    the log-softmax of the raw logits times 1/temperature (before any top-k/top-p filtering, which TRL's
    log-probs leave out too). It returns the logits untouched, so sampling is unchanged.

    HF calls it once per new token, before the token is drawn; the token drawn from a step's distribution is
    the last column of `input_ids` at the next call, and of the output sequences after the last step, so only
    one step's distribution is held at a time."""

    def __init__(self, temperature: float) -> None:
        self.inverse_temperature = 1.0 / temperature  # TRL multiplies by 1/T (trl.kernels.chunked_logprob)
        self.pending: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids)
        self.pending = torch.log_softmax(scores.float() * self.inverse_temperature, dim=-1)
        return scores

    def _take(self, sequences: torch.Tensor) -> None:
        if self.pending is not None:
            self.steps.append(self.pending.gather(-1, sequences[:, -1:]).squeeze(-1))
            self.pending = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """`[rows, new tokens]` log-probs, given `generate`'s output sequences."""
        self._take(sequences)
        if not self.steps:
            return torch.empty(sequences.shape[0], 0)
        return torch.stack(self.steps, dim=1).cpu()


class _ReplayBatch:
    """The batch TRL should train on next: stored rollouts in, their scores out, by rollout key."""

    def __init__(self) -> None:
        self.rollouts: list[Rollout] = []
        self.scores: dict[str, float | None] = {}
        self.off_policy = False

    def set(self, rollouts: list[Rollout], rewards: list[float | None], off_policy: bool = False) -> None:
        """The next batch; `off_policy`: it was sampled by an earlier version of the policy, so its stored
        behaviour log-probs weight its loss (`use_behaviour_logprobs`)."""
        self.rollouts = list(rollouts)
        self.scores = {r.key: reward for r, reward in zip(rollouts, rewards, strict=True)}
        self.off_policy = off_policy

    def rollout_func(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        """TRL's generation hook: instead of sampling, return the stored rollouts (same order as `prompts`)."""
        self._check_count(prompts)
        return {
            "prompt_ids": [r.prompt_ids for r in self.rollouts],
            "completion_ids": [r.completion_ids for r in self.rollouts],
            # TRL keeps these as `sampling_per_token_logps`; on-policy it needs none (ratio 1, no weights)
            "logprobs": [r.logprobs for r in self.rollouts] if self.off_policy else None,
            ROLLOUT_KEY_COLUMN: [r.key for r in self.rollouts],
        }

    def tokenize_prompts(self, prompts: list[Any]) -> tuple[list[list[int]], None, dict[str, Any]]:
        """RLOOTrainer's prompt tokenizer (it has no `rollout_func`): the stored prompt ids, no images."""
        self._check_count(prompts)
        return [r.prompt_ids for r in self.rollouts], None, {}

    def generate_single_turn(self, prompt_ids: list[list[int]], *_: Any) -> list[list[int]]:
        """RLOOTrainer's sampler: the stored completion ids. TRL's `_generate` around it still counts tokens,
        logs lengths and decodes, as after its own sampling."""
        self._check_count(prompt_ids)
        return [r.completion_ids for r in self.rollouts]

    def _check_count(self, prompts: list[Any]) -> None:
        if len(prompts) != len(self.rollouts):
            raise RuntimeError(f"TRL asked for {len(prompts)} rollouts but {len(self.rollouts)} are stored")

    def judge_score(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        """TRL reward function: the graph's judge scores, looked up by the rollout key column."""
        return [self.scores[key] for key in kwargs[ROLLOUT_KEY_COLUMN]]


def use_behaviour_logprobs(trainer: Any, batch: _ReplayBatch) -> None:
    """Correct TRL's loss for an off-policy batch with TRL's own truncated importance sampling.

    TRL 1.16 (use_vllm off, one step per generation) takes the current policy's log-probs, detached, as the old
    ones: the ratio is 1, exact on-policy. On a batch sampled one update earlier that alone would be on-policy
    maths on off-policy data. For such a batch each token's loss is weighted by `min(pi_now / pi_behaviour, C)`
    (TRL's `token_truncate` importance-sampling correction, which it applies to vLLM's sampling mismatch; C is
    `vllm_importance_sampling_clip_max`, from `trainer.importance_sampling_cap`). pi_behaviour is the stored
    sampling log-prob (TRL keeps what `rollout_func` returns as `sampling_per_token_logps`); pi_now is the
    policy this step updates, which is also PPO's proximal policy here (one step per batch, so TRL's ratio stays
    1 and its clipping is centred on it): the decoupled objective of asynchronous RL trainers. Its log-probs
    come from the loss's own forward pass, detached, so the correction costs no extra forward. The KL term is
    not weighted, as in TRL."""
    compute_loss = trainer._compute_loss
    per_token_logps = trainer._get_per_token_logps_and_entropies

    @functools.wraps(compute_loss)
    def with_importance_weights(model: Any, inputs: dict[str, Any]) -> Any:
        if not batch.off_policy:
            return compute_loss(model, inputs)

        def then_weights(*args: Any, **kwargs: Any) -> Any:
            logps, entropies, aux_loss = per_token_logps(*args, **kwargs)
            # Padded positions get some weight too; the loss masks them out.
            ratio = torch.exp(logps.detach() - inputs["sampling_per_token_logps"])
            inputs["importance_sampling_ratio"] = torch.clamp(
                ratio,
                min=trainer.args.vllm_importance_sampling_clip_min,
                max=trainer.args.vllm_importance_sampling_clip_max,
            )
            return logps, entropies, aux_loss

        # TRL multiplies each token's loss by inputs["importance_sampling_ratio"] under these two flags, which
        # are read nowhere else in its loss.
        flags = trainer.use_vllm, trainer.vllm_importance_sampling_correction
        trainer._get_per_token_logps_and_entropies = then_weights
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
        try:
            return compute_loss(model, inputs)
        finally:
            trainer._get_per_token_logps_and_entropies = per_token_logps
            trainer.use_vllm, trainer.vllm_importance_sampling_correction = flags

    trainer._compute_loss = with_importance_weights


def grpo_config(
    trainer_cfg: TrainerConfig,
    generation_cfg: GenerationConfig,
    device: str,
    dtype: torch.dtype,
    output_dir: Path,
    **overrides: Any,
) -> Any:
    """TRL's `GRPOConfig` for one optimizer step per call, mapped from our config (TRL 1.16 defaults differ
    from the paper's TRL 0.17, so everything that shapes the loss is set explicitly)."""
    from trl import GRPOConfig

    values = _step_arguments(trainer_cfg, generation_cfg, device, dtype, output_dir)
    values.update(
        {
            "loss_type": trainer_cfg.loss_type,
            "epsilon": trainer_cfg.epsilon,
            "epsilon_high": trainer_cfg.epsilon_high,
            "importance_sampling_level": trainer_cfg.importance_sampling_level,
            "mask_truncated_completions": trainer_cfg.mask_truncated_completions,
            "top_entropy_quantile": trainer_cfg.top_entropy_quantile,
            "off_policy_mask_threshold": trainer_cfg.off_policy_mask_threshold,
            # The truncation of the importance weights of a batch sampled by an earlier policy version
            "vllm_importance_sampling_clip_max": trainer_cfg.importance_sampling_cap,
            "scale_rewards": trainer_cfg.scale_rewards,
        }
    )
    values.update(overrides)
    return GRPOConfig(**values)


def rloo_config(
    trainer_cfg: TrainerConfig,
    generation_cfg: GenerationConfig,
    device: str,
    dtype: torch.dtype,
    output_dir: Path,
    **overrides: Any,
) -> Any:
    """TRL's `RLOOConfig` for one optimizer step per call (`trainer.algorithm` rloo or reinforce_pp): the same
    step settings as `grpo_config`, RLOO's clipping, and `scale_rewards: batch` as `normalize_advantages`."""
    from trl import RLOOConfig

    values = _step_arguments(trainer_cfg, generation_cfg, device, dtype, output_dir)
    values.update(
        {
            "epsilon": trainer_cfg.epsilon,
            "epsilon_high": trainer_cfg.epsilon_high,
            "mask_truncated_completions": trainer_cfg.mask_truncated_completions,
            "normalize_advantages": trainer_cfg.scale_rewards == "batch",
        }
    )
    values.update(overrides)
    return RLOOConfig(**values)


def _step_arguments(
    trainer_cfg: TrainerConfig,
    generation_cfg: GenerationConfig,
    device: str,
    dtype: torch.dtype,
    output_dir: Path,
) -> dict[str, Any]:
    """The training arguments GRPOConfig and RLOOConfig share: one generation round per optimizer step."""
    return {
        "output_dir": str(output_dir),
        "learning_rate": trainer_cfg.learning_rate,
        "beta": trainer_cfg.beta,
        "num_generations": trainer_cfg.num_generations,
        "per_device_train_batch_size": trainer_cfg.prompts_per_iteration * trainer_cfg.num_generations,
        "gradient_accumulation_steps": 1,
        # One generation round per optimizer step and no reuse: `_prepare_inputs` then regenerates (i.e. calls our
        # replay) on every `training_step`, and old logps equal the current ones (ratio 1).
        "steps_per_generation": 1,
        "num_iterations": 1,
        # dr_grpo normalises by this, so it must be the real generation limit.
        "max_completion_length": generation_cfg.max_new_tokens,
        # TRL scales the logits by the sampling temperature when computing logps; must match generation.
        "temperature": generation_cfg.temperature,
        "top_p": generation_cfg.top_p,
        "top_k": generation_cfg.top_k,
        "max_grad_norm": trainer_cfg.max_grad_norm,
        "weight_decay": trainer_cfg.weight_decay,
        "seed": trainer_cfg.seed,
        "lr_scheduler_type": "constant",
        "use_cpu": device == "cpu",
        # TRL's default (None) means bf16=True, which CPU-fp32 runs must not get.
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "report_to": list(dict.fromkeys(trainer_cfg.report_to)) or "none",
        "save_strategy": "no",
        "logging_steps": 1,
        # TRL defaults to checkpointing on; `policy.gradient_checkpointing` decides (see policy/plan.py), and
        # `_build_trainer` enables it on the model, which HF's loop would do inside `train()`.
        "activation_checkpointing": False,
        # Every trainable parameter gets a gradient in every step; the unused-parameter search DDP would
        # otherwise do costs an extra autograd traversal per step.
        "ddp_find_unused_parameters": False,
        "dataloader_num_workers": 0,
        "disable_dropout": True,  # dropout would make policy and reference logps disagree on identical weights
        "log_completions": False,
    }


class TRLGRPOPolicy:
    """A `PolicyBackend` whose update is exactly one step of TRL's `GRPOTrainer` (`RLOOTrainer` for rloo and
    reinforce_pp), or one PPO update with a value model (`trainer.algorithm: ppo`) on the model, reference and
    optimizer TRL's GRPOTrainer built."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        trainer_cfg: TrainerConfig,
        generation_cfg: GenerationConfig,
        device: str,
        output_dir: Path,
        lora: LoraConfig | None = None,
        tensorboard_dir: Path | None = None,
        gradient_checkpointing: bool = False,
        rollout_cfg: RolloutConfig | None = None,
        value_model_dir: Path | None = None,
    ) -> None:
        """Build the trainer once. `model` must be freshly loaded from the BASE model directory: in full
        fine-tuning TRL loads its KL reference model from `model.config._name_or_path`, so the reference stays
        the initial policy (also after `load()` puts checkpoint weights into the policy).

        `lora` (`policy.lora`): when enabled, TRL wraps `model` in a LoRA adapter and only the adapter trains;
        the reference is then `model` itself with the adapter disabled. `tensorboard_dir`: where TensorBoard
        event files go when `trainer.report_to` names it (default `<output_dir>/tensorboard`).
        `gradient_checkpointing`: recompute activations in the backward pass. `rollout_cfg`
        (`policy.rollout`): with backend `vllm`, rollouts are sampled by vLLM through TRL (policy/vllm.py).
        `value_model_dir`: with `trainer.algorithm: ppo`, where the value model's weights start."""
        allocator.configure()  # before the graph's executor threads first allocate (see policy/allocator.py)
        logprob_tiles.install()  # TRL's log-prob folds without their tile-sized temporaries, same results
        self.trainer_cfg = trainer_cfg
        self.generation_cfg = generation_cfg
        self.device = device
        self.lora = lora if lora is not None and lora.enabled is True else None
        self._batch = _ReplayBatch()
        self._executor: ThreadPoolExecutor | None = None
        self.trainer = _build_trainer(
            model,
            tokenizer,
            self._batch,
            trainer_cfg,
            generation_cfg,
            device,
            output_dir,
            self.lora,
            tensorboard_dir or output_dir / "tensorboard",
            gradient_checkpointing,
        )
        self.plan: TrainingPlan | None = None  # set by `build_policy`: how the `auto` settings were resolved
        self.vllm: VLLMRollouts | None = None
        if rollout_cfg is not None and rollout_cfg.backend == "vllm":
            from mpo_agents.policy.vllm import VLLMRollouts

            self.vllm = VLLMRollouts(self.trainer, rollout_cfg.vllm, generation_cfg, trainer_cfg)
        self.ppo: PPOUpdate | None = None
        if trainer_cfg.algorithm == "ppo":
            if value_model_dir is None:
                raise ValueError("trainer.algorithm ppo needs the value model's directory")
            self.ppo = PPOUpdate(
                self.trainer,
                trainer_cfg,
                value_model_dir,
                value_adapter=peft_lora_config(self.lora or LoraConfig())
                if trainer_cfg.ppo.value_lora
                else None,
                activation_checkpointing=gradient_checkpointing,
            )
        self.trainable_parameters = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.ppo is not None:
            self.trainable_parameters += sum(p.numel() for p in self.ppo.parameters)
        self.total_parameters = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "policy: %s, %d of %d parameters trainable (%.2f%%)",
            f"LoRA r={self.lora.r} alpha={self.lora.alpha}" if self.lora else "full fine-tuning",
            self.trainable_parameters,
            self.total_parameters,
            100.0 * self.trainable_parameters / max(self.total_parameters, 1),
        )

    # --- resources checkpoints need -------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self.trainer.model

    @property
    def tokenizer(self) -> Any:
        return self.trainer.processing_class

    @property
    def step(self) -> int:
        """Optimizer steps applied so far."""
        return int(self.trainer.state.global_step)

    @property
    def value(self) -> Any:
        """PPO's value model (`trainer.algorithm: ppo`), else None; checkpoints save it when there is one."""
        return self.ppo.value if self.ppo is not None else None

    @property
    def value_optimizer(self) -> Any:
        """The value model's optimizer (PPO), else None."""
        return self.ppo.optimizer if self.ppo is not None else None

    @property
    def is_lora(self) -> bool:
        """True when only a LoRA adapter trains (`policy.lora.enabled`); `model` is then a PEFT model."""
        return self.lora is not None

    def _policy_thread(self) -> ThreadPoolExecutor:
        """The single worker thread of `_on_policy_thread`: the one `build_policy` built this policy on, or one
        started on first use (again after `close`)."""
        if self._executor is None:
            self._adopt_thread(_new_policy_thread())
        return self._executor

    def _adopt_thread(self, executor: ThreadPoolExecutor) -> None:
        """Make `executor`'s thread this policy's worker thread."""
        executor.submit(_mark_thread, self).result()
        self._executor = executor

    # --- rollouts -------------------------------------------------------------------------------------------
    @_on_policy_thread
    def generate(
        self,
        conversations: list[list[dict[str, str]]],
        num_generations: int,
        seed: int,
        key_prefix: str,
        first_prompt_index: int = 0,
    ) -> list[Rollout]:
        """Sample `num_generations` completions per conversation in one batched `generate` call, seeded so a
        re-run with the same seed on the same machine gives the same completions. Prompt-major order.
        `first_prompt_index`: the batch index of `conversations[0]` (a process's share of a larger batch)."""
        if not conversations or num_generations < 1:
            raise ValueError("generate needs at least one conversation and num_generations >= 1")
        prompts = [
            encode_prompt(self.tokenizer, c, self.trainer_cfg.max_prompt_length) for c in conversations
        ]
        if self.vllm is not None:
            sampled, logprobs = self.vllm.generate(prompts, num_generations, seed)
        else:
            input_ids, attention_mask = left_pad(
                prompts, self.tokenizer.pad_token_id, num_generations, self.device
            )
            behaviour = BehaviourLogprobs(self.trainer.args.temperature)
            with _seeded(seed, self.device), torch.no_grad(), _eval_then_train(self.model):
                # TRL's own generation config (temperature, top_p, top_k, max_new_tokens, every EOS id, pad id).
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=self.trainer.generation_config,
                    logits_processor=[behaviour],
                )
            sampled = output[:, input_ids.shape[1] :].tolist()
            logprobs = behaviour.finish(output).tolist()
        completions = cut_after_eos(sampled, set(self.trainer.eos_token_ids))
        texts = self.tokenizer.batch_decode([ids for ids, _ in completions], skip_special_tokens=True)
        return [
            Rollout(
                key=f"{key_prefix}-p{first_prompt_index + row // num_generations}-g{row % num_generations}",
                prompt_index=first_prompt_index + row // num_generations,
                generation_index=row % num_generations,
                prompt_ids=list(prompts[row // num_generations]),
                completion_ids=ids,
                completion=text,
                truncated=truncated,
                logprobs=None if row_logprobs is None else row_logprobs[: len(ids)],
                policy_step=self.step,
            )
            for row, ((ids, truncated), text, row_logprobs) in enumerate(
                zip(completions, texts, logprobs, strict=True)
            )
        ]

    # --- training -------------------------------------------------------------------------------------------
    @_on_policy_thread
    def update(
        self, rollouts: list[Rollout], rewards: list[float | None], require_scored: bool = True
    ) -> dict[str, float]:
        """One update on stored rollouts and their judge scores (`None` = failed judgment): one optimizer step
        of TRL's GRPO (or RLOO) loss, or one PPO update (`trainer.algorithm: ppo`, policy/ppo.py).

        TRL 1.16 turns a `None` reward into NaN; a row where every reward function gave NaN is "unscorable": it
        is left out of the group mean/std (nan-aware) and its advantage is forced to 0 (grpo_trainer.py,
        `unscorable_mask`, ~line 2759, and `nan_to_num(advantages)`, ~line 2810; RLOO's baseline likewise).
        So failed judgments neither bias the baseline nor move the policy; PPO leaves such rows out. Raises
        ValueError when no reward at all is usable, unless `require_scored` is off: one process's share of a
        batch (see `mpo_agents.parallel`) may hold only failed judgments while the batch as a whole does not.

        A batch sampled by an earlier policy version (`Rollout.policy_step`) is trained against its stored
        behaviour log-probs (`use_behaviour_logprobs`); the returned `staleness` says by how many versions.
        RLOO and PPO train on-policy batches only.
        """
        started = time.perf_counter()
        check_batch(rollouts, rewards, self.trainer_cfg.num_generations, require_scored)
        staleness = self._staleness(rollouts)
        if staleness and self.trainer_cfg.trainer_kind != "grpo":
            raise ValueError(f"trainer.algorithm {self.trainer_cfg.algorithm} trains on-policy batches only")
        if self.ppo is not None:
            stats = self.ppo.update(rollouts, rewards)
        else:
            stats = self._trl_step(rollouts, rewards, staleness)
        self.trainer.state.global_step += 1
        if self.vllm is not None:
            self.vllm.weights_changed()  # pushed before the next rollout, as TRL does at its next step
        scored = sum(r is not None for r in rewards)
        return {
            **stats,
            "num_scored": float(scored),
            "num_failed": float(len(rewards) - scored),
            "staleness": float(staleness),
            "trainable_params": float(self.trainable_parameters),
            "step": float(self.step),
            "seconds": time.perf_counter() - started,
            "peak_memory_mb": peak_memory_mb(self.device),
            "memory_mb": memory_now_mb(self.device),
        }

    def _trl_step(
        self, rollouts: list[Rollout], rewards: list[float | None], staleness: int
    ) -> dict[str, float]:
        """TRL's own `training_step` on the replayed batch, then what HF's loop does after it: clip, optimizer
        step, scheduler step, zero grads."""
        trainer, model = self.trainer, self.trainer.model_wrapped
        self._batch.set(rollouts, rewards, off_policy=staleness > 0)
        # The prompt column is only passed through to the replay and the reward (both ignore it); keys keep TRL's
        # completion log readable.
        inputs: list[dict[str, Any]] = [{"prompt": r.key} for r in rollouts]
        if self.trainer_cfg.trainer_kind == "rloo":
            # RLOOTrainer hands every input column to the reward functions (GRPO gets it from rollout_func).
            inputs = [{"prompt": r.key, ROLLOUT_KEY_COLUMN: r.key} for r in rollouts]
        try:
            loss = trainer.training_step(model, inputs, None)
            grad_norm = trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
            learning_rate = trainer.lr_scheduler.get_last_lr()[0]
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
        except BaseException:
            trainer._metrics["train"].clear()  # a failed step's partial metrics must not reach the next one
            raise
        finally:
            model.zero_grad()  # also on failure: half-accumulated grads must not leak into the next step
            self._batch.set([], [])
        return {
            "loss": float(loss.detach().float().item()),
            "grad_norm": float(grad_norm),
            "learning_rate": float(learning_rate),
            **_drain_trl_metrics(trainer),
        }

    def _staleness(self, rollouts: list[Rollout]) -> int:
        """Policy versions (optimizer steps) between sampling `rollouts` and now: 0 on-policy. A stale batch
        must carry its behaviour log-probs; records without a version (older runs) count as on-policy."""
        versions = {r.policy_step for r in rollouts}
        if versions == {None}:
            return 0
        if len(versions) != 1 or None in versions:
            raise ValueError(
                f"one batch was sampled by several policy versions: {sorted(map(str, versions))}"
            )
        version = versions.pop()
        staleness = self.step - version
        if staleness < 0:
            raise ValueError(
                f"the batch was sampled by policy version {version}, ahead of this policy ({self.step} "
                "optimizer steps): it belongs to another run or a later checkpoint"
            )
        if staleness and any(
            r.logprobs is None or len(r.logprobs) != len(r.completion_ids) for r in rollouts
        ):
            raise ValueError(
                f"the batch is {staleness} policy version(s) old but its rollouts carry no behaviour log-probs "
                "for every token, so its importance ratio cannot be formed"
            )
        return staleness

    # --- dashboards (`trainer.report_to`) ---------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, Any], iteration: int) -> None:
        """Send one iteration's final metrics to the dashboards through `trainer.log`, at step `iteration`.

        Path A never runs `trainer.train()`, so TRL's integration callbacks (TensorBoard, wandb, trackio) only
        hear of training through this call; each creates its writer or run on its first `on_log`. The step is
        the MPO iteration, as in metrics.jsonl (it differs from the optimizer step once an update was skipped).
        Only finite numbers are sent. `GRPOTrainer.log` also merges TRL's own metric buffer, but `update()`
        has already drained it, so nothing is counted twice. A no-op without `report_to` and off the main
        process."""
        trainer = self.trainer
        if not trainer.args.report_to or not trainer.accelerator.is_main_process:
            return
        numeric = {
            key: float(value)
            for key, value in metrics.items()
            if key != "iteration" and isinstance(value, int | float) and math.isfinite(value)
        }
        steps = trainer.state.global_step
        trainer.state.global_step = iteration  # the callbacks read the step from the trainer state
        try:
            trainer.log(numeric)
        finally:
            trainer.state.global_step = steps

    def close(self) -> None:
        """Flush and close the dashboards (TensorBoard event files, the trackio run), as the end of
        `trainer.train()` would. Safe to call more than once."""
        trainer = self.trainer
        if trainer.args.report_to and trainer.accelerator.is_main_process:
            trainer.control = trainer.callback_handler.on_train_end(
                trainer.args, trainer.state, trainer.control
            )
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # its thread exits once a running call (if any) returns
            self._executor = None

    # --- checkpoints ----------------------------------------------------------------------------------------
    @_on_policy_thread
    def save(self, directory: Path) -> None:
        """Atomic checkpoint (weights, or the adapter alone in LoRA mode; optimizer, scheduler, step, RNGs)."""
        from mpo_agents.policy.weight_checkpoints import save_checkpoint

        save_checkpoint(self, directory)
        allocator.release_free_memory()  # on the checkpoint cadence, not per update (see policy/allocator.py)

    @_on_policy_thread
    def load(self, directory: Path, verify: bool = True) -> None:
        """Restore a checkpoint written by `save` (see `load_checkpoint`)."""
        from mpo_agents.policy.weight_checkpoints import load_checkpoint

        load_checkpoint(self, directory, verify=verify)
        if self.vllm is not None:
            self.vllm.weights_changed()


def _build_trainer(
    model: Any,
    tokenizer: Any,
    batch: _ReplayBatch,
    trainer_cfg: TrainerConfig,
    generation_cfg: GenerationConfig,
    device: str,
    output_dir: Path,
    lora: LoraConfig | None,
    tensorboard_dir: Path,
    gradient_checkpointing: bool = False,
) -> Any:
    """TRL's GRPOTrainer (RLOOTrainer for rloo and reinforce_pp) plus what HF's training loop would set up
    before its first step."""
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer, RLOOTrainer

    from mpo_agents.policy.models import quiet_progress_bars

    # rollout_func is "experimental" in TRL 1.16 and warns on every trainer build otherwise.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    rloo = trainer_cfg.trainer_kind == "rloo"
    arguments = rloo_config if rloo else grpo_config
    # PPO (policy/ppo.py) uses the GRPOTrainer only for its model, reference, optimizer and log-probs, never its
    # loss or batching, which insist on groups of 2 or more.
    ppo = {"num_generations": 2, "per_device_train_batch_size": 2} if trainer_cfg.algorithm == "ppo" else {}
    args = arguments(trainer_cfg, generation_cfg, device, model.dtype, output_dir, **ppo)
    # TRL insists on a train dataset; we never iterate it (the graph supplies each batch).
    placeholder = Dataset.from_dict({"prompt": [""] * trainer_cfg.prompts_per_iteration})
    # transformers 5 has no `logging_dir` argument: its TensorBoardCallback reads TENSORBOARD_LOGGING_DIR once,
    # when the trainer builds it (without it, the writer `on_log` opens lazily writes to ./runs of the cwd).
    tensorboard = str(tensorboard_dir) if "tensorboard" in trainer_cfg.report_to else None
    common = {
        "model": model,
        "reward_funcs": [batch.judge_score],
        "args": args,
        "train_dataset": placeholder,
        "processing_class": tokenizer,
        "peft_config": peft_lora_config(lora) if lora is not None else None,
    }
    # TRL loads the reference model here.
    with quiet_progress_bars(), _environ("TENSORBOARD_LOGGING_DIR", tensorboard):
        if rloo:
            trainer = RLOOTrainer(**common)
        else:
            trainer = GRPOTrainer(**common, rollout_func=batch.rollout_func)
    if rloo:
        # RLOOTrainer has no rollout_func: its tokenizer and sampler are replaced by the replay instead.
        trainer._tokenize_prompts = batch.tokenize_prompts
        trainer._generate_single_turn = batch.generate_single_turn
    else:
        use_behaviour_logprobs(trainer, batch)
    deepspeed = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if deepspeed is not None and deepspeed.zero_stage == 3:
        from mpo_agents.policy.plan import SHARDED_PARAMETERS

        raise ConfigError(SHARDED_PARAMETERS.format(what="DeepSpeed ZeRO stage 3"))
    if lora is not None:
        _check_lora_trainer(trainer, lora)
    if gradient_checkpointing:
        _enable_gradient_checkpointing(trainer)
    # As in Trainer._prepare_for_training: optimizer, accelerate wrapping (autocast / grad scaler), scheduler.
    trainer.create_optimizer()
    trainer.model_wrapped, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.create_scheduler(num_training_steps=1_000_000)  # constant schedule: the horizon is irrelevant
    # Normally set per step inside HF's loop; TRL's loss divides by it (AttributeError if missing).
    trainer.current_gradient_accumulation_steps = 1
    # The loop's console output (a tqdm bar, or a `print` of every log) belongs to `trainer.train()`, which path A
    # never runs: left in, `log_metrics` would print to the terminal and `close` would close a bar never opened.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    # The train dataset is never iterated: no epoch (`trainer.log` would report a constant epoch 0).
    trainer.state.epoch = None
    _unique_event_files(trainer)
    # TRL loads the reference model with `use_cache=True`; its scoring forward then builds a KV cache it never
    # uses. Measured on SmolLM2-135M (8 x ~165 tokens): the update takes 17.5 s without it vs 23 s with it.
    if trainer.ref_model is not None:
        # Under DeepSpeed the reference is an engine wrapping the model.
        getattr(trainer.ref_model, "module", trainer.ref_model).config.use_cache = False
    if trainer.args.steps_per_generation != 1 or trainer.num_iterations != 1:
        raise RuntimeError("path A needs steps_per_generation=1 and num_iterations=1 (one replay per step)")
    return trainer


def _enable_gradient_checkpointing(trainer: Any) -> None:
    """What HF's `train()` does for `activation_checkpointing` (path A never calls it), before DDP wraps the
    model. Non-reentrant checkpointing: it works with frozen inputs (LoRA) and with DDP. A PEFT model forwards
    the call to its base model; its inputs must still require grad for the adapter's gradients to flow."""
    model = trainer.model
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # a PEFT model exposes only the older name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    trainer.args.activation_checkpointing = True  # TRL's scoring pass reads it to pause checkpointing


def peft_lora_config(lora: LoraConfig) -> Any:
    """`policy.lora` as PEFT's `LoraConfig` (a fresh adapter: A random, B zero, so step 0 equals the base)."""
    from peft import LoraConfig as PeftLoraConfig

    target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target,
        bias="none",
    )


def _check_lora_trainer(trainer: Any, lora: LoraConfig) -> None:
    """Handing TRL a `peft_config` (rather than a ready PEFT model) is what makes its KL reference the base
    model with the adapter disabled: given a PEFT model and beta > 0, TRL 1.16 would instead add a frozen
    "ref" copy of the adapter (grpo_trainer.py, `model.add_adapter("ref", ...)`). Fail loudly if a TRL upgrade
    ever changes that, then put the adapter's dropout back (see below)."""
    from peft.tuners.lora import LoraLayer

    peft_model = trainer.model
    if trainer.ref_model is not None or "ref" in getattr(peft_model, "peft_config", {"ref": None}):
        raise RuntimeError(
            "TRL built a separate reference model or adapter in LoRA mode; expected the base model with the "
            "adapter disabled (pin trl==1.16.0)"
        )
    # `disable_dropout=True` (needed in full fine-tuning, where dropout would make policy and reference
    # disagree on identical weights) also zeroed the adapter's own dropout; `policy.lora.dropout` (paper: 0.1)
    # restores it. It only acts on the adapter branch in train mode, so the reference (adapter off) and
    # generation (eval mode) stay deterministic, and the first step's KL is still exactly 0 (B = 0).
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for dropout in module.lora_dropout.values():
                if isinstance(dropout, torch.nn.Dropout):
                    dropout.p = lora.dropout


def check_batch(
    rollouts: list[Rollout], rewards: list[float | None], group_size: int, require_scored: bool = True
) -> None:
    """Refuse batches TRL would silently mis-group: TRL forms GRPO groups from consecutive rows."""
    if len(rollouts) != len(rewards):
        raise ValueError(f"{len(rollouts)} rollouts but {len(rewards)} rewards")
    if not rollouts or len(rollouts) % group_size:
        raise ValueError(
            f"batch of {len(rollouts)} rollouts is not a non-empty multiple of the group size {group_size}"
        )
    if any(not r.prompt_ids or not r.completion_ids for r in rollouts):
        raise ValueError("every rollout needs non-empty prompt_ids and completion_ids")
    if len({r.key for r in rollouts}) != len(rollouts):
        raise ValueError("rollout keys must be unique within a batch")
    for start in range(0, len(rollouts), group_size):
        if len({r.prompt_index for r in rollouts[start : start + group_size]}) != 1:
            raise ValueError(
                "rollouts must be in prompt-major order: each run of G rows shares one prompt_index"
            )
    if require_scored and all(r is None for r in rewards):
        raise ValueError("every reward in the batch is None (all judgments failed); skip this update")
    if any(r is not None and not math.isfinite(r) for r in rewards):
        raise ValueError("rewards must be finite numbers or None")


def _drain_trl_metrics(trainer: Any) -> dict[str, float]:
    """Read the metrics TRL recorded during this step, then clear them (nobody calls `trainer.log()` in path A,
    so the private `_metrics` lists would otherwise grow forever)."""
    recorded = trainer._metrics["train"]
    picked = {"reward_mean": "reward", "reward_std": "reward_std", "kl": "kl", "entropy": "entropy"}
    metrics = {ours: float(recorded[theirs][-1]) for ours, theirs in picked.items() if recorded.get(theirs)}
    recorded.clear()
    return metrics


def _unique_event_files(trainer: Any) -> None:
    """Give this trainer's TensorBoard event file a name no other writer uses. tensorboardX names the file by the
    second and the host and opens it with "wb": a resumed run whose new writer opened within the same second as
    the old one (a resume in the same process) would erase the first writer's events."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback._SummaryWriter is not None:
            suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
            callback._SummaryWriter = functools.partial(callback._SummaryWriter, filename_suffix=suffix)


def peak_memory_mb(device: str) -> float:
    """The most memory this iteration held: on CUDA the allocator's peak since the previous call; on Linux the
    process's peak resident size since the previous call (the kernel's high-water mark, reset through
    /proc/self/clear_refs), so each iteration reports its own rollout, checkpoint and update; elsewhere, or
    where the reset is refused, the process's peak resident size so far."""
    if device.startswith("cuda") and torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return float(peak)
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM, which ru_maxrss reads, to the current resident size
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def memory_now_mb(device: str) -> float:
    """What the process holds right after the update: on CUDA the allocator's live tensors, elsewhere the process's
    current resident size. Unlike the peak (a process's ru_maxrss never falls), this shows whether memory stays
    flat across iterations or grows."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return float(torch.cuda.memory_allocated() / 2**20)
    import psutil

    return float(psutil.Process().memory_info().rss / 2**20)


def check_report_to(report_to: list[str]) -> None:
    """Fail before any model loads when a dashboard of `trainer.report_to` lacks its package (transformers would
    only raise while building the trainer, with a message that names neither the field nor our fix)."""
    import importlib.util

    for name in report_to:
        modules, fix = DASHBOARD_PACKAGES[name]
        if not any(importlib.util.find_spec(module) is not None for module in modules):
            raise ConfigError(
                f"trainer.report_to includes '{name}', but the {' or '.join(modules)} package is not installed; "
                f"`{fix}`, or remove '{name}' from trainer.report_to"
            )


@contextlib.contextmanager
def _environ(name: str, value: str | None) -> Iterator[None]:
    """Set one environment variable for the block and restore it after; `None` leaves it as it is."""
    if value is None:
        yield
        return
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def _seeded(seed: int, device: str) -> Iterator[None]:
    """Seed sampling without disturbing the global RNG stream the trainer uses (forked and restored)."""
    if device == "cuda":
        fork = torch.random.fork_rng(devices=[torch.cuda.current_device()])
    elif device == "mps":
        fork = torch.random.fork_rng(device_type="mps")
    else:
        fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eval_then_train(model: Any) -> Iterator[None]:
    """Sample in eval mode, then leave the model in train mode, where the policy lives between calls."""
    model.eval()
    try:
        yield
    finally:
        model.train()


def build_policy(
    policy_cfg: PolicyConfig,
    trainer_cfg: TrainerConfig,
    work_dir: Path,
    tensorboard_dir: Path | None = None,
    resume_from: Path | None = None,
) -> TRLGRPOPolicy:
    """Resolve the model directory, device and dtype, load the base model and build its trainer.

    `work_dir` becomes TRL's `output_dir`: created, but nothing is written there (`save_strategy="no"`);
    checkpoints go wherever `save()` is pointed. `tensorboard_dir`: where TensorBoard event files go when
    `trainer.report_to` names it (default `<work_dir>/tensorboard`). A dashboard whose package is missing
    raises ConfigError before the model loads. `resume_from`: the checkpoint the caller will load, which decides
    LoRA under `policy.lora.enabled: auto` (see policy/plan.py).

    Everything here runs on the thread that then runs all the policy's work (`_on_policy_thread`), so the
    process's torch work starts OpenMP threads from that thread only: a second team, started by loading the
    model on the calling thread, spins on the same cores and made generation ~20% slower
    (docs/benchmarks.md)."""
    executor = _new_policy_thread()
    try:
        policy = executor.submit(
            _build_policy_here, policy_cfg, trainer_cfg, work_dir, tensorboard_dir, resume_from
        ).result()
    except BaseException:
        executor.shutdown(wait=False)
        raise
    policy._adopt_thread(executor)
    return policy


def _build_policy_here(
    policy_cfg: PolicyConfig,
    trainer_cfg: TrainerConfig,
    work_dir: Path,
    tensorboard_dir: Path | None,
    resume_from: Path | None,
) -> TRLGRPOPolicy:
    """`build_policy`'s work, on the calling thread."""
    from mpo_agents.policy.models import load_policy_model, resolve_device, resolve_dtype, resolve_model_dir
    from mpo_agents.policy.plan import device_memory_bytes, plan_training
    from mpo_agents.policy.weight_checkpoints import checkpoint_holds_lora

    check_report_to(trainer_cfg.report_to)
    device = resolve_device(policy_cfg)
    if policy_cfg.rollout.backend == "vllm":
        from mpo_agents.policy.vllm import check_vllm

        check_vllm(policy_cfg.rollout, device)
    model_dir = resolve_model_dir(policy_cfg.model)
    dtype = resolve_dtype(policy_cfg, device)
    model, tokenizer = load_policy_model(model_dir, device, dtype)
    plan = plan_training(
        policy_cfg,
        trainer_cfg,
        device,
        dtype,
        parameters=sum(p.numel() for p in model.parameters()),
        memory_bytes=device_memory_bytes(device),
        checkpoint_lora=checkpoint_holds_lora(resume_from),
    )
    logger.info("policy on %s (%s): %s", device, str(dtype).removeprefix("torch."), plan.describe())
    value_model_dir = None
    if trainer_cfg.algorithm == "ppo":
        value_model = trainer_cfg.ppo.value_model
        value_model_dir = resolve_model_dir(value_model) if value_model else model_dir
    policy = TRLGRPOPolicy(
        model,
        tokenizer,
        trainer_cfg,
        policy_cfg.generation,
        device,
        Path(work_dir),
        lora=policy_cfg.lora.model_copy(update={"enabled": True}) if plan.lora else None,
        tensorboard_dir=tensorboard_dir,
        gradient_checkpointing=plan.gradient_checkpointing,
        rollout_cfg=policy_cfg.rollout,
        value_model_dir=value_model_dir,
    )
    policy.plan = plan
    return policy
