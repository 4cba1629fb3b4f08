"""Step 3–4 of ``alignlab train``: the trainer the method's needs select (:mod:`alignlab.jobs.trainers`),
and the three built-in ones:

- ``offline``: paired objectives get :class:`~alignlab.train.data.PairData`, reference log-probs cached
  if needed; unpaired ones (KTO) pairs split into desirable/undesirable rows with mismatched twins;
- ``online``: the train prompts, the reward (gold judge or reward model), a frozen reference, and the
  critic when the method's advantage estimator has one (:mod:`alignlab.train.online`);
- ``sampling`` (best-of-N): no training; samples ranked by the objective, evaluated like every other.

Every method is evaluated the same way (:func:`~alignlab.jobs.evaluation.sampling_evaluation`): mean
reward of samples on held-out prompts and their sequence KL to the reference.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from alignlab.adapters import AdaptersOff, is_adapted, trainable_parameters
from alignlab.cache_keys import stage_code, texts_fingerprint, tokenizer_key
from alignlab.jobs.evaluation import eval_prompts, sample_row, sampling_evaluation
from alignlab.jobs.trainers import Method, RunContext, register_trainer, trainer_for
from alignlab.models import model_context
from alignlab.objectives.base import SampledRewards
from alignlab.run_config import RunConfig
from alignlab.tasks import Task
from alignlab.train.config import frozen_dtype
from alignlab.train.data import PairData, UnpairedData, UnpairedExample, unpaired_from_pairs
from alignlab.train.evaluation import best_of_n, bootstrap_ci
from alignlab.train.offline import evaluate_step, objective_step, train_offline
from alignlab.train.online import PolicyAndValue, train_online
from alignlab.train.online_batches import Settings, check_online_batch
from alignlab.train.state import MetricsLog


def load_reference(policy: Any, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """π_ref: the SFT policy as saved, frozen, in ``dtype`` (``train.frozen_dtype``); with LoRA adapters on
    the policy, the policy's own network with its adapters off (:class:`~alignlab.adapters.AdaptersOff`: no
    second copy of the weights, in the policy's dtype)."""
    if is_adapted(policy.model):
        return AdaptersOff(policy.model)
    return AutoModelForCausalLM.from_pretrained(policy.path, dtype=dtype).eval().requires_grad_(False)


def train_method(
    cfg: RunConfig,
    method: Method,
    task: Task,
    policy: Any,
    judge: Any,
    data: dict[str, Any],
    accelerator: Any,
    out: Path,
) -> dict[str, Any]:
    """Train (or, for a sampling method, evaluate) the method with the trainer its needs select; returns
    the last evaluation row, with ``models_held``: the networks it kept in memory (role, parameters,
    trainable)."""
    # every global RNG from the run's seed: fresh heads (critic, value head) start the same in every
    # run, and the RNG states a checkpoint saves are the same in every run of this config
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    trainer = trainer_for(method.objective.needs)
    trains = method.objective.needs.data != "sampling"
    reward = judge if judge is not None else data.get("reward_model")
    needs_sampling_eval = reward is not None and cfg.eval.prompts > 0 and trains
    # one frozen π_ref per run, shared by the sampling evaluation, the online trainer and the reference cache
    wanted = needs_sampling_eval or trainer.needs_reference
    reference = load_reference(policy, frozen_dtype(cfg.train)).to(accelerator.device) if wanted else None
    sampler = (
        sampling_evaluation(cfg, task, policy, reward, reference)
        if reference is not None and needs_sampling_eval
        else None
    )
    held = [_held("policy", policy.model, trainable=trains)]
    if is_adapted(policy.model) and (reference is not None or method.objective.needs.reference):
        # π_ref is the policy's own network with its adapters off: no second model in memory
        held[0]["role"] = "policy + reference (adapters off)"
    elif reference is not None:
        held.append(_held("reference", reference, trainable=False))
    rm = data.get("reward_model")
    if rm is not None and cfg.reward.kind == "model" and method.objective.needs.data in ("online", "sampling"):
        held.append(_held("reward_model", rm.model, trainable=False))
    ctx = RunContext(
        cfg,
        method,
        task,
        policy,
        judge,
        data,
        accelerator,
        out,
        reference,
        sampler,
        held,
    )
    return trainer.run(ctx) | {"models_held": held}


def _held(role: str, model: torch.nn.Module, trainable: bool) -> dict[str, Any]:
    """One entry of the summary's ``models_held``: a network this method keeps in memory while it trains,
    its parameters and how many of them train (a LoRA policy's: its adapters' only)."""
    return {
        "role": role,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": trainable,
        "trainable_parameters": trainable_parameters(model) if trainable else 0,
    }


