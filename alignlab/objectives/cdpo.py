"""Conservative DPO: DPO with label smoothing for noisy preferences (Mitchell 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class CDPOConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β: strength of the implicit KL penalty to π_ref.", gt=0)
    epsilon: float = knob(0.1, "ε: assumed probability that a preference label is flipped.", ge=0, lt=0.5)


@register_objective(
    "cdpo",
    display_name="cDPO",
    config=CDPOConfig,
    needs=Needs(reference=True, data="paired"),
    citation="Mitchell 2023, A note on DPO with noisy preferences & relationship to IPO (conservative DPO)",
)
def cdpo_loss(batch: PairedLogps, cfg: CDPOConfig) -> LossOutput:
    """(1−ε)(−log σ(β h)) + ε(−log σ(−β h)): DPO against soft labels (1−ε, ε)."""
    chosen_logratios, rejected_logratios = batch.logratios()
    logits = cfg.beta * (chosen_logratios - rejected_logratios)
    # cross-entropy of σ(β h) against the smoothed label: the minimiser is a finite margin,
    # β h* = log((1−ε)/ε), instead of DPO's unbounded one
    losses = -(1 - cfg.epsilon) * F.logsigmoid(logits) - cfg.epsilon * F.logsigmoid(-logits)
    return LossOutput(losses, pairwise_metrics(cfg.beta * chosen_logratios, cfg.beta * rejected_logratios))
