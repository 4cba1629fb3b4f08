"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024; Kool et al. 2019).

Each prompt is sampled k times; the advantage of sample i is its reward minus the mean reward of
the other k − 1 (the ``rloo`` estimator, :mod:`alignlab.core.advantages`), the KL to π_ref a
penalty in the reward. The whole completion is one action (Ahmadian et al. §3.1): the loss is the
clipped surrogate on the sequence's probability ratio, as in TRL's ``RLOOTrainer``; with one update
per batch of rollouts the ratio is 1 and it is plain REINFORCE, −A log π(y|x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.core.stats import masked_mean
from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, Online, RolloutBatch, knob
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class RLOOConfig(ObjectiveConfig):
    clip_ratio: float = knob(0.2, "ε: clip range of the sequence probability ratio π_θ(y|x)/π_θ_old(y|x).", gt=0)


@register_objective(
    "rloo",
    display_name="RLOO",
    config=RLOOConfig,
    needs=Needs(
        reference=True,
        data="online",
        online=Online(advantage="rloo", kl="reward", samples_per_prompt=4, epochs=1, minibatches=1),
    ),
    citation="Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization for RLHF, Eq. 5",
)
def rloo_loss(batch: RolloutBatch, cfg: RLOOConfig) -> LossOutput:
    """−min(ρ A, clip(ρ, 1±ε) A) per sequence, ρ = π_θ(y|x)/π_θ_old(y|x), A the leave-one-out advantage."""
    mask = batch.mask.to(batch.logprobs.dtype)
    # one action per completion: log ρ = Σ_t (log π_θ − log π_θ_old), A the row's (same on every token)
    log_ratio = ((batch.logprobs - batch.old_logprobs) * mask).sum(-1)
    advantages = (batch.advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
    losses = torch.maximum(unclipped, clipped) + batch.kl_term().sum(-1)  # the KL term: 0 when it is in the reward
    with torch.no_grad():
        metrics = {
            "policy_loss": torch.maximum(unclipped, clipped),
            "clipfrac": (clipped > unclipped).to(ratio.dtype),
            "approx_kl": 0.5 * masked_mean((batch.logprobs - batch.old_logprobs) ** 2, mask),
            "ratio": ratio,
        }
    return LossOutput(losses, metrics)
