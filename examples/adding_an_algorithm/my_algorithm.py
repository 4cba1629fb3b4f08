"""An algorithm of my own: rejection-sampling fine-tuning (RAFT, Dong et al. 2023), registered as "raft"
without touching alignlab. Each iteration samples 4 completions of every prompt from the current policy,
the reward picks the best, and the policy is fine-tuned on it — online, through alignlab's shared
iteration (rollouts, reward, ranked samples, epochs × minibatches)."""

from dataclasses import dataclass

from alignlab.objectives import LossOutput, Needs, ObjectiveConfig, Online, PairedLogps, knob, register_objective


@dataclass(frozen=True)
class RAFTConfig(ObjectiveConfig):
    length_normalized: bool = knob(True, "Average the NLL over the completion's tokens (else sum it).")


@register_objective(
    "raft",
    config=RAFTConfig,
    # the online trainer ranks each prompt's 4 samples by the reward; the best is the "chosen" one
    needs=Needs(
        reference=False,
        data="online",
        online=Online(advantage="pairs", samples_per_prompt=4, pairs="best_worst", epochs=2, minibatches=2),
    ),
    citation="Dong et al. 2023, RAFT: Reward rAnked FineTuning, Algorithm 1",
)
def raft_loss(batch: PairedLogps, cfg: RAFTConfig) -> LossOutput:
    """−log π(y_best | x): fine-tune on the reward's favourite of the policy's own samples."""
    nll = -batch.policy_chosen_logps
    if cfg.length_normalized:
        nll = nll / batch.chosen_lengths
    return LossOutput(nll, {"best_logps": batch.policy_chosen_logps.detach()})
