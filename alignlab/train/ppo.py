"""The online trainer: PPO-RLHF (Ziegler et al. 2019; Stiennon et al. 2020), on the shared cores.

One iteration reads top to bottom like the papers (and cleanrl's ``ppo.py``):

1. rollouts: a batch of prompts, one completion each, sampled by the policy (rollout core);
2. the reward of each completion: a reward model r_φ (PPO) or the gold reward (PPO-GT);
3. one forward of policy + critic for the old log-probs and values; one of π_ref;
4. per-token rewards: −β·KL_t on every completion token, plus r(x, y) on its last token;
5. GAE (γ, λ) and advantage whitening;
6. ``ppo_epochs`` epochs of ``num_minibatches`` minibatch updates of the ``ppo`` objective
   (clipped ratio, clipped value loss, optional entropy bonus);
7. the adaptive KL controller moves β towards the target KL (when one is set);
8. log: mean reward, KL, entropy, clip fraction, approximate KL, value loss, explained variance,
   β, and the seconds spent generating, scoring and updating.

Compute (policy forward-equivalent tokens, :mod:`alignlab.train.loop`) of one iteration, with S the
real tokens of prompt + completion of its rollouts and ρ a network's parameters over the policy's
(:class:`Costs`): generation S; the reward model ρ_rm S (0 for the gold judge); old log-probs and
values (1 + ρ_critic) S; π_ref ρ_ref S; the updates 3 (1 + ρ_critic) S per epoch, ``ppo_epochs``
times. With ρ = 1 everywhere and 4 epochs that is 29 S, against DPO's 3 S per step (S: its pairs'
tokens, chosen and rejected). Logged per iteration as ``step_tokens``, cumulative as ``compute_tokens``.

The critic is a separate value model initialised from the reward model or the SFT model (its
backbone plus a scalar head), or a value head on the policy itself: ``critic`` in
:class:`RolloutConfig`. The reference and the reward model stay frozen and are not checkpointed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from alignlab import interrupts
from alignlab.core.kl import per_token_kl
from alignlab.core.rollout import rollout
from alignlab.core.scoring import EncodedBatch, token_logps
from alignlab.core.stats import gae, masked_mean, masked_var, masked_whiten
from alignlab.errors import ConfigError
from alignlab.objectives import get_objective
from alignlab.objectives.base import PPOBatch
from alignlab.objectives.ppo import PPOConfig
from alignlab.schema import Config, knob
from alignlab.train.config import TrainConfig, build_optimizer, build_scheduler, disable_dropout
from alignlab.train.data import BatchOrder, shard
from alignlab.train.loop import RunLoop, mean_over_processes

RewardFn = Callable[[Sequence[str], Sequence[str]], Tensor]


@dataclass(frozen=True)
class RolloutConfig(Config):
    max_new_tokens: int = knob(48, "Completion length limit of the rollouts, in tokens.", gt=0)
    temperature: float = knob(1.0, "Sampling temperature of the rollouts (log-probs use the same).", ge=0.01)
    top_p: float = knob(1.0, "Nucleus sampling threshold of the rollouts (1.0: off).", gt=0, le=1)
    critic: Literal["auto", "reward_model", "sft", "value_head"] = knob(
        "auto",
        "The critic: a value model initialised from the reward model (Stiennon et al. 2020) or from the SFT "
        "model, or a value head on the policy; auto: reward_model when PPO uses one, else sft.",
    )
    generation_batch_size: int = knob(64, "Rollouts generated per forward batch.", gt=0)


class KLController:
    """β of the KL penalty: fixed, or adaptive towards a target KL (Ziegler et al. 2019, §2.2).

    e_t = clip(KL_t / KL_target − 1, −0.2, 0.2);  β_{t+1} = β_t (1 + K_β e_t), K_β = n_t / horizon.
    """

    def __init__(self, value: float, target: float | None, horizon: float) -> None:
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, n_episodes: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_episodes / self.horizon


class PolicyAndValue(nn.Module):
    """The policy and its critic behind one forward (so DDP synchronises both).

    ``forward`` returns the policy's output, whose ``.logits`` the scoring core reads, and leaves
    ``values`` (B, T) — V of the state before token t, at position t — on the module, and
    ``entropy`` (B, T) of the policy's next-token distribution when ``want_entropy`` is set.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None, temperature: float = 1.0) -> None:
        super().__init__()
        self.policy, self.critic, self.temperature = policy, critic, temperature
        self.value_head: nn.Module | None = None
        if critic is None:
            hidden_size: int = policy.config.hidden_size  # type: ignore[union-attr,assignment]
            self.value_head = nn.Linear(hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self.values: Tensor | None = None
        self.entropy: Tensor | None = None
        self.want_entropy = False

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, **_: Any) -> Any:
        shared = self.value_head is not None
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=shared,
        )
        if self.value_head is not None:
            raw = self.value_head(out.hidden_states[-1]).squeeze(-1)
        else:
            assert self.critic is not None
            hidden = self.critic.base_model(  # type: ignore[operator]
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
            raw = self.critic.score(hidden).squeeze(-1)  # type: ignore[operator]
        # the hidden state at t − 1 has seen x and y_<t: it is the state in which token t is chosen
        self.values = F.pad(raw[:, :-1].float(), (1, 0))
        if self.want_entropy:
            logp = torch.log_softmax(out.logits.float() / self.temperature, dim=-1)
            self.entropy = F.pad(-(logp.exp() * logp).sum(-1)[:, :-1], (1, 0))
        return out


def parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Costs:
    """Each network's forward cost per token relative to the policy's: the ratio of parameter counts."""

    reference: float
    critic: float  # the value model, or the value head on the policy
    reward: float  # a reward model's; 0 for a reward that is not a network (the gold judge)

    @classmethod
    def of(cls, core: PolicyAndValue, reference: nn.Module, reward: Any) -> Costs:
        n = parameters(core.policy)
        model = getattr(reward, "model", None)  # RewardModel, HFClassifierReward: a network under .model
        return cls(
            parameters(reference) / n,
            parameters(core.critic if core.critic is not None else core.value_head) / n,
            parameters(model) / n if isinstance(model, nn.Module) else 0.0,
        )


def critic_from(path: str | Path) -> nn.Module:
    """A value model: the backbone and scalar head of a sequence classifier at ``path`` (a reward
    model: its trained head; an SFT causal LM: a fresh head)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)


@dataclass
class Experience:
    """One iteration's rollouts and everything PPO needs from them, (B, T) unless noted."""

    sequences: EncodedBatch
    old_logps: Tensor
    old_values: Tensor
    advantages: Tensor
    returns: Tensor
    scores: Tensor  # (B,) the reward r(x, y)
    stats: dict[str, float]
    tokens: float  # policy forward-equivalent tokens of steps 1–3


def _forward(model: nn.Module, core: PolicyAndValue, batch: EncodedBatch, temperature: float) -> tuple[Tensor, Tensor]:
    """(log-probs, values) of ``batch``'s completion tokens under the policy and its critic: one forward."""
    logps = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask, temperature=temperature)
    assert core.values is not None
    return logps, core.values * batch.completion_mask


