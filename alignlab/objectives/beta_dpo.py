"""β-DPO: DPO with a β calibrated per batch and pairs filtered around the running margin (Wu et al. 2024).

A stateful objective: the running mean M₀ and spread σ of the margin h are exponential moving
averages the trainer keeps (:class:`~alignlab.objectives.base.ObjectiveState`), updated with each
training batch *before* its loss, as in the official code; the loss reads them from ``batch.state``.
The filtering draws are seeded from the knob ``seed`` and the state's count of updates, so the loss
is a pure function of its inputs and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.errors import ConfigError
from alignlab.objectives.base import (
    LossOutput,
    Needs,
    ObjectiveConfig,
    ObjectiveState,
    PairedLogps,
    knob,
    pairwise_metrics,
)
from alignlab.objectives.registry import register_objective


@dataclass(frozen=True)
class BetaDPOConfig(ObjectiveConfig):
    beta: float = knob(0.1, "β₀: the base β that each batch's β is calibrated from (official example: 0.1).", gt=0)
    a: float = knob(
        0.6, "a: how strongly β follows the batch's margin: β₀[1 + a(h̄ − M₀)] (official example: 0.6).", ge=0
    )
    rho: float = knob(
        0.2, "ρ: the share of each batch filtered out, pairs kept ∝ exp(−½((h − M₀)/σ)²) (official: 0.2).", ge=0, lt=1
    )
    gamma: float = knob(
        0.9, "γ: momentum of the moving averages M₀ and σ of the margin (official code: 0.9).", ge=0, lt=1
    )
    beta_min: float = knob(1e-3, "The floor of a batch's β (the official code clamps at 1e-3).", gt=0)
    seed: int = knob(0, "Seed of the filtering draws (with the count of state updates).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta_min > self.beta:
            raise ConfigError("beta_min", f"must be <= beta ({self.beta}), got {self.beta_min}")


def _margins(batch: PairedLogps) -> Tensor:
    chosen_logratios, rejected_logratios = batch.logratios()
    return chosen_logratios - rejected_logratios


def init_state(cfg: BetaDPOConfig) -> dict[str, Tensor]:
    """M₀ = σ = 0 before the first batch (the official code's zeros), and no draws yet."""
    zero = torch.zeros((), dtype=torch.float64)
    return {"margin_mean": zero, "margin_std": zero.clone(), "updates": zero.clone()}


def update_state(state: dict[str, Tensor], batch: PairedLogps, cfg: BetaDPOConfig) -> dict[str, Tensor]:
    """M₀ ← γ M₀ + (1 − γ) mean(h), σ ← γ σ + (1 − γ) std(h) over the batch (std with n − 1; 0 for one pair)."""
    h = _margins(batch).detach().to(torch.float64)
    std = h.std() if h.numel() > 1 else torch.zeros((), dtype=torch.float64, device=h.device)
    mean_, std_ = state["margin_mean"].to(h.device), state["margin_std"].to(h.device)
    return {
        "margin_mean": cfg.gamma * mean_ + (1 - cfg.gamma) * h.mean(),
        "margin_std": cfg.gamma * std_ + (1 - cfg.gamma) * std,
        "updates": state["updates"].to(h.device) + 1,
    }


def kept_pairs(h: Tensor, state: dict[str, Tensor], cfg: BetaDPOConfig) -> Tensor:
    """(B,) 1.0 for the max(1, ⌊B(1 − ρ)⌋) pairs kept, drawn without replacement ∝ exp(−½((h − M₀)/σ)²).

    Gumbel-top-k (Kool et al. 2019): the k largest of log-weight + Gumbel noise are a draw without
    replacement proportional to the weights, as the official ``torch.multinomial`` is; in log space no
    weight underflows. σ = 0 (a batch of equal margins) weighs every pair alike. ρ = 0 keeps all.
    """
    n = h.numel()
    k = max(1, int(n * (1 - cfg.rho)))
    if k >= n:
        return torch.ones_like(h)
    sigma = state["margin_std"].to(h)
    z = (h - state["margin_mean"].to(h)) / torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    log_weights = torch.where(sigma > 0, -0.5 * z**2, torch.zeros_like(z))
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + int(state["updates"]))
    u = torch.rand(n, generator=g, dtype=torch.float64).clamp(min=1e-300).to(h)
    keys = log_weights - torch.log(-torch.log(u))
    kept = torch.zeros_like(h)
    kept[keys.topk(k).indices] = 1.0
    return kept


@register_objective(
    "beta_dpo",
    display_name="beta-DPO",
    config=BetaDPOConfig,
    needs=Needs(reference=True, data="paired", state=ObjectiveState(init=init_state, update=update_state)),
    citation="Wu et al. 2024, β-DPO: Direct Preference Optimization with Dynamic β (arXiv:2407.08639), "
    "§4 dynamic β and β-guided filtering; official code junkangwu/beta-DPO preference_loss",
)
def beta_dpo_loss(batch: PairedLogps, cfg: BetaDPOConfig) -> LossOutput:
    """−log σ(β_b h) over the kept pairs, β_b = β₀[1 + a(mean of the kept h − M₀)], M₀ and σ running EMAs."""
    chosen_logratios, rejected_logratios = batch.logratios()
    state = batch.running_state()
    h = chosen_logratios - rejected_logratios
    kept = kept_pairs(h.detach(), state, cfg)
    # β_batch = β₀[1 + a(E_kept[h] − M₀)], clamped below and detached (official code)
    mean_kept = (h.detach() * kept).sum() / kept.sum()
    beta = (cfg.beta * (1 + cfg.a * (mean_kept - state["margin_mean"].to(h)))).clamp(min=cfg.beta_min)
    # the mean over the kept pairs: the trainer's mean of (B,) losses, each kept one scaled by B/k
    losses = -F.logsigmoid(beta * h) * kept * (h.numel() / kept.sum())
    metrics = pairwise_metrics(cfg.beta * chosen_logratios, cfg.beta * rejected_logratios)
    return LossOutput(losses, metrics | {"beta_batch": beta.detach(), "kept": kept})
