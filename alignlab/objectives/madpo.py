"""MADPO: margin-adaptive DPO, each pair's DPO loss weighted by a reward model's margin (Rho 2025)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class MADPOConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β: strength of the implicit KL penalty to π_ref (official MADPOLoss default 0.1).", gt=0)
    c_max: float = knob(
        2.0, "c_max: the coefficient c(|m|) at margins far below τ (hard pairs amplified; MADPOLoss: 2).", ge=1
    )
    c_min: float = knob(
        0.5, "c_min: the coefficient c(|m|) at margins far above τ (easy pairs damped; MADPOLoss: 0.5).", ge=0, lt=1
    )
    lam: float = knob(1.0, "λ: how sharply c(|m|) moves from c_max to c_min around |m| = τ (MADPOLoss: 1).", ge=0)
    tau: float = knob(
        2.0, "τ: the margin where c(|m|) = 1; a pair with m <= −τ (scores against the label) keeps weight 1.", gt=0
    )


def madpo_weights(margins: Tensor, cfg: MADPOConfig) -> Tensor:
    """w(m) of each pair, (B,) -> (B,): σ(c(|m|)·m)/σ(m) where m > −τ, else 1.

    c(|m|) = c_min + (c_max − c_min) / (1 + ((c_max − 1)/(1 − c_min))·exp(λ(|m| − τ))), so c = 1 at
    |m| = τ, c → c_max as |m| → 0 (with λτ large) and c → c_min as |m| → ∞. The exponent is clamped at
    80 (a change below 1e-34 in c), so that c_max = 1 (c ≡ 1, w ≡ 1) never multiplies 0 by ∞.
    """
    m = margins.detach()
    ratio = (cfg.c_max - 1) / (1 - cfg.c_min)
    c = cfg.c_min + (cfg.c_max - cfg.c_min) / (1 + ratio * torch.exp((cfg.lam * (m.abs() - cfg.tau)).clamp(max=80)))
    # σ(c m)/σ(m), in log space: neither ratio term underflows for a large negative m
    adaptive = torch.exp(F.logsigmoid(c * m) - F.logsigmoid(m))
    return torch.where(m > -cfg.tau, adaptive, torch.ones_like(m))


@register_objective(
    "madpo",
    display_name="MADPO",
    config=MADPOConfig,
    needs=Needs(reference=True, data="paired", scores=True),
    citation="Rho 2025, Margin Adaptive DPO (arXiv:2510.05342), the weighted loss and c(|m|); official code MADPOLoss",
)
def madpo_loss(batch: PairedLogps, cfg: MADPOConfig) -> LossOutput:
    """w(m)·(−log σ(β h)), m = s(y_w) − s(y_l) from the scores: DPO re-weighted pair by pair."""
    chosen_logratios, rejected_logratios = batch.logratios()
    chosen_scores, rejected_scores = batch.scores()
    # the explicit margin of a reward model (MADPOLoss: reward_margin = reward1 − reward2 of the chosen side)
    weights = madpo_weights(chosen_scores - rejected_scores, cfg)
    # L_MADPO = w(m)·L_DPO: the weight is a constant of the data, the gradient is DPO's scaled by it
    losses = weights * -F.logsigmoid(cfg.beta * (chosen_logratios - rejected_logratios))
    metrics = pairwise_metrics(cfg.beta * chosen_logratios, cfg.beta * rejected_logratios)
    return LossOutput(losses, metrics | {"weights": weights})
