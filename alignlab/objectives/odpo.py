"""ODPO: DPO with an offset that grows with how much better the chosen completion scored (Amini et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class ODPOConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β: strength of the implicit KL penalty to π_ref.", gt=0)
    alpha: float = knob(1.0, "α: scale of the offset Δ = α·f(s_w, s_l) (paper and official code: 1; 0 is DPO).", ge=0)
    offset: Literal["log", "identity", "log_ratio"] = knob(
        "log",
        "f: log: log(s_w − s_l) (the paper's choice); identity: s_w − s_l; log_ratio: log(s_w / s_l) (the "
        "official code's ratio option, for positive scores). Where f is undefined (log of a non-positive "
        "number) the pair adds no loss.",
    )


def offsets(chosen_scores: Tensor, rejected_scores: Tensor, cfg: ODPOConfig) -> tuple[Tensor, Tensor]:
    """(Δ, defined), each (B,): the offset α·f(s_w, s_l), and where f is defined (0 where it is not).

    log(s_w − s_l) is negative for score differences below 1: the pair is then asked for *less* than
    DPO asks, its loss satisfied once β h > Δ, a negative number — so the scale of the scores sets
    how demanding ODPO is. As s_w − s_l → 0⁺, Δ → −∞ and the loss → 0: a pair whose chosen side did
    not score higher (label noise, or a reward model that disagrees with the label) adds no loss, the
    limit of its neighbours. log_ratio is defined only for two positive scores.
    """
    s_w, s_l = chosen_scores.detach(), rejected_scores.detach()
    if cfg.offset == "identity":
        return cfg.alpha * (s_w - s_l), torch.ones_like(s_w, dtype=torch.bool)
    if cfg.offset == "log":
        x, defined = s_w - s_l, s_w > s_l
    else:
        x, defined = s_w / torch.where(s_l > 0, s_l, torch.ones_like(s_l)), (s_w > 0) & (s_l > 0)
    # official code: margin = log(chosen_rewards − rejected_rewards) (or of their ratio)
    f = torch.log(torch.where(defined, x, torch.ones_like(x)))
    return cfg.alpha * f, defined


@register_objective(
    "odpo",
    display_name="ODPO",
    config=ODPOConfig,
    needs=Needs(reference=True, data="paired", scores=True),
    citation="Amini et al. 2024, Direct Preference Optimization with an Offset (arXiv:2402.10571), the ODPO "
    "loss with Δ_r = α log(r(y_w) − r(y_l)); official code rycolab/odpo preference_loss",
)
def odpo_loss(batch: PairedLogps, cfg: ODPOConfig) -> LossOutput:
    """−log σ(β h − Δ), Δ = α·log(s_w − s_l): DPO asked for a margin that grows with the score gap."""
    chosen_logratios, rejected_logratios = batch.logratios()
    delta, defined = offsets(*batch.scores(), cfg)
    # L_ODPO = −log σ(r̂(y_w) − r̂(y_l) − Δ_r), r̂ = β log π/π_ref; official: −logsigmoid(beta·logits − alpha·margin)
    logits = cfg.beta * (chosen_logratios - rejected_logratios) - delta
    # an undefined offset (α > 0): no loss, a zero that keeps the graph (logits − logits = +0)
    losses = torch.where(defined | (cfg.alpha == 0), -F.logsigmoid(logits), logits - logits)
    metrics = pairwise_metrics(cfg.beta * chosen_logratios, cfg.beta * rejected_logratios)
    return LossOutput(losses, metrics | {"offsets": delta, "offset_defined": defined.to(delta.dtype)})
