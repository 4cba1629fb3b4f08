"""Unlikelihood: raise log π(y_w), push down each token of y_l (Welleck et al. 2020; DPO paper baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, log1mexp
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class UnlikelihoodConfig(ObjectiveConfig):
    alpha: float = knob(1.0, "α: weight of the unlikelihood term on y_l (DPO paper sweeps 0.05, 0.1, 0.5, 1).", ge=0)
    min_complement: float = knob(
        1e-5,
        "Floor on 1 − π(y_l,t) inside the log, so a token the policy is sure of gives a large finite loss.",
        gt=0,
        lt=1,
    )


@register_objective(
    "unlikelihood",
    display_name="Unlikelihood",
    config=UnlikelihoodConfig,
    needs=Needs(reference=False, data="paired", token_level=True),
    citation=("Welleck et al. 2020, Neural Text Generation with Unlikelihood Training, Eq. 4; DPO paper §6 baseline"),
)
def unlikelihood_loss(batch: PairedLogps, cfg: UnlikelihoodConfig) -> LossOutput:
    """−log π(y_w) − α Σ_t log(1 − π(y_l,t | x, y_l,<t)), token sums."""
    _, _, rejected_token_logps, rejected_mask = batch.tokens()
    likelihood = -batch.policy_chosen_logps
    # log(1 − p) with p = exp(logp), p capped at 1 − min_complement so that p → 1 stays finite
    max_logp = math.log1p(-cfg.min_complement)
    log_complement = log1mexp(rejected_token_logps.clamp(max=max_logp))
    unlikelihood = -(log_complement * rejected_mask).sum(dim=-1)
    losses = likelihood + cfg.alpha * unlikelihood
    return LossOutput(
        losses,
        {
            "nll": likelihood.detach(),
            "unlikelihood": unlikelihood.detach(),
            "margins": (batch.policy_chosen_logps - batch.policy_rejected_logps).detach(),
        },
    )
