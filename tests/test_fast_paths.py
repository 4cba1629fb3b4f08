"""The per-process memos behind a sweep's speed: prompts derived once, π_ref evaluated once, the pairs
tokenised once.

(The scoring core's completion-only LM head is checked against the full forward in test_scoring.py.)
"""

from __future__ import annotations

import copy
import gzip
import json
from types import SimpleNamespace

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from alignlab import encoding
from alignlab.jobs import evaluation, methods
from alignlab.models import train_tokenizer
from alignlab.run_config import EvalConfig
from alignlab.tasks import build_task
from alignlab.tasks.base import PreferencePair
from alignlab.train.config import TrainConfig
from alignlab.train.data import PairData, UnpairedData, unpaired_from_pairs

TEXTS = [
    "The movie was a delight from start to finish.",
    "I hated every minute of this boring film.",
    "A quiet, moving story with a wonderful cast.",
    "The plot made no sense and the acting was worse.",
] * 10


class CountingTask:
    """A task whose prompts count how often they are derived."""

    def __init__(self) -> None:
        self.calls = 0

    def prompts(self, split, tokenizer=None):
        self.calls += 1
        return ["The movie", "I hated", "A quiet", "The plot"]

    def held_out_prompts(self, part, tokenizer=None):  # the sampling evaluation's test part: all of them
        return self.prompts("eval", tokenizer)


def setup(monkeypatch):
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    policy = SimpleNamespace(model=model, tokenizer=tokenizer, path="policy-dir")
    cfg = SimpleNamespace(eval=EvalConfig(prompts=4, max_new_tokens=6), train=TrainConfig())
    calls = []
    real = evaluation.sample_metrics

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "sample_metrics", counting)
    monkeypatch.setattr(evaluation, "_EVALUATIONS", {})
    monkeypatch.setattr(evaluation, "_PROMPTS", {})
    reward = lambda prompts, completions: torch.tensor([float(len(c)) for c in completions])  # noqa: E731
    return policy, cfg, reward, calls


def test_prompts_are_derived_once_per_task_and_tokenizer(monkeypatch):
    policy, *_ = setup(monkeypatch)
    task = CountingTask()
    first = evaluation.eval_prompts(task, policy.tokenizer, 64, 6, 3)
    first.append("mutating the returned list changes nothing")
    second = evaluation.eval_prompts(task, policy.tokenizer, 64, 6, 3)
    assert task.calls == 1 and second == ["The movie", "I hated", "A quiet"]
    evaluation.eval_prompts(CountingTask(), policy.tokenizer, 64, 6, 3)  # another task: derived afresh
    other = train_tokenizer(TEXTS[:4] * 3, vocab_size=280)
    evaluation.eval_prompts(task, other, 64, 6, 3)  # another tokenizer: derived afresh
    assert task.calls == 2


def test_the_evaluation_of_the_same_weights_is_reused_and_leaves_the_rng_alone(monkeypatch):
    policy, cfg, reward, calls = setup(monkeypatch)
    reference = copy.deepcopy(policy.model)
    evaluate = evaluation.sampling_evaluation(cfg, CountingTask(), policy, reward, reference)
    state = torch.get_rng_state()
    first = evaluate(policy.model)
    assert torch.equal(torch.get_rng_state(), state), "the evaluation moved the training RNG"
    again = evaluation.sampling_evaluation(cfg, CountingTask(), policy, reward, reference)(copy.deepcopy(policy.model))
    assert calls == [1] and again == first and first["sample_kl"] == 0.0
    with torch.no_grad():
        policy.model.transformer.wte.weight[0, 0] += 1.0  # trained weights: evaluated afresh
    changed = evaluate(policy.model)
    assert calls == [1, 1] and changed["sample_kl"] != 0.0
    # another reward object (another judge) is not served the first one's numbers
    evaluation.sampling_evaluation(cfg, CountingTask(), policy, lambda p, c: torch.zeros(len(c)), reference)(reference)
    assert len(calls) == 3


def test_a_reused_evaluation_equals_a_fresh_one(monkeypatch):
    policy, cfg, reward, calls = setup(monkeypatch)
    reference = copy.deepcopy(policy.model)
    memoised = evaluation.sampling_evaluation(cfg, CountingTask(), policy, reward, reference)
    memoised(policy.model)
    reused = memoised(policy.model)
    monkeypatch.setattr(evaluation, "_EVALUATIONS", {})
    fresh = evaluation.sampling_evaluation(cfg, CountingTask(), policy, reward, reference)(policy.model)
    assert calls == [1, 1] and reused == fresh


