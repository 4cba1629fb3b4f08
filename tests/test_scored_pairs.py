"""Preference data that keeps its scores, label noise, and a stateful objective's state across resume.

- Generated pairs keep the gold judge's rewards as scores through loading into the loss; a pairs
  file's ``chosen_score``/``rejected_score`` reach every batch of a scored objective; KTO reads
  unpaired rows (prompt, completion, label) from a file.
- ``data.label_noise`` flips exactly round(ε·n) training pairs by its seed, each keeping its own
  scores; held-out pairs are never flipped.
- ``data.scores: reward_model``: on the real HH split, the reward model that scores the pairs is
  trained on the training pairs only, never on a held-out pair.
- β-DPO's running state, stopped by a signal and then killed mid-run, resumes to exactly the state
  and the metrics of the uninterrupted run.

The runs use the bad-input corpus's tiny ``train/ok.yaml`` (smoke preset, no SFT), from its directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from alignlab import stages
from alignlab.interrupts import Interrupted
from alignlab.jobs.job import resolve, resolve_dict, run_training
from alignlab.jobs.sources import flip_labels, offline_rows
from alignlab.models import build_preset, train_tokenizer
from alignlab.objectives import Needs
from alignlab.pairs import _gzip_jsonl, load_pairs
from alignlab.sft import prepare_policy
from alignlab.tasks import build_task
from alignlab.tasks.base import PreferencePair, in_eval_split
from alignlab.train import data as train_data
from alignlab.train.data import BatchOrder

CORPUS = Path(__file__).resolve().parent / "fixtures" / "bad_inputs"
SCORED = CORPUS / "data" / "pairs" / "scored.jsonl"
UNPAIRED = CORPUS / "data" / "pairs" / "unpaired.jsonl"


def file_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def record_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[PreferencePair], Any]]:
    """Every (pairs, PairedLogps) that PairData.logps hands an objective, in training and in evaluation."""
    seen: list[tuple[list[PreferencePair], Any]] = []
    original = train_data.PairData.logps

    def spy(self: Any, model: Any, rows: list[int], needs: Needs) -> Any:
        out = original(self, model, rows, needs)
        seen.append(([self.pairs[i] for i in rows], out))
        return out

    monkeypatch.setattr(train_data.PairData, "logps", spy)
    return seen


# ---------------------------------------------------------------------------------------------
# scores through loading
# ---------------------------------------------------------------------------------------------


def test_generated_pairs_keep_the_gold_scores_through_loading_into_the_loss(tmp_path):
    """pairs.jsonl.gz rows carry chosen_reward/rejected_reward: load_pairs keeps them as scores, PairData
    hands them to an objective that needs scores (cast to the log-probs' float32: 0.5, −1.25, 2.0 and
    −0.75 are exact there), and flipping a pair swaps them with their texts."""
    rows = [
        {
            "prompt": "The film",
            "chosen": " was great",
            "rejected": " was bad",
            "chosen_reward": 0.5,
            "rejected_reward": -1.25,
        },
        {
            "prompt": "A plot",
            "chosen": " that works",
            "rejected": " that drags",
            "chosen_reward": 2.0,
            "rejected_reward": -0.75,
        },
    ]
    (tmp_path / "pairs.jsonl.gz").write_bytes(_gzip_jsonl(rows))
    pairs = load_pairs(tmp_path)
    assert [(p.chosen_score, p.rejected_score) for p in pairs] == [(0.5, -1.25), (2.0, -0.75)]
    tokenizer = train_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in rows] * 20, vocab_size=300)
    model = build_preset("smoke", tokenizer, seed=0)
    data = train_data.PairData.build(tokenizer, pairs, 64)
    batch = data.logps(model, [1, 0], Needs(reference=False, data="paired", scores=True))
    assert batch.chosen_scores.tolist() == [2.0, 0.5] and batch.rejected_scores.tolist() == [-0.75, -1.25]
    assert batch.chosen_scores.dtype == batch.policy_chosen_logps.dtype == torch.float32
    unscored = data.logps(model, [0], Needs(reference=False, data="paired"))
    assert unscored.chosen_scores is None  # only an objective that declares the need gets them
    flipped = pairs[0].flipped()
    assert (flipped.chosen, flipped.rejected, flipped.chosen_score, flipped.rejected_score) == (
        " was bad",
        " was great",
        -1.25,
        0.5,
    )


def _train(out: Path, *overrides: str) -> dict[str, Any]:
    return run_training("train/ok.yaml", [f"out_dir={out}", *overrides])


def test_a_pairs_file_gives_its_scores_to_every_batch_of_a_scored_objective(corpus_cache, tmp_path, monkeypatch):
    """MADPO from data/pairs/scored.jsonl (8 rows; task.eval_fraction 0.1 puts 'The score' on the
    held-out side): every batch it trains and is evaluated on carries the file's scores of its pairs
    (as float32, the log-probs' dtype)."""
    batches = record_batches(monkeypatch)
    summary = _train(
        tmp_path / "madpo",
        "objective={name: madpo, beta: 0.5}",
        f"data={{source: file, path: {SCORED}}}",
        "train.steps=6",
    )
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731
    in_file = {
        (r["chosen"], r["rejected"]): (f32(r["chosen_score"]), f32(r["rejected_score"])) for r in file_rows(SCORED)
    }
    prompts = set()
    for pairs, batch in batches:
        given = list(zip(batch.chosen_scores.tolist(), batch.rejected_scores.tolist(), strict=True))
        assert given == [in_file[(p.chosen, p.rejected)] for p in pairs]
        prompts |= {p.prompt for p in pairs}
    assert "The score" in prompts and len(prompts) >= 7  # held-out and training pairs alike
    assert summary["method"] == "madpo" and "eval_weights" in summary["final"]


def test_kto_reads_unpaired_rows_from_a_file(corpus_cache, tmp_path, monkeypatch):
    """data/pairs/unpaired.jsonl: 16 rows (prompt, completion, label), 8 prompts; the held-out side is the
    prompts 'The score' and 'The cast' (task.eval_fraction 0.5, by hash: KTO's reference point needs two
    prompts) with their 4 rows; KTO trains on the other 12."""
    built = []
    original = train_data.UnpairedData.build.__func__

    def spy(cls: Any, tokenizer: Any, examples: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(list(examples))
        return original(cls, tokenizer, examples, *args, **kwargs)

    monkeypatch.setattr(train_data.UnpairedData, "build", classmethod(spy))
    _train(
        tmp_path / "kto",
        "objective={name: kto}",
        f"data={{source: file, path: {UNPAIRED}}}",
        "task.eval_fraction=0.5",
        "train.steps=2",
    )
    rows = file_rows(UNPAIRED)
    held = [r for r in rows if in_eval_split(r["prompt"], 0.5, 0)]
    assert [r["prompt"] for r in held] == ["The score", "The cast"] * 2
    train, evaluated = built
    assert [(e.prompt, e.completion, e.desirable) for e in train] == [
        (r["prompt"], r["completion"], r["label"]) for r in rows if r not in held
    ]
    assert [(e.prompt, e.completion, e.desirable) for e in evaluated] == [
        (r["prompt"], r["completion"], r["label"]) for r in held
    ]


# ---------------------------------------------------------------------------------------------
# label noise
# ---------------------------------------------------------------------------------------------


def test_flip_labels_flips_exactly_round_epsilon_n_by_its_seed():
    """n = 10, ε = 0.25 → round(2.5) = 2 (banker's rounding) ... ε = 0.3 → 3 pairs; same seed, same pairs."""
    pairs = [PreferencePair(f"p{i}", f"w{i}", f"l{i}", None, float(i), -float(i)) for i in range(10)]
    for epsilon, expected in ((0.0, 0), (0.3, 3), (0.45, 4)):
        flipped = flip_labels(pairs, epsilon, seed=1)
        changed = [i for i, (a, b) in enumerate(zip(pairs, flipped, strict=True)) if a != b]
        assert len(changed) == expected == round(epsilon * 10)
        assert all(flipped[i] == pairs[i].flipped() for i in changed)
        assert flip_labels(pairs, epsilon, seed=1) == flipped
    assert flip_labels(pairs, 0.3, seed=1) != flip_labels(pairs, 0.3, seed=2)


@pytest.mark.parametrize("seed", range(4))
def test_the_flipped_pairs_are_not_the_first_batches_of_the_same_seed(seed):
    """Drawn from the stream the batch order uses (randperm with the same seed), the 20% flipped would be
    exactly the first batches of epoch 0, all noise up front; the flips are drawn independently."""
    n, k = 200, 40
    pairs = [PreferencePair(f"p{i}", f"w{i}", f"l{i}") for i in range(n)]
    flipped = {i for i, (a, b) in enumerate(zip(pairs, flip_labels(pairs, 0.2, seed), strict=True)) if a != b}
    first = set(BatchOrder(n, k, seed).rows(0))
    assert len(flipped) == k and len(flipped & first) < k // 2


def test_label_noise_flips_training_pairs_only(corpus_cache):
    """data/pairs/scored.jsonl with ε = 0.25: 7 training pairs, round(1.75) = 2 flipped, each with its
    scores; the held-out pair as it is in the file."""
    cfg, method = resolve("train/ok.yaml", [f"data={{source: file, path: {SCORED}}}", "objective={name: madpo}"])
    task = build_task(cfg.task, "train/ok.yaml")
    policy = prepare_policy(task, cfg.model, cfg.sft, cache=corpus_cache, progress=False)
    clean = offline_rows(cfg, task, policy, None, corpus_cache, method.objective)
    noisy_cfg, _ = resolve(
        "train/ok.yaml", [f"data={{source: file, path: {SCORED}, label_noise: 0.25}}", "objective={name: madpo}"]
    )
    noisy = offline_rows(noisy_cfg, task, policy, None, corpus_cache, method.objective)
    assert noisy["eval"] == clean["eval"] and len(clean["eval"]) == 1
    changed = [(a, b) for a, b in zip(clean["train"], noisy["train"], strict=True) if a != b]
    assert len(clean["train"]) == 7 and len(changed) == 2
    for a, b in changed:
        assert (b.chosen, b.rejected, b.chosen_score, b.rejected_score) == (
            a.rejected,
            a.chosen,
            a.rejected_score,
            a.chosen_score,
        )
        assert b.chosen_score < b.rejected_score  # the file's scores agree with its labels: a flip disagrees


# ---------------------------------------------------------------------------------------------
# the reward model of data.scores never learns from a held-out pair
# ---------------------------------------------------------------------------------------------


def test_reward_model_scores_are_learnt_from_training_pairs_only_on_the_real_hh_split(data_dir, tmp_path, monkeypatch):
    """HH harmless-base (the shared data: one split, divided by prompt hash): the pairs the reward model
    trains on are exactly the training pairs, none shares a prompt or a completion with a held-out
    pair, and the held-out pairs' scores are that model's scores of their texts."""
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))
    trained_on: list[list[PreferencePair]] = []
    real = stages.train_reward_model

    def spy(rm: Any, train: Any, held_out: Any, *args: Any, **kwargs: Any) -> Any:
        trained_on.append(list(train))
        return real(rm, train, held_out, *args, **kwargs)

    monkeypatch.setattr(stages, "train_reward_model", spy)
    run = {
        "task": {"name": "hh", "data_dir": str(data_dir), "max_rows": 600},
        "model": {"preset": "smoke", "vocab_size": 1000, "tokenizer_texts": 1000},
        "sft": {"steps": 0, "seq_len": 64, "eval_blocks": 2},
        "data": {"source": "task", "scores": "reward_model", "pairs": 48, "eval_pairs": 16},
        "reward": {"max_pairs": 48, "model": {"epochs": 1, "batch_size": 16}},
        "objective": {"name": "madpo"},
        "train": {"progress": False},
    }
    cfg, method = resolve_dict(run, "(test)", tmp_path)
    task = build_task(cfg.task, "(test)")
    policy = prepare_policy(task, cfg.model, cfg.sft, cache=tmp_path / "cache", progress=False)
    data = offline_rows(cfg, task, policy, None, tmp_path / "cache", method.objective)
    train, held_out, rm = data["train"], data["eval"], data["reward_model"]
    assert len(train) == 48 and len(held_out) == 16
    [learnt] = trained_on
    assert [(p.prompt, p.chosen, p.rejected) for p in learnt] == [(p.prompt, p.chosen, p.rejected) for p in train]
    held_texts = {t for p in held_out for t in (p.prompt, p.chosen, p.rejected)}
    assert not held_texts & {p.prompt for p in learnt}
    assert not {(p.chosen, p.rejected) for p in held_out} & {(p.chosen, p.rejected) for p in learnt}
    with torch.no_grad():
        chosen = rm([p.prompt for p in held_out], [p.chosen for p in held_out]).double().tolist()
    assert [p.chosen_score for p in held_out] == chosen
    assert all(p.chosen_score is not None and math.isfinite(p.rejected_score) for p in train)


