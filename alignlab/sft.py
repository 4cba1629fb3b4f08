"""The policy a run starts from: tokenizer + model + supervised fine-tuning, cached.

``prepare_policy(task, model_cfg, sft_cfg)`` returns the SFT policy. Each stage is cached under
``$ALIGNLAB_CACHE_DIR`` (default ``~/.cache/alignlab``) keyed by everything that determines it —
the task's data, the model spec, the SFT settings, the seed and the code version — so the next
run with the same key loads it instead of training. Directories are published atomically.

In numbered steps:

1. the tokenizer: trained with ``tokenizers`` on a seeded sample of the SFT text (presets), or
   the pretrained model's own;
2. the model: a preset initialised from the seed, or the pretrained weights;
3. SFT: the task's SFT texts joined with EOS and cut into blocks of ``seq_len`` tokens, the
   token-mean NLL from the scoring core, AdamW with linear warm-up and cosine decay;
4. held-out perplexity on the task's evaluation text, before and after;
5. ``save_pretrained`` of model and tokenizer, with ``sft.json`` (settings and metrics).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignlab.cache_keys import code_version, fingerprint, texts_fingerprint
from alignlab.core.scoring import sequence_logps, token_logps
from alignlab.data import DataError, cache_root
from alignlab.encoding import encode_text
from alignlab.io import atomic_dir, atomic_write_json, clear_temps, file_lock, load_intact
from alignlab.models import ModelConfig, build_preset, load_pretrained, model_context, train_tokenizer
from alignlab.progress import cached, say, stage
from alignlab.schema import Config, knob
from alignlab.tasks.base import Task


@dataclass(frozen=True)
class SFTConfig(Config):
    steps: int = knob(300, "Optimiser steps of SFT (0: use the model as it is).", ge=0)
    batch_size: int = knob(16, "Blocks per step.", gt=0)
    seq_len: int = knob(128, "Tokens per block (texts are packed, separated by EOS).", gt=1)
    lr: float = knob(1e-3, "Peak learning rate (AdamW).", gt=0)
    warmup_steps: int = knob(30, "Linear warm-up steps, then cosine decay to 10% of the peak.", ge=0)
    weight_decay: float = knob(0.01, "AdamW weight decay.", ge=0)
    grad_clip: float = knob(1.0, "Clip the gradient norm to this value.", gt=0)
    eval_blocks: int = knob(64, "Held-out blocks for the perplexity before and after SFT.", gt=0)
    seed: int = knob(0, "Seed of the initialisation, the text sample and the block order.")


@dataclass
class Policy:
    """A ready policy: model, tokenizer, where it is cached and what SFT measured."""

    model: Any
    tokenizer: Any
    path: Path | None
    metrics: dict[str, Any]


def _tokenizer(texts: list[str], cfg: ModelConfig, seed: int, root: Path, data_key: str) -> Any:
    """Step 1: the BPE tokenizer of a from-scratch preset, cached by (data, vocabulary, seed, code)."""
    from transformers import PreTrainedTokenizerFast

    from alignlab import models

    path = root / "tokenizer" / fingerprint(data_key, cfg.vocab_size, cfg.tokenizer_texts, seed, code_version(models))
    with file_lock(path.parent / f".{path.name}.lock"):  # SFT stages with different keys may share it
        tokenizer = load_intact(path, PreTrainedTokenizerFast.from_pretrained, "the cached tokenizer")
        if tokenizer is not None:
            cached("tokenizer", path)
        else:  # not built yet, or damaged (moved aside)
            clear_temps(path.parent, path.name)  # a build killed half-way
            sample = random.Random(seed).sample(texts, min(cfg.tokenizer_texts, len(texts)))
            doing = f"training a {cfg.vocab_size}-token BPE on {len(sample):,} texts"
            with stage("tokenizer", doing), atomic_dir(path) as tmp:
                train_tokenizer(sample, cfg.vocab_size).save_pretrained(tmp)
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    return tokenizer


def pack(tokenizer: Any, texts: list[str], n_tokens: int, seq_len: int) -> torch.Tensor:
    """Blocks (N, seq_len) of ``texts`` joined by EOS, tokenising only as many texts as needed.

    An EOS string inside a text is text (:func:`alignlab.encoding.encode_text`): the only EOS ids
    are the separators added here.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(texts), 256):
        for row in encode_text(tokenizer, texts[start : start + 256]):
            ids.extend([*row, eos])
        if len(ids) >= n_tokens:
            break
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise DataError(
            f"the task's SFT texts hold {len(ids)} tokens, fewer than one block of {seq_len} (the smaller of "
            "sft.seq_len and the model's context): lower sft.seq_len, or add text"
        )
    return torch.tensor(ids[: n_blocks * seq_len]).view(n_blocks, seq_len)


