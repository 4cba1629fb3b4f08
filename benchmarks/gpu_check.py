"""A few DPO and PPO steps of a GPT-2-medium-size model on one CUDA device, in bf16: tokens/s, peak
memory and model FLOPs utilisation (MFU). Run by ``benchmarks/gpu_check.sh``.

    python benchmarks/gpu_check.py [--dpo-steps 6] [--ppo-iterations 3] [--peak-tflops X]
    python benchmarks/gpu_check.py --dry-run      # the same code paths on CPU, tiny, float32

The model is trained from scratch: an 8k byte-level BPE tokenizer (:func:`alignlab.models.train_tokenizer`)
on synthetic text, and a GPT-2 of GPT-2-medium's shape (24 layers, d_model 1024, 16 heads, 1024
positions: ~0.3B parameters with the 8k vocabulary) built like :func:`alignlab.models.build_preset`
builds a preset. Both phases go through alignlab's own trainers, under accelerate's bf16 autocast:

- DPO: :func:`alignlab.train.offline.train_offline` with the registered ``dpo`` objective on
  synthetic pairs (reference log-probs cached once, before the steps, as ``alignlab train`` does);
- PPO: :func:`alignlab.train.online.train_online` with ``ppo`` (a value head on the policy, GAE,
  the KL in the reward), rollouts sampled by the rollout core, a cheap string reward.

Compute, as alignlab counts it (:mod:`alignlab.train.loop`): each row's ``step_tokens`` is in policy
forward-equivalent tokens, a forward of one token through the policy being 2·N FLOPs (N the
policy's parameters, Kaplan et al. 2020, §2.1) and a backward twice that, so

    FLOPs of a step = 2·N·step_tokens
                    = 6·N·(tokens trained on) + 2·N·(tokens generated or only scored)

and MFU = FLOPs of a step / seconds of the step / the card's peak dense bf16 FLOP/s. Attention's
FLOPs are not counted (Kaplan's 2·n_layer·n_ctx·d_model more per token forward: +3% at the ~365
tokens of the DPO sequences here, +8% at 1024), nor are the LM head's skipped prompt positions, so
MFU is slightly understated by the first and overstated by the second. The first step of each
phase is dropped (warm-up); the medians of the rest are printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import resource
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignlab.models import train_tokenizer  # noqa: E402
from alignlab.objectives import get_objective  # noqa: E402
from alignlab.tasks.base import PreferencePair  # noqa: E402
from alignlab.train.config import TrainConfig  # noqa: E402
from alignlab.train.data import PairData  # noqa: E402
from alignlab.train.loop import make_accelerator  # noqa: E402
from alignlab.train.offline import objective_step, train_offline  # noqa: E402
from alignlab.train.online import train_online  # noqa: E402
from alignlab.train.online_batches import PolicyAndValue, RolloutConfig, Settings  # noqa: E402

PEAK_BF16_TFLOPS = {
    # dense (no structured sparsity) bf16 tensor-core peaks, from NVIDIA's datasheets: "NVIDIA H100
    # Tensor Core GPU" datasheet (SXM 989.4, PCIe 756.5; NVL 835.5), "NVIDIA H200" datasheet (989.4, the
    # H100 SXM's compute), "NVIDIA A100 Tensor Core GPU" datasheet (312). The datasheets print twice
    # these figures "with sparsity".
    "H200": 989.4,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.5,
    "H100": 989.4,  # SXM (HBM3)
    "A100": 312.0,
}
SIZES = {
    # GPT-2 medium's shape (Radford et al. 2019, Table 2: 24 layers, d_model 1024), 8k vocabulary
    "gpu": {"n_layer": 24, "n_embd": 1024, "n_head": 16, "n_positions": 1024, "vocab": 8000},
    "dry-run": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256, "vocab": 400},
}
SYLLABLES = [
    a + b + c
    for a in ("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "ch", "sh")
    for b in ("a", "e", "i", "o", "u", "ea", "ou", "ai")
    for c in ("", "n", "r", "s", "t", "ll", "ng", "ck", "ve", "rd")
]


def peak_tflops(device_name: str) -> float | None:
    """The card's peak dense bf16 TFLOP/s from :data:`PEAK_BF16_TFLOPS` (first name contained in it)."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def _text(rng: random.Random, words: int) -> str:
    """``words`` pseudo-words of 1 to 3 syllables: enough distinct words for an 8k BPE vocabulary to fill."""
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(words))


