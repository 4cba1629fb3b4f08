"""The KL core and masked statistics: hand values, naive references, GAE against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from alignlab.core import (
    gae,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_kl,
    sequence_kl,
)

f64 = torch.float64


def test_estimators_hand_values():
    """ℓ = log π − log π_ref = [log 2, −log 2].

    k1 = ℓ = [0.6931, −0.6931]; k2 = ½ℓ² = [0.2402, 0.2402];
    k3 = (π_ref/π − 1) − log(π_ref/π) = [(0.5 − 1) + log 2, (2 − 1) − log 2] = [0.1931, 0.3069]
    """
    logp = torch.tensor([math.log(0.5), math.log(0.25)], dtype=f64)
    ref = torch.tensor([math.log(0.25), math.log(0.5)], dtype=f64)
    ln2 = math.log(2)
    assert_close(kl_k1(logp, ref), torch.tensor([ln2, -ln2], dtype=f64))
    assert_close(kl_k2(logp, ref), torch.tensor([0.5 * ln2**2, 0.5 * ln2**2], dtype=f64))
    assert_close(kl_k3(logp, ref), torch.tensor([-0.5 + ln2, 1 - ln2], dtype=f64))


def test_k1_and_k3_are_unbiased_for_the_true_kl():
    """Sampling y ~ π over a 5-token vocabulary: E[k1] = E[k3] = KL(π || π_ref) (exact expectation)."""
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=f64)
    q = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2], dtype=f64)
    true_kl = (p * (p / q).log()).sum()
    assert_close((p * kl_k1(p.log(), q.log())).sum(), true_kl)
    assert_close((p * kl_k3(p.log(), q.log())).sum(), true_kl)
    assert (kl_k3(p.log(), q.log()) >= 0).all() and (kl_k2(p.log(), q.log()) >= 0).all()


def test_sequence_kl_sums_completion_tokens_only():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -9.0]], dtype=f64)
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-2.0, -2.0, 0.0]], dtype=f64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # row 0: 0.5 + (−1) = −0.5; row 1: 1 + 1 = 2 (the masked third tokens are ignored)
    assert_close(sequence_kl(logp, ref, mask), torch.tensor([-0.5, 2.0], dtype=f64))
    assert (per_token_kl(logp, ref, mask, "k3")[:, 2] == 0).all()
    with pytest.raises(ValueError, match="estimator"):
        per_token_kl(logp, ref, mask, "k9")  # type: ignore[arg-type]


def test_masked_mean_var_whiten_match_torch_on_the_selected_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=f64)
    mask = (torch.rand(4, 6, generator=g) > 0.3).long()
    picked = x[mask.bool()]
    assert_close(masked_mean(x, mask), picked.mean())
    assert_close(masked_var(x, mask), picked.var(unbiased=True))
    assert_close(masked_var(x, mask, unbiased=False), picked.var(unbiased=False))
    assert_close(masked_mean(x, mask, dim=1), torch.stack([x[i][mask[i].bool()].mean() for i in range(4)]))
    w = masked_whiten(x, mask)
    assert_close(w[mask.bool()], (picked - picked.mean()) / torch.sqrt(picked.var() + 1e-8))
    assert (w[~mask.bool()] == 0).all()
    kept = masked_whiten(x, mask, shift_mean=False)[mask.bool()]
    assert_close(kept.mean(), picked.mean())


def test_masked_var_needs_two_values():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.ones(1, 3), torch.tensor([[1, 0, 0]]))


def gae_plain_loop(rewards, values, mask, gamma, lam):
    """The textbook recursion, one element at a time, each row ending at its last masked token."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    for b in range(B):
        last = max(t for t in range(T) if mask[b, t])
        running = 0.0
        for t in range(last, -1, -1):
            next_value = values[b, t + 1] if t < last else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv, adv + values * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_plain_loop(gamma, lam):
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(5, 7, generator=g, dtype=f64)
    values = torch.randn(5, 7, generator=g, dtype=f64)
    lengths = [7, 3, 1, 5, 6]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    exp_adv, exp_ret = gae_plain_loop(rewards, values, mask, gamma, lam)
    assert_close(adv, exp_adv, rtol=0, atol=1e-12)
    assert_close(ret, exp_ret, rtol=0, atol=1e-12)
    assert (adv[mask == 0] == 0).all()


def test_gae_hand_values():
    """γ = 1, λ = 1, one row of 2 tokens: r = [0, 1], V = [0.5, 0.25].

    δ_1 = 1 − 0.25 = 0.75;  δ_0 = 0 + 0.25 − 0.5 = −0.25
    A_1 = 0.75;  A_0 = −0.25 + 0.75 = 0.5  (= the return 1 minus V_0 = 0.5, as λ = 1 promises)
    """
    adv, ret = gae(
        torch.tensor([[0.0, 1.0]], dtype=f64),
        torch.tensor([[0.5, 0.25]], dtype=f64),
        torch.tensor([[1, 1]]),
        1.0,
        1.0,
    )
    assert_close(adv, torch.tensor([[0.5, 0.75]], dtype=f64))
    assert_close(ret, torch.tensor([[1.0, 1.0]], dtype=f64))
