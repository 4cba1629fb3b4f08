"""Preference data by the DPO paper's protocol (§6.1, IMDb).

For each training prompt, sample k completions from the SFT policy through the rollout core,
score each with the gold reward, and form all k(k−1)/2 pairs, the higher-reward completion
chosen (4 samples → 6 pairs per prompt). Pairs whose rewards tie (within ``min_reward_gap``)
are dropped and counted. The result is a dataset — ``pairs.jsonl.gz`` in the task schema
(prompt, chosen, rejected) plus both rewards — and ``pairs.json`` with the generating config,
the seed and the counts. The same seed, policy and prompts give byte-identical files.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from alignlab.core.rollout import rollout
from alignlab.io import atomic_dir, atomic_write_json
from alignlab.schema import Config, knob
from alignlab.tasks.base import PreferencePair


@dataclass(frozen=True)
class PairGenConfig(Config):
    samples_per_prompt: int = knob(4, "k completions sampled per prompt; all k(k−1)/2 pairs are formed.", ge=2)
    max_prompts: int | None = knob(None, "Use the first this many train prompts (None: all).", gt=0)
    max_new_tokens: int = knob(48, "Completion length limit in tokens.", gt=0)
    temperature: float = knob(1.0, "Sampling temperature (> 0: k samples of one prompt must differ).", ge=0.01)
    top_p: float = knob(1.0, "Nucleus sampling threshold (1.0: off).", gt=0, le=1)
    batch_size: int = knob(64, "Completions generated per forward batch.", gt=0)
    min_reward_gap: float = knob(0.0, "Drop pairs whose gold rewards differ by no more than this.", ge=0)
    seed: int = knob(0, "Seed of the sampling; the same seed gives the same pairs.")


def pairs_from_samples(
    prompt: str, completions: Sequence[str], rewards: Sequence[float], min_gap: float
) -> tuple[list[dict[str, Any]], int]:
    """All k(k−1)/2 pairs of one prompt's samples, higher reward chosen; (rows, number of ties dropped)."""
    rows, ties = [], 0
    for i, j in itertools.combinations(range(len(completions)), 2):
        if abs(rewards[i] - rewards[j]) <= min_gap or completions[i] == completions[j]:
            ties += 1
            continue
        win, lose = (i, j) if rewards[i] > rewards[j] else (j, i)
        rows.append(
            {
                "prompt": prompt,
                "chosen": completions[win],
                "rejected": completions[lose],
                "chosen_reward": rewards[win],
                "rejected_reward": rewards[lose],
            }
        )
    return rows, ties


def generate_pairs(
    policy: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    reward: Callable[[Sequence[str], Sequence[str]], Tensor],
    cfg: PairGenConfig,
    out_dir: Path,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate, score and pair; write ``out_dir/pairs.jsonl.gz`` and ``out_dir/pairs.json`` atomically.

    Args:
        policy: the SFT policy to sample from.
        tokenizer: its tokenizer.
        prompts: the train prompts (the first ``cfg.max_prompts`` are used).
        reward: the gold reward over (prompts, completions).
        cfg: the generation settings.
        out_dir: the dataset directory (created whole, or not at all).
        meta: extra provenance recorded in ``pairs.json`` (policy path, reward name, task).

    Returns:
        The contents of ``pairs.json``.
    """
    prompts = list(prompts[: cfg.max_prompts] if cfg.max_prompts else prompts)
    k = cfg.samples_per_prompt
    per_chunk = max(1, cfg.batch_size // k)
    rows: list[dict[str, Any]] = []
    ties = 0
    rewards_seen: list[float] = []
    t0 = time.time()
    chunks = range(0, len(prompts), per_chunk)
    for c, start in enumerate(tqdm(chunks, desc="pairs", disable=not progress)):
        chunk = prompts[start : start + per_chunk]
        # one seed per chunk, derived from the config's: reproducible, independent of other chunks
        out = rollout(
            policy,
            tokenizer,
            chunk,
            samples_per_prompt=k,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed * 1_000_003 + c,
            reward=reward,
            batch_size=cfg.batch_size,
        )
        assert out.rewards is not None
        scores = out.rewards.tolist()
        rewards_seen += scores
        for i, prompt in enumerate(chunk):
            new, dropped = pairs_from_samples(
                prompt, out.completions[i * k : (i + 1) * k], scores[i * k : (i + 1) * k], cfg.min_reward_gap
            )
            rows += new
            ties += dropped
    info = {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "prompts": len(prompts),
        "samples": len(prompts) * k,
        "pairs": len(rows),
        "ties_dropped": ties,
        "mean_reward": sum(rewards_seen) / max(len(rewards_seen), 1),
        "seconds": round(time.time() - t0, 2),
        **(meta or {}),
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / "pairs.jsonl.gz").write_bytes(_gzip_jsonl(rows))
        atomic_write_json(tmp / "pairs.json", info)
    return info


def _gzip_jsonl(rows: list[dict[str, Any]]) -> bytes:
    """JSON Lines, gzip-compressed with a zero timestamp so equal rows give equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
    return buffer.getvalue()


def load_pairs(out_dir: Path) -> list[PreferencePair]:
    """The pairs of a generated dataset directory, each with the gold rewards of its completions as scores."""
    with gzip.open(out_dir / "pairs.jsonl.gz", "rt", encoding="utf-8") as f:
        return [
            PreferencePair(r["prompt"], r["chosen"], r["rejected"], None, r["chosen_reward"], r["rejected_reward"])
            for r in map(json.loads, f)
        ]