def build(size: dict[str, int], seed: int = 0) -> tuple[Any, Any]:
    """(tokenizer, model): an 8k BPE tokenizer on synthetic text and a fresh GPT-2 of ``size``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    rng = random.Random(seed)
    tokenizer = train_tokenizer([_text(rng, 64) for _ in range(4000)], vocab_size=size["vocab"])
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=size["n_positions"],
        n_embd=size["n_embd"],
        n_layer=size["n_layer"],
        n_head=size["n_head"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return tokenizer, GPT2LMHeadModel(config)


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (CPU: peak RSS of the process)"


def step_seconds(row: dict[str, Any]) -> float:
    """A step's seconds: the offline trainer's ``step_s``; an online iteration's generation + scoring + updates."""
    if "step_s" in row:
        return float(row["step_s"])
    return float(row["gen_s"] + row["score_s"] + row["update_s"])


def report(phase: str, rows: list[dict[str, Any]], n_params: int, peak: float | None, extra: str = "") -> dict:
    """Print and return the medians of the rows after the first: s/step, tokens/s, TFLOP/s, MFU."""
    train = [r for r in rows if r.get("split") == "train"][1:]
    step_s = statistics.median(step_seconds(r) for r in train)
    step_tokens = statistics.median(r["step_tokens"] for r in train)
    flops = 2 * n_params * step_tokens  # = 6·N·trained tokens + 2·N·generated/scored tokens
    tflops = flops / step_s / 1e12
    out = {
        "phase": phase,
        "step_s": step_s,
        "forward_equivalent_tokens_per_s": step_tokens / step_s,
        "tflops": tflops,
        "mfu": None if peak is None else tflops / peak,
        "peak_memory": _peak_memory(),
    }
    mfu = "n/a (no peak known: --peak-tflops)" if peak is None else f"{100 * tflops / peak:.1f}% of {peak} TFLOP/s"
    print(
        f"{phase}: {step_s:.3f} s/step, {step_tokens / step_s:,.0f} forward-equivalent tokens/s{extra}, "
        f"{tflops:.2f} TFLOP/s, MFU {mfu}, peak memory {out['peak_memory']}",
        flush=True,
    )
    return out


def _train_config(args: argparse.Namespace, steps: int, batch_size: int, lr: float) -> TrainConfig:
    """AdamW at a constant ``lr``, no evaluation, no checkpoints, no trackers: only the steps are timed."""
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        optimizer="adamw",
        lr=lr,
        warmup_steps=0,
        eval_every=10**6,
        save_every=10**6,
        mixed_precision=args.precision,
        log_with=[],
        progress=False,
    )


def dpo(tokenizer: Any, model: Any, args: argparse.Namespace, work: Path, peak: float | None) -> dict:
    """``args.dpo_steps`` DPO steps of ``args.batch`` pairs through the offline trainer."""
    rng = random.Random(1)
    n = args.batch * args.dpo_steps
    pairs = [
        PreferencePair(_text(rng, args.prompt_words), " " + _text(rng, args.words), " " + _text(rng, args.words))
        for _ in range(n)
    ]
    cfg = _train_config(args, args.dpo_steps, args.batch, lr=1e-5)
    accelerator = make_accelerator(cfg, work / "dpo")
    data = PairData.build(tokenizer, pairs, args.max_length)
    # π_ref = the initial policy; its log-probs computed once and cached, then the copy is dropped
    data.attach_reference(
        [f"gpu_check-{os.getpid()}"],
        lambda: _reference(model).to(accelerator.device),
        args.batch,
    )
    objective = get_objective("dpo")
    _reset_peak()
    step_fn = objective_step(objective, objective.config_cls.from_dict({"beta": 0.1}), data, accelerator)
    rows = train_offline(model, step_fn, n, cfg, work / "dpo", accelerator)
    tokens = [r["step_tokens"] / 3 for r in rows if r.get("split") == "train"][1:]
    trained = statistics.median(tokens)
    return report("DPO", rows, args.n_params, peak, f" ({trained:,.0f} tokens trained on per step: 6·N each)")


