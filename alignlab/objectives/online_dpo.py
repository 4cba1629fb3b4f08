"""Online DPO (Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback).

At every iteration the current policy samples two completions of each prompt; the reward (a reward
model, or the gold judge) ranks them; the DPO loss (Rafailov et al. 2023, Eq. 7) trains on that
pair against the fixed π_ref. The pairs come from the online trainer (:mod:`alignlab.train.online`,
``Online.advantage: pairs``); the loss is DPO's, unchanged.
"""

from __future__ import annotations

from alignlab.objectives.base import LossOutput, Needs, Online, PairedLogps
from alignlab.objectives.dpo import DPOConfig, dpo_loss
from alignlab.objectives.registry import register_objective


@register_objective(
    "online_dpo",
    display_name="online-DPO",
    config=DPOConfig,
    needs=Needs(
        reference=True,
        data="online",
        online=Online(advantage="pairs", kl="reward", samples_per_prompt=2, epochs=1, minibatches=1),
    ),
    citation="Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback, Algorithm 1",
)
def online_dpo_loss(batch: PairedLogps, cfg: DPOConfig) -> LossOutput:
    """−log σ(β h) on the policy's own samples, ranked by the reward: DPO on on-policy pairs."""
    return dpo_loss(batch, cfg)
