"""ORPO: Odds-Ratio Preference Optimisation, SFT plus an odds-ratio penalty (Hong et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from alignlab.objectives.base import (
    LossOutput,
    Needs,
    ObjectiveConfig,
    PairedLogps,
    knob,
    log1mexp,
    pairwise_metrics,
)
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class ORPOConfig(ObjectiveConfig):
    lam: float = knob(0.1, "λ: weight of the odds-ratio term relative to the NLL of y_w (paper: 0.1).", ge=0)


@register_objective(
    "orpo",
    display_name="ORPO",
    config=ORPOConfig,
    needs=Needs(reference=False, data="paired"),
    citation="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model, Eqs. 4-7",
)
def orpo_loss(batch: PairedLogps, cfg: ORPOConfig) -> LossOutput:
    """NLL(y_w) + λ·(−log σ(log odds(y_w) − log odds(y_l))), odds from per-token mean log-probs."""
    # the paper's P(y|x) is the length-normalised likelihood exp(mean_t log π(y_t | x, y_<t))
    chosen_mean_logps = batch.policy_chosen_logps / batch.chosen_lengths.clamp(min=1)
    rejected_mean_logps = batch.policy_rejected_logps / batch.rejected_lengths.clamp(min=1)
    # Eq. 4: odds(y|x) = P / (1 − P), so log odds = log P − log(1 − P)
    log_odds_ratio = (chosen_mean_logps - log1mexp(chosen_mean_logps)) - (
        rejected_mean_logps - log1mexp(rejected_mean_logps)
    )
    # Eq. 7: L_OR = −log σ(log odds(y_w)/odds(y_l));  Eq. 6: L = L_SFT + λ L_OR
    odds_ratio_losses = -F.logsigmoid(log_odds_ratio)
    nll = -chosen_mean_logps
    losses = nll + cfg.lam * odds_ratio_losses
    metrics = pairwise_metrics(cfg.lam * chosen_mean_logps, cfg.lam * rejected_mean_logps)
    metrics.update(nll=nll.detach(), log_odds_ratio=log_odds_ratio.detach(), odds_ratio_loss=odds_ratio_losses.detach())
    # the odds ratio, not the likelihood, is ORPO's preference signal
    metrics["reward_accuracy"] = (log_odds_ratio.detach() > 0).to(nll.dtype)
    return LossOutput(losses, metrics)
