"""How often a pairwise judge agrees with human preference labels, and how much it likes the first slot.

Each held-out human pair (prompt, chosen, rejected) is shown to the judge in both orders —
(chosen, rejected) and (rejected, chosen) — and each showing gives a verdict v(p) on
P(first is better) = p: 1 if p > ½, ½ if p = ½, 0 if p < ½. A pair's agreement is the mean of
its two verdicts for the human-chosen completion,

    s_i = ½ [v(p_i,cr) + v(1 − p_i,rc)],

which is exactly the expected agreement of the position-randomised judge of the win-rate tables
(:class:`~alignlab.rewards.judges.LLMJudge` shows each pair in one order picked by a fair coin),
without the coin's noise. ``first_slot_rate`` is the share of the 2n showings whose verdict goes to
the first slot (½ for a judge blind to order, such as a reward model). ``soft_agreement`` is the
mean probability given to the chosen completion, ½ [p_i,cr + 1 − p_i,rc] averaged: what a win
rate averages, so a judge right by a hair scores near ½ here. ``both_orders_agreement`` scores, from
the same showings, the judge that shows every pair both ways and averages (``judge_orders: both``):
its verdict for pair i is v(½ [p_i,cr + 1 − p_i,rc]), so a constant slot preference cancels within
each pair instead of across pairs (a judge that always answers "first" ties every pair, ½, rather
than being right in one order and wrong in the other).

The interval is a t-interval for the mean of the n pair scores with a cluster-robust standard
error, the clusters being the prompts: pairs that share a prompt (TL;DR has several comparisons per
post) are not independent. With G prompts, residual sums R_g = Σ_{i in g} (s_i − mean),

    se² = G/(G − 1) · Σ_g R_g² / n²,   half-width = t(½ + confidence/2, G − 1) · se,

which is the usual s/√n when every prompt has one pair; the interval is clipped to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from alignlab.tasks.base import PreferencePair


def _showings(judge: Any, prompts: list[str], first: list[str], second: list[str]) -> np.ndarray:
    """(n,) P(first is better) for each pair shown in the given order, checked to be probabilities.

    A judge with positions (:class:`~alignlab.rewards.judges.LLMJudge`) is asked through
    ``prefer_first``, which shows the order as given; any other judge through ``compare``.
    """
    ask = getattr(judge, "prefer_first", None) or judge.compare
    name = getattr(judge, "name", type(judge).__name__)
    p = np.asarray(ask(prompts, first, second), dtype=np.float64).reshape(-1)
    if p.shape != (len(prompts),):
        raise ValueError(f"judge {name!r} gave {p.size} probabilities for {len(prompts)} pairs")
    if not np.all((p >= 0) & (p <= 1)):  # also catches NaN
        raise ValueError(f"judge {name!r} gave a probability outside [0, 1] (or NaN)")
    return p


def _verdict(p: np.ndarray) -> np.ndarray:
    """1 where p > ½, ½ where p = ½, 0 where p < ½."""
    return (p > 0.5) + 0.5 * (p == 0.5)


def judge_agreement(judge: Any, pairs: Sequence[PreferencePair], confidence: float = 0.95) -> dict[str, Any]:
    """The judge's agreement with the human labels of ``pairs``, each pair shown in both orders.

    Args:
        judge: a pairwise judge (:mod:`alignlab.rewards.judges`): ``prefer_first(prompts, first,
            second)`` or ``compare(prompts, a, b)``, each giving (n,) P(the first/a is better).
        pairs: human-labelled pairs (prompt, chosen, rejected), of at least 2 distinct prompts.
        confidence: the level of the interval.

    Returns:
        ``agreement`` (mean pair score s_i), ``ci`` (low, high), ``n`` (pairs), ``prompts`` (G),
        ``first_slot_rate``, ``soft_agreement``, ``scores`` (the n pair scores, in order), and the
        both-orders judge's ``both_orders_agreement``, ``both_orders_ci`` and ``both_orders_scores``.

    Raises:
        ValueError: fewer than 2 prompts, a confidence outside (0, 1), or a judge that does not give
            one probability per pair in [0, 1].
    """
    if len(pairs) < 2 or len({p.prompt for p in pairs}) < 2:
        raise ValueError(
            f"judge agreement needs pairs of at least 2 prompts for an interval, got {len(pairs)} pair(s) "
            f"of {len({p.prompt for p in pairs})} prompt(s)"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    prompts = [p.prompt for p in pairs]
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    p_cr = _showings(judge, prompts, chosen, rejected)  # chosen shown first
    p_rc = _showings(judge, prompts, rejected, chosen)  # rejected shown first
    scores = 0.5 * (_verdict(p_cr) + _verdict(1 - p_rc))
    both = _verdict(0.5 * (p_cr + 1 - p_rc))  # the judge that averages both orders (judge_orders: both)
    mean, ci, g = _clustered_mean(scores, prompts, confidence)
    both_mean, both_ci, _ = _clustered_mean(both, prompts, confidence)
    return {
        "agreement": mean,
        "ci": ci,
        "n": len(scores),
        "prompts": g,
        "first_slot_rate": float(np.concatenate([_verdict(p_cr), _verdict(p_rc)]).mean()),
        "soft_agreement": float((0.5 * (p_cr + 1 - p_rc)).mean()),
        "scores": scores.tolist(),
        "both_orders_agreement": both_mean,
        "both_orders_ci": both_ci,
        "both_orders_scores": both.tolist(),
    }


def _clustered_mean(
    scores: np.ndarray, prompts: list[str], confidence: float
) -> tuple[float, tuple[float, float], int]:
    """(mean, its interval clipped to [0, 1], number of prompts G): the cluster-robust t-interval above."""
    n, mean = len(scores), float(scores.mean())
    cluster = np.unique(prompts, return_inverse=True)[1]
    residual_sums = np.bincount(cluster, weights=scores - mean)
    g = len(residual_sums)
    se = math.sqrt(g / (g - 1) * float((residual_sums**2).sum())) / n
    half = float(stats.t.ppf(0.5 + confidence / 2, g - 1)) * se
    return mean, (max(0.0, mean - half), min(1.0, mean + half)), g