def write_reviews(root, n=40):
    """A small local IMDb (train and test) under ``root``."""
    (root / "imdb").mkdir(parents=True)
    for split in ("train", "test"):
        rows = [json.dumps({"text": TEXTS[i % len(TEXTS)] + f" Review {i}.", "label": i % 2}) for i in range(n)]
        with gzip.open(root / "imdb" / f"{split}.jsonl.gz", "wt") as f:
            f.write("\n".join(rows) + "\n")
    return root


def test_imdb_prefixes_are_cut_once_per_tokenizer(tmp_path, monkeypatch):
    """Every run of an experiment loads its own copy of π_ref's tokenizer: the task cuts the prefixes
    once for that tokenizer's content, and gives the same prompts as a task that cuts them afresh."""
    root = write_reviews(tmp_path / "data")
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    task = build_task({"name": "imdb", "data_dir": str(root), "use_unsup": False})
    encodes = []
    real = encoding.encode_text
    monkeypatch.setattr(encoding, "encode_text", lambda *a, **k: encodes.append(1) or real(*a, **k))
    train, test = task.prompts("train", tokenizer), task.prompts("eval", tokenizer)
    train.append("mutating a returned list changes nothing")
    copy_of_it = copy.deepcopy(tokenizer)
    assert task.prompts("train", copy_of_it) == train[:-1] and task.prompts("eval", copy_of_it) == test
    assert len(encodes) == 2  # train and test, once each
    fresh = build_task({"name": "imdb", "data_dir": str(root), "use_unsup": False})
    assert fresh.prompts("train", tokenizer) == train[:-1] and fresh.prompts("eval", tokenizer) == test
    other = train_tokenizer(TEXTS[:4] * 3, vocab_size=280)
    task.prompts("eval", other)  # another tokenizer: cut afresh
    assert len(encodes) == 5


def test_datasets_are_tokenised_once_per_rows_tokenizer_and_context(monkeypatch):
    """Consecutive runs on the same pairs share one tokenisation; each gets its own dataset, with no
    reference log-probs from an earlier run, equal to a fresh build."""
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    pairs = [PreferencePair(f"Prompt {i}:", TEXTS[i], TEXTS[i + 1]) for i in range(6)]
    monkeypatch.setattr(methods, "_ENCODED", {})
    builds = []
    real = PairData.build.__func__

    def counting(cls, *args, **kwargs):
        builds.append(1)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(PairData, "build", classmethod(counting))
    first = methods.encoded(tokenizer, pairs, 64, unpaired=False, seed=0)
    first.ref = {"chosen": torch.zeros(6), "rejected": torch.zeros(6)}  # what attach_reference does
    second = methods.encoded(copy.deepcopy(tokenizer), list(pairs), 64, unpaired=False, seed=1)
    assert builds == [1] and second is not first and second.ref is None
    fresh = real(PairData, tokenizer, pairs, 64)
    for got in (first, second):
        for part in ("chosen", "rejected"):
            for name in ("input_ids", "attention_mask", "completion_mask"):
                assert torch.equal(getattr(getattr(got, part), name), getattr(getattr(fresh, part), name))
    methods.encoded(tokenizer, pairs[:5], 64, unpaired=False, seed=0)  # other rows
    methods.encoded(tokenizer, pairs, 32, unpaired=False, seed=0)  # another context
    flipped = [p.flipped() for p in pairs]
    methods.encoded(tokenizer, flipped, 64, unpaired=False, seed=0)  # the same texts, other labels
    assert builds == [1, 1, 1, 1]
    rows = unpaired_from_pairs(pairs)
    a = methods.encoded(tokenizer, rows, 64, unpaired=True, seed=0)
    b = methods.encoded(tokenizer, rows, 64, unpaired=True, seed=0)
    c = methods.encoded(tokenizer, rows, 64, unpaired=True, seed=1)  # KTO's twins depend on the seed
    assert isinstance(a, UnpairedData) and torch.equal(a.mismatched.input_ids, b.mismatched.input_ids)
    assert torch.equal(c.mismatched.input_ids, UnpairedData.build(tokenizer, rows, 64, 1).mismatched.input_ids)
    assert len(methods._ENCODED) == 4  # the oldest entries make room
