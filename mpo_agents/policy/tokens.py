"""Token-level steps shared by training rollouts and evaluation generations, so both see a prompt the same way
and cut a completion at the same place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _prompt_ids(tokenizer: Any, conversation: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def encode_prompt(tokenizer: Any, conversation: list[dict[str, str]], max_length: int) -> list[int]:
    """Chat-template a conversation as TRL does, keeping its last `max_length` tokens."""
    return _prompt_ids(tokenizer, conversation)[-max_length:]


class PromptMeter:
    """A conversation's length in prompt tokens as the policy encodes it (before `encode_prompt` cuts it). Loads
    only the policy's tokenizer, on the first count: checking the data needs no model."""

    def __init__(self, model: str) -> None:
        self.model = model  # `policy.model`: a directory, or an alias `resolve_model_dir` converts
        self._tokenizer: Any = None

    def __call__(self, conversation: list[dict[str, str]]) -> int:
        if self._tokenizer is None:
            from mpo_agents.policy.models import load_tokenizer, resolve_model_dir

            self._tokenizer = load_tokenizer(resolve_model_dir(self.model))
        return len(_prompt_ids(self._tokenizer, conversation))


def left_pad(
    prompts: list[list[int]], pad_id: int, repeats: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, each prompt repeated `repeats` times (prompt-major)."""
    import torch

    width = max(len(p) for p in prompts)
    rows = [[pad_id] * (width - len(p)) + p for p in prompts for _ in range(repeats)]
    masks = [[0] * (width - len(p)) + [1] * len(p) for p in prompts for _ in range(repeats)]
    return torch.tensor(rows, device=device), torch.tensor(masks, device=device)


def cut_after_eos(rows: list[list[int]], eos_ids: set[int]) -> list[tuple[list[int], bool]]:
    """Each completion up to and including its first EOS (as TRL keeps it); truncated=True when none came."""
    cut = []
    for row in rows:
        end = next((i for i, token in enumerate(row) if token in eos_ids), None)
        cut.append((row, True) if end is None else (row[: end + 1], False))
    return cut
