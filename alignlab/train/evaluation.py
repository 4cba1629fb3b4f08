"""Policy evaluation on held-out prompts, and best-of-N, through the rollout core.

One definition for every method: sample from the policy, score with the reward, and take the
sequence KL to the reference with the KL core (k1 summed over completion tokens, DESIGN.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from alignlab.core.kl import sequence_kl
from alignlab.core.rollout import rollout

RewardFn = Callable[[Sequence[str], Sequence[str]], Tensor]


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The BCa bootstrap confidence interval of the mean of ``values`` (scipy, 2000 resamples).

    Constant data (e.g. KL = 0 at step 0) gives the degenerate interval (v, v); one value gives (v, v).
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("a confidence interval needs at least one value")
    if x.size == 1 or np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    res = bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=2000, method="BCa", rng=np.random.default_rng(seed)
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa can fail on near-degenerate data
        res = bootstrap(
            (x,),
            np.mean,
            confidence_level=confidence,
            n_resamples=2000,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high


def per_prompt(values: Sequence[float], samples_per_prompt: int) -> list[float]:
    """Means over each prompt's samples (rows are prompt-major): the unit a CI resamples."""
    x = np.asarray(values, dtype=np.float64).reshape(-1, samples_per_prompt)
    return x.mean(axis=1).tolist()


@torch.no_grad()
def sample_metrics(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    reward: RewardFn,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    samples_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Mean reward and mean sequence KL(π || π_ref) of samples from ``policy`` on ``prompts``.

    Returns ``reward``, ``kl`` and ``length`` (means), ``reward_ci`` and ``kl_ci`` (95% bootstrap
    intervals over prompts, each prompt's samples averaged first), the per-sample ``rewards`` and
    ``kls``, and the ``completions``.
    """
    r = rollout(
        policy,
        tokenizer,
        prompts,
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        reference=reference,
        reward=reward,
        score_policy=True,
        batch_size=batch_size,
    )
    assert r.policy_logps is not None and r.ref_logps is not None and r.rewards is not None
    kls = sequence_kl(r.policy_logps, r.ref_logps, r.sequences.completion_mask)
    rewards, kl_list = r.rewards.tolist(), kls.tolist()
    return {
        "reward": float(r.rewards.mean()),
        "kl": float(kls.mean()),
        "reward_ci": bootstrap_ci(per_prompt(rewards, samples_per_prompt), seed=seed),
        "kl_ci": bootstrap_ci(per_prompt(kl_list, samples_per_prompt), seed=seed),
        "length": float(r.sequences.completion_mask.sum(-1).float().mean()),
        "rewards": rewards,
        "kls": kl_list,
        "completions": r.completions,
    }


def best_of_n_kl(n: int) -> float:
    """KL(π_BoN || π) = log n − (n − 1)/n, the analytic value (Stiennon et al. 2020, App. G.3)."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def best_of_n(
    policy: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    reward: RewardFn,
    n: int,
    *,
    rank: Callable[[Tensor], Tensor] | None = None,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    judge: RewardFn | None = None,
) -> dict[str, Any]:
    """Best-of-N: sample ``n`` completions per prompt, keep the one ranked first.

    ``rank`` maps the rewards (P, n) to losses (P, n) and each prompt keeps its lowest-loss sample
    (the ``best_of_n`` objective: −reward); default: the highest reward. ``judge`` (default:
    ``reward``) scores the kept completions, e.g. the gold reward when ``reward`` is a learned reward
    model. The KL is the analytic log n − (n−1)/n.
    """
    r = rollout(
        policy,
        tokenizer,
        prompts,
        samples_per_prompt=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        reward=reward,
        batch_size=batch_size,
    )
    assert r.rewards is not None
    rewards = r.rewards.view(len(prompts), n)
    losses = rank(rewards) if rank is not None else -rewards
    best = losses.argmin(dim=-1) + torch.arange(len(prompts)) * n
    kept = [r.completions[i] for i in best.tolist()]
    scores = judge(list(prompts), kept) if judge is not None else r.rewards[best]
    return {
        "reward": float(scores.mean()),
        "kl": best_of_n_kl(n),
        "rewards": scores.tolist(),
        "completions": kept,
    }


@torch.no_grad()
def win_rates(
    policy: torch.nn.Module,
    tokenizer: Any,
    references: Sequence[tuple[str, str]],
    judge: Any,
    temperatures: Sequence[float],
    *,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Win rate of the policy's samples against reference completions, per sampling temperature.

    Args:
        references: (prompt, reference completion): TL;DR's human summaries, HH's chosen replies.
        judge: a :class:`~alignlab.rewards.judges.Judge`: P(sample beats reference) per row.
        temperatures: 0 is greedy decoding.

    Returns:
        One row per temperature: ``temperature``, ``win_rate``, ``win_rate_ci_low``/``_high``
        (95% bootstrap), ``n`` and ``length`` (mean completion tokens).
    """
    prompts = [p for p, _ in references]
    refs = [c for _, c in references]
    rows = []
    for temperature in temperatures:
        r = rollout(
            policy,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            batch_size=batch_size,
        )
        wins = judge.compare(prompts, r.completions, refs).tolist()
        low, high = bootstrap_ci(wins, seed=seed)
        rows.append(
            {
                "temperature": temperature,
                "win_rate": float(np.mean(wins)),
                "win_rate_ci_low": low,
                "win_rate_ci_high": high,
                "n": len(wins),
                "length": float(r.sequences.completion_mask.sum(-1).float().mean()),
                "example": {"prompt": prompts[0], "sample": r.completions[0], "reference": refs[0]},
            }
        )
    return rows
