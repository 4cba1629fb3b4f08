"""Masked statistics and generalised advantage estimation, over (B, T) tensors with a (B, T) mask."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1.

    Args:
        x: (B, T) values.
        mask: (B, T) 0/1 (bool or float).
        dim: reduce over this dimension only, or over everything when None.

    Returns:
        () if ``dim`` is None, else ``x`` reduced along ``dim``. Rows with no unmasked entry give 0.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the unmasked positions (all of them together).

    Args:
        x: (B, T) values.
        mask: (B, T) 0/1.
        unbiased: apply Bessel's correction n / (n − 1), as ``torch.var`` does by default.

    Returns:
        () tensor.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n < 2:
            raise ValueError(f"the unbiased variance needs at least 2 unmasked values, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the unmasked positions; masked positions come back as 0.

    Args:
        x: (B, T) values, e.g. advantages.
        mask: (B, T) 0/1.
        shift_mean: subtract the mean (advantages); False keeps the mean (rewards, as in
            lm-human-preferences' reward whitening).
        eps: added to the variance.

    Returns:
        (B, T) tensor.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16), for episodes ending at the mask.

    δ_t = r_t + γ V_{t+1} m_{t+1} − V_t and A_t = δ_t + γλ m_{t+1} A_{t+1}: the episode of row b
    ends at its last unmasked token, after which there is no value to bootstrap from.

    Args:
        rewards: (B, T) per-token rewards (e.g. −β·KL on every token, plus r_φ on the last).
        values: (B, T) critic values V(s_t).
        mask: (B, T) 1 on completion tokens (a contiguous run per row).
        gamma: discount γ.
        lam: GAE λ.

    Returns:
        (advantages, returns), each (B, T), zero outside the mask; returns = advantages + values.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[-1]
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    next_mask = torch.zeros_like(values[:, 0])
    # one vectorised step per position, right to left (T steps, not B·T)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        next_advantage = delta + gamma * lam * next_mask * next_advantage
        advantages[:, t] = next_advantage
        next_value, next_mask = values[:, t], mask[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask
