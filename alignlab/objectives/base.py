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
    "PPOBatch",
    "PairedLogps",
    "UnpairedLogps",
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
class Needs:
    """What an objective needs from the trainer. Trainers read this, never the objective's name."""

    reference: bool
    """Reference-model log-probs (π_ref) are required."""
    data: Literal["paired", "unpaired", "online"]
    """paired: (prompt, chosen, rejected) -> :class:`PairedLogps`; unpaired: labelled single
    completions -> :class:`UnpairedLogps`; online: rollouts from the policy -> :class:`PPOBatch`."""
    token_level: bool = False
    """Per-token policy log-probs and masks are required, not only sequence sums."""
    scores: bool = False
    """Scores of the chosen and rejected completions are required (``PairedLogps.chosen_scores``):
    a run whose pairs carry none is refused before training, naming the objective and the data."""
    state: ObjectiveState | None = None
    """A running state the trainer keeps, checkpoints and hands to the loss (``PairedLogps.state``)."""

    def describe(self) -> str:
        parts = ["reference" if self.reference else "reference-free", self.data]
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
class PPOBatch:
    """A minibatch of B rollouts of up to T completion tokens, for the PPO update."""

    logprobs: Tensor
    """(B, T) log π_θ of the sampled tokens under the current policy (with grad)."""
    old_logprobs: Tensor
    """(B, T) log π_θ_old of the same tokens at rollout time."""
    advantages: Tensor
    """(B, T) GAE advantages (already whitened if the trainer whitens)."""
    values: Tensor
    """(B, T) the critic's current values (with grad)."""
    old_values: Tensor
    """(B, T) the critic's values at rollout time."""
    returns: Tensor
    """(B, T) value targets: advantages + old values, before whitening."""
    mask: Tensor
    """(B, T) 1 on completion tokens."""
    entropy: Tensor | None = None
    """(B, T) per-token policy entropy (with grad), for the optional entropy bonus."""


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
