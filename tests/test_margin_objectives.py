"""The margin-aware four — MADPO, ODPO, DPOP, β-DPO — against hand arithmetic (float64), their limit
cases, the published divergent forms they are not, and the direction of one gradient step.

Every expected value is computed in the docstring (and in the test) from the paper's formula with
plain ``math``, never from alignlab's code. The running example is ``pair_batch``: log-ratios
chosen [1, −1], rejected [−1, 1], so h = [2, −2].
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_objectives import _pairs_through_model, loss_of, pair_batch, random_pairs, sigmoid, softplus, swapped, t
from torch.testing import assert_close

from alignlab.errors import ConfigError
from alignlab.objectives import PairedLogps, get_objective
from alignlab.objectives.beta_dpo import kept_pairs

f64 = torch.float64


def scored(batch: PairedLogps, chosen: torch.Tensor, rejected: torch.Tensor) -> PairedLogps:
    return dataclasses.replace(batch, chosen_scores=chosen, rejected_scores=rejected)


def c_of(m: float, c_max: float = 2.0, c_min: float = 0.5, lam: float = 1.0, tau: float = 2.0) -> float:
    """MADPO's c(|m|) = c_min + (c_max − c_min)/(1 + ((c_max − 1)/(1 − c_min))·e^{λ(|m| − τ)}), by hand."""
    return c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * math.exp(lam * (abs(m) - tau)))


def madpo_weight(margins: list[float], **knobs: float) -> torch.Tensor:
    """The weights the loss applies: its loss over a batch with h = 0 everywhere, divided by log 2."""
    n = len(margins)
    batch = PairedLogps(
        policy_chosen_logps=torch.zeros(n, dtype=f64),
        policy_rejected_logps=torch.zeros(n, dtype=f64),
        chosen_lengths=torch.ones(n, dtype=f64),
        rejected_lengths=torch.ones(n, dtype=f64),
        ref_chosen_logps=torch.zeros(n, dtype=f64),
        ref_rejected_logps=torch.zeros(n, dtype=f64),
        chosen_scores=torch.tensor(margins, dtype=f64),
        rejected_scores=torch.zeros(n, dtype=f64),
    )
    out = loss_of("madpo", batch, **knobs)
    assert_close(out.losses / math.log(2), out.metrics["weights"], rtol=1e-15, atol=0)
    return out.metrics["weights"]


# ---------------------------------------------------------------------------------------------
# MADPO
# ---------------------------------------------------------------------------------------------


def test_madpo_hand_values():
    """β = 0.5, defaults c_max 2, c_min 0.5, λ 1, τ 2; scores give m = [3 − 2, 1 − 1.5] = [1, −0.5].

    (c_max − 1)/(1 − c_min) = 2
    m = 1:    c = 0.5 + 1.5/(1 + 2e^{−1})   = 1.3641753; w = σ(1.3641753)/σ(1)     = 1.0894304
    m = −0.5: c = 0.5 + 1.5/(1 + 2e^{−1.5}) = 1.5371577; w = σ(−0.7685788)/σ(−0.5) = 0.8390794
    loss = w·log(1 + e^{−βh}) = [1.0894304·0.3132617, 0.8390794·1.3132617] = [0.3412768, 1.1019309]
    """
    batch = scored(pair_batch(), t(3, 1), t(2, 1.5))
    w = [sigmoid(c_of(1) * 1) / sigmoid(1), sigmoid(c_of(-0.5) * -0.5) / sigmoid(-0.5)]
    out = loss_of("madpo", batch, beta=0.5)
    assert_close(out.metrics["weights"], t(*w), rtol=0, atol=1e-12)
    assert_close(out.losses, t(w[0] * softplus(-1), w[1] * softplus(1)), rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.341276814145107, 1.1019308771408387), rtol=0, atol=1e-12)
    assert_close(out.metrics["margins"], t(1.0, -1.0))


