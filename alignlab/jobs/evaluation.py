"""The evaluation every method of a run shares, as the run sets it up (the metrics themselves are
:mod:`alignlab.train.evaluation`'s):

- :func:`eval_prompts`: the held-out (or train) prompts that leave room for the samples in the context;
- :func:`sampling_evaluation`: mean reward and sequence KL to π_ref of samples on those prompts, the
  step-0 evaluation of π_ref reused across the runs of a process;
- :func:`win_rate_rows`: the trained policy's win rate against the task's references, per temperature.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignlab.cache_keys import tokenizer_key, weights_key
from alignlab.encoding import encode_text
from alignlab.models import model_context
from alignlab.run_config import RunConfig
from alignlab.tasks import Task
from alignlab.train.evaluation import sample_metrics, win_rates

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


def sampling_evaluation(
    cfg: RunConfig, task: Task, policy: Any, reward: Any, reference: torch.nn.Module
) -> Callable[[Any], dict[str, float]]:
    """The sampling evaluation: mean reward and KL of samples on held-out prompts (``eval.split``'s;
    with ``eval.also_test`` the test prompts' too, as ``test_sample_*``).

    It never touches the global RNG that training uses (it samples under a forked RNG), and the
    evaluation of weights already evaluated in this process with the same prompts, reference,
    reward and settings — π_ref at every run's step 0 — is reused rather than sampled again.
    """
    splits = {"": cfg.eval.split}
    if cfg.eval.also_test and cfg.eval.split != "test":
        splits["test_"] = "test"
    sampling = {k: v for k, v in cfg.eval.to_dict().items() if k not in ("split", "also_test", "winrate")}
    settings = (weights_key(reference), sampling, cfg.train.eval_batch_size, id(reward))
    parts = {
        prefix: _split_evaluation(cfg, split, task, policy, reward, reference, settings)
        for prefix, split in splits.items()
    }

    def evaluate(model: Any) -> dict[str, float]:
        weights = weights_key(model)  # hashed once for every split
        return {f"{prefix}{k}": v for prefix, part in parts.items() for k, v in part(model, weights).items()}

    return evaluate


def _split_evaluation(
    cfg: RunConfig,
    split: str,
    task: Task,
    policy: Any,
    reward: Any,
    reference: torch.nn.Module,
    settings: tuple[Any, ...],
) -> Callable[[Any, str], dict[str, float]]:
    """:func:`sampling_evaluation` on the prompts of one split: ``evaluate(model, weights_key(model))``."""
    context = model_context(policy.model)
    prompts = eval_prompts(task, policy.tokenizer, context, cfg.eval.max_new_tokens, cfg.eval.prompts, split=split)
    memo = tuple(map(repr, (tuple(prompts), *settings)))

    def evaluate(model: Any, weights: str) -> dict[str, float]:
        key = (weights, *memo)
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
        row = sample_row(m, len(prompts) * cfg.eval.samples_per_prompt) | {"sample_length": m["length"]}
        _EVALUATIONS[key] = (reward, row)
        return dict(row)

    return evaluate


def sample_row(m: dict[str, Any], n: int) -> dict[str, Any]:
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
        judge_fn: Any = llm_judge(w.judge_model, task.name, cfg.eval.seed, orders=w.judge_orders)
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
