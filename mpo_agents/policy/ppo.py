"""PPO with a value model (`trainer.algorithm: ppo`): the official MPO trainer's update, written here because TRL 1.16
ships no PPO.

The maths follows SPEC §1.3: per-token reward -beta * (logp - ref_logp) with the judge's score added at the last
real token, GAE (gamma, lambda), advantages whitened over the batch, then `trainer.ppo.epochs` passes over the
batch in `trainer.ppo.minibatches` shuffled minibatches, each one optimizer step of the clipped policy loss plus
`vf_coef` times the clipped value loss. The tensor functions at the top are that maths alone
(`tests/unit/test_ppo_maths.py` checks them against hand-computed values).

`PPOUpdate` is what the policy (`policy/grpo.py`) adds for PPO: the value model (the base's transformer with a
scalar head, as `AutoModelForCausalLMWithValueHead`) with its own AdamW, and the update. Everything else is the
policy's own: the model, TRL's reference model (or the LoRA base with the adapter disabled), the optimizer and
scheduler TRL builds, TRL's temperature-scaled per-token log-probs, generation, dashboards and checkpoints
(which save the value model under `value/`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mpo_agents.config import TrainerConfig
from mpo_agents.errors import ConfigError
from mpo_agents.policy.base import Rollout
from mpo_agents.policy.plan import PPO_ONE_PROCESS


# --- the maths --------------------------------------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is 1."""
    return (values * mask).sum() / mask.sum()


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`values` scaled to unit variance over the masked entries (the unbiased variance, n - 1), and centred on 0
    unless `shift_mean` is off (then the mean is kept)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    if count < 2:  # one entry has no spread to scale by
        return values - mean if shift_mean else values
    variance = masked_mean((values - mean) ** 2, mask) * count / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def token_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """`[rows, tokens]` rewards: -kl_coef * (logp - ref_logp) on every real token (the k1 KL estimate), plus each
    row's score on its last real token. `mask` marks real tokens, which start each row (right padding)."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = mask.sum(dim=1).long() - 1
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (advantages + values) per token. The state after a row's
    last real token is terminal: its value is 0, and nothing after it counts."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, a token mean, and the share of tokens whose ratio was clipped."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the token mean of the larger of the squared errors of the new value and of the new value kept
    within `clip` of the sampled one, and the share of tokens where the kept one was larger."""
    kept = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (kept - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over the masked entries: 1 when the value model predicts every
    return, 0 when it does no better than their mean, negative when it does worse."""
    residual = masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask)
    spread = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    return 1.0 - residual / spread.clamp(min=1e-8)


# --- the value model ----------------------------------------------------------------------------------------------
class ValueModel(torch.nn.Module):
    """A transformer with a scalar head on its last hidden state: one value per position."""

    def __init__(self, backbone: torch.nn.Module, hidden_size: int, seed: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(hidden_size, 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # as TRL's value heads: std 1/sqrt(hidden + 1), bias 0
            weight = torch.randn(self.head.weight.shape, generator=generator) / math.sqrt(hidden_size + 1)
            self.head.weight.copy_(weight)
            self.head.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self.head(outputs.last_hidden_state.float()).squeeze(-1)


def load_value_model(
    model_dir: Path, device: str, dtype: torch.dtype, seed: int, adapter: Any = None
) -> ValueModel:
    """The value model: `model_dir`'s transformer (no LM head) in `dtype`, a fresh float32 head, dropout off;
    with `adapter` (a PEFT `LoraConfig`), a LoRA adapter on the transformer, which then stays frozen."""
    from transformers import AutoModel
    from trl.trainer.utils import disable_dropout_in_model

    from mpo_agents.policy.models import quiet_progress_bars

    with quiet_progress_bars():
        backbone = AutoModel.from_pretrained(model_dir, dtype=dtype)
    if adapter is not None:
        from peft import get_peft_model

        adapter.task_type = "FEATURE_EXTRACTION"
        backbone = get_peft_model(backbone, adapter)
    disable_dropout_in_model(backbone)
    return ValueModel(backbone, backbone.config.hidden_size, seed).to(device)


# --- the update ------------------------------------------------------------------------------------------------
class PPOUpdate:
    """The value model, its optimizer, and one PPO update of the policy model a TRL trainer holds."""

    def __init__(
        self,
        trainer: Any,
        trainer_cfg: TrainerConfig,
        value_model_dir: Path,
        value_adapter: Any = None,
        activation_checkpointing: bool = False,
    ) -> None:
        """`trainer`: the TRL trainer that holds the policy, its reference, optimizer and scheduler.
        `value_adapter`: a PEFT `LoraConfig` to train the value model as a LoRA adapter (`trainer.ppo.value_lora`)."""
        if trainer.accelerator.num_processes > 1 or getattr(trainer, "is_deepspeed_enabled", False):
            raise ConfigError(PPO_ONE_PROCESS)
        self.trainer = trainer
        self.trainer_cfg = trainer_cfg
        self.cfg = trainer_cfg.ppo
        device = str(trainer.accelerator.device)
        # In fp16 accelerate scales the policy's loss (GradScaler); the value model has no scaler, so it keeps
        # float32 weights there (bfloat16 needs none).
        dtype = torch.float32 if trainer.model.dtype == torch.float16 else trainer.model.dtype
        self.value = load_value_model(value_model_dir, device, dtype, trainer_cfg.seed, value_adapter)
        self.value.train()
        if activation_checkpointing:  # as the policy's (policy.gradient_checkpointing)
            backbone = self.value.backbone
            kwargs = {"use_reentrant": False}
            if hasattr(backbone, "activation_checkpointing_enable"):
                backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:  # a PEFT model exposes only the older name
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            if value_adapter is not None:  # frozen inputs: the adapter's gradients must still flow
                backbone.enable_input_require_grads()
        self.parameters = [p for p in self.value.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.parameters,
            lr=self.cfg.value_learning_rate or trainer_cfg.learning_rate,
            weight_decay=trainer_cfg.weight_decay,
        )

    def update(self, rollouts: list[Rollout], rewards: list[float | None]) -> dict[str, float]:
        """One PPO update on an on-policy batch. A row whose judgment failed (`None`) is left out: with no score
        there is no return to learn. The caller has checked the batch holds at least one score."""
        trainer, cfg, beta = self.trainer, self.cfg, self.trainer_cfg.beta
        rows = [(r, s) for r, s in zip(rollouts, rewards, strict=True) if s is not None]
        batch = self._tensors([r for r, _ in rows])
        mask = batch["mask"]
        scores = torch.tensor([s for _, s in rows], dtype=torch.float32, device=mask.device)
        with torch.no_grad():
            old_logps = self._logprobs(trainer.model, batch)
            ref_logps = self._reference_logprobs(batch) if beta else old_logps
            old_values = self._values(batch)
            rewards_t = token_rewards(old_logps, ref_logps, scores, mask, beta)
            if cfg.whiten_rewards:
                rewards_t = masked_whiten(rewards_t, mask, shift_mean=False) * mask
            advantages, returns = gae(rewards_t, old_values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask) * mask

        learning_rate = trainer.lr_scheduler.get_last_lr()[0]
        totals: dict[str, list[float]] = {}
        size = math.ceil(len(rows) / cfg.minibatches)
        try:
            for _ in range(cfg.epochs):
                for chunk in torch.randperm(len(rows)).split(size):  # the global RNG: checkpoints restore it
                    index = chunk.to(mask.device)
                    part = {k: v[index] for k, v in batch.items() if k != "prompt_width"}
                    part["prompt_width"] = batch["prompt_width"]
                    stats = self._minibatch(
                        part, old_logps[index], old_values[index], advantages[index], returns[index]
                    )
                    for name, value in stats.items():
                        totals.setdefault(name, []).append(value)
            trainer.lr_scheduler.step()  # once per update, as the official trainer
        finally:
            trainer.model_wrapped.zero_grad()
            self.optimizer.zero_grad()
        return {
            **{name: sum(values) / len(values) for name, values in totals.items()},
            "learning_rate": float(learning_rate),
            "reward_mean": float(scores.mean()),
            "reward_std": float(scores.std()) if len(rows) > 1 else 0.0,
            "kl": float(masked_mean(old_logps - ref_logps, mask)),
            "value_mean": float(masked_mean(old_values, mask)),
            "explained_variance": float(explained_variance(old_values, returns, mask)),
        }

    def _minibatch(
        self,
        part: dict[str, Any],
        old_logps: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> dict[str, float]:
        """One optimizer step of the policy and of the value model on a minibatch; its losses and norms."""
        trainer, cfg, max_norm = self.trainer, self.cfg, self.trainer_cfg.max_grad_norm
        clip_high = self.trainer_cfg.epsilon_high or self.trainer_cfg.epsilon
        logps = self._logprobs(trainer.model_wrapped, part)
        pg, clipped = policy_loss(
            logps, old_logps, advantages, part["mask"], self.trainer_cfg.epsilon, clip_high
        )
        # The two losses share no parameters: each is backpropagated before the other's forward, so the policy's
        # and the value model's activations are never held at once (the gradients of pg + vf_coef * vf). The
        # policy's goes through accelerate (its fp16 loss scaling); the value model never trains in fp16.
        trainer.accelerator.backward(pg)
        vf, value_clipped = value_loss(
            self._values(part), old_values, returns, part["mask"], cfg.cliprange_value
        )
        (cfg.vf_coef * vf).backward()
        loss = pg.detach() + cfg.vf_coef * vf.detach()
        grad_norm = trainer.accelerator.clip_grad_norm_(trainer.model_wrapped.parameters(), max_norm)
        value_norm = torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)
        trainer.optimizer.step()
        self.optimizer.step()
        trainer.optimizer.zero_grad()
        self.optimizer.zero_grad()
        named = {
            "loss": loss,
            "policy_loss": pg,
            "value_loss": vf,
            "clip_fraction": clipped,
            "value_clip_fraction": value_clipped,
            "grad_norm": grad_norm,
            "value_grad_norm": value_norm,
        }
        return {name: float(value.detach().float()) for name, value in named.items()}

    def _tensors(self, rollouts: list[Rollout]) -> dict[str, Any]:
        """The batch as tensors: prompts left-padded, completions right-padded (`mask` marks their real tokens)."""
        from trl.trainer.utils import pad

        from mpo_agents.policy.tokens import left_pad

        device = str(self.trainer.accelerator.device)
        pad_id = self.trainer.processing_class.pad_token_id
        prompt_ids, prompt_mask = left_pad([r.prompt_ids for r in rollouts], pad_id, 1, device)
        completions = [torch.tensor(r.completion_ids) for r in rollouts]
        completion_ids = pad(completions, padding_value=pad_id, padding_side="right").to(device)
        mask = pad([torch.ones_like(ids) for ids in completions], padding_value=0, padding_side="right").to(
            device
        )
        return {
            "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
            "attention_mask": torch.cat([prompt_mask, mask], dim=1),
            "mask": mask.float(),
            "prompt_width": prompt_ids.shape[1],
        }

    def _logprobs(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of the completions, temperature-scaled as sampled (TRL's own computation)."""
        logps, _, _ = self.trainer._get_per_token_logps_and_entropies(
            model, batch["input_ids"], batch["attention_mask"], batch["mask"].shape[1]
        )
        return logps

    def _reference_logprobs(self, batch: dict[str, Any]) -> torch.Tensor:
        """The reference policy's log-probs: TRL's reference model, or the LoRA base with the adapter disabled."""
        trainer = self.trainer
        if trainer.ref_model is not None:
            return self._logprobs(trainer.ref_model, batch)
        from trl.trainer.utils import use_adapter

        with use_adapter(trainer.accelerator.unwrap_model(trainer.model), adapter_name=None):
            return self._logprobs(trainer.model, batch)

    def _values(self, batch: dict[str, Any]) -> torch.Tensor:
        """The value of each completion token's state: read at the position before it, as its log-prob is."""
        values = self.value(batch["input_ids"], batch["attention_mask"])
        start = batch["prompt_width"] - 1
        return values[:, start : start + batch["mask"].shape[1]]
