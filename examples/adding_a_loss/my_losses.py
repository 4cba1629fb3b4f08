"""A loss of my own: length-normalised DPO, registered as "ln_dpo" without touching alignlab."""

from dataclasses import dataclass

import torch.nn.functional as F

from alignlab.objectives import (
    LossOutput,
    Needs,
    ObjectiveConfig,
    PairedLogps,
    knob,
    pairwise_metrics,
    register_objective,
)


@dataclass(frozen=True)
class LNDPOConfig(ObjectiveConfig):
    beta: float = knob(1.0, "β: scale of the per-token log-ratio margin.", gt=0)


@register_objective(
    "ln_dpo",
    config=LNDPOConfig,
    needs=Needs(reference=True, data="paired"),
    citation="DPO (Rafailov et al. 2023, Eq. 7) on per-token mean log-ratios",
)
def ln_dpo_loss(batch: PairedLogps, cfg: LNDPOConfig) -> LossOutput:
    """−log σ(β (h_w/|y_w| − h_l/|y_l|)): DPO on per-token log-ratios."""
    chosen_logratios, rejected_logratios = batch.logratios()  # log π/π_ref of y_w and y_l, summed
    chosen = chosen_logratios / batch.chosen_lengths
    rejected = rejected_logratios / batch.rejected_lengths
    losses = -F.logsigmoid(cfg.beta * (chosen - rejected))
    return LossOutput(losses, pairwise_metrics(cfg.beta * chosen, cfg.beta * rejected))
