"""The policy: model loading, rollout generation, one TRL GRPO or RLOO step (or one PPO update) per update, atomic
checkpoints.

Only the torch-free interface is imported eagerly; everything else loads on first use, so that importing
this package (e.g. for `mpo --help`) does not pull in torch, transformers or trl.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mpo_agents.policy.base import PolicyBackend, Rollout

if TYPE_CHECKING:
    from mpo_agents.policy.grpo import TRLGRPOPolicy, build_policy
    from mpo_agents.policy.models import load_policy_model, resolve_device, resolve_dtype, resolve_model_dir
    from mpo_agents.policy.weight_checkpoints import (
        checkpoint_dir,
        checkpoint_index,
        checkpoint_indices,
        latest_checkpoint,
        load_checkpoint,
        prune_checkpoints,
        quarantine,
        save_checkpoint,
        usable_checkpoint,
        verify_checkpoint,
    )

_LAZY = {
    "TRLGRPOPolicy": "mpo_agents.policy.grpo",
    "build_policy": "mpo_agents.policy.grpo",
    "resolve_model_dir": "mpo_agents.policy.models",
    "resolve_device": "mpo_agents.policy.models",
    "resolve_dtype": "mpo_agents.policy.models",
    "load_policy_model": "mpo_agents.policy.models",
    "save_checkpoint": "mpo_agents.policy.weight_checkpoints",
    "load_checkpoint": "mpo_agents.policy.weight_checkpoints",
    "latest_checkpoint": "mpo_agents.policy.weight_checkpoints",
    "prune_checkpoints": "mpo_agents.policy.weight_checkpoints",
    "checkpoint_dir": "mpo_agents.policy.weight_checkpoints",
    "checkpoint_index": "mpo_agents.policy.weight_checkpoints",
    "checkpoint_indices": "mpo_agents.policy.weight_checkpoints",
    "quarantine": "mpo_agents.policy.weight_checkpoints",
    "usable_checkpoint": "mpo_agents.policy.weight_checkpoints",
    "verify_checkpoint": "mpo_agents.policy.weight_checkpoints",
}

__all__ = [
    "PolicyBackend",
    "Rollout",
    "TRLGRPOPolicy",
    "build_policy",
    "checkpoint_dir",
    "checkpoint_index",
    "checkpoint_indices",
    "latest_checkpoint",
    "load_checkpoint",
    "load_policy_model",
    "prune_checkpoints",
    "quarantine",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_dir",
    "save_checkpoint",
    "usable_checkpoint",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
