"""Settings shared by the offline and online trainers, and the pieces built from them.

Everything here is checked before any work starts: a batch that the processes and the
accumulation steps cannot split evenly is refused with the key that is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from alignlab.errors import ConfigError
from alignlab.schema import Config, knob


@dataclass(frozen=True)
class TrainConfig(Config):
    steps: int = knob(200, "Optimiser steps (PPO: iterations of rollouts + updates).", gt=0)
    batch_size: int = knob(
        64, "Global batch per optimiser step over all processes and accumulation steps (DPO paper: 64).", gt=0
    )
    grad_accum: int = knob(1, "Gradient-accumulation micro-batches per optimiser step on each process.", gt=0)
    optimizer: Literal["rmsprop", "adamw"] = knob("rmsprop", "RMSprop (the DPO paper's optimiser) or AdamW.")
    lr: float = knob(1e-6, "Peak learning rate (DPO paper: 1e-6 for GPT-2-large; tiny models need more).", gt=0)
    weight_decay: float = knob(0.0, "Weight decay.", ge=0)
    warmup_steps: int = knob(150, "Linear warm-up steps from 0 to the peak learning rate (DPO paper: 150).", ge=0)
    schedule: Literal["constant", "linear", "cosine"] = knob(
        "constant", "After warm-up: constant (the DPO code), linear decay to 0, or cosine decay to 0."
    )
    grad_clip: float | None = knob(
        10.0, "Clip the global gradient norm to this (DPO code: 10); null: no clipping.", gt=0
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = knob(
        "auto", "auto: bf16 autocast where the device supports it (CUDA with bf16), else full precision."
    )
    frozen_dtype: Literal["auto", "float32", "bfloat16", "float16"] = knob(
        "auto",
        "Weights dtype of the frozen networks beside the policy: π_ref and the run's reward model (PPO's reward, "
        "best-of-N's ranker, the win-rate judge). auto: the mixed-precision dtype on CUDA (bfloat16 under "
        "mixed_precision bf16, also when auto picks it), float32 on CPU. A LoRA policy's π_ref is its own network.",
    )
    disable_dropout: bool = knob(True, "Switch dropout off in every trained model (the DPO code and TRL do).")
    gradient_checkpointing: bool = knob(
        False,
        "Recompute each layer's activations in the backward instead of keeping them: less memory, about a "
        "third more compute per trained token; the same numbers (Hugging Face models only).",
    )
    eval_schedule: Literal["every", "log", "list"] = knob(
        "every",
        "When to evaluate, always at step 0 and the last step too: every (train.eval_every), log "
        "(train.eval_points spread geometrically, dense at the start) or list (train.eval_steps).",
    )
    eval_every: int = knob(50, "Evaluate every this many steps (eval_schedule: every).", gt=0)
    eval_points: int | None = knob(
        None,
        "How many steps to evaluate after (eval_schedule: log, required there): 0 and round(steps^(k/(n-2))), "
        "k = 0..n-2, from step 1 to the last; on a short run rounding merges early ones, so fewer.",
        ge=3,
    )
    eval_steps: list[int] = knob(
        default_factory=list,
        help="The steps to evaluate after (eval_schedule: list): strictly increasing, each in [0, steps].",
        ge=0,
    )
    eval_batch_size: int = knob(64, "Examples per forward pass when evaluating or caching reference log-probs.", gt=0)
    save_every: int = knob(50, "Write a checkpoint every this many steps, and at the end.", gt=0)
    keep_checkpoints: int = knob(2, "Checkpoints kept on disk (the newest).", gt=0)
    log_every: int = knob(10, "Flush the metrics file every this many steps.", gt=0)
    log_with: list[str] = knob(
        default_factory=lambda: ["tensorboard"],
        help="accelerate trackers beside metrics.jsonl (tensorboard, wandb, mlflow, ...); [] for none.",
    )
    seed: int = knob(0, "Seed of the batch order, sampling and any fresh initialisation.")
    max_length: int | None = knob(None, "Truncate prompt + completion to this many tokens (null: the context).", gt=1)
    progress: bool = knob(True, "Show a progress bar.")

    def __post_init__(self) -> None:
        super().__post_init__()
        # the keys of one schedule may not be set under another: a run evaluates when it says it does
        if self.eval_schedule == "log" and self.eval_points is None:
            raise ConfigError("eval_points", "is required with eval_schedule: log: how many steps, e.g. 12")
        if self.eval_schedule != "log" and self.eval_points is not None:
            raise ConfigError(
                "eval_points", f"applies to eval_schedule: log, but eval_schedule is {self.eval_schedule}"
            )
        if self.eval_schedule != "list" and self.eval_steps:
            raise ConfigError(
                "eval_steps", f"applies to eval_schedule: list, but eval_schedule is {self.eval_schedule}"
            )
        for step in self.eval_steps:
            if not 0 <= step <= self.steps:
                raise ConfigError(
                    "eval_steps", f"{step} is not a step of this run: each must lie in [0, steps = {self.steps}]"
                )
        for before, after in zip(self.eval_steps, self.eval_steps[1:], strict=False):
            if after <= before:
                raise ConfigError("eval_steps", f"must be strictly increasing, got {after} after {before}")


def eval_steps(cfg: TrainConfig) -> list[int]:
    """The steps after which a run evaluates, ascending: the one schedule every trainer follows.

    Step 0 (the reference policy) and the last step are always in it. ``every``: the multiples of
    ``eval_every``. ``log``: step 0 and the ``n - 1 = eval_points - 1`` geometric points
    ``steps ** (k / (n - 2))``, k = 0 .. n - 2, from step 1 to the last step, rounded half up;
    rounding merges early ones when ``steps`` is small next to ``n`` (steps = 3, n = 12 gives
    ``[0, 1, 2, 3]``), so a run gets at most n steps, and step 1 whatever n is: the first update
    is always seen. ``list``: ``eval_steps``.

    A pure function of the config, so a resumed run evaluates at the steps an uninterrupted one
    does (a run resumes only under the config it started with: a run directory holding another is
    refused).
    """
    if cfg.eval_schedule == "every":
        steps = set(range(0, cfg.steps + 1, cfg.eval_every))
    elif cfg.eval_schedule == "log":
        assert cfg.eval_points is not None  # TrainConfig requires it under log
        last = cfg.eval_points - 2
        steps = {0, *(math.floor(cfg.steps ** (k / last) + 0.5) for k in range(last + 1))}
    else:
        steps = set(cfg.eval_steps)
    return sorted(steps | {0, cfg.steps})


def resolve_mixed_precision(setting: str) -> str:
    """'auto' becomes 'bf16' on a CUDA device that has it, else 'no'."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def frozen_dtype(cfg: TrainConfig) -> torch.dtype:
    """``train.frozen_dtype`` resolved: the dtype π_ref and the run's reward model are loaded in.

    ``auto`` follows the mixed precision on CUDA (bf16 autocast: bfloat16 weights, half the memory of
    float32, and the matmuls ran in bf16 anyway); on CPU it is float32, whatever the mixed precision.
    """
    if cfg.frozen_dtype != "auto":
        return getattr(torch, cfg.frozen_dtype)
    if not torch.cuda.is_available():
        return torch.float32
    mixed = resolve_mixed_precision(cfg.mixed_precision)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed, torch.float32)


