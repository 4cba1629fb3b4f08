"""DPOP (DPO-Positive): DPO that may not lower the chosen completion's likelihood below π_ref's (Pal et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class DPOPConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β: strength of the implicit KL penalty to π_ref.", gt=0)
    lam: float = knob(
        50.0, "λ: weight of the penalty max(0, log π_ref(y_w) − log π(y_w)) (Smaug's runs: 50; 0 is DPO).", ge=0
    )


@register_objective(
    "dpop",
    display_name="DPOP",
    config=DPOPConfig,
    needs=Needs(reference=True, data="paired"),
    citation="Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive "
    "(arXiv:2402.13228), the DPOP loss as its July 2024 revision brackets it (penalty inside the sigmoid, times β)",
)
def dpop_loss(batch: PairedLogps, cfg: DPOPConfig) -> LossOutput:
    """−log σ(β [h − λ·max(0, log π_ref(y_w) − log π(y_w))]): the paper's form, penalty inside β."""
    chosen_logratios, rejected_logratios = batch.logratios()
    # max(0, log π_ref(y_w)/π(y_w)): zero while π(y_w) >= π_ref(y_w), the chosen completion not made less
    # likely; relu's gradient is 0 at 0, so at π = π_ref (every pair at step 0) DPOP's gradient is DPO's
    penalty = F.relu(-chosen_logratios)
    # L_DPOP = −log σ(β(log π(y_w)/π_ref(y_w) − log π(y_l)/π_ref(y_l) − λ·max(0, log π_ref(y_w)/π(y_w))))
    losses = -F.logsigmoid(cfg.beta * (chosen_logratios - rejected_logratios - cfg.lam * penalty))
    metrics = pairwise_metrics(cfg.beta * chosen_logratios, cfg.beta * rejected_logratios)
    return LossOutput(losses, metrics | {"penalty": penalty.detach()})