def lm_nll(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean NLL of whole texts through the scoring core: every real token after a row's first counts.

    Args:
        input_ids: (B, T) packed blocks, or padded texts (either side) with their ``attention_mask``.
    """
    attention = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    targets = attention * (attention.cumsum(dim=-1) > 1)  # a row's first token has nothing to condition on
    logps = token_logps(model, input_ids, attention, targets)
    return -sequence_logps(logps, targets, "sum").sum() / targets.sum()


@torch.no_grad()
def perplexity(model: Any, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    nll = [lm_nll(model, blocks[i : i + batch_size]) for i in range(0, len(blocks), batch_size)]
    model.train()
    return math.exp(float(torch.stack(nll).mean()))


def train_sft(model: Any, train: torch.Tensor, cfg: SFTConfig, progress: bool = True) -> dict[str, float]:
    """Step 3: ``cfg.steps`` AdamW steps over the blocks in a seeded order; returns speed and last loss."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(opt, cfg.warmup_steps, max(cfg.steps, 1), min_lr_rate=0.1)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    t0, loss = time.time(), torch.tensor(float("nan"))
    bar = tqdm(range(cfg.steps), desc="sft", disable=not progress)
    for step in bar:
        idx = order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % len(train)]
        loss = lm_nll(model, train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        schedule.step()
        if step % 10 == 0 or step == cfg.steps - 1:
            rate = (step + 1) * cfg.batch_size * cfg.seq_len / (time.time() - t0)
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{rate:,.0f}")
    seconds = time.time() - t0
    return {
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(cfg.steps * cfg.batch_size * cfg.seq_len / max(seconds, 1e-9), 1),
        "final_train_loss": loss.item(),
    }


def sft_model_settings(model_cfg: ModelConfig) -> dict[str, Any]:
    """The model settings the SFT stage depends on: all but ``lora``, whose adapters come after SFT
    (runs with and without adapters share one SFT policy)."""
    return {k: v for k, v in model_cfg.to_dict().items() if k != "lora"}


def prepare_policy(
    task: Task, model_cfg: ModelConfig, sft_cfg: SFTConfig, cache: Path | None = None, progress: bool = True
) -> Policy:
    """The SFT policy for ``task``: loaded from the cache when this exact stage was built before."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab import models, sft

    root = cache or cache_root()
    texts = task.sft_texts()
    data_key = f"{task.name}:{texts_fingerprint(texts)}"
    key = fingerprint(data_key, sft_model_settings(model_cfg), sft_cfg.to_dict(), code_version(models, sft))
    path = root / "sft" / key

    def load(at: Path, from_cache: bool = True) -> Policy:
        metrics = json.loads((at / "sft.json").read_text())["metrics"]
        model, tokenizer = AutoModelForCausalLM.from_pretrained(at), AutoTokenizer.from_pretrained(at)
        return Policy(model, tokenizer, at, {**metrics, "cached": from_cache})

    with file_lock(path.parent / f".{key}.lock"):  # another process building it: wait, then load
        policy = load_intact(path, load, "the cached SFT policy")
        if policy is not None:
            cached("SFT policy", path, f"held-out perplexity {policy.metrics.get('held_out_ppl', math.nan):,.1f}")
        else:  # not built yet, or damaged (moved aside)
            clear_temps(path.parent, key)  # a build killed half-way
            _build_policy(task, model_cfg, sft_cfg, texts, data_key, path, root, progress)
            # the policy as saved: the trained object would carry SFT's last gradients and training
            # mode into the next stage, and a run that built the stage must see exactly what a run
            # that found it cached (or resumed after a kill) sees
            policy = load(path, from_cache=False)
        return policy


def _build_policy(
    task: Task,
    model_cfg: ModelConfig,
    sft_cfg: SFTConfig,
    texts: list[str],
    data_key: str,
    path: Path,
    root: Path,
    progress: bool,
) -> None:
    """Steps 1–5 of :func:`prepare_policy`: tokenizer, model, SFT, held-out perplexity, save to ``path``."""
    from alignlab import models, sft

    t0 = time.time()
    # 1-2. tokenizer and model
    model: Any
    tokenizer: Any
    if model_cfg.from_scratch:
        assert model_cfg.preset is not None
        tokenizer = _tokenizer(texts, model_cfg, sft_cfg.seed, root, data_key)
        model = build_preset(model_cfg.preset, tokenizer, sft_cfg.seed)
    else:
        model, tokenizer = load_pretrained(model_cfg)
    tokenizer_seconds = time.time() - t0
    context = min(sft_cfg.seq_len, model_context(model))
    shuffled = random.Random(sft_cfg.seed).sample(texts, len(texts))
    try:
        held_out = pack(tokenizer, task.sft_eval_texts(), sft_cfg.eval_blocks * context, context)
    except DataError as err:
        raise DataError(f"task {task.name!r} ({task.source}), held-out split: {err}") from None
    held_out = held_out[: sft_cfg.eval_blocks]
    doing = f"{sft_cfg.steps} steps of {sft_cfg.batch_size} blocks of {context} tokens, held-out perplexity on "
    with stage("SFT", f"{doing}{len(held_out)} blocks before and after"):
        metrics: dict[str, Any] = {"held_out_ppl_before": perplexity(model, held_out, sft_cfg.batch_size)}
        # 3. SFT
        if sft_cfg.steps > 0:
            need = int(sft_cfg.steps * sft_cfg.batch_size * context * 1.05)
            try:
                train = pack(tokenizer, shuffled, need, context)
            except DataError as err:
                raise DataError(f"task {task.name!r} ({task.source}), train split: {err}") from None
            metrics.update(train_sft(model, train, sft_cfg, progress), train_blocks=len(train))
        # 4. held-out perplexity
        after = perplexity(model, held_out, sft_cfg.batch_size)
        say(f"SFT: held-out perplexity {metrics['held_out_ppl_before']:,.1f} -> {after:,.1f}")
    metrics.update(
        held_out_ppl=after,
        held_out_tokens=int(held_out.numel()),
        parameters=sum(p.numel() for p in model.parameters()),
        tokenizer_seconds=round(tokenizer_seconds, 2),
        total_seconds=round(time.time() - t0, 2),
    )
    # 5. save, atomically
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(
            tmp / "sft.json",
            {
                "task": task.name,
                "source": task.source,
                "data": data_key,
                "model": sft_model_settings(model_cfg),
                "sft": sft_cfg.to_dict(),
                "code": code_version(models, sft),
                "metrics": metrics,
            },
        )
