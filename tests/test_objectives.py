"""Every loss against hand arithmetic (float64), its limit cases, and its gradient direction.

The expected values are computed in each docstring from the paper's formula with plain
``math`` — never from alignlab's code.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from alignlab.objectives import PairedLogps, PPOBatch, UnpairedLogps, get_objective
from alignlab.objectives.kto import kl_baseline

f64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=f64)


def softplus(x: float) -> float:
    """−log σ(−x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pair_batch(**overrides: torch.Tensor) -> PairedLogps:
    """The running example: h = [(−1+2) − (−3+2), (−4+3) − (−2+3)] = [2, −2].

    policy chosen [−1, −4], rejected [−3, −2]; reference chosen [−2, −3], rejected [−2, −3];
    lengths chosen [2, 4], rejected [4, 2].
    """
    fields = dict(
        policy_chosen_logps=t(-1, -4),
        policy_rejected_logps=t(-3, -2),
        chosen_lengths=t(2, 4),
        rejected_lengths=t(4, 2),
        ref_chosen_logps=t(-2, -3),
        ref_rejected_logps=t(-2, -3),
    )
    fields.update(overrides)
    return PairedLogps(**fields)


def loss_of(name: str, batch, **knobs):
    objective = get_objective(name)
    return objective(batch, objective.config(**knobs))


# ---------------------------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------------------------


def test_dpo_hand_values():
    """β = 0.5, h = [2, −2] → β h = [1, −1].

    loss = −log σ(β h) = log(1 + e^{−βh}) = [log(1 + e^{−1}), log(1 + e^{1})] = [0.31326, 1.31326]
    chosen_rewards = β(π_w − ref_w) = 0.5·[1, −1] = [0.5, −0.5]
    rejected_rewards = β(π_l − ref_l) = 0.5·[−1, 1] = [−0.5, 0.5]; margins [1, −1]; accuracy [1, 0]
    """
    out = loss_of("dpo", pair_batch(), beta=0.5)
    assert_close(out.losses, t(softplus(-1), softplus(1)), rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.3132616875182228, 1.3132616875182228), rtol=0, atol=1e-12)
    assert_close(out.metrics["chosen_rewards"], t(0.5, -0.5))
    assert_close(out.metrics["rejected_rewards"], t(-0.5, 0.5))
    assert_close(out.metrics["margins"], t(1.0, -1.0))
    assert_close(out.metrics["reward_accuracy"], t(1.0, 0.0))


def test_ipo_hand_values_summed():
    """τ = 0.25 → target 1/(2τ) = 2; h = [2, −2] → loss = [(2−2)², (−2−2)²] = [0, 16]."""
    out = loss_of("ipo", pair_batch(), tau=0.25)
    assert_close(out.losses, t(0.0, 16.0), rtol=0, atol=1e-12)


def test_ipo_hand_values_length_normalized():
    """Per-token log-ratios: chosen [1/2, −1/4], rejected [−1/4, 1/2] (lengths w [2, 4], l [4, 2]).

    h = [0.5 + 0.25, −0.25 − 0.5] = [0.75, −0.75]; τ = 0.25 → loss = [(0.75−2)², (−0.75−2)²]
      = [1.5625, 7.5625]
    """
    out = loss_of("ipo", pair_batch(), tau=0.25, length_normalized=True)
    assert_close(out.losses, t(1.5625, 7.5625), rtol=0, atol=1e-12)


def test_cdpo_hand_values():
    """β = 0.5, ε = 0.25, βh = [1, −1].

    loss = 0.75·log(1+e^{−βh}) + 0.25·log(1+e^{βh})
         = [0.75·0.3132617 + 0.25·1.3132617, 0.75·1.3132617 + 0.25·0.3132617] = [0.5632617, 1.0632617]
    """
    out = loss_of("cdpo", pair_batch(), beta=0.5, epsilon=0.25)
    expected = [0.75 * softplus(-1) + 0.25 * softplus(1), 0.75 * softplus(1) + 0.25 * softplus(-1)]
    assert_close(out.losses, t(*expected), rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.5632616875182228, 1.0632616875182228), rtol=0, atol=1e-12)


