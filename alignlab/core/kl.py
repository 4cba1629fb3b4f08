"""The KL core: one definition of KL(π || π_ref) for every method and every frontier point.

On samples y ~ π(·|x), with per-token log-ratio ℓ_t = log π(y_t|·) − log π_ref(y_t|·):

- k1 = ℓ_t: unbiased, can be negative per token; its sum over the completion is the sequence
  KL of the frontier (DESIGN.md);
- k2 = ½ ℓ_t²: biased, low variance, always ≥ 0;
- k3 = (e^{−ℓ_t} − 1) + ℓ_t: unbiased and always ≥ 0 (Schulman 2020, "Approximating KL divergence").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Estimator = Literal["k1", "k2", "k3"]


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """log π − log π_ref, elementwise, any shape."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """½ (log π − log π_ref)², elementwise."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """(π_ref/π − 1) − log(π_ref/π), elementwise; expm1 keeps it exact near zero."""
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def per_token_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: Estimator = "k1") -> Tensor:
    """Per-token KL estimates, zero outside the mask.

    Args:
        logprobs: (B, T) log π of the sampled tokens.
        ref_logprobs: (B, T) log π_ref of the same tokens.
        mask: (B, T) 1 on completion tokens.
        estimator: "k1", "k2" or "k3".

    Returns:
        (B, T) tensor.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; use one of {sorted(_ESTIMATORS)}")
    return _ESTIMATORS[estimator](logprobs, ref_logprobs) * mask.to(logprobs.dtype)


def sequence_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: Estimator = "k1") -> Tensor:
    """Sequence KL: the per-token estimates summed over completion tokens.

    With ``estimator="k1"`` this is the frontier's KL(x) = Σ_t [log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)].

    Returns:
        (B,) tensor.
    """
    return per_token_kl(logprobs, ref_logprobs, mask, estimator).sum(dim=-1)
