"""SLiC-HF calibration loss on reference log-ratios: the hinge loss of DPO's margin (Zhao et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class SLiCConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β: scale of the log-ratio margin.", gt=0)
    delta: float = knob(1.0, "δ: the hinge's margin; no loss once β h ≥ δ.", gt=0)


@register_objective(
    "slic",
    display_name="SLiC",
    config=SLiCConfig,
    needs=Needs(reference=True, data="paired"),
    citation=(
        "Zhao et al. 2023, SLiC-HF, Eq. 1 (rank calibration loss), on π/π_ref log-ratios as in "
        "Liu et al. 2024, Statistical Rejection Sampling (RSO), hinge loss"
    ),
    aliases=("hinge",),
)
def slic_loss(batch: PairedLogps, cfg: SLiCConfig) -> LossOutput:
    """max(0, δ − β h), h = DPO's log-ratio margin."""
    chosen_logratios, rejected_logratios = batch.logratios()
    losses = torch.relu(cfg.delta - cfg.beta * (chosen_logratios - rejected_logratios))
    return LossOutput(losses, pairwise_metrics(cfg.beta * chosen_logratios, cfg.beta * rejected_logratios))