def test_madpo_weight_is_one_at_minus_tau_at_tau_and_far_above_tau():
    """m = −τ = −2: the flat branch, w = 1 (and c(2) = 0.5 + 1.5/(1 + 2) = 1: continuous there);
    m = −2.5 ≤ −τ: w = 1; |m| = τ: c = 1, w = σ(2)/σ(2) = 1;
    m = 40 ≫ τ: c → c_min = 0.5, w = σ(20)/σ(40) = 1 − 2.06e−9 → 1 from below."""
    w = madpo_weight([-2.0, -2.5, 2.0, 40.0])
    assert w[0].item() == 1.0 and w[1].item() == 1.0
    assert c_of(2.0) == 1.0 and c_of(-2.0) == 1.0
    assert_close(w[2], t(1.0)[0], rtol=0, atol=1e-15)
    assert_close(w[3], t(sigmoid(20) / sigmoid(40))[0], rtol=0, atol=1e-15)
    assert 1 - 1e-8 < w[3].item() < 1.0


def test_madpo_amplifies_hard_pairs_and_damps_easy_and_contradicted_ones():
    """0 < m < τ (c > 1): w > 1; m > τ (c < 1): w < 1; −τ < m < 0 (c > 1): w < 1; just above −τ: w → 1.

    m = 0.5: c = 1.5371577, w = σ(0.7685788)/σ(0.5) = 1.0976033
    m = 5:   c = 0.5364333, w = σ(2.6821667)/σ(5)   = 0.9422726
    m = −1:  c = 1.3641753, w = σ(−1.3641753)/σ(−1) = 0.7569029
    """
    w = madpo_weight([0.5, 5.0, -1.0, -1.999])
    expected = [sigmoid(c_of(m) * m) / sigmoid(m) for m in (0.5, 5.0, -1.0, -1.999)]
    assert_close(w, t(*expected), rtol=0, atol=1e-12)
    assert w[0] > 1 > w[1] and w[2] < 1 and abs(w[3].item() - 1) < 1e-3


def test_madpo_with_c_max_one_is_dpo():
    """c_max = 1: (c_max − 1)/(1 − c_min) = 0, so c ≡ c_min + (1 − c_min) = 1 and w ≡ 1, for any m."""
    batch = random_pairs(seed=3)
    g = torch.Generator().manual_seed(4)
    batch = scored(batch, 10 * torch.randn(8, generator=g, dtype=f64), 10 * torch.randn(8, generator=g, dtype=f64))
    out = loss_of("madpo", batch, beta=0.3, c_max=1.0)
    assert_close(out.metrics["weights"], torch.ones(8, dtype=f64), rtol=0, atol=1e-15)
    assert_close(out.losses, loss_of("dpo", batch, beta=0.3).losses, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# ODPO
# ---------------------------------------------------------------------------------------------


def test_odpo_hand_values_log_identity_and_ratio():
    """β = 0.5, α = 1, βh = [1, −1]; scores chosen [3, 2], rejected [1, 1.5].

    log:       Δ = [log 2, log 0.5] = [0.6931472, −0.6931472]; βh − Δ = [0.3068528, −0.3068528]
               loss = log(1 + e^{−(βh − Δ)}) = [0.5514447, 0.8582975]
    identity:  Δ = [2, 0.5];   βh − Δ = [−1, −1.5]  → loss = [1.3132617, 1.7014133]
    log_ratio: Δ = [log 3, log(4/3)] = [1.0986123, 0.2876821] → loss = [0.7436684, 1.5313414]
    """
    batch = scored(pair_batch(), t(3, 2), t(1, 1.5))
    log2 = math.log(2)
    out = loss_of("odpo", batch, beta=0.5)
    assert_close(out.metrics["offsets"], t(log2, -log2), rtol=0, atol=1e-12)
    assert_close(out.losses, t(softplus(-(1 - log2)), softplus(-(-1 + log2))), rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.5514447139320511, 0.8582975333721057), rtol=0, atol=1e-12)
    identity = loss_of("odpo", batch, beta=0.5, offset="identity").losses
    assert_close(identity, t(softplus(1), softplus(1.5)), rtol=0, atol=1e-12)
    ratio = loss_of("odpo", batch, beta=0.5, offset="log_ratio").losses
    expected = [softplus(-(1 - math.log(3))), softplus(-(-1 - math.log(4 / 3)))]
    assert_close(ratio, t(*expected), rtol=0, atol=1e-12)
    assert_close(ratio, t(0.7436683806286791, 1.5313413934831708), rtol=0, atol=1e-12)