def check_batch(cfg: TrainConfig, num_processes: int, source: str | None = None, key: str = "train") -> int:
    """The micro-batch size per process, or a ConfigError when the global batch does not split evenly."""
    parts = num_processes * cfg.grad_accum
    if cfg.batch_size % parts:
        raise ConfigError(
            f"{key}.batch_size",
            f"{cfg.batch_size} is not divisible by processes × grad_accum = {num_processes} × {cfg.grad_accum}",
            source,
        )
    return cfg.batch_size // parts


def build_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """RMSprop (DPO paper) or AdamW over those of ``params`` that require a gradient.

    AdamW uses torch's fused kernel (one pass over all parameters: on 2 CPU cores it cuts the
    optimiser step of a 1.5M-parameter model by more than half — ``benchmarks/vs_trl.py``; it is
    also the Hugging Face Trainer's default); RMSprop, which has no fused kernel, the multi-tensor
    one. Both compute the same update as the per-parameter loop, up to float rounding.
    """
    params = [p for p in params if p.requires_grad]  # frozen weights (a LoRA policy's base) never train
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    """Linear warm-up then constant / linear / cosine, from ``transformers``."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)


def enable_gradient_checkpointing(*models: torch.nn.Module | None) -> None:
    """``train.gradient_checkpointing``: each Hugging Face model among ``models`` (a LoRA policy's base
    model through peft) recomputes its layers' activations in the backward. Non-reentrant, so a
    LoRA policy, whose embedding outputs need no gradient, still gets the adapters' gradients; only
    in training mode, so the references and the samplers (eval mode) run as before."""
    for model in models:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers ≥ 5's name
        if callable(enable):
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif callable(enable := getattr(model, "gradient_checkpointing_enable", None)):
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout of ``model`` to 0, except LoRA adapters' (``model.lora.dropout``: asked for explicitly)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and ".lora_dropout." not in f".{name}.":
            module.p = 0.0
