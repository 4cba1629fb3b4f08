"""Preferred-FT: supervised fine-tuning on the chosen completions only (the DPO paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class SFTConfig(ObjectiveConfig):
    """Preferred-FT has no knobs: its only settings are the trainer's (learning rate, steps)."""


@register_objective(
    "sft",
    display_name="Preferred-FT",
    config=SFTConfig,
    needs=Needs(reference=False, data="paired"),
    citation="Rafailov et al. 2023, DPO, §6 baseline 'Preferred-FT' (maximum likelihood on y_w)",
)
def sft_loss(batch: PairedLogps, cfg: SFTConfig) -> LossOutput:
    """−log π(y_w): the sequence NLL of the chosen completion (summed over tokens, as the DPO code does)."""
    losses = -batch.policy_chosen_logps
    lengths = batch.chosen_lengths.clamp(min=1).to(losses.dtype)
    return LossOutput(losses, {"nll": losses.detach(), "nll_per_token": (losses / lengths).detach()})
