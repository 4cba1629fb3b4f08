"""Step 3–4 of ``alignlab train``: build the method's data from its needs, then run its trainer.

- paired objectives: :class:`~alignlab.train.data.PairData`, reference log-probs cached if needed;
- unpaired objectives (KTO): pairs split into desirable/undesirable rows with mismatched twins;
- online (PPO): the train prompts, the reward (gold judge or reward model), a frozen reference,
  and the critic;
- best-of-N: no training; its samples are evaluated like every other method's.

Every method is evaluated the same way (:func:`~alignlab.train.evaluation.sample_metrics`): mean
reward of samples on held-out prompts and their sequence KL to the reference.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from alignlab.core import scoring
from alignlab.encoding import encode_text
from alignlab.models import model_context
from alignlab.objectives.ppo import PPOConfig
from alignlab.sft import code_version
from alignlab.tasks import Task
from alignlab.train import data as data_module
from alignlab.train.data import PairData, UnpairedData, unpaired_from_pairs
from alignlab.train.evaluation import best_of_n, bootstrap_ci, sample_metrics, win_rates
from alignlab.train.offline import evaluate_step, objective_step, train_offline
from alignlab.train.ppo import PolicyAndValue, critic_from, train_ppo
from alignlab.train.state import MetricsLog

# Per-process memos: consecutive runs of an experiment share the task, the tokenizer's prompts and
# the evaluation of π_ref itself (every run's step 0). Each entry keeps the objects its key names
# by id, and is used only if they are still the same objects.
_PROMPTS: dict[tuple[Any, ...], tuple[Task, list[str]]] = {}
_EVALUATIONS: dict[tuple[Any, ...], tuple[Any, dict[str, float]]] = {}


def tokenizer_key(tokenizer: Any) -> str:
    """A fingerprint of what a tokenizer does (its serialised vocabulary, merges and special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{type(tokenizer).__name__}:{id(tokenizer)}"
    return hashlib.sha1(text.encode()).hexdigest()


def weights_key(model: torch.nn.Module) -> str:
    """A fingerprint of a model's weights (milliseconds at CPU scale)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
    cfg: Any, task: Task, policy: Any, reward: Any, reference: torch.nn.Module
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


def load_reference(policy: Any) -> torch.nn.Module:
    """π_ref: the SFT policy as saved, frozen."""
    return AutoModelForCausalLM.from_pretrained(policy.path).eval().requires_grad_(False)


def train_method(
    cfg: Any, method: Any, task: Task, policy: Any, judge: Any, data: dict[str, Any], accelerator: Any, out: Path
) -> dict[str, Any]:
    """Train (or, for best-of-N, evaluate) the method; returns the last evaluation row, with
    ``models_held``: the networks it kept in memory (role, parameters, trainable)."""
    # every global RNG from the run's seed: fresh heads (critic, value head) start the same in every
    # run, and the RNG states a checkpoint saves are the same in every run of this config
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    reward = judge if judge is not None else data.get("reward_model")
    needs_sampling_eval = reward is not None and cfg.eval.prompts > 0 and method.objective is not None
    online = method.objective is not None and method.objective.needs.data == "online"
    # one frozen π_ref per run, shared by the sampling evaluation, PPO and the reference cache
    reference = load_reference(policy).to(accelerator.device) if needs_sampling_eval or online else None
    sampler = _sampler(cfg, task, policy, reward, reference) if reference is not None and needs_sampling_eval else None
    held = [_held("policy", policy.model, trainable=method.objective is not None)]
    if reference is not None:
        held.append(_held("reference", reference, trainable=False))
    rm = data.get("reward_model")
    if rm is not None and cfg.reward.kind == "model" and (online or method.objective is None):
        held.append(_held("reward_model", rm.model, trainable=False))
    if method.objective is None:
        final = _best_of_n(cfg, method, task, policy, judge, data, accelerator, out)
    elif online:
        assert reference is not None
        final = _ppo(cfg, method, task, policy, judge, data, reference, accelerator, out, sampler, held)
    else:
        final = _offline(cfg, method, policy, data, reference, accelerator, out, sampler)
    return final | {"models_held": held}


def _held(role: str, model: torch.nn.Module, trainable: bool) -> dict[str, Any]:
    """One entry of the summary's ``models_held``: a network this method keeps in memory while it trains."""
    return {"role": role, "parameters": sum(p.numel() for p in model.parameters()), "trainable": trainable}


def _offline(
    cfg: Any,
    method: Any,
    policy: Any,
    data: dict[str, Any],
    reference: torch.nn.Module | None,
    accelerator: Any,
    out: Path,
    sampler: Any,
) -> dict[str, Any]:
    objective, needs = method.objective, method.objective.needs
    context = cfg.train.max_length or model_context(policy.model)
    split: dict[str, PairData | UnpairedData] = {}
    for name in ("train", "eval"):
        if needs.data == "unpaired":
            split[name] = UnpairedData.build(policy.tokenizer, unpaired_from_pairs(data[name]), context, cfg.train.seed)
        else:
            split[name] = PairData.build(policy.tokenizer, data[name], context)
        if needs.reference:
            key = [str(policy.path), context, code_version(scoring, data_module)]
            with accelerator.main_process_first():
                split[name].attach_reference(
                    key,
                    lambda: reference if reference is not None else load_reference(policy).to(accelerator.device),
                    cfg.train.eval_batch_size,
                )
    held_out = split["eval"]
    held_out_step = objective_step(objective, method.cfg, held_out, accelerator)

    def evaluate(model: Any) -> dict[str, float]:
        metrics = {
            f"eval_{k}": v
            for k, v in evaluate_step(held_out_step, model, len(held_out), cfg.train.eval_batch_size).items()
        }
        return metrics | (sampler(model) if sampler is not None else {})

    rows = train_offline(
        policy.model,
        objective_step(objective, method.cfg, split["train"], accelerator),
        len(split["train"]),
        cfg.train,
        out,
        accelerator,
        evaluate=evaluate,
        name=method.name,
        tokenizer=policy.tokenizer,
    )
    return [r for r in rows if r["split"] == "eval"][-1]


def _ppo(
    cfg: Any,
    method: Any,
    task: Task,
    policy: Any,
    judge: Any,
    data: dict[str, Any],
    reference: torch.nn.Module,
    accelerator: Any,
    out: Path,
    sampler: Any,
    held: list[dict[str, Any]],
) -> dict[str, Any]:
    assert isinstance(method.cfg, PPOConfig)
    rm = data.get("reward_model")
    reward = judge if cfg.reward.kind == "gold" else rm
    assert reward is not None
    critic_kind = cfg.rollout.critic
    if critic_kind == "auto":
        critic_kind = "reward_model" if cfg.reward.kind == "model" else "sft"
    if critic_kind == "reward_model" and rm is None:
        from alignlab.errors import ConfigError

        raise ConfigError("rollout.critic", "a critic from the reward model needs reward.kind: model")
    critic = None
    if critic_kind == "sft":
        critic = critic_from(policy.path)
    elif critic_kind == "reward_model":
        critic = _copy_rm(rm)
    core = PolicyAndValue(policy.model, critic, cfg.rollout.temperature)
    value = critic if critic is not None else core.value_head
    assert value is not None
    held.append(_held("critic" if critic is not None else "value_head", value, trainable=True))
    context = model_context(policy.model)
    prompts = eval_prompts(task, policy.tokenizer, context, cfg.rollout.max_new_tokens, 0, split="train")
    rows = train_ppo(
        core,
        reference,
        policy.tokenizer,
        prompts,
        reward,
        method.cfg,
        cfg.rollout,
        cfg.train,
        out,
        accelerator,
        evaluate=sampler,
        name=method.name,
    )
    evals = [r for r in rows if r["split"] == "eval"]
    return evals[-1] if evals else rows[-1]


def _copy_rm(rm: Any) -> torch.nn.Module:
    import copy

    return copy.deepcopy(rm.model).train().requires_grad_(True)


def _best_of_n(
    cfg: Any,
    method: Any,
    task: Task,
    policy: Any,
    judge: Any,
    data: dict[str, Any],
    accelerator: Any,
    out: Path,
) -> dict[str, Any]:
    """Best-of-N on the held-out prompts: ranked by the configured reward, judged by the gold one."""
    ranker = judge if cfg.reward.kind == "gold" else data["reward_model"]
    prompts = eval_prompts(
        task,
        policy.tokenizer,
        model_context(policy.model),
        cfg.eval.max_new_tokens,
        cfg.eval.prompts,
        split=cfg.eval.split,
    )
    m = best_of_n(
        policy.model,
        policy.tokenizer,
        prompts,
        ranker,
        method.cfg.n,
        max_new_tokens=cfg.eval.max_new_tokens,
        temperature=cfg.eval.temperature,
        seed=cfg.eval.seed,
        batch_size=cfg.train.eval_batch_size,
        judge=judge,
    )
    low, high = bootstrap_ci(m["rewards"], seed=cfg.eval.seed)
    m |= {"reward_ci": (low, high), "kl_ci": (m["kl"], m["kl"])}  # the KL is analytic: no interval
    row = {"step": 0, "split": "eval", **_sample_row(m, len(prompts)), "n": method.cfg.n}
    log = MetricsLog(out, accelerator, None)
    log.log(row)
    log.flush()
    return row


def win_rate_rows(
    cfg: Any, task: Task, policy: Any, judge: Any, data: dict[str, Any], out: Path, accelerator: Any
) -> list[dict[str, Any]]:
    """The trained policy's win rate against the task's held-out references, per temperature.

    Written to ``out/winrate.json`` (a finished run reads it back rather than sampling again).
    """
    import json

    from alignlab.io import atomic_write_json
    from alignlab.rewards.judges import RewardJudge

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
        judge_fn: Any = _llm_judge(w.judge_model, task.name, cfg.eval.seed)
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


def _llm_judge(name: str, task_name: str, seed: int) -> Any:
    from alignlab.models import ModelConfig, load_pretrained
    from alignlab.rewards.judges import DIALOGUE_TEMPLATE, SUMMARY_TEMPLATE, CausalLMJudge

    model, tokenizer = load_pretrained(ModelConfig(name_or_path=name))
    template = SUMMARY_TEMPLATE if task_name in ("tldr", "cnndm") else DIALOGUE_TEMPLATE
    return CausalLMJudge(model, tokenizer, template, seed=seed)