def test_rdpo_hand_values():
    """β = 0.5, ε = 0.25, βh = [1, −1].

    loss = [0.75·log(1+e^{−βh}) − 0.25·log(1+e^{βh})] / (1 − 0.5)
         = [(0.2349463 − 0.3283154)/0.5, (0.9849463 − 0.0783154)/0.5] = [−0.1867383, 1.8132617]
    (negative values are expected: the de-biased loss subtracts the flipped-label term)
    """
    out = loss_of("rdpo", pair_batch(), beta=0.5, epsilon=0.25)
    expected = [
        (0.75 * softplus(-1) - 0.25 * softplus(1)) / 0.5,
        (0.75 * softplus(1) - 0.25 * softplus(-1)) / 0.5,
    ]
    assert_close(out.losses, t(*expected), rtol=0, atol=1e-12)
    assert_close(out.losses, t(-0.18673831248177717, 1.8132616875182228), rtol=0, atol=1e-12)


def test_kto_hand_values():
    """β = 0.5, λ_D = 1, λ_U = 2, z0 = 0.5; r = log π − log π_ref = [1, −1]; desirable [T, F].

    desirable:   λ_D(1 − σ(β(r − z0))) = 1 − σ(0.5·0.5)   = 1 − σ(0.25) = 0.4378235
    undesirable: λ_U(1 − σ(β(z0 − r))) = 2(1 − σ(0.5·1.5)) = 2(1 − σ(0.75)) = 0.6416426
    rewards = β r = [0.5, −0.5]
    """
    batch = UnpairedLogps(
        policy_logps=t(-1, -3),
        ref_logps=t(-2, -2),
        desirable=torch.tensor([True, False]),
        kl_baseline=t(0.5)[0],
    )
    out = loss_of("kto", batch, beta=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    assert_close(out.losses, t(1 - sigmoid(0.25), 2 * (1 - sigmoid(0.75))), rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.4378234991142019, 0.641642601649214), rtol=0, atol=1e-12)
    assert_close(out.metrics["rewards"], t(0.5, -0.5))


def test_kto_kl_baseline_is_clamped_mean_and_detached():
    """z0 = max(0, mean(π' − π_ref')): mean([1, −3] − [0, 0]) = −1 → 0; mean([3, 1]) = 2 → 2."""
    policy = t(1, -3).requires_grad_()
    assert kl_baseline(policy, t(0, 0)).item() == 0.0
    z0 = kl_baseline(t(3, 1).requires_grad_(), t(0, 0))
    assert z0.item() == 2.0
    assert not z0.requires_grad


def test_orpo_hand_values():
    """λ = 0.5; mean log-probs: y_w −1/2 = −0.5, y_l −3/3 = −1.

    log odds(y_w) = −0.5 − log(1 − e^{−0.5}) = −0.5 + 0.9327521 = 0.4327521
    log odds(y_l) = −1 − log(1 − e^{−1})     = −1 + 0.4586751 = −0.5413249
    log odds ratio = 0.9740770;  L_OR = log(1 + e^{−0.9740770}) = 0.3204...
    loss = NLL + λ L_OR = 0.5 + 0.5·L_OR
    """
    batch = pair_batch(
        policy_chosen_logps=t(-1),
        policy_rejected_logps=t(-3),
        chosen_lengths=t(2),
        rejected_lengths=t(3),
        ref_chosen_logps=None,
        ref_rejected_logps=None,
    )
    lo_w = -0.5 - math.log(1 - math.exp(-0.5))
    lo_l = -1.0 - math.log(1 - math.exp(-1.0))
    out = loss_of("orpo", batch, lam=0.5)
    assert_close(out.metrics["log_odds_ratio"], t(lo_w - lo_l), rtol=0, atol=1e-12)
    assert_close(out.metrics["log_odds_ratio"], t(0.9740769841801067), rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.5 + 0.5 * softplus(-(lo_w - lo_l))), rtol=0, atol=1e-12)
    assert_close(out.metrics["nll"], t(0.5))


