"""The pieces every objective is made of: a frozen config, declared needs, typed inputs, one output.

An objective is a pure function ``loss_fn(batch, cfg) -> LossOutput`` over tensors. The trainer
reads the objective's :class:`Needs` to decide what to compute (reference log-probs, token-level
log-probs, unpaired data, online rollouts, scores of the completions, a running state) and builds
the matching batch type below. Nothing here touches a model, an optimiser or a file.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from alignlab.schema import Config, knob

__all__ = [
    "LossOutput",
    "Needs",
    "ObjectiveConfig",
    "ObjectiveState",
    "Online",
    "PPOBatch",
    "PairedLogps",
    "RolloutBatch",
    "SampledRewards",
    "UnpairedLogps",
    "aggregate",
    "knob",
    "log1mexp",
    "pairwise_metrics",
]


@dataclass(frozen=True)
class ObjectiveConfig(Config):
    """Base of every objective's config: a frozen dataclass of documented, range-checked knobs."""


# --------------------------------------------------------------------------------------------
# Needs: what the trainer must prepare for an objective
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectiveState:
    """How a stateful objective's running state starts and moves; the trainer keeps it.

    The state is a dict of tensors (β-DPO: the EMAs of the margin's mean and spread, and a count of
    draws). The offline trainer calls ``init(cfg)`` once, then before each training loss
    ``update(state, batch, cfg)`` — a pure function of the old state and the batch's detached
    log-probs — and hands the new state to the loss as ``batch.state``. Held-out evaluations see the
    current state and never move it. The trainer averages a new state over processes, saves it in
    every checkpoint (``state.json``, ``objective_state``: exact, dtype kept) and restores it on
    resume, so a resumed run continues with the state an uninterrupted one would have.
    """

    init: Callable[[Any], dict[str, Tensor]]
    """cfg -> the state before the first step."""
    update: Callable[[dict[str, Tensor], Any, Any], dict[str, Tensor]]
    """(state, batch, cfg) -> the state the loss of ``batch`` uses (no gradient flows through it)."""


@dataclass(frozen=True)
class Online:
    """How an online objective's rollouts become its batches, and the trainer settings it defaults to.

    The online trainer (:mod:`alignlab.train.online`) reads these where the run's ``rollout`` section
    leaves a setting at ``null``/``auto``; a run may override each one.
    """

    advantage: str = "gae"
    """The advantage estimator (:mod:`alignlab.core.advantages`: gae, rloo, grpo, reinforce), or
    ``pairs``: each prompt's samples are ranked by the reward into preference pairs (:class:`PairedLogps`)."""
    kl: Literal["reward", "loss"] = "reward"
    """Where the KL to π_ref goes: a per-token penalty in the reward, or a k3 term of the loss."""
    samples_per_prompt: int = 1
    """k samples of each prompt per iteration."""
    epochs: int = 4
    """Passes over an iteration's rollouts."""
    minibatches: int = 1
    """Optimiser steps per pass."""
    pairs: Literal["best_worst", "all"] = "best_worst"
    """``pairs``: the best against the worst sample of a prompt, or all k(k−1)/2 pairs (DPO §6.1)."""


