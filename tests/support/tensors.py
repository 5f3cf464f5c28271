"""Comparing a model's parameters or gradients as whole vectors, for the tests that check an update equals another."""

from __future__ import annotations

import torch


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every named parameter."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def max_rel_error(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """|ours - theirs| / |theirs| over all tensors flattened into one vector (same names on both sides)."""
    assert ours.keys() == theirs.keys()
    a = torch.cat([ours[k].flatten() for k in sorted(ours)])
    b = torch.cat([theirs[k].flatten() for k in sorted(theirs)])
    return float((a - b).norm() / b.norm())