def test_simpo_hand_values():
    """β = 2, γ = 0.5: r_w = 2·(−1/2) = −1, r_l = 2·(−3/3) = −2.

    loss = log(1 + e^{−(1 − 0.5)}) = 0.4740770
    """
    batch = pair_batch(
        policy_chosen_logps=t(-1),
        policy_rejected_logps=t(-3),
        chosen_lengths=t(2),
        rejected_lengths=t(3),
        ref_chosen_logps=None,
        ref_rejected_logps=None,
    )
    out = loss_of("simpo", batch, beta=2.0, gamma=0.5)
    assert_close(out.losses, t(softplus(-0.5)), rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.4740769841801067), rtol=0, atol=1e-12)
    assert_close(out.metrics["chosen_rewards"], t(-1.0))
    assert_close(out.metrics["rejected_rewards"], t(-2.0))


def test_slic_hand_values():
    """β = 0.5, δ = 1.5; h = [2, −2, 4] → βh = [1, −1, 2] → max(0, δ − βh) = [0.5, 2.5, 0]."""
    batch = pair_batch(
        policy_chosen_logps=t(-1, -4, 0),
        policy_rejected_logps=t(-3, -2, -4),
        chosen_lengths=t(1, 1, 1),
        rejected_lengths=t(1, 1, 1),
        ref_chosen_logps=t(-2, -3, 0),
        ref_rejected_logps=t(-2, -3, 0),
    )
    out = loss_of("slic", batch, beta=0.5, delta=1.5)
    assert_close(out.losses, t(0.5, 2.5, 0.0), rtol=0, atol=1e-12)
    assert get_objective("hinge") is get_objective("slic")


def test_sft_hand_values():
    """Preferred-FT: loss = −log π(y_w) = −[−1, −4] = [1, 4]; per token [1/2, 4/4]."""
    out = loss_of("sft", pair_batch())
    assert_close(out.losses, t(1.0, 4.0), rtol=0, atol=1e-12)
    assert_close(out.metrics["nll_per_token"], t(0.5, 1.0))


def test_unlikelihood_hand_values():
    """α = 0.5; y_w sum −1; y_l tokens p = [0.5, 0.25] and one padded token (p = 0.9, masked out).

    unlikelihood = −[log(1 − 0.5) + log(1 − 0.25)] = log 2 + log(4/3) = 0.9808293
    loss = 1 + 0.5·0.9808293 = 1.4904146
    """
    rejected_tokens = torch.log(t(0.5, 0.25, 0.9)).unsqueeze(0)
    batch = pair_batch(
        policy_chosen_logps=t(-1),
        policy_rejected_logps=t(math.log(0.125)),
        chosen_lengths=t(2),
        rejected_lengths=t(2),
        ref_chosen_logps=None,
        ref_rejected_logps=None,
        chosen_token_logps=t(-0.5, -0.5).unsqueeze(0),
        chosen_mask=t(1, 1).unsqueeze(0),
        rejected_token_logps=rejected_tokens,
        rejected_mask=t(1, 1, 0).unsqueeze(0),
    )
    out = loss_of("unlikelihood", batch, alpha=0.5)
    expected_ul = math.log(2) + math.log(4 / 3)
    assert_close(out.metrics["unlikelihood"], t(expected_ul), rtol=0, atol=1e-12)
    assert_close(out.losses, t(1 + 0.5 * expected_ul), rtol=0, atol=1e-12)


def test_unlikelihood_stays_finite_when_a_rejected_token_is_certain():
    """p(y_l,t) = 1 would make log(1 − p) = −inf; the floor keeps loss and gradient finite."""
    tokens = torch.zeros(1, 2, dtype=f64, requires_grad=True)  # log p = 0 → p = 1
    batch = pair_batch(
        policy_chosen_logps=t(-1),
        policy_rejected_logps=t(0),
        chosen_lengths=t(1),
        rejected_lengths=t(2),
        ref_chosen_logps=None,
        ref_rejected_logps=None,
        chosen_token_logps=t(-1).unsqueeze(0),
        chosen_mask=t(1).unsqueeze(0),
        rejected_token_logps=tokens,
        rejected_mask=t(1, 1).unsqueeze(0),
    )
    out = loss_of("unlikelihood", batch, alpha=1.0, min_complement=1e-5)
    out.losses.sum().backward()
    assert_close(out.metrics["unlikelihood"], t(-2 * math.log(1e-5)), rtol=1e-9, atol=0)
    assert torch.isfinite(tokens.grad).all()


