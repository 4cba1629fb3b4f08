"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1), and Dr. GRPO.

Each prompt is sampled k times; the advantage of every token of sample i is its reward normalised
within the prompt's group (the ``grpo`` estimator, :mod:`alignlab.core.advantages`; Dr. GRPO, Liu et
al. 2025: ``rollout.normalize_std: false`` and ``aggregation: constant``). The KL to π_ref is a term
of the loss, β·k3 per token (Eq. 3–4), not a penalty in the reward: ``rollout.kl_coef`` is that β.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from alignlab.core.stats import masked_mean
from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, Online, RolloutBatch, aggregate, knob
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class GRPOConfig(ObjectiveConfig):
    clip_ratio: float = knob(0.2, "ε: clip range of the per-token probability ratio π_θ/π_θ_old.", gt=0)
    aggregation: Literal["sequence-mean", "token-mean", "constant"] = knob(
        "sequence-mean",
        "sequence-mean: 1/|o_i| Σ_t, then the mean over samples (GRPO, Eq. 3); token-mean: every token of the "
        "batch alike (DAPO); constant: Σ_t / rollout.max_new_tokens (Dr. GRPO: no length bias).",
    )


@register_objective(
    "grpo",
    display_name="GRPO",
    config=GRPOConfig,
    needs=Needs(
        reference=True,
        data="online",
        online=Online(advantage="grpo", kl="loss", samples_per_prompt=4, epochs=1, minibatches=1),
    ),
    citation="Shao et al. 2024, DeepSeekMath, Eq. 3 (GRPO); Liu et al. 2025, Understanding R1-Zero-Like Training",
)
def grpo_loss(batch: RolloutBatch, cfg: GRPOConfig) -> LossOutput:
    """−[min(ρ_t A, clip(ρ_t, 1±ε) A) − β k3_t] per token, aggregated per ``aggregation``."""
    mask = batch.mask
    log_ratio = batch.logprobs - batch.old_logprobs
    ratio = torch.exp(log_ratio)
    # Eq. 3: min(ρ_t Â, clip(ρ_t, 1 − ε, 1 + ε) Â) − β D_KL, maximised, so negated here
    unclipped = -batch.advantages * ratio
    clipped = -batch.advantages * torch.clamp(ratio, 1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
    pg_losses = torch.maximum(unclipped, clipped)
    kl = batch.kl_term()  # Eq. 4: β (π_ref/π_θ − log π_ref/π_θ − 1); zero when the run puts the KL in the reward
    losses = aggregate(pg_losses + kl, mask, cfg.aggregation, batch.max_new_tokens)
    with torch.no_grad():
        metrics = {  # the loss's two terms, aggregated as it is: their batch means add up to its mean
            "policy_loss": aggregate(pg_losses, mask, cfg.aggregation, batch.max_new_tokens).mean(),
            "kl_loss": aggregate(kl, mask, cfg.aggregation, batch.max_new_tokens).mean(),
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return LossOutput(losses, metrics)
