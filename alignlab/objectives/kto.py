"""KTO: Kahneman–Tversky Optimisation from unpaired desirable/undesirable data (Ethayarajh et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, UnpairedLogps, knob
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class KTOConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β: risk aversion of the value function / strength of the KL penalty.", gt=0)
    desirable_weight: float = knob(1.0, "λ_D: weight of desirable examples.", gt=0)
    undesirable_weight: float = knob(
        1.0, "λ_U: weight of undesirable examples (paper: keep λ_D n_D / λ_U n_U in [1, 4/3]).", gt=0
    )


def kl_baseline(mismatched_policy_logps: Tensor, mismatched_ref_logps: Tensor) -> Tensor:
    """z0: the KTO reference point, max(0, mean of log π(y'|x) − log π_ref(y'|x)), detached.

    Args:
        mismatched_policy_logps: (M,) sequence log-probs of completions paired with the *wrong*
            prompt (the KTO paper shifts the completions of a batch by one), under π.
        mismatched_ref_logps: (M,) the same under π_ref.

    Returns:
        () tensor. Detached: the KTO paper does not back-propagate through z0 (§4.2). A trainer
        running on several processes averages the mean across them before the clamp.
    """
    return (mismatched_policy_logps - mismatched_ref_logps).mean().clamp(min=0).detach()


@register_objective(
    "kto",
    display_name="KTO",
    config=KTOConfig,
    needs=Needs(reference=True, data="unpaired"),
    citation="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, Eq. 7",
)
def kto_loss(batch: UnpairedLogps, cfg: KTOConfig) -> LossOutput:
    """λ_D(1 − σ(β(r − z0))) for desirable y, λ_U(1 − σ(β(z0 − r))) for undesirable y; r = log π/π_ref."""
    logratios = batch.policy_logps - batch.ref_logps
    z0 = batch.kl_baseline.detach()
    desirable = batch.desirable.bool()
    # Eq. 7: v(x, y) = λ_D σ(β(r − z0)) if desirable, λ_U σ(β(z0 − r)) if undesirable; L = λ_y − v
    losses = torch.where(
        desirable,
        cfg.desirable_weight * (1 - torch.sigmoid(cfg.beta * (logratios - z0))),
        cfg.undesirable_weight * (1 - torch.sigmoid(cfg.beta * (z0 - logratios))),
    )
    rewards = (cfg.beta * logratios).detach()
    return LossOutput(
        losses,
        {"rewards": rewards, "desirable": desirable.to(rewards.dtype), "kl_baseline": z0},
    )
