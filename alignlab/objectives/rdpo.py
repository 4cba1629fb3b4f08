"""Robust DPO: an unbiased DPO loss under label noise of known rate (Chowdhury et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class RDPOConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β: strength of the implicit KL penalty to π_ref.", gt=0)
    epsilon: float = knob(0.1, "ε: known probability that a preference label is flipped.", ge=0, lt=0.5)


@register_objective(
    "rdpo",
    display_name="rDPO",
    config=RDPOConfig,
    needs=Needs(reference=True, data="paired"),
    citation="Chowdhury et al. 2024, Provably Robust DPO, the de-biased loss (Eq. 8)",
)
def rdpo_loss(batch: PairedLogps, cfg: RDPOConfig) -> LossOutput:
    """[(1−ε)(−log σ(β h)) − ε(−log σ(−β h))] / (1−2ε): unbiased for the clean-label DPO loss."""
    chosen_logratios, rejected_logratios = batch.logratios()
    logits = cfg.beta * (chosen_logratios - rejected_logratios)
    # the flipped-pair term enters with a minus sign: its expectation under noise rate ε cancels
    # the contamination, so E_noisy[loss] = clean DPO loss (unlike cDPO, which only smooths)
    losses = (-(1 - cfg.epsilon) * F.logsigmoid(logits) + cfg.epsilon * F.logsigmoid(-logits)) / (1 - 2 * cfg.epsilon)
    return LossOutput(losses, pairwise_metrics(cfg.beta * chosen_logratios, cfg.beta * rejected_logratios))