def test_odpo_with_alpha_zero_is_dpo_whatever_the_scores():
    """α = 0: Δ = 0 for every pair, even where log(s_w − s_l) is undefined (s_w <= s_l)."""
    g = torch.Generator().manual_seed(5)
    batch = scored(random_pairs(seed=4), torch.randn(8, generator=g, dtype=f64), torch.randn(8, generator=g, dtype=f64))
    assert (batch.chosen_scores <= batch.rejected_scores).any()  # some offsets are undefined
    for offset in ("log", "identity", "log_ratio"):
        out = loss_of("odpo", batch, beta=0.3, alpha=0.0, offset=offset)
        assert_close(out.losses, loss_of("dpo", batch, beta=0.3).losses, rtol=0, atol=0)


def test_odpo_score_gaps_below_one_ask_less_than_dpo_and_no_gap_asks_nothing():
    """log(s_w − s_l) < 0 for gaps in (0, 1): Δ < 0, so the loss is below DPO's at the same h (a
    negative required margin); as the gap → 0⁺, Δ → −∞ and the loss → 0, which is its value (and
    its gradient) at a gap ≤ 0: s_w − s_l = [0.5, 1e−12, 0, −1] with h = 0:
    loss = [log(1 + e^{log 0.5}) = log 1.5, log(1 + 1e−12), 0, 0]."""
    zeros = torch.zeros(4, dtype=f64)
    policy = torch.zeros(4, dtype=f64, requires_grad=True)
    batch = PairedLogps(policy, zeros, zeros + 1, zeros + 1, zeros, zeros, chosen_scores=t(0.5, 1e-12, 0, -1))
    batch = dataclasses.replace(batch, rejected_scores=zeros)
    out = loss_of("odpo", batch, beta=1.0)
    assert_close(out.losses, t(math.log(1.5), math.log1p(1e-12), 0, 0), rtol=0, atol=1e-15)
    assert out.losses[0] < math.log(2)  # DPO's loss at h = 0
    assert_close(out.metrics["offset_defined"], t(1, 1, 0, 0))
    out.losses.sum().backward()
    assert policy.grad[2].item() == 0.0 and policy.grad[3].item() == 0.0 and policy.grad[0] < 0


# ---------------------------------------------------------------------------------------------
# DPOP
# ---------------------------------------------------------------------------------------------


def test_dpop_hand_values_pin_the_paper_form_against_the_divergent_ones():
    """β = 0.5, λ = 2; chosen log-ratios [1, −1] → penalty max(0, −[1, −1]) = [0, 1]; h = [2, −2].

    paper (inside the sigmoid, scaled by β; the bracketing of the July 2024 revision, abacusai/smaug#2):
        −log σ(β(h − λ·pen)) = −log σ([1, −2]) = [log(1 + e^{−1}), log(1 + e^{2})] = [0.3132617, 2.1269280]
    outside and unscaled (several trainers): −log σ(βh) + λ·pen = [0.3132617, 1.3132617 + 2] = [0.3132617, 3.3132617]
    outside with the wrong sign (a published snippet, LlamaFactory#2587): −log σ(βh) − λ·pen
        = [0.3132617, 1.3132617 − 2] = [0.3132617, −0.6867383]
    the max's argument reversed, max(0, log π(y_w) − log π_ref(y_w)) = [1, 0]: −log σ(β([2, −2] − 2·[1, 0]))
        = [log 2, log(1 + e^{1})] = [0.6931472, 1.3132617]
    """
    out = loss_of("dpop", pair_batch(), beta=0.5, lam=2.0)
    paper = t(softplus(-1), softplus(2))
    assert_close(out.losses, paper, rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.31326168751822286, 2.1269280110429727), rtol=0, atol=1e-12)
    assert_close(out.metrics["penalty"], t(0.0, 1.0))
    divergent = {
        "outside, unscaled": t(softplus(-1), softplus(1) + 2),
        "outside, wrong sign": t(softplus(-1), softplus(1) - 2),
        "argument reversed": t(math.log(2), softplus(1)),
    }
    for form, values in divergent.items():
        assert (out.losses - values).abs().max() > 0.3, form