@torch.no_grad()
def collect(
    model: nn.Module,
    core: PolicyAndValue,
    reference: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    reward: RewardFn,
    kl_coef: float,
    ppo: PPOConfig,
    rc: RolloutConfig,
    seed: int,
    costs: Costs,
) -> Experience:
    """Steps 1–5 of an iteration on this process's prompts."""
    device = next(core.parameters()).device
    t0 = time.time()
    # 1. rollouts through the rollout core (the policy generates; nothing is scored yet)
    r = rollout(
        core.policy,
        tokenizer,
        prompts,
        max_new_tokens=rc.max_new_tokens,
        temperature=rc.temperature,
        top_p=rc.top_p,
        seed=seed,
        batch_size=rc.generation_batch_size,
    )
    t1 = time.time()
    # 2. the reward of each whole completion
    scores = reward(r.prompts, r.completions).to(device).float()
    # 3. old log-probs and values (one forward), reference log-probs
    seqs = r.sequences.to(device)
    mask = seqs.completion_mask.float()
    core.eval()
    old_logps, old_values = _forward(model, core, seqs, rc.temperature)
    ref_logps = token_logps(
        reference, seqs.input_ids, seqs.attention_mask, seqs.completion_mask, temperature=rc.temperature
    )
    core.train()
    t2 = time.time()
    # compute of 1–3: generation S, reward ρ_rm S, policy + critic (1 + ρ_c) S, π_ref ρ_ref S
    S = float(seqs.attention_mask.sum())
    tokens = S * (1 + costs.reward + (1 + costs.critic) + costs.reference)
    # 4. per-token rewards: −β·KL_t everywhere, plus r(x, y) on the last completion token
    kl = per_token_kl(old_logps, ref_logps, mask, ppo.kl_estimator)
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()
    rewards = -kl_coef * kl + scores[:, None] * last
    # 5. GAE and whitening
    advantages, returns = gae(rewards, old_values, mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    stats = {
        "reward": float(scores.mean()),
        "kl": float(((old_logps - ref_logps) * mask).sum(-1).mean()),
        "kl_penalty": float((kl_coef * kl).sum(-1).mean()),
        "entropy": float(-(old_logps * mask).sum() / mask.sum()),
        "length": float(mask.sum(-1).mean()),
        "explained_variance": float(1 - masked_var(returns - old_values, mask) / masked_var(returns, mask)),
        "value_mean": float(masked_mean(old_values, mask)),
        "gen_s": t1 - t0,
        "score_s": t2 - t1,
    }
    return Experience(seqs, old_logps, old_values, advantages, returns, scores, stats, tokens)


def update(
    model: nn.Module,
    core: PolicyAndValue,
    exp: Experience,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    ppo: PPOConfig,
    cfg: TrainConfig,
    rc: RolloutConfig,
    loop: RunLoop,
    step: int,
    seed: int,
    costs: Costs,
) -> tuple[dict[str, float], float]:
    """Step 6: ``ppo_epochs`` × ``num_minibatches`` optimiser steps of the ``ppo`` objective.

    Returns the mean of each loss metric and the policy forward-equivalent tokens of the updates:
    3 (1 + ρ_critic) per token of every micro-batch (forward and backward of policy and critic).
    """
    objective = get_objective("ppo")
    core.want_entropy = ppo.ent_coef > 0
    n = len(exp.sequences)
    per_minibatch = n // ppo.num_minibatches
    totals: dict[str, float] = {}
    count, tokens = 0, 0.0
    gen = torch.Generator().manual_seed(seed)
    for _ in range(ppo.ppo_epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for m in range(ppo.num_minibatches):
            rows = order[m * per_minibatch : (m + 1) * per_minibatch]
            micro = [shard(rows, i, cfg.grad_accum) for i in range(cfg.grad_accum)]
            minibatch_loss = torch.zeros((), device=exp.old_logps.device)
            for i, part in enumerate(micro):
                sync = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    b = exp.sequences.select(part)
                    tokens += 3 * (1 + costs.critic) * float(b.attention_mask.sum())
                    logps, values = _forward(model, core, b, rc.temperature)
                    batch = PPOBatch(
                        logprobs=logps,
                        old_logprobs=exp.old_logps[part],
                        advantages=exp.advantages[part],
                        values=values,
                        old_values=exp.old_values[part],
                        returns=exp.returns[part],
                        mask=b.completion_mask,
                        entropy=core.entropy if core.want_entropy else None,
                    )
                    out = objective(batch, ppo)
                    loss = out.losses.mean()
                    accelerator.backward(loss / len(micro))
                minibatch_loss = minibatch_loss + loss.detach() / len(micro)
                for key, value in {"loss": loss.detach(), **out.metrics}.items():
                    totals[key] = totals.get(key, 0.0) + float(value.float().mean())
                count += 1
            loop.guard(step, "PPO loss", minibatch_loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            loop.guard(step, "gradient norm", torch.as_tensor(grad_norm).detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {k: v / count for k, v in totals.items()}, tokens


def check_ppo_batch(cfg: TrainConfig, ppo: PPOConfig, num_processes: int, source: str | None = None) -> None:
    parts = num_processes * ppo.num_minibatches * cfg.grad_accum
    if cfg.batch_size % parts:
        raise ConfigError(
            "train.batch_size",
            f"{cfg.batch_size} rollouts per iteration do not split into processes × num_minibatches × grad_accum "
            f"= {num_processes} × {ppo.num_minibatches} × {cfg.grad_accum}",
            source,
        )


def train_ppo(
    core: PolicyAndValue,
    reference: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    reward: RewardFn,
    ppo: PPOConfig,
    rc: RolloutConfig,
    cfg: TrainConfig,
    out_dir: Path,
    accelerator: Any,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    name: str = "ppo",
) -> list[dict[str, Any]]:
    """``cfg.steps`` PPO iterations of ``cfg.batch_size`` rollouts each; resumes from ``out_dir``.

    Returns the metric rows (also in ``out_dir/metrics.jsonl``). ``evaluate(unwrapped_policy)``
    runs after the iterations of :func:`~alignlab.train.config.eval_steps` (0 and the last among them).
    """
    check_ppo_batch(cfg, ppo, accelerator.num_processes)
    order = BatchOrder(len(prompts), cfg.batch_size, cfg.seed)
    if cfg.disable_dropout:
        disable_dropout(core)
        disable_dropout(reference)
    reference.requires_grad_(False).eval().to(accelerator.device)
    optimizer = build_optimizer(core.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    # a checkpoint is the policy with its tokenizer; the critic (or value head) beside it, in its own directory
    value: nn.Module | None = core.critic if core.critic is not None else core.value_head
    assert value is not None
    aside = {"critic" if core.critic is not None else "value_head": value}
    loop = RunLoop(out_dir, core.policy, optimizer, scheduler, accelerator, cfg, tokenizer=tokenizer, aside=aside)
    controller = KLController(loop.state.get("kl_coef", ppo.kl_coef), ppo.target_kl, ppo.kl_horizon)
    model, optimizer = accelerator.prepare(core, optimizer)
    core = accelerator.unwrap_model(model)
    run_eval = None if evaluate is None else (lambda: evaluate(core.policy))
    costs = Costs.of(core, reference, reward)
    if not loop.resumed:
        loop.periodic(0, run_eval, {"kl_coef": controller.value})
    bar = tqdm(
        total=cfg.steps, initial=loop.start_step, desc=name, disable=not (cfg.progress and accelerator.is_main_process)
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    with interrupts.at_step_boundaries():  # SIGTERM / Ctrl-C: finish the step, checkpoint, stop
        for it in range(loop.start_step, cfg.steps):
            mine = [prompts[i] for i in shard(order.rows(it), rank, world)]
            seed = cfg.seed * 1_000_003 + it * world + rank
            exp = collect(
                model, core, reference, tokenizer, mine, reward, controller.value, ppo, rc, seed * 1000, costs
            )
            t0 = time.time()
            losses, update_tokens = update(
                model, core, exp, optimizer, accelerator, ppo, cfg, rc, loop, it, seed, costs
            )
            scheduler.step()
            row = {**exp.stats, **losses, "update_s": time.time() - t0, "kl_coef": controller.value}
            row = {
                k: float(mean_over_processes(accelerator, torch.tensor(v, device=accelerator.device)))
                for k, v in row.items()
            }
            # every process's rollouts: the sum over processes (in float64: the totals grow large)
            tokens = torch.tensor(exp.tokens + update_tokens, dtype=torch.float64, device=accelerator.device)
            row["step_tokens"] = float(mean_over_processes(accelerator, tokens)) * world
            loop.add_compute(row["step_tokens"])
            row.update(loop.compute())
            # 7. the adaptive KL controller sees the global mean KL of this iteration's rollouts
            controller.update(row["kl"], cfg.batch_size)
            loop.log.log({"step": it + 1, "split": "train", **order.position(it), **row})
            bar.update()
            bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.2f}", loss=f"{row['loss']:.3f}")
            loop.periodic(it + 1, run_eval, {"kl_coef": controller.value})
    bar.close()
    return loop.log.rows
