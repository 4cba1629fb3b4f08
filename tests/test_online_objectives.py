"""The online objectives (RLOO, GRPO, online and iterative DPO, best-of-N) by hand in float64, the ranked
pairs of the online trainer, and its settings resolved from the objectives' declared needs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from alignlab.errors import ConfigError
from alignlab.objectives import get_objective
from alignlab.objectives.base import PairedLogps, RolloutBatch, SampledRewards
from alignlab.train.online_batches import RolloutConfig, Settings, rank_pairs

F64 = torch.float64


def t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def test_rloo_loss_by_hand_with_one_sequence_clipped():
    """Sequence ratios: row 0 log ρ = (−1 + 1.1) + 0 = 0.1, A = 2 → −2 e^0.1 (inside the clip range);
    row 1 log ρ = 0 + (−1 + 0.6) = −0.4, ρ = e^−0.4 = 0.67032, A = −1: unclipped −A ρ = 0.67032,
    clipped −A · 0.8 = 0.8 → the pessimistic max, 0.8."""
    batch = RolloutBatch(
        logprobs=t([[-1.0, -1.0], [-2.0, -1.0]]),
        old_logprobs=t([[-1.1, -1.0], [-2.0, -0.6]]),
        advantages=t([[2.0, 2.0], [-1.0, -1.0]]),
        mask=t([[1.0, 1.0], [1.0, 1.0]]),
    )
    out = get_objective("rloo")(batch, get_objective("rloo").config())
    assert_close(out.losses, t([-2 * math.exp(0.1), 0.8]))
    assert out.metrics["clipfrac"].tolist() == [0.0, 1.0]


def test_rloo_at_ratio_one_is_reinforce():
    """One update per batch: ρ = 1, the loss is −A and its gradient −A ∂ log π(y|x)."""
    logps = t([[-0.5, -0.7, 0.0]]).requires_grad_(True)
    mask = t([[1.0, 1.0, 0.0]])
    batch = RolloutBatch(logprobs=logps, old_logprobs=logps.detach(), advantages=t([[3.0, 3.0, 0.0]]), mask=mask)
    out = get_objective("rloo")(batch, get_objective("rloo").config())
    assert_close(out.losses.detach(), t([-3.0]))
    out.losses.sum().backward()
    assert logps.grad is not None
    assert_close(logps.grad, t([[-3.0, -3.0, 0.0]]))


def test_grpo_loss_by_hand_with_the_k3_kl_term():
    """One row of two tokens, A = 1.5, β = 0.1, sequence-mean. Token 0: log ρ = 0.1 → ρ = e^0.1 (inside);
    token 1: log ρ = 0.5 → clipped at 1.2, so its term is −1.5·1.2. k3 with d = log π_ref − log π_θ:
    token 0 d = −0.2 → e^−0.2 + 0.2 − 1; token 1 d = 0.3 → e^0.3 − 0.3 − 1.
    Loss = ½ [(−1.5 e^0.1 + 0.1 k3_0) + (−1.8 + 0.1 k3_1)]."""
    batch = RolloutBatch(
        logprobs=t([[-1.0, -0.5]]),
        old_logprobs=t([[-1.1, -1.0]]),
        advantages=t([[1.5, 1.5]]),
        mask=t([[1.0, 1.0]]),
        ref_logprobs=t([[-1.2, -0.2]]),
        kl_coef=0.1,
    )
    out = get_objective("grpo")(batch, get_objective("grpo").config())
    k3_0 = math.exp(-0.2) + 0.2 - 1
    k3_1 = math.exp(0.3) - 0.3 - 1
    expected = 0.5 * ((-1.5 * math.exp(0.1) + 0.1 * k3_0) + (-1.8 + 0.1 * k3_1))
    assert_close(out.losses, t([expected]))


def test_grpo_aggregations():
    """Per-token losses (ratio 1, A = −1, no KL) of 1 on rows of 1 and 3 tokens, max_new_tokens 4:
    sequence-mean 1 and 1; token-mean: each row's sum × B / 4 tokens = 0.5, 1.5; constant: 1/4, 3/4."""
    zeros = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    batch = RolloutBatch(
        logprobs=zeros,
        old_logprobs=zeros,
        advantages=t([[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]),
        mask=t([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
        max_new_tokens=4,
    )
    grpo = get_objective("grpo")
    assert grpo(batch, grpo.config()).losses.tolist() == [1.0, 1.0]
    assert grpo(batch, grpo.config(aggregation="token-mean")).losses.tolist() == [0.5, 1.5]
    assert grpo(batch, grpo.config(aggregation="constant")).losses.tolist() == [0.25, 0.75]


def test_grpo_and_ppo_log_the_terms_of_their_loss_aggregated_as_the_loss_is():
    """Ratio 1, no KL: per-token policy losses 2 on a row of 1 token, 1, 1, 1 on a row of 3, max_new_tokens 4.
    GRPO's policy_loss is the loss's own mean: sequence-mean (2 + 1)/2 = 1.5, token-mean 5/4 = 1.25,
    constant (2/4 + 3/4)/2 = 0.625 (it was the token mean, 1.25, whatever the loss's aggregation, so a
    GRPO run logged a policy_loss of −0.128 beside a loss of 2e-7 on SmolLM2); PPO's policy and value
    losses likewise (sequence-mean: 1.5; value ½(0 − 1)² = 0.5 per token, mean 0.5)."""
    zeros = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = t([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    batch = RolloutBatch(
        logprobs=zeros,
        old_logprobs=zeros,
        advantages=t([[-2.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]),
        mask=mask,
        max_new_tokens=4,
    )
    grpo = get_objective("grpo")
    for aggregation, expected in (("sequence-mean", 1.5), ("token-mean", 1.25), ("constant", 0.625)):
        out = grpo(batch, grpo.config(aggregation=aggregation))
        assert out.metrics["policy_loss"].item() == expected == out.losses.mean().item()
        assert out.metrics["kl_loss"].item() == 0.0
    ppo = get_objective("ppo")
    with_critic = RolloutBatch(
        logprobs=zeros,
        old_logprobs=zeros,
        advantages=batch.advantages,
        mask=mask,
        values=zeros,
        old_values=zeros,
        returns=t([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    )
    for aggregation, policy in (("sequence-mean", 1.5), ("token-mean", 1.25)):
        out = ppo(with_critic, ppo.config(aggregation=aggregation, vf_coef=0.1))
        assert out.metrics["policy_loss"].item() == policy and out.metrics["value_loss"].item() == 0.5
        assert_close(out.losses.mean(), t(policy + 0.1 * 0.5))


def test_the_kl_term_is_zero_when_the_kl_is_in_the_reward():
    batch = RolloutBatch(logprobs=t([[-1.0]]), old_logprobs=t([[-1.0]]), advantages=t([[1.0]]), mask=t([[1.0]]))
    assert batch.kl_term().tolist() == [[0.0]]


@pytest.mark.parametrize("name", ["online_dpo", "iterative_dpo"])
def test_online_dpo_losses_equal_dpo_on_the_same_pair(name):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g, dtype=F64) for _ in range(4))
    lengths = torch.full((5,), 3.0, dtype=F64)
    batch = PairedLogps(pc, pr, lengths, lengths, rc, rr)
    for beta in (0.1, 0.5):
        ours = get_objective(name)(batch, get_objective(name).config(beta=beta))
        dpo = get_objective("dpo")(batch, get_objective("dpo").config(beta=beta))
        assert_close(ours.losses, dpo.losses, rtol=0, atol=0)


def test_best_of_n_ranks_by_minus_the_reward():
    out = get_objective("best_of_n")(SampledRewards(t([[0.1, 0.9, -2.0]])), get_objective("best_of_n").config(n=3))
    assert out.losses.tolist() == [-0.1, -0.9, 2.0] and int(out.losses.argmin()) == 1


def test_ranked_pairs_by_hand():
    """Two prompts of 3 samples, rewards (1, 3, 2) and (5, 5, 0). best_worst: (1, 0) and (0 or 1 vs 5):
    the first maximum and minimum, (3, 5). all: prompt 0 → (1, 0), (2, 0), (1, 2); prompt 1 → (3, 5),
    (4, 5), and the tie (3, 4) dropped and counted."""
    scores = t([1.0, 3.0, 2.0, 5.0, 5.0, 0.0])
    mask = torch.ones(6, 2)
    assert rank_pairs(scores, mask, 3, "best_worst") == ([(1, 0), (3, 5)], 0)
    assert rank_pairs(scores, mask, 3, "all") == ([(1, 0), (2, 0), (1, 2), (3, 5), (4, 5)], 1)
    assert rank_pairs(t([2.0, 2.0]), torch.ones(2, 1), 2, "best_worst") == ([], 1)


def test_settings_come_from_the_objectives_declared_needs_and_the_run_overrides_them():
    def settings(name: str, **rollout) -> Settings:
        online = get_objective(name).needs.online
        assert online is not None
        return Settings.resolve(RolloutConfig(**rollout), online)

    ppo = settings("ppo")
    assert (ppo.advantage, ppo.kl, ppo.samples_per_prompt, ppo.epochs, ppo.needs_critic) == (
        "gae",
        "reward",
        1,
        4,
        True,
    )
    assert ppo.advantage_config.whiten  # PPO whitens its advantages; the group estimators do not
    grpo = settings("grpo")
    assert (grpo.advantage, grpo.kl, grpo.samples_per_prompt, grpo.needs_critic) == ("grpo", "loss", 4, False)
    assert not grpo.advantage_config.whiten
    rloo = settings("rloo", samples_per_prompt=8, kl_penalty="loss", advantage="reinforce")
    assert (rloo.samples_per_prompt, rloo.kl, rloo.advantage) == (8, "loss", "reinforce")
    iterative = settings("iterative_dpo")
    assert (iterative.advantage, iterative.pairs, iterative.samples_per_prompt) == ("pairs", "all", 4)
    with pytest.raises(ConfigError, match=r"rollout\.samples_per_prompt: 1: the rloo estimator needs at least 2"):
        settings("rloo", samples_per_prompt=1)
    with pytest.raises(ConfigError, match=r"rollout\.advantage: this method trains on ranked pairs"):
        settings("online_dpo", advantage="gae")


def test_old_logps_come_from_the_update_only_with_one_update_and_the_kl_in_the_loss():
    """The rollouts skip their own forward of the policy only where nothing reads the old log-probs
    before the update and the update's forward gives them: one optimiser step per batch, no critic, and
    the KL in the loss or ranked pairs (whose loss reads π_ref's log-probs only)."""

    def skips(name: str, **rollout) -> bool:
        online = get_objective(name).needs.online
        assert online is not None
        return Settings.resolve(RolloutConfig(**rollout), online).old_logps_from_update

    assert skips("grpo")  # GRPO's defaults: epochs 1, minibatches 1, β·k3 in the loss
    assert skips("rloo", kl_penalty="loss")
    assert not skips("grpo", epochs=2)  # the second pass needs π_old: the policy has moved
    assert not skips("grpo", minibatches=2)
    assert not skips("rloo")  # k1 in the reward: the advantages need them before the update
    assert not skips("grpo", kl_penalty="reward")
    assert skips("online_dpo")  # ranked pairs: only the logged KL and entropy read them
    assert not skips("iterative_dpo")  # four minibatches: the policy moves between them
    assert not skips("online_dpo", epochs=2)
    assert not skips("ppo", epochs=1, minibatches=1, kl_penalty="loss")  # the critic's values come from that forward
