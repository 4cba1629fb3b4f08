"""The pieces of the online iteration (:mod:`alignlab.train.online`): its settings, the policy with its
critic behind one forward, an iteration's experience, pairs ranked from samples, and the batch each
kind of online objective trains on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignlab.core.advantages import ESTIMATORS, AdvantageConfig, get_estimator
from alignlab.core.rollout import Draw
from alignlab.core.scoring import EncodedBatch, logps_from_logits, position_ids, sequence_logps, token_logps
from alignlab.errors import ConfigError
from alignlab.objectives import Objective, ObjectiveConfig
from alignlab.objectives.base import LossOutput, Online, PairedLogps, RolloutBatch
from alignlab.schema import Config, knob
from alignlab.train.config import TrainConfig


@dataclass(frozen=True)
class RolloutConfig(Config):
    max_new_tokens: int = knob(48, "Completion length limit of the rollouts, in tokens.", gt=0)
    temperature: float = knob(1.0, "Sampling temperature of the rollouts (log-probs use the same).", ge=0.01)
    top_p: float = knob(1.0, "Nucleus sampling threshold of the rollouts (1.0: off).", gt=0, le=1)
    critic: Literal["auto", "reward_model", "sft", "value_head"] = knob(
        "auto",
        "The critic of an estimator that has one (gae): a value model initialised from the reward model "
        "(Stiennon et al. 2020) or from the SFT model, or a value head on the policy; auto: reward_model when "
        "the run uses one, else sft.",
    )
    generation_batch_size: int = knob(64, "Rollouts generated per forward batch.", gt=0)
    draw: Draw = knob(
        "multinomial",
        "How each rollout token is drawn from its distribution: multinomial (torch.multinomial, Hugging Face "
        "generate's random stream: the tokens generate would sample) or inverse_cdf (one uniform per row and a "
        "search of the cumulative probabilities: the same distribution, another stream, ~30x cheaper per token "
        "on CPU).",
    )
    samples_per_prompt: int | None = knob(
        None, "k completions of each prompt per iteration (null: the method's: PPO 1, RLOO/GRPO 4, online DPO 2).", ge=1
    )
    epochs: int | None = knob(
        None, "Passes over each iteration's rollouts (null: the method's: PPO 4, others 1).", ge=1
    )
    minibatches: int | None = knob(None, "Optimiser steps per pass (null: the method's).", ge=1)
    advantage: Literal["auto", "gae", "rloo", "grpo", "reinforce"] = knob(
        "auto", "The advantage estimator (auto: the method's; not for online/iterative DPO, whose samples are ranked)."
    )
    kl_penalty: Literal["auto", "reward", "loss"] = knob(
        "auto",
        "Where the KL to π_ref goes: reward: −β·KL per token in the reward (PPO, RLOO); loss: β·k3 per token in "
        "the loss (GRPO); auto: the method's.",
    )
    kl_coef: float = knob(0.05, "β: (initial) coefficient of the KL to π_ref, in the reward or in the loss.", ge=0)
    target_kl: float | None = knob(
        None, "Target sequence KL of the adaptive controller (Ziegler et al. 2019); null keeps β fixed.", gt=0
    )
    kl_horizon: float = knob(10000.0, "Horizon (in episodes) of the adaptive KL controller.", gt=0)
    kl_estimator: Literal["k1", "k2", "k3"] = knob("k1", "Per-token KL estimator of the penalty in the reward.")
    gamma: float = knob(1.0, "Discount γ of GAE.", ge=0, le=1)
    lam: float = knob(0.95, "λ of GAE.", ge=0, le=1)
    whiten_advantages: bool | None = knob(
        None, "Whiten advantages over the batch's completion tokens (null: for gae only, as PPO does)."
    )
    normalize_std: bool = knob(True, "grpo: divide by the group's reward std (false: Dr. GRPO).")
    baseline_decay: float = knob(0.9, "reinforce: decay d of the moving-average baseline.", ge=0, lt=1)
    pairs: Literal["auto", "best_worst", "all"] = knob(
        "auto", "Ranked pairs (online/iterative DPO): the best vs the worst sample of a prompt, or all pairs."
    )
    reference: Literal["fixed", "last_iteration"] = knob(
        "fixed",
        "The reference the training scores against: π_ref, or the policy as it was after the last iteration "
        "(iterative DPO rounds; Yuan et al. 2024). The evaluation's KL is to π_ref either way.",
    )


@dataclass(frozen=True)
class Settings:
    """A run's online settings: the ``rollout`` section with every ``auto``/``null`` resolved from the
    objective's declared :class:`~alignlab.objectives.base.Online` needs."""

    rollout: RolloutConfig
    advantage: str  # an estimator's name, or "pairs"
    kl: Literal["reward", "loss"]
    samples_per_prompt: int
    epochs: int
    minibatches: int
    pairs: Literal["best_worst", "all"]
    advantage_config: AdvantageConfig

    @classmethod
    def resolve(cls, rc: RolloutConfig, online: Online, source: str | None = None) -> Settings:
        advantage = online.advantage if rc.advantage == "auto" else rc.advantage
        if online.advantage == "pairs" and advantage != "pairs":
            raise ConfigError(
                "rollout.advantage", "this method trains on ranked pairs, not advantages: leave it auto", source
            )
        if advantage != "pairs" and advantage not in ESTIMATORS:
            raise ConfigError("rollout.advantage", f"unknown estimator {advantage!r}", source)
        k = rc.samples_per_prompt or online.samples_per_prompt
        least = 2 if advantage == "pairs" else get_estimator(advantage).min_group
        if k < least:
            raise ConfigError(
                "rollout.samples_per_prompt",
                f"{k}: the {advantage} {'ranking' if advantage == 'pairs' else 'estimator'} needs at least {least} "
                "samples of each prompt",
                source,
            )
        whiten = rc.whiten_advantages if rc.whiten_advantages is not None else advantage == "gae"
        return cls(
            rollout=rc,
            advantage=advantage,
            kl=online.kl if rc.kl_penalty == "auto" else rc.kl_penalty,
            samples_per_prompt=k,
            epochs=rc.epochs or online.epochs,
            minibatches=rc.minibatches or online.minibatches,
            pairs=online.pairs if rc.pairs == "auto" else rc.pairs,
            advantage_config=AdvantageConfig(
                rc.gamma, rc.lam, whiten, rc.normalize_std, baseline_decay=rc.baseline_decay
            ),
        )

    @property
    def needs_critic(self) -> bool:
        return self.advantage != "pairs" and get_estimator(self.advantage).needs_critic

    @property
    def old_logps_from_update(self) -> bool:
        """Whether the update's own forward gives the old log-probs, so that the rollouts skip a forward of
        the policy (as TRL's ``GRPOTrainer`` does with ``num_iterations=1``): one optimiser step per batch of
        rollouts (the policy has not moved since it sampled them), no critic (whose values come from that
        forward), and nothing that reads them before the update: advantages with the KL in the loss (a KL in
        the reward needs them for the advantages), or ranked pairs (whose loss reads only π_ref's log-probs;
        the old ones feed the logged KL and entropy, which then cover the rows the update trained: a tied
        prompt's rollouts are in no pair)."""
        return (
            self.epochs * self.minibatches == 1
            and (self.kl == "loss" or self.advantage == "pairs")
            and not self.needs_critic
        )


