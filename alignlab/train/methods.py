"""Step 3–4 of ``alignlab train``: the trainer the method's needs select (:mod:`alignlab.train.trainers`),
and the three built-in ones:

- ``offline``: paired objectives get :class:`~alignlab.train.data.PairData`, reference log-probs cached
  if needed; unpaired ones (KTO) pairs split into desirable/undesirable rows with mismatched twins;
- ``online``: the train prompts, the reward (gold judge or reward model), a frozen reference, and the
  critic when the method's advantage estimator has one (:mod:`alignlab.train.online`);
- ``sampling`` (best-of-N): no training; samples ranked by the objective, evaluated like every other.

Every method is evaluated the same way (:func:`~alignlab.train.evaluation.sample_metrics`): mean
reward of samples on held-out prompts and their sequence KL to the reference.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from alignlab.adapters import AdaptersOff, is_adapted, trainable_parameters
from alignlab.cache_keys import code_version, tokenizer_key, weights_key
from alignlab.core import scoring
from alignlab.encoding import encode_text
from alignlab.models import model_context
from alignlab.objectives.base import SampledRewards
from alignlab.tasks import Task
from alignlab.train import data as data_module
from alignlab.train.config import frozen_dtype
from alignlab.train.data import PairData, UnpairedData, UnpairedExample, unpaired_from_pairs
from alignlab.train.evaluation import best_of_n, bootstrap_ci, sample_metrics, win_rates
from alignlab.train.offline import evaluate_step, objective_step, train_offline
from alignlab.train.online import PolicyAndValue, train_online
from alignlab.train.online_batches import Settings, check_online_batch
from alignlab.train.state import MetricsLog
from alignlab.train.trainers import Method, RunContext, register_trainer, trainer_for

if TYPE_CHECKING:  # the run config gathers every section; imported for types only
    from alignlab.run_config import RunConfig

# Per-process memos: consecutive runs of an experiment share the task, the tokenizer's prompts and
# the evaluation of π_ref itself (every run's step 0). Each entry keeps the objects its key names
# by id, and is used only if they are still the same objects.
_PROMPTS: dict[tuple[Any, ...], tuple[Task, list[str]]] = {}
_EVALUATIONS: dict[tuple[Any, ...], tuple[Any, dict[str, float]]] = {}


def eval_prompts(
    task: Task, tokenizer: Any, context: int, max_new_tokens: int, n: int, split: str = "test"
) -> list[str]:
    """The first ``n`` prompts of ``split`` that leave room for ``max_new_tokens`` in the context
    (computed once per process for a task, tokenizer and split).

    ``split``: ``train``; ``test`` or ``validation``, the two disjoint parts of the held-out prompts
    (:meth:`~alignlab.tasks.base.Task.held_out_prompts`): the frontier is evaluated on the test part,
    tuning candidates on the validation part; or ``eval``, every held-out prompt.
    """
    key = (id(task), split, tokenizer_key(tokenizer), context, max_new_tokens, n)
    if key in _PROMPTS and _PROMPTS[key][0] is task:
        return list(_PROMPTS[key][1])
    bos = 1 if tokenizer.bos_token_id is not None else 0
    if split in ("test", "validation"):
        prompts = task.held_out_prompts(split, tokenizer)  # type: ignore[arg-type]
    else:
        prompts = task.prompts(split, tokenizer)  # type: ignore[arg-type]
    lengths = encode_text(tokenizer, prompts)
    fitting = [p for p, ids in zip(prompts, lengths, strict=True) if len(ids) + bos + max_new_tokens <= context]
    if not fitting:
        from alignlab.data import DataError

        shortest = min((len(ids) for ids in lengths), default=0) + bos
        raise DataError(
            f"task {task.name!r} ({task.source}): no {split} prompt leaves room for {max_new_tokens} new tokens in "
            f"the model's context of {context} (the shortest prompt is {shortest} tokens): sample fewer tokens"
        )
    _PROMPTS[key] = (task, fitting[:n] if n else fitting)
    return list(_PROMPTS[key][1])


def _sampler(
    cfg: RunConfig, task: Task, policy: Any, reward: Any, reference: torch.nn.Module
) -> Callable[[Any], dict[str, float]]:
    """The sampling evaluation: mean reward and KL of samples on held-out prompts.

    It never touches the global RNG that training uses (it samples under a forked RNG), and the
    evaluation of weights already evaluated in this process with the same prompts, reference,
    reward and settings — π_ref at every run's step 0 — is reused rather than sampled again.
    """
    context = model_context(policy.model)
    prompts = eval_prompts(
        task, policy.tokenizer, context, cfg.eval.max_new_tokens, cfg.eval.prompts, split=cfg.eval.split
    )
    settings = (weights_key(reference), tuple(prompts), cfg.eval.to_dict(), cfg.train.eval_batch_size, id(reward))

    def evaluate(model: Any) -> dict[str, float]:
        key = (weights_key(model), *map(repr, settings))
        if key in _EVALUATIONS and _EVALUATIONS[key][0] is reward:
            return dict(_EVALUATIONS[key][1])
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            m = sample_metrics(
                model,
                reference,
                policy.tokenizer,
                prompts,
                reward,
                max_new_tokens=cfg.eval.max_new_tokens,
                temperature=cfg.eval.temperature,
                samples_per_prompt=cfg.eval.samples_per_prompt,
                seed=cfg.eval.seed,
                batch_size=cfg.train.eval_batch_size,
            )
        row = _sample_row(m, len(prompts) * cfg.eval.samples_per_prompt) | {"sample_length": m["length"]}
        _EVALUATIONS[key] = (reward, row)
        return dict(row)

    return evaluate


def _sample_row(m: dict[str, Any], n: int) -> dict[str, Any]:
    """The metric-row fields of a sampling evaluation: means with their 95% bootstrap intervals."""
    return {
        "sample_reward": m["reward"],
        "sample_reward_ci_low": m["reward_ci"][0],
        "sample_reward_ci_high": m["reward_ci"][1],
        "sample_kl": m["kl"],
        "sample_kl_ci_low": m["kl_ci"][0],
        "sample_kl_ci_high": m["kl_ci"][1],
        "samples": n,
    }


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
    sampler = _sampler(cfg, task, policy, reward, reference) if reference is not None and needs_sampling_eval else None
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
            split[name] = UnpairedData.build(policy.tokenizer, rows, context, cfg.train.seed)
        else:
            split[name] = PairData.build(policy.tokenizer, ctx.data[name], context)
        if needs.reference:
            key = [str(policy.path), context, code_version(scoring, data_module)]
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
    row = {"step": 0, "split": "eval", **_sample_row(m, len(prompts)), "n": n}
    log = MetricsLog(ctx.out, ctx.accelerator, None)
    log.log(row)
    log.flush()
    return row


def win_rate_rows(
    cfg: RunConfig, task: Task, policy: Any, judge: Any, data: dict[str, Any], out: Path, accelerator: Any
) -> list[dict[str, Any]]:
    """The trained policy's win rate against the task's held-out references, per temperature.

    Written to ``out/winrate.json`` (a finished run reads it back rather than sampling again).
    """
    import json

    from alignlab.io import atomic_write_json
    from alignlab.rewards.judges import RewardJudge, llm_judge

    path = out / "winrate.json"
    if path.exists():
        try:
            done = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            done = None
        if isinstance(done, list):
            return done
        path.replace(path.with_name(f"damaged-{path.name}"))  # kept, never deleted: judged again below
        print(f"alignlab: warning: {path} is damaged; moved to damaged-{path.name}, judging again", file=sys.stderr)
    w = cfg.eval.winrate
    max_new_tokens = w.max_new_tokens or cfg.eval.max_new_tokens
    context = model_context(policy.model)
    fitting = set(eval_prompts(task, policy.tokenizer, context, max_new_tokens, 0))
    references = [(p, c) for p, c in task.references("eval") if p in fitting]
    references = references[: w.prompts or len(references)]
    if not references:
        from alignlab.errors import AlignlabError

        raise AlignlabError(f"task {task.name!r} has no held-out prompt with a reference that fits the context")
    if w.judge == "llm":
        assert w.judge_model is not None  # resolve_dict refuses the llm judge without a judge_model
        judge_fn: Any = llm_judge(w.judge_model, task.name, cfg.eval.seed)
    else:
        judge_fn = RewardJudge(judge if w.judge == "gold" else data["reward_model"])
    rows = win_rates(
        policy.model,
        policy.tokenizer,
        references,
        judge_fn,
        w.temperatures,
        max_new_tokens=max_new_tokens,
        seed=cfg.eval.seed,
        batch_size=cfg.train.eval_batch_size,
    )
    rows = [r | {"judge": judge_fn.name} for r in rows]
    if accelerator.is_main_process:
        atomic_write_json(path, rows)
    return rows