def ppo_example(**overrides: torch.Tensor) -> PPOBatch:
    """One rollout of 3 tokens, the last one padding.

    ratio ρ = [1.5, 0.5] (log-ratios log 1.5, log 0.5), A = [1, −1];
    values [1, 2], old values [0.5, 1.5], returns [1, 0]; entropy [1, 2].
    """
    fields = dict(
        logprobs=torch.log(t(1.5, 0.5, 1.0)).unsqueeze(0),
        old_logprobs=t(0, 0, 0).unsqueeze(0),
        advantages=t(1, -1, 7).unsqueeze(0),
        values=t(1, 2, 9).unsqueeze(0),
        old_values=t(0.5, 1.5, 9).unsqueeze(0),
        returns=t(1, 0, 9).unsqueeze(0),
        mask=t(1, 1, 0).unsqueeze(0),
        entropy=t(1, 2, 9).unsqueeze(0),
    )
    fields.update(overrides)
    return PPOBatch(**fields)


def test_ppo_hand_values():
    """ε = 0.2, clip_value = 0.2, vf_coef = 0.5, ent_coef = 0.1.

    policy: token 1 (A = 1):  max(−1.5, −1.2) = −1.2 (clipped); token 2 (A = −1): max(0.5, 0.8) = 0.8
            (clipped) → mean −0.2, clipfrac 1
    value:  V_clip = old + clamp(V − old, ±0.2) = [0.7, 1.7]
            ½max((V−R)², (V_clip−R)²) = ½[max(0, 0.09), max(4, 2.89)] = [0.045, 2.0] → mean 1.0225
    entropy mean 1.5
    loss = −0.2 + 0.5·1.0225 − 0.1·1.5 = 0.16125
    approx_kl = ½ mean(log²ρ) = ½(log²1.5 + log²0.5)/2
    """
    out = loss_of("ppo", ppo_example(), clip_ratio=0.2, clip_value=0.2, vf_coef=0.5, ent_coef=0.1)
    assert_close(out.losses.mean(), t(0.16125)[0], rtol=0, atol=1e-12)
    assert_close(out.metrics["policy_loss"], t(-0.2)[0], rtol=0, atol=1e-12)
    assert_close(out.metrics["value_loss"], t(1.0225)[0], rtol=0, atol=1e-12)
    assert_close(out.metrics["clipfrac"], t(1.0)[0])
    assert_close(out.metrics["value_clipfrac"], t(0.5)[0])
    assert_close(out.metrics["approx_kl"], t(0.25 * (math.log(1.5) ** 2 + math.log(0.5) ** 2))[0])


def test_ppo_aggregation_token_mean_vs_sequence_mean():
    """Per-token loss −A with A = 1 on a 1-token row and A = 3 on a 3-token row (vf_coef = 0).

    token-mean: (−1 − 3·3)/4 = −2.5;  sequence-mean: (−1 + −3)/2 = −2
    """
    zeros = torch.zeros(2, 3, dtype=f64)
    batch = PPOBatch(
        logprobs=zeros,
        old_logprobs=zeros,
        advantages=t(1, 0, 0, 3, 3, 3).view(2, 3),
        values=zeros,
        old_values=zeros,
        returns=zeros,
        mask=t(1, 0, 0, 1, 1, 1).view(2, 3),
    )
    assert_close(loss_of("ppo", batch, vf_coef=0.0).losses.mean(), t(-2.5)[0])
    assert_close(loss_of("ppo", batch, vf_coef=0.0, aggregation="sequence-mean").losses.mean(), t(-2.0)[0])


# ---------------------------------------------------------------------------------------------
# limit cases
# ---------------------------------------------------------------------------------------------