def test_dpop_with_lambda_zero_is_dpo():
    batch = random_pairs(seed=6)
    assert_close(loss_of("dpop", batch, beta=0.3, lam=0.0).losses, loss_of("dpo", batch, beta=0.3).losses)


def test_dpop_penalty_is_zero_while_the_chosen_completion_is_no_less_likely_than_under_pi_ref():
    """log π(y_w) >= log π_ref(y_w) on every pair → penalty 0 → DPOP = DPO at any λ."""
    b = random_pairs(seed=7)
    b = dataclasses.replace(b, policy_chosen_logps=b.ref_chosen_logps + torch.rand(8, dtype=f64))
    out = loss_of("dpop", b, beta=0.3, lam=500.0)
    assert out.metrics["penalty"].abs().max().item() == 0.0
    assert_close(out.losses, loss_of("dpo", b, beta=0.3).losses, rtol=0, atol=0)


def chosen_gradient(name: str, chosen: float, rejected: float, ref: float, **knobs: float) -> float:
    """∂L/∂log π(y_w) of one pair (log π(y_w) = chosen, log π(y_l) = rejected, both π_ref sums = ref), β = 0.5."""
    policy_chosen = t(chosen).requires_grad_()
    b = pair_batch(
        policy_chosen_logps=policy_chosen,
        policy_rejected_logps=t(rejected),
        chosen_lengths=t(1),
        rejected_lengths=t(1),
        ref_chosen_logps=t(ref),
        ref_rejected_logps=t(ref),
    )
    loss_of(name, b, beta=0.5, **knobs).losses.sum().backward()
    return policy_chosen.grad.item()


def test_dpop_gradient_at_pi_equal_to_pi_ref_is_dpos():
    """Every pair starts at π = π_ref: log-ratio 0, where max(0, ·) has no slope to take; DPOP's gradient
    there is DPO's, −βσ(−βh) = −0.5·σ(0) = −0.25 on log π(y_w), not (1 + λ) times it."""
    assert chosen_gradient("dpop", -3, -3, -3) == chosen_gradient("dpo", -3, -3, -3) == -0.25


def test_dpop_pushes_a_chosen_completion_below_pi_ref_up_harder_than_dpo():
    """Chosen log-ratio −1, rejected +1 (h = −2, penalty 1, λ = 2):
    ∂L/∂log π(y_w) = −β(1 + λ)σ(−β(h − λ pen)) = −0.5·3·σ(2) < DPO's −βσ(−βh) = −0.5·σ(1) < 0."""
    dpop, dpo = chosen_gradient("dpop", -4, -2, -3, lam=2.0), chosen_gradient("dpo", -4, -2, -3)
    assert_close(t(dpop), t(-0.5 * 3 * sigmoid(2)), rtol=0, atol=1e-12)
    assert_close(t(dpo), t(-0.5 * sigmoid(1)), rtol=0, atol=1e-12)
    assert dpop < dpo < 0


# ---------------------------------------------------------------------------------------------
# β-DPO
# ---------------------------------------------------------------------------------------------


def four_pairs(**state: float) -> PairedLogps:
    """h = [2, −2, 1, 3] (chosen log-ratios h, rejected 0), with the running state given."""
    h = t(2, -2, 1, 3)
    zeros = torch.zeros(4, dtype=f64)
    tensors = {k: torch.tensor(v, dtype=f64) for k, v in state.items()}
    return PairedLogps(h, zeros, zeros + 1, zeros + 1, zeros, zeros, state=tensors)


