"""Advantage estimators: how an online method turns rewards of its rollouts into a training signal.

Each estimator is a pure function ``(AdvantageInputs, AdvantageConfig, state) -> Advantages`` in a
registry (as verl's ``core_algos.py`` registers its estimators), looked up by the name an online
objective declares in its :class:`~alignlab.objectives.base.Needs`:

- ``gae``: generalised advantage estimation with a critic (PPO; Schulman et al. 2016, Eq. 16) over
  per-token rewards −β·KL_t, plus the reward r(x, y) on the last token;
- ``rloo``: REINFORCE with the leave-one-out baseline of the k samples of a prompt (RLOO; Kool et al.
  2019, Ahmadian et al. 2024, Eq. 5): A_i = R_i − 1/(k−1) Σ_{j≠i} R_j;
- ``grpo``: group-normalised rewards (GRPO; Shao et al. 2024, §4.1.2): A_i = (R_i − mean_g R) / (std_g R + ε),
  or without the division by the std (Dr. GRPO; Liu et al. 2025, §3.2): ``normalize_std: false``;
- ``reinforce``: REINFORCE with a moving-average baseline b of the batch's mean reward (Williams 1992):
  A_i = R_i − b, then b ← d·b + (1 − d)·mean R (the baseline is the trainer's state, checkpointed).

The sequence-level estimators see R_i = r(x, y_i) − β Σ_t KL_t: the KL penalty in the reward, summed
over the completion (β = 0 when the method puts its KL in the loss instead); their advantage is the
same on every completion token of a row. Rows of one prompt are consecutive: ``group_size`` of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from alignlab.core.stats import gae, masked_whiten


@dataclass(frozen=True)
class AdvantageInputs:
    """What an iteration's rollouts give an estimator; (B, T) tensors are zero off the completion mask."""

    scores: Tensor
    """(B,) the reward r(x, y) of each completion."""
    kl: Tensor
    """(B, T) the per-token KL estimate to π_ref of each completion token."""
    mask: Tensor
    """(B, T) 1 on completion tokens."""
    kl_coef: float
    """β of the KL penalty in the reward (0 when the KL is a term of the loss)."""
    group_size: int = 1
    """k: the samples of one prompt, consecutive rows."""
    values: Tensor | None = None
    """(B, T) the critic's values V(s_t) (``gae`` only)."""


@dataclass(frozen=True)
class AdvantageConfig:
    """The estimators' knobs (the online trainer's ``rollout`` settings carry them)."""

    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = False
    normalize_std: bool = True
    eps: float = 1e-4
    baseline_decay: float = 0.9


@dataclass(frozen=True)
class Advantages:
    advantages: Tensor
    """(B, T) the advantage of each completion token."""
    returns: Tensor | None = None
    """(B, T) the critic's targets (``gae``), else None."""
    state: dict[str, Any] | None = None
    """What the estimator carries to the next iteration (``reinforce``: its baseline)."""


Estimator = Callable[[AdvantageInputs, AdvantageConfig, dict[str, Any]], Advantages]


@dataclass(frozen=True)
class EstimatorSpec:
    name: str
    fn: Estimator
    needs_critic: bool
    min_group: int
    citation: str


ESTIMATORS: dict[str, EstimatorSpec] = {}


def register_estimator(
    name: str, *, needs_critic: bool = False, min_group: int = 1, citation: str = ""
) -> Callable[[Estimator], Estimator]:
    """Decorator: register an advantage estimator under ``name`` (``min_group``: the fewest samples per
    prompt it works with; ``needs_critic``: it reads the critic's values)."""

    def decorator(fn: Estimator) -> Estimator:
        ESTIMATORS[name] = EstimatorSpec(name, fn, needs_critic, min_group, citation)
        return fn

    return decorator


def sequence_rewards(inputs: AdvantageInputs) -> Tensor:
    """(B,) R_i = r(x, y_i) − β Σ_t KL_t: the reward with the KL penalty summed over the completion."""
    return inputs.scores - inputs.kl_coef * (inputs.kl * inputs.mask).sum(-1)


def _groups(x: Tensor, k: int) -> Tensor:
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rows do not form groups of {k} samples per prompt")
    return x.view(-1, k)


def _per_token(advantages: Tensor, inputs: AdvantageInputs, cfg: AdvantageConfig) -> Tensor:
    """(B,) sequence advantages on every completion token, whitened over the batch's tokens if asked."""
    per_token = advantages[:, None] * inputs.mask
    return masked_whiten(per_token, inputs.mask) if cfg.whiten else per_token


@register_estimator("gae", needs_critic=True, citation="Schulman et al. 2016, GAE, Eq. 16")
def gae_estimator(inputs: AdvantageInputs, cfg: AdvantageConfig, state: dict[str, Any]) -> Advantages:
    """Per-token rewards −β·KL_t, plus r(x, y) on the last completion token; GAE(γ, λ) with the critic."""
    if inputs.values is None:
        raise ValueError("the gae estimator needs the critic's values")
    mask = inputs.mask.to(inputs.kl.dtype)
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()
    rewards = -inputs.kl_coef * inputs.kl + inputs.scores[:, None] * last
    advantages, returns = gae(rewards, inputs.values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten:
        advantages = masked_whiten(advantages, mask)
    return Advantages(advantages, returns)


@register_estimator("rloo", min_group=2, citation="Ahmadian et al. 2024, Back to Basics, Eq. 5 (Kool et al. 2019)")
def rloo_estimator(inputs: AdvantageInputs, cfg: AdvantageConfig, state: dict[str, Any]) -> Advantages:
    """A_i = R_i − 1/(k−1) Σ_{j≠i} R_j over the k samples of a prompt."""
    k = inputs.group_size
    grouped = _groups(sequence_rewards(inputs), k)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)  # the mean of the other k − 1 samples
    return Advantages(_per_token((grouped - baseline).reshape(-1), inputs, cfg))


@register_estimator("grpo", min_group=2, citation="Shao et al. 2024, DeepSeekMath, §4.1.2; Liu et al. 2025, Dr. GRPO")
def grpo_estimator(inputs: AdvantageInputs, cfg: AdvantageConfig, state: dict[str, Any]) -> Advantages:
    """A_i = (R_i − mean_g R) / (std_g R + ε), the std unbiased as torch's (Dr. GRPO: no division)."""
    grouped = _groups(sequence_rewards(inputs), inputs.group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if cfg.normalize_std:  # a group of equal rewards: 0 / (0 + ε) = 0, no signal
        centred = centred / (grouped.std(-1, keepdim=True) + cfg.eps)
    return Advantages(_per_token(centred.reshape(-1), inputs, cfg))


@register_estimator("reinforce", citation="Williams 1992, REINFORCE with a baseline")
def reinforce_estimator(inputs: AdvantageInputs, cfg: AdvantageConfig, state: dict[str, Any]) -> Advantages:
    """A_i = R_i − b, b the moving average of the batches' mean rewards before this one (the first batch's
    mean for the first batch); then b ← d·b + (1 − d)·mean R."""
    rewards = sequence_rewards(inputs)
    mean = float(rewards.mean())
    baseline = state.get("baseline", mean)
    advantages = rewards - baseline
    updated = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean
    return Advantages(_per_token(advantages, inputs, cfg), state={"baseline": updated})


def get_estimator(name: str) -> EstimatorSpec:
    """The estimator registered as ``name``.

    Raises:
        KeyError: naming the registered ones.
    """
    if name not in ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {name!r} (registered: {', '.join(sorted(ESTIMATORS))})")
    return ESTIMATORS[name]
