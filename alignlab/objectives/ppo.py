"""PPO for RLHF: clipped surrogate + clipped value loss (+ entropy bonus) on GAE advantages.

The loss here is the update step only (Schulman et al. 2017). Everything stateful — rollouts,
the reward r_φ(x, y) − β·KL per token, the adaptive KL controller, the critic, GAE and
whitening, epochs and minibatches — is the online trainer's (:mod:`alignlab.train.online`), set in
the run's ``rollout`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from alignlab.core.stats import masked_mean
from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, Online, RolloutBatch, aggregate, knob
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class PPOConfig(ObjectiveConfig):
    clip_ratio: float = knob(0.2, "ε: clip range of the probability ratio π_θ/π_θ_old.", gt=0)
    clip_value: float = knob(0.2, "Clip range of the value update around the rollout-time values.", gt=0)
    vf_coef: float = knob(0.1, "Weight of the value loss (lm-human-preferences: 0.1).", ge=0)
    ent_coef: float = knob(0.0, "Weight of the entropy bonus (0 disables it).", ge=0)
    aggregation: Literal["token-mean", "sequence-mean"] = knob(
        "token-mean",
        "token-mean: every completion token weighs the same (cleanrl, TRL); sequence-mean: average "
        "per sequence first, so every rollout weighs the same.",
    )


@register_objective(
    "ppo",
    display_name="PPO",
    config=PPOConfig,
    needs=Needs(reference=True, data="online", online=Online(advantage="gae", kl="reward")),
    citation=(
        "Schulman et al. 2017, Proximal Policy Optimization, Eqs. 7 and 9; for RLHF: Ziegler et al. 2019, "
        "Stiennon et al. 2020"
    ),
)
def ppo_loss(batch: RolloutBatch, cfg: PPOConfig) -> LossOutput:
    """−min(ρ A, clip(ρ, 1±ε) A) + c_v · ½ max((V − R)², (V_clip − R)²) − c_e · H, per token."""
    mask = batch.mask
    log_ratio = batch.logprobs - batch.old_logprobs
    ratio = torch.exp(log_ratio)
    # Eq. 7: L^CLIP = E[min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)], maximised, so negated here
    pg_unclipped = -batch.advantages * ratio
    pg_clipped = -batch.advantages * torch.clamp(ratio, 1 - cfg.clip_ratio, 1 + cfg.clip_ratio)
    pg_losses = torch.maximum(pg_unclipped, pg_clipped)
    # value clipping as in OpenAI baselines / lm-human-preferences: the critic may not move more
    # than clip_value from its rollout-time prediction in one update
    values, old_values, returns = batch.critic()
    values_clipped = old_values + torch.clamp(values - old_values, -cfg.clip_value, cfg.clip_value)
    vf_unclipped = (values - returns) ** 2
    vf_clipped = (values_clipped - returns) ** 2
    vf_losses = 0.5 * torch.maximum(vf_unclipped, vf_clipped)
    # Eq. 9: L^{CLIP+VF+S} = L^CLIP − c_1 L^VF + c_2 S, negated
    per_token = pg_losses + cfg.vf_coef * vf_losses + batch.kl_term()  # the KL term: 0 when it is in the reward
    if cfg.ent_coef > 0:
        if batch.entropy is None:
            raise ValueError("ent_coef > 0 needs the per-token entropy in the batch")
        per_token = per_token - cfg.ent_coef * batch.entropy
    losses = aggregate(per_token, mask, cfg.aggregation)

    with torch.no_grad():
        metrics = {
            # aggregated as the loss is (token-mean: the masked mean), so they add up to it
            "policy_loss": aggregate(pg_losses, mask, cfg.aggregation).mean(),
            "value_loss": aggregate(vf_losses, mask, cfg.aggregation).mean(),
            "clipfrac": masked_mean((pg_clipped > pg_unclipped).to(ratio.dtype), mask),
            "value_clipfrac": masked_mean((vf_clipped > vf_unclipped).to(ratio.dtype), mask),
            # the k2 estimate of KL(π_old || π_θ), as in cleanrl and TRL
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
        if batch.entropy is not None:
            metrics["entropy"] = masked_mean(batch.entropy, mask)
    return LossOutput(losses, metrics)
