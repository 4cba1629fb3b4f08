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
   token-mean NLL from the scoring core, AdamW with linear warm-up and cosine decay (:func:`train_sft`);
4. held-out perplexity on the task's evaluation text, before and after;
5. ``save_pretrained`` of model and tokenizer, with ``sft.json`` (settings and metrics).

SFT trains on the machinery of every trainer (:func:`alignlab.train.loop.make_accelerator` and
:class:`alignlab.train.loop.RunLoop`): an accelerate-prepared model and optimiser, checkpoints and
resume, SIGTERM/Ctrl-C at step boundaries, the NaN guard, the metrics log. Its run directory is a
sibling of the cache entry, ``$ALIGNLAB_CACHE_DIR/sft/.<key>.run`` (checkpoints, ``metrics.jsonl``):
an interrupted SFT resumes from its newest checkpoint, and the directory is removed once the entry is
published. Under ``accelerate launch`` every process trains its share of each step's blocks
(DDP/FSDP), the main process holding the stage's lock and publishing the entry. On one process the
weights are bit for bit those of the plain loop SFT had before (tests/test_sft_loop.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignlab import interrupts
from alignlab.cache_keys import code_version, fingerprint, stage_code, texts_fingerprint
from alignlab.core.scoring import sequence_logps, token_logps
from alignlab.data import DataError, cache_root
from alignlab.encoding import encode_text
from alignlab.io import atomic_dir, atomic_write_json, clear_temps, file_lock, load_intact
from alignlab.models import ModelConfig, build_preset, load_pretrained, model_context, train_tokenizer
from alignlab.progress import cached, say, stage
from alignlab.schema import Config, knob
from alignlab.tasks.base import Task
from alignlab.train.config import TrainConfig, check_batch, resolve_mixed_precision
from alignlab.train.data import shard
from alignlab.train.loop import RunLoop, make_accelerator, mean_over_processes
from alignlab.train.state import checkpoint_dir, checkpoint_model_files


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
    device = next(model.parameters()).device
    nll = [lm_nll(model, blocks[i : i + batch_size].to(device)) for i in range(0, len(blocks), batch_size)]
    model.train()
    return math.exp(float(torch.stack(nll).mean()))


SAVE_EVERY = 50
"""SFT writes a checkpoint every this many steps, at its end and when stopped (SIGTERM, Ctrl-C)."""


def sft_train_config(cfg: SFTConfig, progress: bool = True, mixed_precision: str = "no") -> TrainConfig:
    """The :class:`~alignlab.train.config.TrainConfig` that :class:`~alignlab.train.loop.RunLoop` runs SFT under.

    What the loop reads of it: the steps, the batch (split over processes), checkpoints every
    :data:`SAVE_EVERY` steps (the newest two kept), the metrics flushed every 10, no evaluation (the
    held-out perplexity is measured before and after), no trackers, the progress bar; ``mixed_precision``
    is the process's (a process has one accelerate state; ``no`` on CPU, where SFT runs in the weights'
    own dtype, as it always did). The optimiser and the schedule are SFT's own (:func:`sft_optimizer`);
    the fields that name them here only describe them.
    """
    return TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        optimizer="adamw",
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        schedule="cosine",
        grad_clip=cfg.grad_clip,
        mixed_precision=mixed_precision,  # type: ignore[arg-type]
        disable_dropout=False,  # SFT trains with the model's dropout
        eval_every=cfg.steps,
        save_every=SAVE_EVERY,
        log_every=10,
        log_with=[],
        seed=cfg.seed,
        progress=progress,
    )


