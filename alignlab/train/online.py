"""The online trainer: one iteration shared by PPO, RLOO, GRPO, online and iterative DPO.

One iteration reads top to bottom like the papers (and cleanrl's ``ppo.py``):

1. rollouts: a batch of prompts, k completions each, sampled by the current policy (rollout core);
2. the reward r(x, y) of each completion: a reward model (PPO, RLOO, ...) or the gold judge (-GT);
3. one forward of the policy (and its critic, if the estimator has one) for the old log-probs and
   values — skipped with one update per batch and the KL in the loss, where the update's own forward
   gives them (``Settings.old_logps_from_update``); one of the training reference for its log-probs;
4. the signal: an advantage estimator (:mod:`alignlab.core.advantages`: GAE with the critic,
   leave-one-out, group-normalised, REINFORCE with a moving baseline), the KL to π_ref a per-token
   penalty in the reward (PPO, RLOO) or a k3 term of the loss (GRPO); or, for online and iterative
   DPO, each prompt's samples ranked by the reward into preference pairs (:mod:`alignlab.train.online_batches`);
5. ``epochs`` × ``minibatches`` optimiser steps of the method's own objective;
6. the adaptive KL controller moves β towards the target KL (when one is set); the training
   reference moves to the policy (``rollout.reference: last_iteration``);
7. log: reward, KL, the objective's metrics, β, seconds spent generating, scoring and updating.

Which estimator, where the KL goes and the rollout defaults (k, epochs, minibatches) come from the
objective's declared :class:`~alignlab.objectives.base.Online` needs; the run's ``rollout`` section
overrides any of them. The evaluation (reward and KL of samples on held-out prompts) is every
method's: always to the original π_ref.

Compute (policy forward-equivalent tokens, :mod:`alignlab.train.loop`), S the real tokens of prompt +
completion of an iteration's rollouts and ρ a network's parameters over the policy's: generation S;
the reward model ρ_rm S (0 for the gold judge); old log-probs (and values) (1 + ρ_critic) S (0 when
the update gives them); the reference ρ_ref S; each update 3 (1 + ρ_critic) per token of the rows it trains on.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from alignlab import interrupts
from alignlab.adapters import AdaptersOff, FollowingAdapters
from alignlab.core.advantages import AdvantageInputs, get_estimator
from alignlab.core.kl import per_token_kl
from alignlab.core.rollout import rollout
from alignlab.core.scoring import token_logps
from alignlab.core.stats import masked_mean, masked_var
from alignlab.errors import ConfigError
from alignlab.objectives import Objective, ObjectiveConfig, ObjectiveError
from alignlab.train.config import (
    TrainConfig,
    build_optimizer,
    build_scheduler,
    disable_dropout,
    enable_gradient_checkpointing,
)
from alignlab.train.data import BatchOrder, shard
from alignlab.train.loop import RunLoop, mean_over_processes
from alignlab.train.online_batches import (
    Costs,
    Experience,
    PolicyAndValue,
    RolloutConfig,
    Settings,
    check_online_batch,
    forward,
    minibatch_loss,
    policy_stats,
    rank_pairs,
    units,
)

RewardFn = Callable[[Sequence[str], Sequence[str]], Tensor]

__all__ = ["PolicyAndValue", "RolloutConfig", "check_online_batch", "collect", "train_online"]


class KLController:
    """β of the KL term: fixed, or adaptive towards a target KL (Ziegler et al. 2019, §2.2).

    e_t = clip(KL_t / KL_target − 1, −0.2, 0.2);  β_{t+1} = β_t (1 + K_β e_t), K_β = n_t / horizon.
    """

    def __init__(self, value: float, target: float | None, horizon: float) -> None:
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, n_episodes: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_episodes / self.horizon


@torch.no_grad()
def collect(
    model: nn.Module,
    core: PolicyAndValue,
    reference: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    reward: RewardFn,
    kl_coef: float,
    s: Settings,
    seed: int,
    costs: Costs,
    estimator_state: dict[str, Any],
) -> Experience:
    """Steps 1–4 of an iteration on this process's prompts (each sampled ``s.samples_per_prompt`` times)."""
    device = next(core.parameters()).device
    rc = s.rollout
    t0 = time.time()
    # 1. rollouts through the rollout core (the policy generates; nothing is scored yet)
    r = rollout(
        core.policy,
        tokenizer,
        prompts,
        samples_per_prompt=s.samples_per_prompt,
        max_new_tokens=rc.max_new_tokens,
        temperature=rc.temperature,
        top_p=rc.top_p,
        seed=seed,
        batch_size=rc.generation_batch_size,
        draw=rc.draw,
    )
    t1 = time.time()
    # 2. the reward of each whole completion
    scores = reward(r.prompts, r.completions).to(device).float()
    # 3. old log-probs (and values: one forward of policy + critic), unless the update's own forward gives
    #    them (one update per batch, the KL in the loss: Settings.old_logps_from_update); reference log-probs
    seqs = r.sequences.to(device)
    mask = seqs.completion_mask.float()
    core.eval()
    old_logps, old_values = None, None
    if not s.old_logps_from_update:
        old_logps, old_values, _ = forward(model, core, seqs, rc.temperature)
    ref_logps = token_logps(
        reference, seqs.input_ids, seqs.attention_mask, seqs.completion_mask, temperature=rc.temperature
    )
    core.train()
    t2 = time.time()
    S = float(seqs.attention_mask.sum())
    tokens = S * (1 + costs.reward + (0 if old_logps is None else 1 + costs.critic) + costs.reference)
    # 4. the training signal (the per-token KL only enters it in the reward; without old log-probs it is in the loss)
    kl = torch.zeros_like(ref_logps) if old_logps is None else per_token_kl(old_logps, ref_logps, mask, rc.kl_estimator)
    in_reward = kl_coef if s.kl == "reward" else 0.0
    stats = {
        "reward": float(scores.mean()),
        **({} if old_logps is None else policy_stats(old_logps, ref_logps, mask)),  # else logged by the update
        "length": float(mask.sum(-1).mean()),
        "gen_s": t1 - t0,
        "score_s": t2 - t1,
    }
    exp = Experience(seqs, old_logps, ref_logps, scores, stats, tokens)
    if s.advantage == "pairs":
        exp.pairs, ties = rank_pairs(scores, seqs.completion_mask, s.samples_per_prompt, s.pairs)
        stats.update(pairs=float(len(exp.pairs)), ties=float(ties))
        return exp
    inputs = AdvantageInputs(scores, kl, mask, in_reward, s.samples_per_prompt, old_values)
    out = get_estimator(s.advantage).fn(inputs, s.advantage_config, estimator_state)
    exp.advantages, exp.returns, exp.old_values = out.advantages, out.returns, old_values
    exp.estimator_state = out.state
    stats["kl_penalty"] = float((in_reward * kl).sum(-1).mean())
    if old_values is not None and out.returns is not None:
        stats["explained_variance"] = float(
            1 - masked_var(out.returns - old_values, mask) / masked_var(out.returns, mask)
        )
        stats["value_mean"] = float(masked_mean(old_values, mask))
    return exp