def random_pairs(seed: int = 0, n: int = 8) -> PairedLogps:
    g = torch.Generator().manual_seed(seed)
    draw = lambda: -10 * torch.rand(n, generator=g, dtype=f64)  # noqa: E731
    return PairedLogps(
        policy_chosen_logps=draw(),
        policy_rejected_logps=draw(),
        chosen_lengths=torch.randint(1, 20, (n,), generator=g).to(f64),
        rejected_lengths=torch.randint(1, 20, (n,), generator=g).to(f64),
        ref_chosen_logps=draw(),
        ref_rejected_logps=draw(),
    )


def swapped(b: PairedLogps) -> PairedLogps:
    return PairedLogps(
        policy_chosen_logps=b.policy_rejected_logps,
        policy_rejected_logps=b.policy_chosen_logps,
        chosen_lengths=b.rejected_lengths,
        rejected_lengths=b.chosen_lengths,
        ref_chosen_logps=b.ref_rejected_logps,
        ref_rejected_logps=b.ref_chosen_logps,
    )


@pytest.mark.parametrize("name", ["cdpo", "rdpo"])
def test_label_noise_variants_with_zero_epsilon_equal_dpo(name):
    batch = random_pairs()
    assert_close(loss_of(name, batch, beta=0.3, epsilon=0.0).losses, loss_of("dpo", batch, beta=0.3).losses)


@pytest.mark.parametrize("name", ["dpo", "ipo", "cdpo", "rdpo", "slic", "simpo", "orpo"])
def test_swapping_chosen_and_rejected_flips_the_margin(name):
    batch = random_pairs(seed=1)
    a, b = loss_of(name, batch).metrics, loss_of(name, swapped(batch)).metrics
    assert_close(b["margins"], -a["margins"])
    assert_close(b["chosen_rewards"], a["rejected_rewards"])


