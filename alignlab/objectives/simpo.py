"""SimPO: Simple Preference Optimisation, a length-normalised reference-free reward (Meng et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class SimPOConfig(ObjectiveConfig):
    beta: float = knob(2.0, "β: scale of the length-normalised reward (paper: 2.0–2.5).", gt=0)
    gamma: float = knob(1.0, "γ: target reward margin (paper: 0.3–1.6).", ge=0)


@register_objective(
    "simpo",
    display_name="SimPO",
    config=SimPOConfig,
    needs=Needs(reference=False, data="paired"),
    citation="Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, Eq. 6",
)
def simpo_loss(batch: PairedLogps, cfg: SimPOConfig) -> LossOutput:
    """−log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ)."""
    # Eq. 4: r_SimPO(x, y) = β/|y| log π(y|x), the average token log-prob, scaled
    chosen_rewards = cfg.beta * batch.policy_chosen_logps / batch.chosen_lengths.clamp(min=1)
    rejected_rewards = cfg.beta * batch.policy_rejected_logps / batch.rejected_lengths.clamp(min=1)
    # Eq. 6: L = −log σ(r(y_w) − r(y_l) − γ)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - cfg.gamma)
    return LossOutput(losses, pairwise_metrics(chosen_rewards, rejected_rewards))