def check_online_batch(cfg: TrainConfig, s: Settings, num_processes: int, source: str | None = None) -> None:
    """``train.batch_size`` rollouts split into whole prompts per process, and (for advantage methods)
    into processes × minibatches × grad_accum."""
    k = s.samples_per_prompt
    if cfg.batch_size % (k * num_processes):
        raise ConfigError(
            "train.batch_size",
            f"{cfg.batch_size} rollouts per iteration are not whole prompts of {k} samples on each of "
            f"{num_processes} process(es)",
            source,
        )
    parts = num_processes * s.minibatches * cfg.grad_accum
    if s.advantage != "pairs" and cfg.batch_size % parts:
        raise ConfigError(
            "train.batch_size",
            f"{cfg.batch_size} rollouts per iteration do not split into processes × minibatches × grad_accum "
            f"= {num_processes} × {s.minibatches} × {cfg.grad_accum}",
            source,
        )


@dataclass(frozen=True)
class PolicyValueOutput:
    """What :class:`PolicyAndValue` returns: the policy's logits, and the critic's values when it has one."""

    logits: Tensor
    """(B, T, V) the policy's logits."""
    values: Tensor | None
    """(B, T) V of the state before token t, at position t (None without a critic)."""


class PolicyAndValue(nn.Module):
    """The policy and its critic (if any) behind one forward, so that DDP synchronises both.

    The critic is a separate value model (``critic``: a sequence classifier's backbone and scalar head)
    or a value head on the policy's last hidden state (``value_head=True``); neither for estimators
    without a critic (RLOO, GRPO, ranked pairs), when this is the policy alone.
    """

    def __init__(
        self, policy: nn.Module, critic: nn.Module | None = None, value_head: bool = False, temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.policy, self.critic, self.temperature = policy, critic, temperature
        self.value_head: nn.Module | None = None
        if value_head:
            hidden_size: int = policy.config.hidden_size  # type: ignore[union-attr,assignment]
            self.value_head = nn.Linear(hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    @property
    def has_critic(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def aside(self) -> dict[str, nn.Module]:
        """The modules a checkpoint holds beside the policy (its model): the critic or value head, if any."""
        modules: dict[str, nn.Module] = {}
        if self.critic is not None:
            modules["critic"] = self.critic
        if self.value_head is not None:
            modules["value_head"] = self.value_head
        return modules

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, **_: Any) -> PolicyValueOutput:
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=self.value_head is not None,
        )
        if self.value_head is not None:
            raw = self.value_head(out.hidden_states[-1]).squeeze(-1)
        elif self.critic is not None:
            hidden = self.critic.base_model(  # type: ignore[operator]
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
            raw = self.critic.score(hidden).squeeze(-1)  # type: ignore[operator]
        else:
            return PolicyValueOutput(out.logits, None)
        # the hidden state at t − 1 has seen x and y_<t: it is the state in which token t is chosen
        return PolicyValueOutput(out.logits, F.pad(raw[:, :-1].float(), (1, 0)))


def forward(
    model: nn.Module, core: PolicyAndValue, batch: EncodedBatch, temperature: float, entropy: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(log-probs, values, entropy) of ``batch``'s completion tokens, (B, T) each: one forward of the policy
    and its critic; values None without a critic, entropy None unless asked. Without a critic (and without
    entropy) the scoring core runs the policy directly (its LM head on completion tokens only)."""
    if not core.has_critic and not entropy:
        # the policy itself when nothing wraps it (one process): its LM head runs on completion tokens only
        policy = core.policy if model is core else model
        logps = token_logps(
            policy, batch.input_ids, batch.attention_mask, batch.completion_mask, temperature=temperature
        )
        return logps, None, None
    out = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids(batch.attention_mask)
    )
    logps = logps_from_logits(out.logits, batch.input_ids, batch.completion_mask, temperature=temperature)
    mask = batch.completion_mask
    values = out.values * mask if out.values is not None else None
    ent = None
    if entropy:
        logp = torch.log_softmax(out.logits.float() / temperature, dim=-1)
        ent = F.pad(-(logp.exp() * logp).sum(-1)[:, :-1], (1, 0)) * mask
    return logps, values, ent


@dataclass(frozen=True)
class Costs:
    """Each network's forward cost per token relative to the policy's: the ratio of parameter counts."""

    reference: float
    critic: float  # the value model, or the value head on the policy (0 without a critic)
    reward: float  # a reward model's; 0 for a reward that is not a network (the gold judge)

    @classmethod
    def of(cls, core: PolicyAndValue, reference: nn.Module, reward: Any) -> Costs:
        n = _parameters(core.policy)
        model = getattr(reward, "model", None)  # RewardModel, HFClassifierReward: a network under .model
        return cls(
            _parameters(reference) / n,
            _parameters(core.critic if core.critic is not None else core.value_head) / n,
            _parameters(model) / n if isinstance(model, nn.Module) else 0.0,
        )


def _parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@dataclass
class Experience:
    """One iteration's rollouts and what the update needs from them, (B, T) unless noted."""

    sequences: EncodedBatch
    old_logps: Tensor | None  # None: the update's forward gives them (Settings.old_logps_from_update)
    ref_logps: Tensor
    scores: Tensor  # (B,) the reward r(x, y)
    stats: dict[str, float]
    tokens: float  # policy forward-equivalent tokens of steps 1–3
    advantages: Tensor | None = None
    returns: Tensor | None = None
    old_values: Tensor | None = None
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (chosen row, rejected row), ranked pairs
    estimator_state: dict[str, Any] | None = None


def rank_pairs(
    scores: Tensor, completion_mask: Tensor, k: int, rule: Literal["best_worst", "all"]
) -> tuple[list[tuple[int, int]], int]:
    """Preference pairs (chosen row, rejected row) from each prompt's k consecutive samples, the higher
    reward chosen; pairs whose rewards tie are dropped and counted. ``best_worst``: one pair per prompt,
    its best sample against its worst (Guo et al. 2024 with k = 2); ``all``: every pair (DPO §6.1)."""
    pairs, ties = [], 0
    values = scores.tolist()
    for start in range(0, len(values), k):
        group = range(start, start + k)
        if rule == "best_worst":
            best, worst = max(group, key=lambda i: values[i]), min(group, key=lambda i: values[i])
            candidates = [(best, worst)]
        else:
            candidates = [(i, j) if values[i] > values[j] else (j, i) for i in group for j in group if i < j]
        for w, lo in candidates:
            if values[w] == values[lo]:
                ties += 1
            else:
                pairs.append((w, lo))
    return pairs, ties


def policy_stats(logps: Tensor, ref_logps: Tensor, mask: Tensor) -> dict[str, float]:
    """The rollouts' sequence KL to the training reference (log-ratio summed over each completion, mean over
    rollouts) and the policy's entropy estimate (mean −log π of the sampled tokens); (B, T) inputs."""
    return {
        "kl": float(((logps - ref_logps) * mask).sum(-1).mean()),
        "entropy": float(-(logps * mask).sum() / mask.sum()),
    }


def units(exp: Experience) -> int:
    """What an iteration's minibatches are drawn from: its ranked pairs, or its rollouts."""
    return len(exp.pairs) if exp.advantages is None else len(exp.sequences)


def minibatch_loss(
    model: nn.Module,
    core: PolicyAndValue,
    exp: Experience,
    part: list[int],
    objective: Objective,
    ocfg: ObjectiveConfig,
    s: Settings,
    kl_coef: float,
) -> tuple[LossOutput, float, tuple[list[int], Tensor] | None]:
    """The objective's loss on ``part`` of the iteration's units, the real tokens it trained on, and, when
    ``exp`` has no old log-probs (:attr:`Settings.old_logps_from_update`), the rollouts this forward scored
    with their (n, T) log-probs, detached, that stand in for them."""
    temperature = s.rollout.temperature
    if exp.advantages is None:  # ranked pairs: DPO-style objectives on the policy's own samples
        rows = sorted({r for pair in (exp.pairs[i] for i in part) for r in pair})
        chosen = exp.sequences.select(rows)
        cols = chosen.used()
        b = chosen.trim()
        logps, _, _ = forward(model, core, b, temperature)
        scored = None
        if exp.old_logps is None:
            scored = torch.zeros(len(rows), chosen.input_ids.shape[1], dtype=logps.dtype, device=logps.device)
            scored[:, cols] = logps.detach()
        seq = sequence_logps(logps, b.completion_mask, "sum")
        ref = sequence_logps(exp.ref_logps[rows], exp.sequences.completion_mask[rows], "sum")
        where = {r: i for i, r in enumerate(rows)}
        w = torch.tensor([where[exp.pairs[i][0]] for i in part], device=seq.device)
        lo = torch.tensor([where[exp.pairs[i][1]] for i in part], device=seq.device)
        lengths = b.completion_mask.sum(-1)
        batch: Any = PairedLogps(seq[w], seq[lo], lengths[w], lengths[lo], ref[w], ref[lo])
        return objective(batch, ocfg), float(b.attention_mask.sum()), None if scored is None else (rows, scored)
    b = exp.sequences.select(part)
    want_entropy = float(getattr(ocfg, "ent_coef", 0.0)) > 0
    logps, values, entropy = forward(model, core, b, temperature, entropy=want_entropy)
    assert exp.advantages is not None
    # one update of a policy that has not moved since it sampled: its log-probs are the old ones (ratio 1)
    old = exp.old_logps[part] if exp.old_logps is not None else logps.detach()
    batch = RolloutBatch(
        logprobs=logps,
        old_logprobs=old,
        advantages=exp.advantages[part],
        mask=b.completion_mask,
        values=values,
        old_values=exp.old_values[part] if exp.old_values is not None else None,
        returns=exp.returns[part] if exp.returns is not None else None,
        entropy=entropy,
        ref_logprobs=exp.ref_logps[part] if s.kl == "loss" else None,
        kl_coef=kl_coef if s.kl == "loss" else 0.0,
        max_new_tokens=s.rollout.max_new_tokens,
    )
    return objective(batch, ocfg), float(b.attention_mask.sum()), (part, old) if exp.old_logps is None else None
