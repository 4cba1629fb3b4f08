"""Determinism: one config and seed, trained twice on CPU in fresh run directories, gives the same
numbers — every value of ``metrics.jsonl`` except the wall-clock ones, the summary, and the final
checkpoint's weights and optimiser state — for an offline objective (DPO) and for PPO-GT, both
with the sampling evaluation (gold reward and KL of samples on held-out prompts, with bootstrap
CIs) at step 0, in the middle and at the end.

A small copy of the IMDb data (every 50th review) keeps the shared stages — tokenizer, SFT, gold
judge — to seconds; they are built once in this module's cache and shared by both runs, as the
runs of an experiment share them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SMALL_RUNS, train_small
from safetensors.torch import load_file

from alignlab.train.checkpoint import read_training_state

TIMING = {"peak_rss_mb", "wall_time_s"}


def _is_timing(key: str) -> bool:
    return key in TIMING or key.endswith("_s")


def _without_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if not _is_timing(k)}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


@pytest.mark.parametrize("method", sorted(SMALL_RUNS))
def test_the_same_config_and_seed_train_to_the_same_numbers(method, small_imdb, cache, tmp_path):
    summaries = [train_small(small_imdb, tmp_path / name, method) for name in ("first", "second")]
    first, second = (
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("first", "second")
    )
    # the runs did what is compared: 3 steps, sampling evaluations at 0, 2 and 3, a policy that moved
    evals = [r for r in first if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 3]
    assert [r["step"] for r in first if r["split"] == "train"] == [1, 2, 3]
    assert all(r["samples"] == 6 for r in evals) and evals[0]["sample_kl"] == 0 and evals[-1]["sample_kl"] != 0
    # every metric except the wall-clock ones, exactly
    assert _without_timing(first) == _without_timing(second)
    assert _without_timing(summaries[0]) == _without_timing(summaries[1])
    # the final checkpoint: every weight and the optimiser state, exactly
    last = [tmp_path / name / "checkpoints" / "step-0000003" for name in ("first", "second")]
    files = sorted(p.relative_to(last[0]) for p in last[0].rglob("*.safetensors"))
    assert files == sorted(p.relative_to(last[1]) for p in last[1].rglob("*.safetensors"))
    assert len(files) == (2 if method == "ppo" else 1)  # PPO: the policy and its critic
    for rel in files:
        a, b = load_file(str(last[0] / rel)), load_file(str(last[1] / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    states = [read_training_state(p) for p in last]  # accelerate's save_state files
    assert states[0]["optimizer"]["state"]  # AdamW's moments
    for part in ("optimizer", "scheduler", "rng"):  # the RNGs: torch, Python's and numpy's
        assert _same(states[0][part], states[1][part]), part


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested dicts, lists and tuples of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):  # numpy's RNG state
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("method", sorted(SMALL_RUNS))
def test_gradient_checkpointing_trains_to_the_same_numbers(method, small_imdb, cache, tmp_path, monkeypatch):
    """train.gradient_checkpointing recomputes activations in the backward (it does: the layers go through
    torch's checkpoint only then) and gives the same losses, gradient norms and sampled evaluations as
    keeping them (DPO through the offline trainer, PPO through the online)."""
    from transformers import modeling_utils

    recomputations: list[int] = []
    checkpoint = modeling_utils.checkpoint
    monkeypatch.setattr(modeling_utils, "checkpoint", lambda *a, **k: recomputations.append(1) or checkpoint(*a, **k))
    runs = {}
    for name, on in (("kept", "false"), ("recomputed", "true")):
        before = len(recomputations)
        train_small(small_imdb, tmp_path / name, method, [f"train.gradient_checkpointing={on}"])
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert (len(recomputations) > before) == (on == "true")
    kept, recomputed = runs["kept"], runs["recomputed"]
    assert [r["step"] for r in kept] == [r["step"] for r in recomputed]
    for a, b in zip(kept, recomputed, strict=True):
        for key in ("loss", "grad_norm", "sample_reward", "sample_kl"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a["step"])
