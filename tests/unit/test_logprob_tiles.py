"""The in-place log-prob folds give TRL's own folds' results bit for bit, on every branch."""

from __future__ import annotations

import importlib.util
import itertools
import sys

import pytest
import torch
from trl.kernels import chunked_logprob

from mpo_agents.policy import logprob_tiles


@pytest.fixture(scope="module")
def trl_own():
    """A second copy of TRL's kernel module, loaded from its file, so its folds are TRL's whatever is installed."""
    spec = importlib.util.spec_from_file_location(
        "trl.kernels.chunked_logprob_as_shipped", chunked_logprob.__file__
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    # Compares signs of zero and NaN payloads too, which torch.equal does not
    return tensor.float().contiguous().view(torch.int32)


def _logit_tile(tokens: int, width: int, dtype: torch.dtype, strided: bool, seed: int) -> torch.Tensor:
    """Logits as the projection leaves them: a `[tokens, width]` view, optionally of a wider buffer (TRL's last
    vocabulary chunk), with a few entries so low that their probability underflows to zero."""
    generator = torch.Generator().manual_seed(seed)
    buffer = torch.randn(tokens, width + (7 if strided else 0), generator=generator) * 4
    buffer[::5, ::11] = -300.0
    return buffer.to(dtype)[:, :width]


def _targets(tokens: int, vocab_start: int, width: int, seed: int) -> torch.Tensor:
    # Some targets fall in this tile, some in other vocabulary chunks
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, vocab_start + 2 * width, (tokens,), generator=generator)


def _forward_state(tokens: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 2)
    running_max = torch.randn(tokens, generator=generator)
    running_max[::3] = float("-inf")  # the first chunk of a row
    return [
        running_max,
        torch.rand(tokens, generator=generator) * 50,
        torch.randn(tokens, generator=generator),
        torch.rand(tokens, generator=generator),
        torch.randn(tokens, generator=generator),
        torch.full((tokens,), float("-inf")),
        torch.randn(tokens, generator=generator),
    ]


# A logit scale, softcap and temperature that each change the numbers, and TRL's Triton block size (unused)
KERNEL_ARGS = {"logit_scale": 0.75, "softcap": 30.0, "inv_t": 1 / 0.7, "BLOCK_SIZE": 1024}
FLAG_SETS = list(itertools.product([False, True], repeat=5))  # softcap, entropy, sq-sum, mean, top-1


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_forward_fold_equals_trls_on_every_branch(trl_own, strided, dtype):
    tokens, width, vocab_start = 37, 96, 64
    for seed, (softcap, entropy, sq_sum, mean, top1) in enumerate(FLAG_SETS):
        results = []
        for fold in (trl_own._forward_tile, logprob_tiles.forward_tile):
            tile = _logit_tile(tokens, width, dtype, strided, seed)
            state = _forward_state(tokens, seed)
            fold(
                tile,
                tile.stride(0),
                _targets(tokens, vocab_start, width, seed),
                *state,
                vocab_start,
                width,
                **KERNEL_ARGS,
                HAS_SOFTCAP=softcap,
                HAS_ENTROPY=entropy,
                HAS_LOG_SUM_SQ_PROBS=sq_sum,
                HAS_MEAN_LOGITS=mean,
                HAS_IS_TOP1=top1,
            )
            results.append(state)
        for theirs, ours in zip(*results, strict=True):
            assert torch.equal(_bits(theirs), _bits(ours)), (softcap, entropy, sq_sum, mean, top1)


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_backward_fold_equals_trls_on_every_branch(trl_own, strided, dtype):
    tokens, width, vocab_start = 37, 96, 64
    # softcap, logprob gradient, entropy gradient
    flag_sets = list(itertools.product([False, True], repeat=3))
    for seed, (softcap, logprob_grad, entropy_grad) in enumerate(flag_sets):
        generator = torch.Generator().manual_seed(seed + 3)
        log_z = torch.randn(tokens, generator=generator) + 6
        entropy = torch.rand(tokens, generator=generator) * 5
        grad_logprobs = torch.randn(tokens, generator=generator)
        grad_logprobs[::4] = 0.0  # masked positions: their products are signed zeros
        grad_entropy = torch.randn(tokens, generator=generator)
        tiles = []
        for fold in (trl_own._backward_tile, logprob_tiles.backward_tile):
            tile = _logit_tile(tokens, width, dtype, strided, seed)
            fold(
                tile,
                tile.stride(0),
                _targets(tokens, vocab_start, width, seed),
                log_z,
                entropy,
                grad_logprobs,
                grad_entropy,
                vocab_start,
                width,
                **KERNEL_ARGS,
                HAS_SOFTCAP=softcap,
                HAS_LOGPROB_GRAD=logprob_grad,
                HAS_ENTROPY_GRAD=entropy_grad,
            )
            tiles.append(tile)
        assert torch.equal(_bits(tiles[0]), _bits(tiles[1])), (softcap, logprob_grad, entropy_grad)


def test_the_whole_chunked_function_gives_trls_values_and_gradients(trl_own):
    """Through `ChunkedLogProbFunction` with several vocabulary chunks, the last one narrower, as TRL calls it."""
    assert logprob_tiles.install()
    assert chunked_logprob._forward_tile is logprob_tiles.forward_tile
    generator = torch.Generator().manual_seed(7)
    hidden_init = torch.randn(29, 16, generator=generator)
    weight_init = torch.randn(200, 16, generator=generator) * 0.5
    targets = torch.randint(0, 200, (29,), generator=generator)
    upstream = torch.randn(29, generator=generator)
    results = []
    for module in (trl_own, chunked_logprob):
        hidden = hidden_init.clone().requires_grad_()
        weight = weight_init.clone().requires_grad_()
        log_probs, entropy, *_ = module.ChunkedLogProbFunction.apply(
            hidden, weight, None, targets, 0.9, 64, None, 1.0, ("log_probs", "entropy")
        )
        (log_probs * upstream).sum().backward()
        results.append((log_probs, entropy, hidden.grad, weight.grad))
    for theirs, ours in zip(*results, strict=True):
        assert torch.equal(_bits(theirs.detach()), _bits(ours.detach()))


def test_another_trl_version_keeps_trls_own_folds(trl_own, monkeypatch):
    import trl

    monkeypatch.setattr(trl, "__version__", "1.17.0")
    monkeypatch.setattr(chunked_logprob, "_forward_tile", trl_own._forward_tile)
    monkeypatch.setattr(chunked_logprob, "_backward_tile", trl_own._backward_tile)
    logprob_tiles.install.cache_clear()
    try:
        assert logprob_tiles.install() is False
        assert chunked_logprob._forward_tile is trl_own._forward_tile
        assert chunked_logprob._backward_tile is trl_own._backward_tile
    finally:
        logprob_tiles.install.cache_clear()
