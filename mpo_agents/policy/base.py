"""What the graph sees of a policy: the `Rollout` record and the `PolicyBackend` interface (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mpo_agents.rundir import read_jsonl


@dataclass
class Rollout:
    """One sampled completion of one prompt, with the token ids the policy update replays exactly."""

    key: str  # unique id, f"{key_prefix}-p{prompt_index}-g{generation_index}"
    prompt_index: int  # index of the prompt within its batch
    generation_index: int  # index within the prompt's GRPO group
    prompt_ids: list[int]  # chat-templated, left-truncated prompt tokens
    completion_ids: list[int]  # sampled tokens up to and including the first EOS
    completion: str  # decoded completion without special tokens
    truncated: bool  # hit max_new_tokens without producing EOS
    # Behaviour log-prob of each completion token under the sampling policy, as TRL scores tokens (softmax of
    # the logits times 1/temperature); None where the backend gave none (records written before they existed).
    logprobs: list[float] | None = None
    # Optimizer steps the policy had applied when it sampled this rollout: its version. None in older records.
    policy_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> list[Rollout]:
        """The rollouts of one stored batch (`rollouts/iter-N.jsonl`)."""
        return [cls.from_dict(item) for item in read_jsonl(path)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        """Inverse of `to_dict`; unknown keys are refused so a schema drift fails loudly."""
        unknown = set(data) - _FIELDS - _OPTIONAL_FIELDS
        if unknown:
            raise ValueError(
                f"rollout record has unknown keys {sorted(unknown)}; expected {sorted(_FIELDS | _OPTIONAL_FIELDS)}"
            )
        logprobs, policy_step = data.get("logprobs"), data.get("policy_step")
        return cls(
            key=str(data["key"]),
            prompt_index=int(data["prompt_index"]),
            generation_index=int(data["generation_index"]),
            prompt_ids=[int(t) for t in data["prompt_ids"]],
            completion_ids=[int(t) for t in data["completion_ids"]],
            completion=str(data["completion"]),
            truncated=bool(data["truncated"]),
            logprobs=None if logprobs is None else [float(x) for x in logprobs],
            policy_step=None if policy_step is None else int(policy_step),
        )


_FIELDS = frozenset(
    {"key", "prompt_index", "generation_index", "prompt_ids", "completion_ids", "completion", "truncated"}
)
_OPTIONAL_FIELDS = frozenset({"logprobs", "policy_step"})


@runtime_checkable
class PolicyBackend(Protocol):
    """A trainable policy: sample grouped rollouts, apply one GRPO step on scored rollouts, checkpoint."""

    @property
    def step(self) -> int:
        """Optimizer steps applied so far."""
        ...

    def generate(
        self, conversations: list[list[dict[str, str]]], num_generations: int, seed: int, key_prefix: str
    ) -> list[Rollout]:
        """Sample `num_generations` completions per conversation, prompt-major order."""
        ...

    def update(self, rollouts: list[Rollout], rewards: list[float | None]) -> dict[str, float]:
        """Apply exactly one optimizer step; a `None` reward is a failed judgment."""
        ...

    def save(self, directory: Path) -> None:
        """Write a complete checkpoint atomically."""
        ...

    def load(self, directory: Path, verify: bool = True) -> None:
        """Restore weights, optimizer, scheduler, step and RNG states from a checkpoint (its files checked
        against its marker first, unless `verify` is off because the caller has just checked them)."""
        ...

    def log_metrics(self, metrics: dict[str, Any], iteration: int) -> None:
        """Send one iteration's metrics to the training dashboards (`trainer.report_to`), if any."""
        ...

    def close(self) -> None:
        """Flush and close the dashboards at the end of a run."""
        ...


class TrainerState(Protocol):
    """What a weight checkpoint saves and restores of a TRL-trained policy: its model and tokenizer, the TRL
    trainer holding the optimizer and scheduler, the step, and whether the model is a LoRA adapter on its base."""

    model: Any
    tokenizer: Any
    trainer: Any
    lora: Any  # the LoRA settings, None for full fine-tuning

    @property
    def step(self) -> int: ...

    @property
    def is_lora(self) -> bool: ...