def update(
    model: nn.Module,
    core: PolicyAndValue,
    exp: Experience,
    objective: Objective,
    ocfg: ObjectiveConfig,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    s: Settings,
    kl_coef: float,
    cfg: TrainConfig,
    loop: RunLoop,
    step: int,
    seed: int,
    costs: Costs,
) -> tuple[dict[str, float], float]:
    """Step 5: ``epochs`` × ``minibatches`` optimiser steps of the objective over the iteration's units
    (rollouts, or ranked pairs). Returns the mean of each metric and the forward-equivalent tokens trained."""
    n = units(exp)
    totals: dict[str, float] = {}
    count, tokens = 0, 0.0
    gen = torch.Generator().manual_seed(seed)
    fresh = torch.zeros_like(exp.ref_logps) if exp.old_logps is None else None  # the rows' log-probs, as trained
    trained_rows = torch.zeros(len(exp.sequences), dtype=torch.bool, device=exp.ref_logps.device)
    for _ in range(s.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for m in range(s.minibatches):
            rows = order[m * n // s.minibatches : (m + 1) * n // s.minibatches]
            micro = [part for i in range(cfg.grad_accum) if (part := shard(rows, i, cfg.grad_accum))]
            minibatch = torch.zeros((), device=exp.ref_logps.device)
            for i, part in enumerate(micro):
                sync = accelerator.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
                with sync, accelerator.autocast():
                    try:
                        out, trained, scored = minibatch_loss(model, core, exp, part, objective, ocfg, s, kl_coef)
                    except ObjectiveError as err:  # a plugin's loss: say at which iteration
                        raise err.at(f"iteration {step + 1}") from err.__cause__
                    if fresh is not None and scored is not None:
                        fresh[scored[0]] = scored[1]
                        trained_rows[scored[0]] = True
                    tokens += 3 * (1 + costs.critic) * trained
                    loss = out.losses.mean()
                    accelerator.backward(loss / len(micro))
                minibatch = minibatch + loss.detach() / len(micro)
                for key, value in {"loss": loss.detach(), **out.metrics}.items():
                    totals[key] = totals.get(key, 0.0) + float(value.detach().float().mean())
                count += 1
            if not micro:
                continue
            loop.guard(step, f"{objective.name} loss", minibatch)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            loop.guard(step, "gradient norm", torch.as_tensor(grad_norm).detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    metrics = {k: v / max(count, 1) for k, v in totals.items()}
    if fresh is not None and not trained_rows.any():  # every pair tied: score the rollouts as collect would have
        core.eval()
        with torch.no_grad():
            fresh = forward(model, core, exp.sequences, s.rollout.temperature)[0]
        core.train()
        trained_rows[:] = True
    if fresh is not None:  # the KL and entropy of the rollouts the one update scored
        mask = exp.sequences.completion_mask[trained_rows].float()
        metrics.update(policy_stats(fresh[trained_rows], exp.ref_logps[trained_rows], mask))
    return metrics, tokens


def train_online(
    core: PolicyAndValue,
    reference: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    reward: RewardFn,
    objective: Objective,
    ocfg: ObjectiveConfig,
    s: Settings,
    cfg: TrainConfig,
    out_dir: Path,
    accelerator: Any,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    name: str = "online",
) -> list[dict[str, Any]]:
    """``cfg.steps`` iterations of ``cfg.batch_size`` rollouts each; resumes from ``out_dir``.

    Returns the metric rows (also in ``out_dir/metrics.jsonl``). ``evaluate(unwrapped_policy)`` runs
    after the iterations of :func:`~alignlab.train.config.eval_steps` (0 and the last among them).
    ``reference`` is the frozen π_ref; with ``rollout.reference: last_iteration`` the trainer scores
    against a copy of it that follows the policy.
    """
    check_online_batch(cfg, s, accelerator.num_processes)
    prompts_per_iteration = cfg.batch_size // s.samples_per_prompt
    if len(prompts) < prompts_per_iteration:
        raise ConfigError(
            "train.batch_size",
            f"{cfg.batch_size} rollouts per iteration ({prompts_per_iteration} prompts × {s.samples_per_prompt} "
            f"samples) need more train prompts than the task's {len(prompts)}",
        )
    order = BatchOrder(len(prompts), prompts_per_iteration, cfg.seed)
    if cfg.disable_dropout:
        disable_dropout(core)
        disable_dropout(reference)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(core.policy, core.critic)
    reference.requires_grad_(False).eval().to(accelerator.device)
    optimizer = build_optimizer(core.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    loop = RunLoop(
        out_dir, core.policy, optimizer, scheduler, accelerator, cfg, tokenizer=tokenizer, aside=core.aside()
    )
    controller = KLController(loop.state.get("kl_coef", s.rollout.kl_coef), s.rollout.target_kl, s.rollout.kl_horizon)
    estimator_state: dict[str, Any] = dict(loop.state.get("estimator", {}))
    model, optimizer = loop.prepare(core, optimizer)  # and restored from the checkpoint, if any
    core = accelerator.unwrap_model(model)
    # the reference the iterations score against: π_ref, or a copy that becomes the policy after each
    # iteration (so, resumed after iteration t, the policy itself)
    train_ref = reference
    if s.rollout.reference == "last_iteration" and isinstance(reference, AdaptersOff):
        # a LoRA policy: a snapshot of its adapters, not a copy of the network (B starts at zero: π_ref)
        train_ref = FollowingAdapters(core.policy)
    elif s.rollout.reference == "last_iteration":
        # a copy of π_ref as loaded (its dtype: train.frozen_dtype), given the policy's weights when resumed
        train_ref = copy.deepcopy(reference).requires_grad_(False).eval()
        if loop.resumed:
            train_ref.load_state_dict(core.policy.state_dict())
    run_eval = None if evaluate is None else (lambda: evaluate(core.policy))
    costs = Costs.of(core, reference, reward)

    def state() -> dict[str, Any]:
        return {"kl_coef": controller.value, "estimator": estimator_state}

    rank, world = accelerator.process_index, accelerator.num_processes
    # SIGTERM / Ctrl-C: finish the iteration (or iteration 0's evaluation), checkpoint, stop
    with interrupts.at_step_boundaries():
        if not loop.resumed:
            loop.periodic(0, run_eval, state())
        bar = tqdm(
            total=cfg.steps,
            initial=loop.start_step,
            desc=name,
            disable=not (cfg.progress and accelerator.is_main_process),
        )
        for it in range(loop.start_step, cfg.steps):
            mine = [prompts[i] for i in shard(order.rows(it), rank, world)]
            seed = cfg.seed * 1_000_003 + it * world + rank
            exp = collect(
                model,
                core,
                train_ref,
                tokenizer,
                mine,
                reward,
                controller.value,
                s,
                seed * 1000,
                costs,
                estimator_state,
            )
            t0 = time.time()
            metrics, update_tokens = update(
                model,
                core,
                exp,
                objective,
                ocfg,
                optimizer,
                accelerator,
                s,
                controller.value,
                cfg,
                loop,
                it,
                seed,
                costs,
            )
            scheduler.step()
            if exp.estimator_state is not None:
                estimator_state = exp.estimator_state
            if isinstance(train_ref, FollowingAdapters):  # 6. the reference follows the policy
                train_ref.follow()
            elif train_ref is not reference:
                train_ref.load_state_dict(core.policy.state_dict())
            row = {**exp.stats, **metrics, "update_s": time.time() - t0, "kl_coef": controller.value}
            row = {
                k: float(mean_over_processes(accelerator, torch.tensor(v, device=accelerator.device)))
                for k, v in row.items()
            }
            # every process's rollouts: the sum over processes (in float64: the totals grow large)
            total = torch.tensor(exp.tokens + update_tokens, dtype=torch.float64, device=accelerator.device)
            row["step_tokens"] = float(mean_over_processes(accelerator, total)) * world
            loop.add_compute(row["step_tokens"])
            row.update(loop.compute())
            row["wall_s"] = round(time.time() - loop.t0, 4)  # since this process started the run
            # 6. the adaptive KL controller sees the global mean KL of this iteration's rollouts
            controller.update(row["kl"], cfg.batch_size)
            loop.log.log({"step": it + 1, "split": "train", **order.position(it), **row})
            bar.update()
            bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.2f}", loss=f"{row.get('loss', 0):.3f}")
            loop.periodic(it + 1, run_eval, state())
    bar.close()
    return loop.log.rows
