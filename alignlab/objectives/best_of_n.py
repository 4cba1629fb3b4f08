"""Best-of-N (Stiennon et al. 2020, §4.2; Nakano et al. 2021): no training, a ranking of samples.

N completions of each prompt are sampled from π_ref; the one the reward ranks highest is kept. As
an objective it is the ranking rule: the loss of a sample is minus its reward, and the sampling
trainer keeps each prompt's lowest-loss sample. Its KL to π_ref has a closed form,
log N − (N − 1)/N (Stiennon et al. 2020, Appendix G.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, SampledRewards, knob
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class BestOfNConfig(ObjectiveConfig):
    n: int = knob(4, "Completions sampled per prompt; the reward's favourite is kept.", ge=1)


@register_objective(
    "best_of_n",
    display_name="best-of-N",
    config=BestOfNConfig,
    needs=Needs(reference=False, data="sampling"),
    citation="Stiennon et al. 2020, Learning to summarize from human feedback, §4.2 (best-of-N)",
)
def best_of_n_rank(batch: SampledRewards, cfg: BestOfNConfig) -> LossOutput:
    """−r(x, y_i): each prompt keeps its sample of lowest loss, the reward's favourite."""
    return LossOutput(-batch.rewards.flatten(), {})