def test_beta_dpo_hand_values_without_filtering():
    """β₀ = 0.5, a = 0.6, ρ = 0, M₀ = 0.5, σ = 1: every pair kept, mean h = (2 − 2 + 1 + 3)/4 = 1;
    β_b = 0.5·(1 + 0.6·(1 − 0.5)) = 0.65; loss = log(1 + e^{−0.65 h})
        = [0.2410085, 1.5410085, 0.4200553, 0.1330211]."""
    out = loss_of("beta_dpo", four_pairs(margin_mean=0.5, margin_std=1.0, updates=3), beta=0.5, a=0.6, rho=0.0)
    assert_close(out.metrics["beta_batch"], t(0.65)[0], rtol=0, atol=1e-15)
    expected = [softplus(-0.65 * h) for h in (2, -2, 1, 3)]
    assert_close(out.losses, t(*expected), rtol=0, atol=1e-12)
    assert_close(out.losses, t(0.2410084538329922, 1.5410084538329922, 0.4200553357027152, 0.1330210750728672))
    assert_close(out.metrics["kept"], t(1, 1, 1, 1))


def test_beta_dpo_state_update_by_hand():
    """γ = 0.9, M₀ = 0.5, σ = 1, 3 updates; h = [2, −2, 1, 3]: mean 1, std (n − 1) = √(14/3) = 2.1602469.
    M₀' = 0.9·0.5 + 0.1·1 = 0.55; σ' = 0.9·1 + 0.1·2.1602469 = 1.1160247; updates 4."""
    objective = get_objective("beta_dpo")
    cfg = objective.config(gamma=0.9)
    batch = four_pairs()
    state = {k: torch.tensor(v, dtype=f64) for k, v in {"margin_mean": 0.5, "margin_std": 1.0, "updates": 3}.items()}
    new = objective.needs.state.update(state, batch, cfg)
    assert_close(new["margin_mean"], t(0.55)[0], rtol=0, atol=1e-15)
    assert_close(new["margin_std"], t(0.9 + 0.1 * math.sqrt(14 / 3))[0], rtol=0, atol=1e-15)
    assert new["updates"].item() == 4
    init = objective.needs.state.init(cfg)
    assert {k: v.item() for k, v in init.items()} == {"margin_mean": 0.0, "margin_std": 0.0, "updates": 0.0}


def test_beta_dpo_filtering_keeps_the_pairs_near_the_running_margin():
    """M₀ = 0, σ = 1, h = [0, 0.1, −0.1, 50], ρ = 0.25 → k = ⌊4·0.75⌋ = 3 kept. The outlier's weight is
    e^{−1250}: whatever the draw, the three others are kept; mean kept h = 0 → β_b = β₀ (1 + a·0) = β₀,
    and each kept loss is scaled by B/k = 4/3: loss = (4/3)·log(1 + e^{−β₀ h}) = (4/3)·[log 2, ...]."""
    h = t(0, 0.1, -0.1, 50)
    zeros = torch.zeros(4, dtype=f64)
    for updates in range(20):
        state = {"margin_mean": t(0)[0], "margin_std": t(1)[0], "updates": t(updates)[0]}
        batch = PairedLogps(h, zeros, zeros + 1, zeros + 1, zeros, zeros, state=state)
        out = loss_of("beta_dpo", batch, beta=0.5, a=0.6, rho=0.25)
        assert_close(out.metrics["kept"], t(1, 1, 1, 0))
        expected = [4 / 3 * softplus(-0.5 * x) for x in (0, 0.1, -0.1)] + [0.0]
        assert_close(out.losses, t(*expected), rtol=0, atol=1e-12)


