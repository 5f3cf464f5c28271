"""Replaces TRL's torch fallback of its chunked log-prob kernel with one that works in place, with the same bits.

TRL 1.16 computes per-token log-probs through a fused LM head (`trl.kernels.chunked_logprob`): the logits are
projected one `[tokens, 32768]` tile at a time and folded into running statistics. On devices without Triton
(every CPU) the fold is plain torch, and each of its steps allocates a fresh tile-sized tensor: the forward holds
about four at once and the backward about seven. For the quickstart's batch (8 x ~200 tokens) a tile is ~216 MB,
so the loss backward's peak was ~1.5 GB of temporaries above what the step needs (`benchmarks/bench_memory.py`,
docs/benchmarks.md). The folds here run the same float operations in the same order, element by element, but
write into the tile TRL already allocated and at most one more (two with softcapping, or when an entropy
gradient flows). Their outputs equal TRL's bit for bit (`tests/unit/test_logprob_tiles.py` compares them on every
branch), so a policy update stays equal to TRL's own step.

`install()` swaps them in for TRL's `_forward_tile` and `_backward_tile` when TRL is the pinned version whose
folds these mirror; otherwise it leaves TRL as it is and says so.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

logger = logging.getLogger(__name__)

# The TRL release whose `_forward_tile` and `_backward_tile` these folds reproduce (pyproject pins it)
MIRRORED_TRL = "1.16.0"


def _transform_in_place(z: torch.Tensor, logit_scale: float, softcap: float, inv_t: float, has_softcap: bool):
    """TRL's `_torch_transform`, applied to `z` itself."""
    z.mul_(logit_scale)
    if has_softcap:
        z.div_(softcap).tanh_().mul_(softcap)
    return z.mul_(inv_t)


def _writable_float(tile: torch.Tensor) -> torch.Tensor:
    # An fp32 tile is scratch space the caller overwrites next; a lower-precision one is widened into a copy
    return tile if tile.dtype == torch.float32 else tile.float()


def forward_tile(
    tile,
    tile_stride,
    targets,
    running_max,
    sum_exp,
    x_sum_exp,
    sq_sum_exp,
    z_sum,
    max_before_target,
    target_logit,
    vocab_start,
    n_cols,
    logit_scale,
    softcap,
    inv_t,
    HAS_SOFTCAP,
    HAS_ENTROPY,
    HAS_LOG_SUM_SQ_PROBS,
    HAS_MEAN_LOGITS,
    HAS_IS_TOP1,
    BLOCK_SIZE,
):
    """Folds one tile of logits into the running log-sum-exp statistics, as `trl`'s `_forward_tile` does."""
    z = _transform_in_place(_writable_float(tile), logit_scale, softcap, inv_t, HAS_SOFTCAP)
    local = targets - vocab_start
    if HAS_MEAN_LOGITS:
        z_sum += z.sum(-1)
    if HAS_IS_TOP1:
        before_target = torch.arange(n_cols, device=z.device) < local.unsqueeze(-1)
        max_before_target.copy_(
            torch.maximum(max_before_target, z.masked_fill(~before_target, -math.inf).amax(-1))
        )
    in_tile = (local >= 0) & (local < n_cols)
    target_z = z.gather(-1, local.clamp(0, n_cols - 1).unsqueeze(-1)).squeeze(-1)
    new_m = torch.maximum(running_max, z.amax(-1))
    rescale = torch.exp(running_max - new_m)
    e = torch.sub(z, new_m.unsqueeze(-1)).exp_()
    sum_exp.mul_(rescale).add_(e.sum(-1))
    if HAS_ENTROPY:
        # z is spent after this: only its target entries were still needed, and they are read
        x_sum_exp.mul_(rescale).add_(z.mul_(e).sum(-1))
    if HAS_LOG_SUM_SQ_PROBS:
        sq_sum_exp.mul_(rescale * rescale).add_(e.mul_(e).sum(-1))
    running_max.copy_(new_m)
    target_logit.copy_(torch.where(in_tile, target_z, target_logit))


def backward_tile(
    tile,
    tile_stride,
    targets,
    log_z,
    entropy,
    grad_logprobs,
    grad_entropy,
    vocab_start,
    n_cols,
    logit_scale,
    softcap,
    inv_t,
    HAS_SOFTCAP,
    HAS_LOGPROB_GRAD,
    HAS_ENTROPY_GRAD,
    BLOCK_SIZE,
):
    """Turns one recomputed tile of logits into the logits' gradient, in the tile, as `trl`'s `_backward_tile`."""
    log_p = _writable_float(tile).mul_(logit_scale)
    t = None
    if HAS_SOFTCAP:
        t = torch.div(log_p, softcap).tanh_()
        log_p.copy_(t).mul_(softcap).mul_(inv_t)
    else:
        log_p.mul_(inv_t)
    log_p.sub_(log_z.unsqueeze(-1))
    p = torch.exp(log_p)

    # TRL starts from zeros and adds each term; `x + 0.0` below keeps that sum's sign of zero
    grad = None
    if HAS_LOGPROB_GRAD:
        local = targets - vocab_start
        rows = ((local >= 0) & (local < n_cols)).nonzero().squeeze(-1)
        columns = local[rows]
        at_target = 1.0 - p[rows, columns]
        # The logprob term is 1[j = target] - p_j; without an entropy term log p is not needed again
        grad = torch.neg(p, out=log_p) if not HAS_ENTROPY_GRAD else torch.neg(p)
        grad.add_(0.0)
        grad[rows, columns] = at_target
        grad.mul_(grad_logprobs.unsqueeze(-1)).add_(0.0)
    if HAS_ENTROPY_GRAD:
        # - grad_entropy * p * (log p + entropy), multiplied in TRL's order
        term = p.mul_(grad_entropy.unsqueeze(-1)).mul_(log_p.add_(entropy.unsqueeze(-1)))
        grad = term.neg_().add_(0.0) if grad is None else grad.sub_(term)
    if grad is None:
        grad = p.zero_()
    grad.mul_(inv_t)
    if HAS_SOFTCAP:
        grad.mul_(t.mul_(t).neg_().add_(1.0))
    tile.copy_(grad.mul_(logit_scale))


@functools.cache
def install() -> bool:
    """Uses the in-place folds for TRL's torch fallback; True when they are in use. Idempotent."""
    import trl
    from trl.kernels import chunked_logprob

    if trl.__version__ != MIRRORED_TRL:
        logger.info(
            "TRL %s is not %s, whose log-prob folds mpo-agents mirrors: TRL's own folds are used (more memory on CPU)",
            trl.__version__,
            MIRRORED_TRL,
        )
        return False
    chunked_logprob._forward_tile = forward_tile
    chunked_logprob._backward_tile = backward_tile
    return True
