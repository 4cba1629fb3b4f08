"""IPO: Identity Preference Optimisation, the ΨPO objective with Ψ = identity (Azar et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, knob, pairwise_metrics
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class IPOConfig(ObjectiveConfig):
    tau: float = knob(0.1, "τ: regularisation strength; the loss pulls the margin towards 1/(2τ).", gt=0)
    length_normalized: bool = knob(
        False,
        "Divide each log-ratio by its completion length (TRL, HALOs) instead of summing (the paper's "
        "formula and the original DPO code).",
    )


@register_objective(
    "ipo",
    display_name="IPO",
    config=IPOConfig,
    needs=Needs(reference=True, data="paired"),
    citation=("Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences, Eq. 17"),
)
def ipo_loss(batch: PairedLogps, cfg: IPOConfig) -> LossOutput:
    """(h − 1/(2τ))², with h summed over tokens or, if ``length_normalized``, averaged per token."""
    chosen_logratios, rejected_logratios = batch.logratios()
    if cfg.length_normalized:
        # TRL's convention: per-token mean log-ratios, so the target margin does not scale with length
        chosen_logratios = chosen_logratios / batch.chosen_lengths.clamp(min=1)
        rejected_logratios = rejected_logratios / batch.rejected_lengths.clamp(min=1)
    # Eq. 17: (h_π(y_w, y_l) − τ⁻¹/2)²
    losses = (chosen_logratios - rejected_logratios - 1 / (2 * cfg.tau)) ** 2
    return LossOutput(losses, pairwise_metrics(cfg.tau * chosen_logratios, cfg.tau * rejected_logratios))
