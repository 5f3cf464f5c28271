"""PPO's maths against values worked out by hand from the formulas (SPEC §1.3): per-token rewards, GAE, whitening
and both clipped losses. Every expected number is written here, not computed by `mpo_agents.policy.ppo`."""

from __future__ import annotations

import math

import pytest
import torch

from mpo_agents.policy.ppo import (
    explained_variance,
    gae,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

# Two rows of three completion tokens; the second row's last token is padding (mask 0, junk values).
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 9.0]])
REF_LOGPROBS = torch.tensor([[-1.5, -2.0, -0.25], [-0.3, -1.0, -7.0]])
SCORES = torch.tensor([2.0, -1.0])
VALUES = torch.tensor([[0.5, 1.0, 1.5], [0.2, -0.4, 7.0]])


def test_token_rewards_are_the_kl_penalty_plus_the_score_on_the_last_real_token():
    rewards = token_rewards(LOGPROBS, REF_LOGPROBS, SCORES, MASK, kl_coef=0.1)
    # Row 0: k1 KL 0.5, 0, -0.25 -> -0.05, 0, 0.025; the score 2 lands on token 2.
    # Row 1: KL 0, -0.2 -> 0, 0.02; the score -1 lands on token 1 (its last real one); the pad gets nothing.
    expected = torch.tensor([[-0.05, 0.0, 2.025], [0.0, -0.98, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_gae_with_gamma_1_and_lambda_one_half():
    rewards = torch.tensor([[-0.05, 0.0, 2.025], [0.0, -0.98, 0.0]])
    advantages, returns = gae(rewards, VALUES, MASK, gamma=1.0, lam=0.5)
    # Row 0: delta2 = 2.025 - 1.5 = 0.525; delta1 = 0 + 1.5 - 1.0 = 0.5, A1 = 0.5 + 0.5 * 0.525 = 0.7625;
    #        delta0 = -0.05 + 1.0 - 0.5 = 0.45, A0 = 0.45 + 0.5 * 0.7625 = 0.83125.
    # Row 1: the state after token 1 is terminal (value 0, the pad's 7.0 is not used): delta1 = -0.98 + 0 + 0.4
    #        = -0.58; delta0 = 0 - 0.4 - 0.2 = -0.6, A0 = -0.6 + 0.5 * -0.58 = -0.89; the pad's advantage is 0.
    expected = torch.tensor([[0.83125, 0.7625, 0.525], [-0.89, -0.58, 0.0]])
    assert torch.allclose(advantages, expected, atol=1e-6)
    # Returns are advantages plus values on real tokens.
    assert torch.allclose(returns, torch.tensor([[1.33125, 1.7625, 2.025], [-0.69, -0.98, 0.0]]), atol=1e-6)


def test_gae_with_lambda_1_gives_discounted_returns_whatever_the_values():
    rewards = torch.tensor([[-0.05, 0.0, 2.025], [0.0, -0.98, 0.0]])
    _, returns = gae(rewards, VALUES, MASK, gamma=0.5, lam=1.0)
    # Row 0: G2 = 2.025, G1 = 0 + 0.5 * 2.025 = 1.0125, G0 = -0.05 + 0.5 * 1.0125 = 0.45625; row 1: G1 = -0.98,
    # G0 = 0 + 0.5 * -0.98 = -0.49.
    assert torch.allclose(returns, torch.tensor([[0.45625, 1.0125, 2.025], [-0.49, -0.98, 0.0]]), atol=1e-6)


def test_whitening_uses_the_masked_entries_and_the_unbiased_variance():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # Mean 2, unbiased variance (1 + 0 + 1) / 2 = 1: the real entries become -1, 0, 1.
    assert torch.allclose(masked_whiten(values, mask)[:, :3], torch.tensor([[-1.0, 0.0, 1.0]]), atol=1e-6)
    # Without shifting the mean, only the scale changes (here 1): 1, 2, 3.
    kept = masked_whiten(values, mask, shift_mean=False)[:, :3]
    assert torch.allclose(kept, torch.tensor([[1.0, 2.0, 3.0]]), atol=1e-6)
    # Mean 5, unbiased variance (9 + 1 + 1 + 9) / 3 = 20/3.
    wide = masked_whiten(torch.tensor([2.0, 4.0, 6.0, 8.0]), torch.ones(4))
    assert torch.allclose(wide, torch.tensor([-3.0, -1.0, 1.0, 3.0]) / math.sqrt(20 / 3), atol=1e-6)
    # A single real entry (one scored row of one token) has no spread: centred, never NaN.
    single = masked_whiten(torch.tensor([[4.0, 7.0]]), torch.tensor([[1.0, 0.0]]))
    assert single[0, 0].item() == 0.0 and not torch.isnan(single).any()


def test_clipped_policy_loss():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 7.0]]))
    advantages = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipped = policy_loss(new, old, advantages, mask, clip_low=0.2, clip_high=0.2)
    # Token 0: ratio 1.5, A 1: max(-1.5, -1.2) = -1.2 (clipped). Token 1: ratio 0.5, A 1: max(-0.5, -0.8) = -0.5.
    # Token 2: ratio 1.1, A -2: 2.2 either way. Token 3 is padding. Mean (-1.2 - 0.5 + 2.2) / 3 = 1/6.
    assert loss.item() == pytest.approx(1 / 6, abs=1e-6)
    assert clipped.item() == pytest.approx(1 / 3)
    # A wider upper range (DAPO's clip-higher) lets token 0's ratio 1.5 through: (-1.5 - 0.5 + 2.2) / 3.
    loss, clipped = policy_loss(new, old, advantages, mask, clip_low=0.2, clip_high=0.6)
    assert loss.item() == pytest.approx(0.2 / 3, abs=1e-6) and clipped.item() == 0.0


def test_clipped_value_loss():
    old = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    new = torch.tensor([[1.5, 0.9, -1.0, 50.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipped = value_loss(new, old, returns, mask, clip=0.2)
    # Token 0: kept 1.2, max((1.5-2)^2, (1.2-2)^2) = 0.64 (the clipped one). Token 1: kept 0.9 (inside the range):
    # 0.81. Token 2: kept -0.2, max(1.0, 0.04) = 1.0. Half the mean: 0.5 * 2.45 / 3.
    assert loss.item() == pytest.approx(0.5 * 2.45 / 3, abs=1e-6)
    assert clipped.item() == pytest.approx(1 / 3)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # Perfect predictions explain everything; the mean explains nothing; a constant offset costs nothing.
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.0), returns, mask).item() == pytest.approx(0.0)
    assert explained_variance(returns + 5.0, returns, mask).item() == pytest.approx(1.0)
    # Values 3, 2, 1 against returns 1, 2, 3: residuals -2, 0, 2 (variance 8/3), returns' variance 2/3: 1 - 4.
    reversed_values = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert explained_variance(reversed_values, returns, mask).item() == pytest.approx(-3.0)
