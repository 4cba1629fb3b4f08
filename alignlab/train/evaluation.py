"""Policy evaluation on held-out prompts, and best-of-N, through the rollout core.

One definition for every method: sample from the policy, score with the reward, and take the
sequence KL to the reference with the KL core (k1 summed over completion tokens, DESIGN.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from alignlab.core.kl import sequence_kl
from alignlab.core.rollout import rollout

RewardFn = Callable[[Sequence[str], Sequence[str]], Tensor]


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

    Returns ``reward``, ``kl`` and ``length`` (means), plus the per-sample ``rewards`` and ``kls``
    lists for confidence intervals.
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
    return {
        "reward": float(r.rewards.mean()),
        "kl": float(kls.mean()),
        "length": float(r.sequences.completion_mask.sum(-1).float().mean()),
        "rewards": r.rewards.tolist(),
        "kls": kls.tolist(),
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
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    judge: RewardFn | None = None,
) -> dict[str, Any]:
    """Best-of-N: sample ``n`` completions per prompt, keep the one ``reward`` ranks highest.

    ``judge`` (default: ``reward``) scores the kept completions, e.g. the gold reward when
    ``reward`` is a learned reward model. The KL is the analytic log n − (n−1)/n.
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
    best = r.rewards.view(len(prompts), n).argmax(dim=-1) + torch.arange(len(prompts)) * n
    kept = [r.completions[i] for i in best.tolist()]
    scores = judge(list(prompts), kept) if judge is not None else r.rewards[best]
    return {
        "reward": float(scores.mean()),
        "kl": best_of_n_kl(n),
        "rewards": scores.tolist(),
        "completions": kept,
    }