def test_dpo_at_zero_margin_is_log_2():
    batch = pair_batch(policy_chosen_logps=t(-2, -3), policy_rejected_logps=t(-2, -3))  # h = 0
    assert_close(loss_of("dpo", batch, beta=3.0).losses, t(math.log(2), math.log(2)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
def test_ipo_is_minimised_at_margin_one_over_two_tau(tau):
    target = 1 / (2 * tau)
    margins = torch.tensor([target - 0.1, target, target + 0.1], dtype=f64, requires_grad=True)
    batch = PairedLogps(
        policy_chosen_logps=margins,
        policy_rejected_logps=torch.zeros(3, dtype=f64),
        chosen_lengths=t(1, 1, 1),
        rejected_lengths=t(1, 1, 1),
        ref_chosen_logps=torch.zeros(3, dtype=f64),
        ref_rejected_logps=torch.zeros(3, dtype=f64),
    )
    losses = loss_of("ipo", batch, tau=tau).losses
    losses.sum().backward()
    assert losses[1].item() == 0.0 and margins.grad[1].item() == 0.0
    assert losses[0] > 0 and losses[2] > 0
    assert margins.grad[0] < 0 < margins.grad[2]  # descent moves both towards the target


def test_ppo_with_ratio_one_and_no_clipping_is_minus_advantage():
    """ρ = 1 → min(ρA, clip(ρ)A) = A; vf_coef = ent_coef = 0 → per-token loss −A."""
    adv = t(0.3, -1.2, 2.0).unsqueeze(0)
    logp = t(-1.0, -2.0, -0.5).unsqueeze(0)
    zeros = torch.zeros_like(adv)
    batch = PPOBatch(
        logprobs=logp,
        old_logprobs=logp.clone(),
        advantages=adv,
        values=zeros,
        old_values=zeros,
        returns=zeros,
        mask=torch.ones_like(adv),
    )
    out = loss_of("ppo", batch, vf_coef=0.0, aggregation="sequence-mean")
    assert_close(out.losses, -adv.mean(dim=-1), rtol=0, atol=1e-12)
    assert out.metrics["clipfrac"].item() == 0.0


def test_simpo_with_zero_gamma_and_equal_lengths_is_reference_free_dpo():
    """γ = 0, |y_w| = |y_l| = L → −log σ((β/L)(log π(y_w) − log π(y_l)))."""
    b = random_pairs(seed=2)
    L = t(*[5.0] * 8)
    b = PairedLogps(
        policy_chosen_logps=b.policy_chosen_logps,
        policy_rejected_logps=b.policy_rejected_logps,
        chosen_lengths=L,
        rejected_lengths=L,
    )
    beta = 2.5
    expected = -torch.nn.functional.logsigmoid(beta / 5.0 * (b.policy_chosen_logps - b.policy_rejected_logps))
    assert_close(loss_of("simpo", b, beta=beta, gamma=0.0).losses, expected)


def test_kto_does_not_backpropagate_through_z0():
    z0 = torch.tensor(0.3, dtype=f64, requires_grad=True)
    batch = UnpairedLogps(
        policy_logps=t(-1, -2).requires_grad_(),
        ref_logps=t(-1, -1),
        desirable=torch.tensor([True, False]),
        kl_baseline=z0,
    )
    loss_of("kto", batch).losses.sum().backward()
    assert z0.grad is None


def test_reference_objectives_refuse_a_batch_without_reference():
    batch = pair_batch(ref_chosen_logps=None, ref_rejected_logps=None)
    with pytest.raises(ValueError, match="reference log-probs"):
        loss_of("dpo", batch)


# ---------------------------------------------------------------------------------------------
# gradient direction: one optimiser step on a real (tiny) model raises the margin
# ---------------------------------------------------------------------------------------------


def _pairs_through_model(model, ref_sums):
    from alignlab.core.scoring import EncodedBatch, score_pairs, sequence_logps

    g = torch.Generator().manual_seed(3)
    ids_c = torch.randint(0, 64, (4, 12), generator=g)
    ids_r = ids_c.clone()
    ids_r[:, 6:] = torch.randint(0, 64, (4, 6), generator=g)  # same prompt, different completion
    ones = torch.ones_like(ids_c)
    comp = torch.zeros_like(ids_c)
    comp[:, 6:] = 1
    c, cm, r, rm = score_pairs(model, EncodedBatch(ids_c, ones, comp), EncodedBatch(ids_r, ones, comp), 0)
    sums = sequence_logps(c, cm, "sum"), sequence_logps(r, rm, "sum")
    ref = ref_sums if ref_sums is not None else tuple(s.detach() for s in sums)
    return PairedLogps(
        policy_chosen_logps=sums[0],
        policy_rejected_logps=sums[1],
        chosen_lengths=cm.sum(-1).to(f64),
        rejected_lengths=rm.sum(-1).to(f64),
        ref_chosen_logps=ref[0],
        ref_rejected_logps=ref[1],
        chosen_token_logps=c,
        chosen_mask=cm,
        rejected_token_logps=r,
        rejected_mask=rm,
    ), ref


@pytest.mark.parametrize("name", ["dpo", "ipo", "cdpo", "rdpo", "slic", "simpo", "orpo", "unlikelihood"])
def test_one_optimiser_step_raises_the_margin(name):
    from conftest import tiny_gpt2

    model = tiny_gpt2(seed=5)  # eval mode: no dropout, so the change is the step's alone
    before, ref = _pairs_through_model(model, None)
    objective = get_objective(name)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    objective(before, objective.config()).losses.mean().backward()
    opt.step()
    with torch.no_grad():
        after, _ = _pairs_through_model(model, ref)
    margin = lambda b: (b.policy_chosen_logps - b.policy_rejected_logps).mean()  # noqa: E731
    assert margin(after) > margin(before).detach()


def test_one_sft_step_raises_the_chosen_log_prob():
    from conftest import tiny_gpt2

    model = tiny_gpt2(seed=5)
    before, ref = _pairs_through_model(model, None)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    get_objective("sft")(before).losses.mean().backward()
    opt.step()
    with torch.no_grad():
        after, _ = _pairs_through_model(model, ref)
    assert after.policy_chosen_logps.mean() > before.policy_chosen_logps.mean()
