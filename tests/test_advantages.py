"""Advantage estimators (alignlab.core.advantages) against hand arithmetic and plain loops, in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from alignlab.core.advantages import AdvantageConfig, AdvantageInputs, get_estimator
from alignlab.core.stats import gae

F64 = torch.float64


def inputs(scores: list[float], k: int, kl_sums: list[float] | None = None, beta: float = 0.0, T: int = 3):
    """Rows of T completion tokens each; the KL of row i spread evenly over its tokens (sum kl_sums[i])."""
    B = len(scores)
    mask = torch.ones(B, T, dtype=F64)
    kl = torch.tensor(kl_sums or [0.0] * B, dtype=F64)[:, None].expand(B, T) / T
    return AdvantageInputs(torch.tensor(scores, dtype=F64), kl.clone(), mask, beta, k)


def seq(adv: torch.Tensor) -> list[float]:
    return adv[:, 0].tolist()


def test_rloo_by_hand():
    """k = 3, rewards 1, 2, 4: baselines (2+4)/2 = 3, (1+4)/2 = 2.5, (1+2)/2 = 1.5 → A = −2, −0.5, 2.5;
    the same advantage on every completion token."""
    out = get_estimator("rloo").fn(inputs([1, 2, 4], 3), AdvantageConfig(), {})
    assert_close(out.advantages, torch.tensor([[-2.0] * 3, [-0.5] * 3, [2.5] * 3], dtype=F64))
    assert out.returns is None


def test_rloo_puts_the_kl_penalty_in_the_sequence_reward():
    """β = 0.1, rewards 1 and 2, KL sums 0.5 and 1.5: R = 0.95, 1.85; k = 2: A = R_i − R_other = ∓0.9."""
    out = get_estimator("rloo").fn(inputs([1, 2], 2, [0.5, 1.5], beta=0.1), AdvantageConfig(), {})
    assert_close(torch.tensor(seq(out.advantages), dtype=F64), torch.tensor([-0.9, 0.9], dtype=F64))


def test_rloo_equals_a_plain_leave_one_out_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(12, generator=g, dtype=F64).tolist()
    out = get_estimator("rloo").fn(inputs(scores, 4), AdvantageConfig(), {})
    expected = []
    for i, r in enumerate(scores):
        group = range(i // 4 * 4, i // 4 * 4 + 4)
        others = [scores[j] for j in group if j != i]
        expected.append(r - sum(others) / len(others))
    assert_close(torch.tensor(seq(out.advantages), dtype=F64), torch.tensor(expected, dtype=F64))


def test_grpo_by_hand_with_ties_and_a_group_of_equal_rewards():
    """Group (1, 2, 4): mean 7/3, unbiased var ((4/3)² + (1/3)² + (5/3)²)/2 = 7/3 → A = dev/(√(7/3) + 1e-4).
    Group (1, 1, 3), a tie: mean 5/3, var ((2/3)² + (2/3)² + (4/3)²)/2 = 4/3. Group (2, 2, 2): A = 0."""
    out = get_estimator("grpo").fn(inputs([1, 2, 4, 1, 1, 3, 2, 2, 2], 3), AdvantageConfig(), {})
    s1, s2 = math.sqrt(7 / 3) + 1e-4, math.sqrt(4 / 3) + 1e-4
    expected = [-4 / 3 / s1, -1 / 3 / s1, 5 / 3 / s1, -2 / 3 / s2, -2 / 3 / s2, 4 / 3 / s2, 0.0, 0.0, 0.0]
    assert_close(torch.tensor(seq(out.advantages), dtype=F64), torch.tensor(expected, dtype=F64))


def test_dr_grpo_only_centres():
    """normalize_std false (Dr. GRPO): A = R − mean of the group: (1, 2, 4) → −4/3, −1/3, 5/3."""
    out = get_estimator("grpo").fn(inputs([1, 2, 4], 3), AdvantageConfig(normalize_std=False), {})
    assert_close(torch.tensor(seq(out.advantages), dtype=F64), torch.tensor([-4 / 3, -1 / 3, 5 / 3], dtype=F64))


def test_grpo_equals_a_plain_loop():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(8, generator=g, dtype=F64).tolist()
    out = get_estimator("grpo").fn(inputs(scores, 4), AdvantageConfig(), {})
    expected = []
    for i, r in enumerate(scores):
        group = [scores[j] for j in range(i // 4 * 4, i // 4 * 4 + 4)]
        mean = sum(group) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / 3)
        expected.append((r - mean) / (std + 1e-4))
    assert_close(torch.tensor(seq(out.advantages), dtype=F64), torch.tensor(expected, dtype=F64))


def test_reinforce_moving_baseline_by_hand():
    """Batch 1, rewards (1, 3): b starts at its mean 2 → A = (−1, 1); b ← 0.9·2 + 0.1·2 = 2.
    Batch 2, rewards (4, 6): A = (2, 4); b ← 0.9·2 + 0.1·5 = 2.3."""
    est = get_estimator("reinforce").fn
    first = est(inputs([1, 3], 1), AdvantageConfig(), {})
    assert seq(first.advantages) == [-1.0, 1.0] and first.state == {"baseline": 2.0}
    assert first.state is not None
    second = est(inputs([4, 6], 1), AdvantageConfig(), first.state)
    assert seq(second.advantages) == [2.0, 4.0]
    assert second.state is not None and second.state["baseline"] == pytest.approx(2.3, abs=1e-15)


def test_gae_estimator_is_gae_on_kl_penalised_token_rewards():
    """Per-token rewards −β·KL_t with the score added on the last completion token (row 1 ends early)."""
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=F64)
    kl = torch.tensor([[0, 0.1, 0.2, 0.3], [0, 0.4, 0.5, 0]], dtype=F64)
    values = torch.tensor([[0, 0.5, 0.4, 0.3], [0, 0.2, 0.1, 0]], dtype=F64)
    scores = torch.tensor([1.0, -1.0], dtype=F64)
    out = get_estimator("gae").fn(
        AdvantageInputs(scores, kl, mask, 0.05, 1, values), AdvantageConfig(gamma=0.9, lam=0.8), {}
    )
    rewards = -0.05 * kl
    rewards[0, 3] += 1.0
    rewards[1, 2] += -1.0
    advantages, returns = gae(rewards, values, mask, 0.9, 0.8)
    assert_close(out.advantages, advantages)
    assert out.returns is not None
    assert_close(out.returns, returns)
    # by hand, row 1: δ_2 = −0.025 − 1 − 0.1 = −1.125; δ_1 = −0.02 + 0.9·0.1 − 0.2 = −0.13; A_1 = −0.13 + 0.72·(−1.125)
    assert out.advantages[1, 2].item() == pytest.approx(-1.125, abs=1e-12)
    assert out.advantages[1, 1].item() == pytest.approx(-0.13 + 0.72 * -1.125, abs=1e-12)


def test_group_estimators_need_whole_groups_and_say_what_they_need():
    with pytest.raises(ValueError, match="groups of 4"):
        get_estimator("rloo").fn(inputs([1, 2, 3], 4), AdvantageConfig(), {})
    assert get_estimator("rloo").min_group == 2 and get_estimator("gae").needs_critic
    with pytest.raises(KeyError, match="registered: gae, grpo, reinforce, rloo"):
        get_estimator("vtrace")