def _check_offline(cfg: RunConfig, method: Method, num_processes: int, source: str | None) -> None:
    from alignlab.train.config import check_batch

    check_batch(cfg.train, num_processes, source)


_ENCODED: dict[tuple[Any, ...], PairData | UnpairedData] = {}
"""Per-process memo of the tokenised datasets (the last few): consecutive runs of an experiment train
on the same pairs, whose tokenisation costs seconds a run."""


def encoded(tokenizer: Any, rows: Sequence[Any], context: int, unpaired: bool, seed: int) -> PairData | UnpairedData:
    """``rows`` tokenised for the offline trainer — :meth:`PairData.build`, or :meth:`UnpairedData.build`
    (KTO's rows, their mismatched twins drawn from ``seed``) — once per process for the same rows,
    tokenizer and context.

    Each call returns its own dataset (no reference log-probs attached) over the memo's tensors,
    which training only reads.
    """
    key: tuple[Any, ...] = (unpaired, tokenizer_key(tokenizer), texts_fingerprint([repr(r) for r in rows]), context)
    key += (seed,) if unpaired else ()
    if key not in _ENCODED:
        while len(_ENCODED) >= 4:  # the train and held-out rows of a paired and an unpaired method
            _ENCODED.pop(next(iter(_ENCODED)))
        if unpaired:
            _ENCODED[key] = UnpairedData.build(tokenizer, rows, context, seed)
        else:
            _ENCODED[key] = PairData.build(tokenizer, rows, context)
    return dataclasses.replace(_ENCODED[key], ref=None)


@register_trainer("offline", data=("paired", "unpaired"), check=_check_offline)
def offline_trainer(ctx: RunContext) -> dict[str, Any]:
    """Paired or unpaired objectives on a fixed dataset of pairs (:func:`~alignlab.train.offline.train_offline`)."""
    cfg, policy, accelerator = ctx.cfg, ctx.policy, ctx.accelerator
    objective, needs = ctx.method.objective, ctx.method.objective.needs
    context = cfg.train.max_length or model_context(policy.model)
    reference = ctx.reference
    split: dict[str, PairData | UnpairedData] = {}
    for name in ("train", "eval"):
        if needs.data == "unpaired":  # KTO: unpaired rows of a file, or pairs split in two
            rows = ctx.data[name] if ctx.data[name] and isinstance(ctx.data[name][0], UnpairedExample) else None
            rows = rows or unpaired_from_pairs(ctx.data[name])
            split[name] = encoded(policy.tokenizer, rows, context, unpaired=True, seed=cfg.train.seed)
        else:
            split[name] = encoded(policy.tokenizer, ctx.data[name], context, unpaired=False, seed=cfg.train.seed)
        if needs.reference:
            key = [str(policy.path), context, stage_code("reference")]
            if frozen_dtype(cfg.train) != torch.float32:  # π_ref's log-probs in another precision: other numbers
                key.append(str(frozen_dtype(cfg.train)))
            with accelerator.main_process_first():
                split[name].attach_reference(
                    key,
                    lambda: (
                        reference
                        if reference is not None
                        else load_reference(policy, frozen_dtype(cfg.train)).to(accelerator.device)
                    ),
                    cfg.train.eval_batch_size,
                )
    held_out, train_step = split["eval"], objective_step(objective, ctx.method.cfg, split["train"], accelerator)
    held_out_step = train_step.on(held_out)  # reads the running state of a stateful objective, never moves it
    sampler = ctx.sampler

    def evaluate(model: Any) -> dict[str, float]:
        metrics = {
            f"eval_{k}": v
            for k, v in evaluate_step(held_out_step, model, len(held_out), cfg.train.eval_batch_size).items()
        }
        return metrics | (sampler(model) if sampler is not None else {})

    rows = train_offline(
        policy.model,
        train_step,
        len(split["train"]),
        cfg.train,
        ctx.out,
        accelerator,
        evaluate=evaluate,
        name=ctx.method.name,
        tokenizer=policy.tokenizer,
    )
    return [r for r in rows if r["split"] == "eval"][-1]


def online_settings(cfg: RunConfig, method: Method, source: str | None = None) -> Settings:
    """The run's ``rollout`` section with its ``auto``/``null`` settings taken from the method's needs."""
    online = method.objective.needs.online
    assert online is not None
    return Settings.resolve(cfg.rollout, online, source)


def _check_online(cfg: RunConfig, method: Method, num_processes: int, source: str | None) -> None:
    check_online_batch(cfg.train, online_settings(cfg, method, source), num_processes, source)