@dataclass(frozen=True)
class Needs:
    """What an objective needs from the trainer. Trainers read this, never the objective's name."""

    reference: bool
    """Reference-model log-probs (π_ref) are required."""
    data: Literal["paired", "unpaired", "online", "sampling"]
    """paired: (prompt, chosen, rejected) -> :class:`PairedLogps`; unpaired: labelled single
    completions -> :class:`UnpairedLogps`; online: rollouts from the policy, as :class:`RolloutBatch`
    (or :class:`PairedLogps` with ``online.advantage: pairs``); sampling: nothing is trained, samples
    are ranked (:class:`SampledRewards`, best-of-N)."""
    token_level: bool = False
    """Per-token policy log-probs and masks are required, not only sequence sums."""
    scores: bool = False
    """Scores of the chosen and rejected completions are required (``PairedLogps.chosen_scores``):
    a run whose pairs carry none is refused before training, naming the objective and the data."""
    state: ObjectiveState | None = None
    """A running state the trainer keeps, checkpoints and hands to the loss (``PairedLogps.state``)."""
    online: Online | None = None
    """Online objectives: the estimator, KL placement and default rollout settings (default :class:`Online`)."""
    trainer: str | None = None
    """The trainer that runs the objective (:mod:`alignlab.jobs.trainers`): None for the one registered
    for its ``data`` kind; a plugin may name its own."""

    def __post_init__(self) -> None:
        if self.data == "online" and self.online is None:
            object.__setattr__(self, "online", Online())

    def describe(self) -> str:
        parts = ["reference" if self.reference else "reference-free", self.data]
        if self.online is not None:
            parts.append(f"{self.online.advantage} advantages" if self.online.advantage != "pairs" else "ranked pairs")
        if self.token_level:
            parts.append("token-level")
        if self.scores:
            parts.append("scores")
        if self.state is not None:
            parts.append("stateful")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Inputs and output
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedLogps:
    """Log-probs of a batch of B preference pairs.

    Sequence log-probs are *sums* over completion tokens; an objective that wants per-token means
    divides by the lengths itself, so the reduction is always visible in the loss.
    """

    policy_chosen_logps: Tensor
    """(B,) Σ_t log π(y_w,t | x, y_w,<t)."""
    policy_rejected_logps: Tensor
    """(B,) Σ_t log π(y_l,t | x, y_l,<t)."""
    chosen_lengths: Tensor
    """(B,) number of completion tokens of y_w."""
    rejected_lengths: Tensor
    """(B,) number of completion tokens of y_l."""
    ref_chosen_logps: Tensor | None = None
    """(B,) reference sums, when ``needs.reference``."""
    ref_rejected_logps: Tensor | None = None
    """(B,) reference sums, when ``needs.reference``."""
    chosen_token_logps: Tensor | None = None
    """(B, T) per-token policy log-probs of y_w (zero outside ``chosen_mask``), when ``needs.token_level``."""
    chosen_mask: Tensor | None = None
    """(B, T) 1 on completion tokens of y_w."""
    rejected_token_logps: Tensor | None = None
    """(B, T') per-token policy log-probs of y_l, when ``needs.token_level``."""
    rejected_mask: Tensor | None = None
    """(B, T') 1 on completion tokens of y_l."""
    chosen_scores: Tensor | None = None
    """(B,) a score of y_w (the gold judge's reward of a generated pair, a reward model's, or the
    data's own ``chosen_score``), when ``needs.scores``; a constant of the data, never differentiated."""
    rejected_scores: Tensor | None = None
    """(B,) the same score of y_l. A label-flipped pair keeps each completion's own score, so its
    chosen score may be the lower one."""
    state: dict[str, Tensor] | None = None
    """The objective's running state as the trainer holds it for this batch, when ``needs.state``."""

    def reference(self) -> tuple[Tensor, Tensor]:
        """(ref_chosen_logps, ref_rejected_logps), or a clear error if the trainer gave none."""
        if self.ref_chosen_logps is None or self.ref_rejected_logps is None:
            raise ValueError("this objective needs reference log-probs; the batch has none")
        return self.ref_chosen_logps, self.ref_rejected_logps

    def logratios(self) -> tuple[Tensor, Tensor]:
        """(log π(y_w) − log π_ref(y_w), log π(y_l) − log π_ref(y_l)), each (B,): h is their difference."""
        ref_chosen_logps, ref_rejected_logps = self.reference()
        return self.policy_chosen_logps - ref_chosen_logps, self.policy_rejected_logps - ref_rejected_logps

    def tokens(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(chosen_token_logps, chosen_mask, rejected_token_logps, rejected_mask)."""
        fields = (self.chosen_token_logps, self.chosen_mask, self.rejected_token_logps, self.rejected_mask)
        if any(t is None for t in fields):
            raise ValueError("this objective needs token-level log-probs; the batch has none")
        return typing.cast(tuple[Tensor, Tensor, Tensor, Tensor], fields)

    def scores(self) -> tuple[Tensor, Tensor]:
        """(chosen_scores, rejected_scores), or a clear error if the trainer gave none."""
        if self.chosen_scores is None or self.rejected_scores is None:
            raise ValueError("this objective needs scores of the chosen and rejected completions; the batch has none")
        return self.chosen_scores, self.rejected_scores

    def running_state(self) -> dict[str, Tensor]:
        """The objective's running state, or a clear error if the trainer gave none."""
        if self.state is None:
            raise ValueError("this objective needs its running state (Needs.state); the batch has none")
        return self.state


@dataclass(frozen=True)
class UnpairedLogps:
    """Log-probs of B single completions, each labelled desirable or undesirable (KTO)."""

    policy_logps: Tensor
    """(B,) Σ_t log π(y_t | x, y_<t)."""
    ref_logps: Tensor
    """(B,) the same under π_ref."""
    desirable: Tensor
    """(B,) bool: True for a desirable completion, False for an undesirable one."""
    kl_baseline: Tensor
    """() z0, the detached estimate of KL(π || π_ref) from mismatched prompt–completion pairs."""


@dataclass(frozen=True)
class RolloutBatch:
    """A minibatch of B rollouts of up to T completion tokens, for a policy-gradient update."""

    logprobs: Tensor
    """(B, T) log π_θ of the sampled tokens under the current policy (with grad)."""
    old_logprobs: Tensor
    """(B, T) log π_θ_old of the same tokens at rollout time."""
    advantages: Tensor
    """(B, T) advantages of the run's estimator (the same on every token of a row for sequence-level ones)."""
    mask: Tensor
    """(B, T) 1 on completion tokens."""
    values: Tensor | None = None
    """(B, T) the critic's current values (with grad), when the estimator has a critic (gae)."""
    old_values: Tensor | None = None
    """(B, T) the critic's values at rollout time."""
    returns: Tensor | None = None
    """(B, T) value targets: advantages + old values, before whitening."""
    entropy: Tensor | None = None
    """(B, T) per-token policy entropy (with grad), for an entropy bonus."""
    ref_logprobs: Tensor | None = None
    """(B, T) log π_ref of the same tokens, when the KL to π_ref is a term of the loss."""
    kl_coef: float = 0.0
    """β of the KL term of the loss (0: the KL is in the reward, or absent)."""
    max_new_tokens: int = 0
    """The rollouts' length limit (Dr. GRPO's constant normaliser)."""

    def critic(self) -> tuple[Tensor, Tensor, Tensor]:
        """(values, old_values, returns), or a clear error if the estimator had no critic."""
        fields = (self.values, self.old_values, self.returns)
        if any(t is None for t in fields):
            raise ValueError("this objective needs a critic's values (the gae estimator); the batch has none")
        return typing.cast(tuple[Tensor, Tensor, Tensor], fields)

    def kl_term(self) -> Tensor:
        """(B, T) β · k3(π_θ, π_ref) per token, the KL term of the loss (zeros when it is in the reward).

        k3 = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1 ≥ 0, unbiased for KL(π_θ ‖ π_ref) on
        samples of π_θ (Schulman 2020; GRPO, Shao et al. 2024, Eq. 4).
        """
        if self.kl_coef == 0 or self.ref_logprobs is None:
            return torch.zeros_like(self.logprobs)
        delta = self.ref_logprobs - self.logprobs
        return self.kl_coef * (torch.exp(delta) - delta - 1) * self.mask.to(self.logprobs.dtype)


PPOBatch = RolloutBatch
"""The name of :class:`RolloutBatch` before RLOO and GRPO shared it."""


@dataclass(frozen=True)
class SampledRewards:
    """The rewards of N samples of each of B prompts (best-of-N ranks them; nothing is trained)."""

    rewards: Tensor
    """(B, N) the ranking reward of each sample."""


@dataclass(frozen=True)
class LossOutput:
    """What every objective returns.

    ``losses`` is differentiable, one value per example: the trainer minimises ``losses.mean()``.
    ``metrics`` are detached, each of shape (B,) or (); averaged by the trainer for logging.
    Pairwise objectives report ``chosen_rewards``, ``rejected_rewards``, ``margins`` and
    ``reward_accuracy`` (the implicit rewards of their own parametrisation).
    """

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def pairwise_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """The standard detached metrics of a pairwise objective, from its implicit rewards (B,)."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "margins": chosen_rewards - rejected_rewards,
        "reward_accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype),
    }


def aggregate(per_token: Tensor, mask: Tensor, aggregation: str, max_new_tokens: int = 0) -> Tensor:
    """Per-example losses (B,) whose mean over the batch is the requested aggregate of ``per_token`` (B, T).

    token-mean: every completion token of the batch weighs the same; sequence-mean: each sequence's mean
    token loss, so every rollout weighs the same; constant: each sequence's sum over ``max_new_tokens``
    (Dr. GRPO's constant normaliser: no length bias).
    """
    mask = mask.to(per_token.dtype)
    per_sequence = (per_token * mask).sum(dim=-1)
    if aggregation == "sequence-mean":
        return per_sequence / mask.sum(dim=-1).clamp(min=1)
    if aggregation == "constant":
        if max_new_tokens < 1:
            raise ValueError("the constant aggregation needs the rollouts' max_new_tokens")
        return per_sequence / max_new_tokens
    # token-mean: scale each sequence's sum by B / (total tokens), so mean_b = Σ_bt / Σ mask
    return per_sequence * (mask.shape[0] / mask.sum().clamp(min=1))


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, stable at both ends (Mächler 2012).

    Uses log(−expm1(x)) near zero and log1p(−exp(x)) far from it. Each branch sees only inputs of
    its own domain (the double-``where`` trick), so neither yields a NaN gradient. Inputs ≥ 0 are
    clamped just below 0: a probability of one has log(1 − p) = −inf, which no loss can use.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    near_zero = x > -0.6931471805599453  # −log 2
    safe_near = torch.where(near_zero, x, torch.full_like(x, -1.0))
    safe_far = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(safe_near)), torch.log1p(-torch.exp(safe_far)))