def sft_optimizer(model: Any, cfg: SFTConfig) -> tuple[torch.optim.Optimizer, Any]:
    """SFT's AdamW (torch's default implementation, not the fused kernel the trainers use: the numbers
    SFT always had) and its schedule: linear warm-up over ``warmup_steps``, cosine decay to 10% of the peak."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, cfg.warmup_steps, max(cfg.steps, 1), min_lr_rate=0.1
    )
    return optimizer, schedule


def block_order(n_blocks: int, seed: int) -> torch.Tensor:
    """The order SFT reads the blocks in: one seeded permutation, read in batches, wrapping around."""
    return torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))


def train_sft(
    model: Any,
    train: torch.Tensor,
    cfg: SFTConfig,
    progress: bool = True,
    out_dir: Path | None = None,
    tokenizer: Any = None,
    mixed_precision: str = "no",
) -> dict[str, float]:
    """Step 3: ``cfg.steps`` AdamW steps over the blocks in a seeded order; returns speed and last loss.

    Args:
        model: the model to fine-tune (in place).
        train: (N, seq_len) packed blocks.
        out_dir: the run directory (checkpoints, ``metrics.jsonl``): a run stopped there resumes from
            its newest checkpoint; by default a temporary directory, removed afterwards.
        tokenizer: saved with each checkpoint, so that it loads with ``from_pretrained`` alone.
        mixed_precision: accelerate's (``no`` on CPU; :func:`prepare_policy` passes the process's).
    """
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = out_dir or Path(tmp)
        tcfg = sft_train_config(cfg, progress, mixed_precision)
        accelerator = make_accelerator(tcfg, run_dir)
        check_batch(tcfg, accelerator.num_processes, key="sft")
        optimizer, schedule = sft_optimizer(model, cfg)
        order = block_order(len(train), cfg.seed)
        model.train()
        loop = RunLoop(run_dir, model, optimizer, schedule, accelerator, tcfg, tokenizer=tokenizer)
        wrapped, optimizer = loop.prepare(model, optimizer)  # and restored from the checkpoint, if any
        rank, world = accelerator.process_index, accelerator.num_processes
        t0, trained = time.time(), 0
        bar = tqdm(
            total=cfg.steps, initial=loop.start_step, desc="sft", disable=not (progress and accelerator.is_main_process)
        )
        with interrupts.at_step_boundaries():  # SIGTERM / Ctrl-C: finish the step, checkpoint, stop
            for step in range(loop.start_step, cfg.steps):
                # 1. the step's blocks (a pure function of seed and step), this process's share of them
                rows = order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % len(train)]
                blocks = train[rows if world == 1 else shard(rows.tolist(), rank, world)]
                # 2. the token-mean NLL and its gradient (DDP averages it over processes)
                with accelerator.autocast():  # the process's mixed precision (none on CPU)
                    loss = lm_nll(wrapped, blocks.to(accelerator.device))
                accelerator.backward(loss)
                # 3. the NaN guard, gradient clipping, the optimiser and schedule steps
                loop.guard(step, "SFT loss", loss.detach())
                grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
                loop.guard(step, "gradient norm", torch.as_tensor(grad_norm).detach())
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                # 4. the metrics row, a checkpoint when due
                trained += 1
                row = {"loss": float(mean_over_processes(accelerator, loss.detach())), "grad_norm": float(grad_norm)}
                loop.log.log({"step": step + 1, "split": "train", **row, "lr": schedule.get_last_lr()[0]})
                bar.update()
                if step % 10 == 0 or step == cfg.steps - 1:
                    rate = trained * cfg.batch_size * cfg.seq_len / (time.time() - t0)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{rate:,.0f}")
                loop.periodic(step + 1, None)
        bar.close()
        seconds = time.time() - t0
        rows_logged = [r for r in loop.log.rows if r.get("split") == "train"]
    return {
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(trained * cfg.batch_size * cfg.seq_len / max(seconds, 1e-9), 1),
        "final_train_loss": rows_logged[-1]["loss"] if rows_logged else math.nan,
    }


def sft_model_settings(model_cfg: ModelConfig) -> dict[str, Any]:
    """The model settings the SFT stage depends on: all but ``lora``, whose adapters come after SFT
    (runs with and without adapters share one SFT policy)."""
    return {k: v for k, v in model_cfg.to_dict().items() if k != "lora"}


def _processes() -> tuple[bool, int]:
    """(is this the main process, how many processes): under ``accelerate launch`` accelerate's, else (True, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True, 1
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # as make_accelerator builds it
    return state.is_main_process, state.num_processes