@register_trainer("online", data=("online",), check=_check_online, needs_reference=True)
def online_trainer(ctx: RunContext) -> dict[str, Any]:
    """Rollouts from the current policy, every iteration (:func:`~alignlab.train.online.train_online`)."""
    cfg, policy = ctx.cfg, ctx.policy
    reward = ctx.ranking_reward
    assert reward is not None and ctx.reference is not None
    s = online_settings(cfg, ctx.method)
    core = PolicyAndValue(policy.model, *_critic(cfg, s, ctx.data.get("reward_model"), policy), cfg.rollout.temperature)
    if core.has_critic:
        value = core.critic if core.critic is not None else core.value_head
        assert value is not None
        ctx.held.append(_held("critic" if core.critic is not None else "value_head", value, trainable=True))
    if s.rollout.reference == "last_iteration" and is_adapted(policy.model):  # a snapshot of the adapters
        adapters = sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" in n)
        role = "reference (last iteration: adapters)"
        ctx.held.append({"role": role, "parameters": adapters, "trainable": False, "trainable_parameters": 0})
    elif s.rollout.reference == "last_iteration":  # a copy of the policy that follows it
        ctx.held.append(_held("reference (last iteration)", policy.model, trainable=False))
    prompts = eval_prompts(
        ctx.task, policy.tokenizer, model_context(policy.model), cfg.rollout.max_new_tokens, 0, split="train"
    )
    rows = train_online(
        core,
        ctx.reference,
        policy.tokenizer,
        prompts,
        reward,
        ctx.method.objective,
        ctx.method.cfg,
        s,
        cfg.train,
        ctx.out,
        ctx.accelerator,
        evaluate=ctx.sampler,
        name=ctx.method.name,
    )
    evals = [r for r in rows if r["split"] == "eval"]
    return evals[-1] if evals else rows[-1]


def _critic(cfg: RunConfig, s: Settings, rm: Any, policy: Any) -> tuple[torch.nn.Module | None, bool]:
    """(critic model, value head on the policy?) for an estimator that has a critic; (None, False) otherwise."""
    if not s.needs_critic:
        return None, False
    kind = cfg.rollout.critic
    if kind == "auto":
        kind = "reward_model" if cfg.reward.kind == "model" else "sft"
    if kind == "reward_model" and rm is None:
        from alignlab.errors import ConfigError

        raise ConfigError("rollout.critic", "a critic from the reward model needs reward.kind: model")
    if kind == "value_head":
        return None, True
    if kind == "sft":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(policy.path, num_labels=1), False
    import copy

    if (
        rm.model.dtype != torch.float32
    ):  # a reward model held in bf16 (train.frozen_dtype): the critic trains in float32
        from transformers import AutoModelForSequenceClassification

        critic = AutoModelForSequenceClassification.from_pretrained(rm.model.name_or_path, dtype=torch.float32)
        return critic.train().requires_grad_(True), False
    return copy.deepcopy(rm.model).train().requires_grad_(True), False


@register_trainer("sampling", data=("sampling",))
def sampling_trainer(ctx: RunContext) -> dict[str, Any]:
    """Best-of-N on the held-out prompts: ranked by the objective over the configured reward, judged by the gold one."""
    cfg, policy, method = ctx.cfg, ctx.policy, ctx.method
    prompts = eval_prompts(
        ctx.task,
        policy.tokenizer,
        model_context(policy.model),
        cfg.eval.max_new_tokens,
        cfg.eval.prompts,
        split=cfg.eval.split,
    )
    n = int(method.cfg.n)  # type: ignore[attr-defined]
    # nothing is trained, so the run's seed is the seed of its samples: the runs of an experiment's seeds
    # draw different N-tuples (a trained method's evaluation keeps eval.seed: the same prompts' noise
    # at every checkpoint, the policies differing by their training seed)
    seed = cfg.eval.seed + 1_000_003 * cfg.train.seed
    m = best_of_n(
        policy.model,
        policy.tokenizer,
        prompts,
        ctx.ranking_reward,
        n,
        rank=lambda rewards: method.objective(SampledRewards(rewards), method.cfg).losses.view(rewards.shape),
        max_new_tokens=cfg.eval.max_new_tokens,
        temperature=cfg.eval.temperature,
        seed=seed,
        batch_size=cfg.train.eval_batch_size,
        judge=ctx.judge,
    )
    low, high = bootstrap_ci(m["rewards"], seed=cfg.eval.seed)
    m |= {"reward_ci": (low, high), "kl_ci": (m["kl"], m["kl"])}  # the KL is analytic: no interval
    row = {"step": 0, "split": "eval", **sample_row(m, len(prompts)), "n": n}
    log = MetricsLog(ctx.out, ctx.accelerator, None)
    log.log(row)
    log.flush()
    return row
