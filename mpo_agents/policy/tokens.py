"""Token-level steps shared by training rollouts and evaluation generations, so both see a prompt the same way
and cut a completion at the same place."""

from __future__ import annotations

from typing import Any

import torch


def encode_prompt(tokenizer: Any, conversation: list[dict[str, str]], max_length: int) -> list[int]:
    """Chat-template a conversation as TRL does, keeping its last `max_length` tokens."""
    encoded = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])[-max_length:]


def left_pad(
    prompts: list[list[int]], pad_id: int, repeats: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, each prompt repeated `repeats` times (prompt-major)."""
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
