"""DPO: Direct Preference Optimization (Rafailov et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class DPOConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β: strength of the implicit KL penalty to π_ref (DPO paper: 0.1; 0.5 for TL;DR).", gt=0)


@register_objective(
    "dpo",
    display_name="DPO",
    config=DPOConfig,
    needs=Needs(reference=True, data="paired"),
    citation="Rafailov et al. 2023, Direct Preference Optimization, Eq. 7",
)
def dpo_loss(batch: PairedLogps, cfg: DPOConfig) -> LossOutput:
    """−log σ(β h), h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)]."""
    chosen_logratios, rejected_logratios = batch.logratios()
    # Eq. 7: L_DPO = −E log σ(β log π(y_w)/π_ref(y_w) − β log π(y_l)/π_ref(y_l))
    losses = -F.logsigmoid(cfg.beta * (chosen_logratios - rejected_logratios))
    # §5: the implicit reward is r̂(x, y) = β log π(y|x)/π_ref(y|x)
    return LossOutput(losses, pairwise_metrics(cfg.beta * chosen_logratios, cfg.beta * rejected_logratios))