def ppo(tokenizer: Any, model: Any, args: argparse.Namespace, work: Path, peak: float | None) -> dict:
    """``args.ppo_iterations`` PPO iterations of ``args.rollouts`` rollouts through the online trainer."""
    rng = random.Random(2)
    prompts = [_text(rng, args.prompt_words) for _ in range(args.rollouts * args.ppo_iterations)]
    objective = get_objective("ppo")
    assert objective.needs.online is not None
    rc = RolloutConfig(max_new_tokens=args.new_tokens, generation_batch_size=args.rollouts, samples_per_prompt=1)
    s = Settings.resolve(rc, objective.needs.online)
    cfg = _train_config(args, args.ppo_iterations, args.rollouts, lr=1e-6)

    def reward(prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return torch.tensor([c.count("a") / max(1, len(c)) for c in completions])

    accelerator = make_accelerator(cfg, work / "ppo")
    core = PolicyAndValue(model, value_head=True)
    _reset_peak()
    reference = _reference(model)
    ocfg = objective.config()
    rows = train_online(core, reference, tokenizer, prompts, reward, objective, ocfg, s, cfg, work / "ppo", accelerator)
    train = [r for r in rows if r.get("split") == "train"][1:]
    gen_s = statistics.median(r["gen_s"] for r in train)
    generated = args.rollouts * statistics.median(r["length"] for r in train)
    share = gen_s / statistics.median(step_seconds(r) for r in train)
    extra = f" (generation: {generated / gen_s:,.0f} new tokens/s, {share:.0%} of the iteration)"
    return report("PPO", rows, args.n_params, peak, extra)


def _adapted(model: Any, lora: bool) -> Any:
    """``model`` with fresh LoRA adapters (alignlab's model.lora defaults) when ``lora``, else itself."""
    from alignlab.adapters import LoraConfig, add_adapters

    return add_adapters(model, LoraConfig(), seed=0) if lora else model


def _reference(model: Any) -> Any:
    """π_ref as alignlab builds it: the adapted policy with its adapters off (no copy), else a frozen copy."""
    from alignlab.adapters import AdaptersOff, is_adapted

    return AdaptersOff(model) if is_adapted(model) else copy.deepcopy(model).requires_grad_(False).eval()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on CPU, a tiny model, float32: the same code paths")
    parser.add_argument("--dpo-steps", type=int, default=6)
    parser.add_argument("--ppo-iterations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="DPO pairs per step")
    parser.add_argument("--rollouts", type=int, default=32, help="PPO rollouts per iteration")
    parser.add_argument("--new-tokens", type=int, default=128, help="PPO completion length limit")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's peak dense bf16 TFLOP/s")
    parser.add_argument(
        "--lora",
        action="store_true",
        help="LoRA adapters (model.lora defaults: r 8, GPT-2's attention); π_ref = adapters off",
    )
    args = parser.parse_args(argv)
    size = SIZES["dry-run" if args.dry_run else "gpu"]
    if args.dry_run:
        args.dpo_steps, args.ppo_iterations = min(args.dpo_steps, 3), min(args.ppo_iterations, 2)
        args.batch, args.rollouts, args.new_tokens = 4, 4, 8
        args.prompt_words, args.words, args.max_length, args.precision = 8, 16, 64, "no"
    else:
        if not torch.cuda.is_available():
            parser.error("needs a CUDA device (or --dry-run)")
        args.prompt_words, args.words, args.max_length, args.precision = 32, 150, 512, "bf16"  # ~65 + ~300 tokens
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "CPU"
    peak = args.peak_tflops or (None if args.dry_run else peak_tflops(device))
    tokenizer, model = build(size)
    args.n_params = sum(p.numel() for p in model.parameters())
    print(
        f"device {device}; torch {torch.__version__}; GPT-2 {size['n_layer']} layers × {size['n_embd']}, "
        f"vocabulary {len(tokenizer)}: N = {args.n_params / 1e6:.1f}M parameters; "
        f"{'float32' if args.precision == 'no' else args.precision}; peak {peak or 'unknown'} TFLOP/s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["ALIGNLAB_CACHE_DIR"] = str(work / "cache")  # the reference log-probs, thrown away after
        results = [dpo(tokenizer, _adapted(copy.deepcopy(model), args.lora), args, work, peak)]
        results.append(ppo(tokenizer, _adapted(model, args.lora), args, work, peak))
    return results


if __name__ == "__main__":
    main()