def _sft_precision() -> str:
    """The mixed precision SFT trains under: this process's accelerate state's when one was built (a
    process has one, e.g. the run's accelerator), else ``auto``'s (bf16 on a CUDA device that has it)."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:
        return str(AcceleratorState().mixed_precision)
    return resolve_mixed_precision("auto")


def prepare_policy(
    task: Task, model_cfg: ModelConfig, sft_cfg: SFTConfig, cache: Path | None = None, progress: bool = True
) -> Policy:
    """The SFT policy for ``task``: loaded from the cache when this exact stage was built before.

    Under ``accelerate launch`` call it on every process at once: the main process holds the stage's
    lock and looks in the cache; when the stage must be built every process trains its share of SFT
    (:func:`train_sft`) and the main process publishes the entry, which every process then loads.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = cache or cache_root()
    texts = task.sft_texts()
    data_key = f"{task.name}:{texts_fingerprint(texts)}"
    precision = _sft_precision()
    mixed = [] if precision == "no" else [precision]  # SFT under autocast: other weights, another entry
    key = fingerprint(data_key, sft_model_settings(model_cfg), sft_cfg.to_dict(), stage_code("sft"), *mixed)
    path = root / "sft" / key
    run_dir = path.with_name(f".{key}.run")  # SFT's checkpoints: an interrupted build resumes from them
    main, world = _processes()

    def load(at: Path, from_cache: bool = True) -> Policy:
        metrics = json.loads((at / "sft.json").read_text())["metrics"]
        model, tokenizer = AutoModelForCausalLM.from_pretrained(at), AutoTokenizer.from_pretrained(at)
        return Policy(model, tokenizer, at, {**metrics, "cached": from_cache})

    # another process building it: wait, then load (under accelerate launch the main process holds it for all)
    with file_lock(path.parent / f".{key}.lock") if main else contextlib.nullcontext():
        policy = load_intact(path, load, "the cached SFT policy") if main else None
        build = _main_says(policy is None and main, world)
        if policy is not None:
            cached("SFT policy", path, f"held-out perplexity {policy.metrics.get('held_out_ppl', math.nan):,.1f}")
            shutil.rmtree(run_dir, ignore_errors=True)  # left by a build killed after publishing the entry
        elif build:  # not built yet, or damaged (moved aside)
            if main:
                clear_temps(path.parent, key)  # a build killed half-way (its run directory resumes)
            _build_policy(task, model_cfg, sft_cfg, texts, data_key, path, root, progress, run_dir, precision)
            if main:
                shutil.rmtree(run_dir, ignore_errors=True)
        if world > 1:
            _barrier()  # the entry is published before any process loads it
        if policy is None:
            # the policy as saved: the trained object would carry SFT's last gradients and training
            # mode into the next stage, and a run that built the stage must see exactly what a run
            # that found it cached (or resumed after a kill) sees
            policy = load(path, from_cache=not build)
        return policy


def _main_says(flag: bool, world: int) -> bool:
    """The main process's ``flag``, on every process (``flag`` itself on one)."""
    if world == 1:
        return flag
    from accelerate.utils import broadcast_object_list

    return bool(broadcast_object_list([flag], from_process=0)[0])


def _barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _build_policy(
    task: Task,
    model_cfg: ModelConfig,
    sft_cfg: SFTConfig,
    texts: list[str],
    data_key: str,
    path: Path,
    root: Path,
    progress: bool,
    run_dir: Path,
    precision: str,
) -> None:
    """Steps 1–5 of :func:`prepare_policy`: tokenizer, model, SFT, held-out perplexity, save to ``path``
    (the main process; every process trains). SFT's checkpoints go to ``run_dir``."""

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
    trained = None  # the checkpoint of SFT's last step: the model the entry holds
    with stage("SFT", f"{doing}{len(held_out)} blocks before and after"):
        metrics: dict[str, Any] = {"held_out_ppl_before": perplexity(model, held_out, sft_cfg.batch_size)}
        # 3. SFT
        if sft_cfg.steps > 0:
            need = int(sft_cfg.steps * sft_cfg.batch_size * context * 1.05)
            try:
                train = pack(tokenizer, shuffled, need, context)
            except DataError as err:
                raise DataError(f"task {task.name!r} ({task.source}), train split: {err}") from None
            done = train_sft(model, train, sft_cfg, progress, run_dir, tokenizer, precision)
            metrics.update(done, train_blocks=len(train))
            trained = checkpoint_dir(run_dir, sft_cfg.steps)
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
    if not _processes()[0]:
        return
    # 5. save, atomically: the last checkpoint's model and tokenizer (under FSDP the full model it
    #    gathered), or, without SFT steps, the model as built
    with atomic_dir(path) as tmp:
        if trained is None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        else:
            for file in checkpoint_model_files(trained):
                shutil.copyfile(file, tmp / file.name)
        atomic_write_json(
            tmp / "sft.json",
            {
                "task": task.name,
                "source": task.source,
                "data": data_key,
                "model": sft_model_settings(model_cfg),
                "sft": sft_cfg.to_dict(),
                "code": stage_code("sft"),
                "metrics": metrics,
            },
        )
