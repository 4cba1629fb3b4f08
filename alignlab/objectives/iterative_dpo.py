"""Iterative DPO: rounds of fresh on-policy pairs (Xu et al. 2023, Some things are more CRINGE than others;
Xiong et al. 2024, Iterative Preference Learning from Human Feedback).

Each round (one online iteration) samples k completions of each of the round's prompts from the
current policy, ranks them by the reward, forms all k(k−1)/2 pairs (the DPO paper's protocol, §6.1),
and trains DPO on them for ``rollout.epochs`` × ``rollout.minibatches`` steps. The reference stays
π_ref (``rollout.reference: fixed``) or moves to the policy at the end of each round
(``rollout.reference: last_iteration``, as in Yuan et al. 2024's self-rewarding rounds); the
evaluation's KL is always to the original π_ref.
"""

from __future__ import annotations

from alignlab.objectives.base import LossOutput, Needs, Online, PairedLogps
from alignlab.objectives.dpo import DPOConfig, dpo_loss
from alignlab.objectives.registry import register_objective


@register_objective(
    "iterative_dpo",
    display_name="iterative-DPO",
    config=DPOConfig,
    needs=Needs(
        reference=True,
        data="online",
        online=Online(advantage="pairs", kl="reward", samples_per_prompt=4, epochs=1, minibatches=4, pairs="all"),
    ),
    citation="Xiong et al. 2024, Iterative Preference Learning from Human Feedback, Algorithm 1; DPO loss: Eq. 7",
)
def iterative_dpo_loss(batch: PairedLogps, cfg: DPOConfig) -> LossOutput:
    """−log σ(β h) on all pairs of each prompt's k fresh samples, ranked by the reward, round after round."""
    return dpo_loss(batch, cfg)
