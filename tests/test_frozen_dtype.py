"""``train.frozen_dtype``: π_ref and the run's reward model are loaded in the dtype it resolves to.

On CPU ``auto`` is float32 whatever the mixed precision; on CUDA it follows the mixed precision
(bf16 autocast: bfloat16 weights). The loaders the run calls (``load_reference`` and the cached
reward-model stage) get that dtype and the loaded weights have it; a critic initialised from a
bf16 reward model still trains in float32.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_gpt2
from transformers import AutoModelForSequenceClassification

from alignlab.jobs.methods import load_reference
from alignlab.models import train_tokenizer
from alignlab.rewards.model import RewardModel
from alignlab.train.config import TrainConfig, frozen_dtype


def test_auto_follows_the_mixed_precision_on_cuda_and_is_float32_on_cpu(monkeypatch):
    assert frozen_dtype(TrainConfig(frozen_dtype="bfloat16")) == torch.bfloat16
    assert frozen_dtype(TrainConfig(frozen_dtype="float32", mixed_precision="bf16")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert frozen_dtype(TrainConfig(mixed_precision="bf16")) == torch.float32  # CPU: float32 whatever asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert frozen_dtype(TrainConfig()) == torch.bfloat16  # auto mixed precision picks bf16 there
    assert frozen_dtype(TrainConfig(mixed_precision="fp16")) == torch.float16
    assert frozen_dtype(TrainConfig(mixed_precision="no")) == torch.float32


@pytest.fixture
def saved(tmp_path: Path) -> SimpleNamespace:
    """A tiny float32 policy and a reward model initialised from it, each saved as a run's stages save them."""
    tokenizer = train_tokenizer(["the film was great", "the film was dull"] * 8, vocab_size=300)
    policy = tiny_gpt2(vocab_size=len(tokenizer), dtype=torch.float32)
    policy.save_pretrained(tmp_path / "sft")
    tokenizer.save_pretrained(tmp_path / "sft")
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sft", num_labels=1)
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    return SimpleNamespace(sft=tmp_path / "sft", rm=tmp_path / "rm")


def test_the_knob_reaches_the_loaded_reference_and_reward_model(saved):
    from alignlab.jobs.methods import _critic

    cfg = TrainConfig(frozen_dtype="bfloat16")
    policy = SimpleNamespace(model=tiny_gpt2(), path=saved.sft)
    reference = load_reference(policy, frozen_dtype(cfg))
    assert {p.dtype for p in reference.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in reference.parameters())
    rm = RewardModel.load(saved.rm, frozen_dtype(cfg))
    assert {p.dtype for p in rm.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_reference(policy).parameters()} == {torch.float32}  # the default: as saved
    assert {p.dtype for p in RewardModel.load(saved.rm).model.parameters()} == {torch.float32}
    # a critic from that reward model (rollout.critic: reward_model) is the saved weights, in float32
    run = SimpleNamespace(rollout=SimpleNamespace(critic="reward_model"), reward=SimpleNamespace(kind="model"))
    critic, on_policy = _critic(run, SimpleNamespace(needs_critic=True), rm, policy)  # type: ignore[arg-type]
    saved_rm = AutoModelForSequenceClassification.from_pretrained(saved.rm)
    assert critic is not None and not on_policy
    for (name, got), want in zip(critic.state_dict().items(), saved_rm.state_dict().values(), strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want), name
    assert critic.training and all(p.requires_grad for p in critic.parameters())


def test_a_reference_that_follows_the_policy_keeps_its_dtype_across_a_resume(corpus_cache, tmp_path, stop_after):
    """Iterative DPO with ``rollout.reference: last_iteration`` and π_ref in bf16: the copy that follows the
    policy is π_ref's copy (bf16) in a fresh run and in a resumed one alike, so 4 iterations straight and
    2 + SIGTERM + 2 give the same rows (a resumed run once copied the float32 policy instead)."""
    from alignlab.interrupts import Interrupted
    from alignlab.jobs.job import run_training

    def run(out: Path) -> list[dict]:
        overrides = [
            f"out_dir={out}",
            "objective={name: iterative_dpo}",
            "reward.kind=gold",
            "rollout.reference=last_iteration",
            "rollout.max_new_tokens=4",
            "train.frozen_dtype=bfloat16",
            "train.batch_size=4",
            "train.steps=4",
            "train.save_every=2",
            "train.eval_every=1",
            "eval.prompts=2",
            "eval.max_new_tokens=4",
        ]
        run_training("train/ok.yaml", overrides)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]

    whole = run(tmp_path / "whole")
    stop_after[2] = "SIGTERM"
    with pytest.raises(Interrupted):
        run(tmp_path / "cut")
    stop_after.clear()
    assert run(tmp_path / "cut") == whole