def test_beta_dpo_draws_follow_the_weights_and_repeat_for_the_same_state():
    """Pairs at 0σ, 1σ, 2σ from M₀, one kept of four (ρ = 0.75): over 400 draws the nearer a pair,
    the more often it is kept (weights e^0 : e^{−1/2} : e^{−2} = 1 : 0.61 : 0.14); the same state gives
    the same draw."""
    h = t(0, 1, 2, -2)
    state = lambda n: {"margin_mean": t(0)[0], "margin_std": t(1)[0], "updates": t(n)[0]}  # noqa: E731
    cfg = get_objective("beta_dpo").config(rho=0.75)
    counts = sum(kept_pairs(h, state(n), cfg) for n in range(400))
    assert counts.sum().item() == 400
    assert counts[0] > counts[1] > counts[2] and counts[1] > counts[3]
    assert_close(kept_pairs(h, state(7), cfg), kept_pairs(h, state(7), cfg), rtol=0, atol=0)


def test_beta_dpo_with_a_and_rho_zero_is_dpo_with_beta0():
    """a = 0: β_b = β₀(1 + 0) = β₀; ρ = 0: every pair kept, scaled by B/B = 1 — for any running state."""
    batch = random_pairs(seed=8)
    for mean, std, updates in ((0.0, 0.0, 0), (-3.0, 2.0, 9)):
        state = {"margin_mean": t(mean)[0], "margin_std": t(std)[0], "updates": t(updates)[0]}
        b = dataclasses.replace(batch, state=state)
        out = loss_of("beta_dpo", b, beta=0.3, a=0.0, rho=0.0)
        assert_close(out.losses, loss_of("dpo", batch, beta=0.3).losses, rtol=0, atol=0)


def test_beta_dpo_refuses_a_floor_above_beta0_and_a_batch_without_state():
    with pytest.raises(ConfigError, match="beta_min"):
        get_objective("beta_dpo").config(beta=0.01, beta_min=0.1)
    with pytest.raises(ValueError, match="running state"):
        loss_of("beta_dpo", random_pairs())


# ---------------------------------------------------------------------------------------------
# all four: symmetry, missing scores, one gradient step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["madpo", "odpo"])
def test_scored_objectives_refuse_a_batch_without_scores(name):
    with pytest.raises(ValueError, match="needs scores"):
        loss_of(name, pair_batch())


@pytest.mark.parametrize("name", ["madpo", "odpo", "dpop"])
def test_swapping_chosen_and_rejected_flips_the_margin(name):
    batch = scored(random_pairs(seed=1), t(*[2.0] * 8), t(*[1.0] * 8))
    flipped = scored(swapped(batch), batch.rejected_scores, batch.chosen_scores)
    a, b = loss_of(name, batch).metrics, loss_of(name, flipped).metrics
    assert_close(b["margins"], -a["margins"])


def _with_extras(name: str, batch: PairedLogps) -> PairedLogps:
    """Scores that agree with the labels (gaps 1.5, 2.5, 0.5, 3 — inside and beyond τ), and β-DPO's
    state moved once by the batch, as the trainer would."""
    batch = scored(batch, t(2.5, 3.5, 1.5, 4.0), t(1.0, 1.0, 1.0, 1.0))
    objective = get_objective(name)
    if objective.needs.state is not None:
        cfg = objective.config()
        state = objective.needs.state.update(objective.needs.state.init(cfg), batch, cfg)
        batch = dataclasses.replace(batch, state=state)
    return batch


@pytest.mark.parametrize("name", ["madpo", "odpo", "dpop", "beta_dpo"])
def test_one_optimiser_step_raises_the_margin(name):
    from conftest import tiny_gpt2

    model = tiny_gpt2(seed=5)
    before, ref = _pairs_through_model(model, None)
    objective = get_objective(name)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    objective(_with_extras(name, before), objective.config()).losses.mean().backward()
    opt.step()
    with torch.no_grad():
        after, _ = _pairs_through_model(model, ref)
    margin = lambda b: (b.policy_chosen_logps - b.policy_rejected_logps).mean()  # noqa: E731
    assert margin(after) > margin(before).detach()