# ---------------------------------------------------------------------------------------------
# β-DPO's running state survives kill and resume
# ---------------------------------------------------------------------------------------------


def _beta_dpo(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """12 β-DPO steps on the two review pairs (one kept of two: ρ = 0.5), checkpoints every 4, eval at
    0, 1, 2, 3, 6, 12: the metric rows without clocks, and the last checkpoint's objective state."""
    _train(
        out,
        "objective={name: beta_dpo, beta: 0.5, rho: 0.5}",
        "train.steps=12",
        "train.save_every=4",
        "train.eval_schedule=log",
        "train.eval_points=6",
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    clocks = ("wall_s", "step_s")
    state = json.loads((out / "checkpoints" / "step-0000012" / "state.json").read_text())["objective_state"]
    return [{k: v for k, v in r.items() if k not in clocks} for r in rows], state


def test_beta_dpo_state_resumes_exactly_after_a_signal_and_a_kill(corpus_cache, tmp_path, stop_after):
    """Stopped by SIGTERM after step 3, killed after the evaluation of step 6 (before its checkpoint,
    so it resumes from 4): the resumed run's EMAs, draw count and every metric row (losses, β of each
    batch, kept pairs) are the uninterrupted run's, bit for bit."""
    whole_rows, whole_state = _beta_dpo(tmp_path / "whole")
    assert whole_state["updates"]["values"] == 12.0 and whole_state["margin_mean"]["values"] != 0.0
    assert len({r["beta_batch"] for r in whole_rows if r["split"] == "train"}) > 1  # β moves with the state
    stop = stop_after
    cut = tmp_path / "cut"
    stop[3] = "SIGTERM"
    with pytest.raises(Interrupted):
        _beta_dpo(cut)
    stop.clear()
    stop[6] = KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _beta_dpo(cut)
    assert max(int(p.name[5:]) for p in (cut / "checkpoints").glob("step-*")) == 4
    stop.clear()
    rows, state = _beta_dpo(cut)
    assert state == whole_state
    assert rows == whole_rows
