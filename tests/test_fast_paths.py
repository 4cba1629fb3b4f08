"""The per-process memos behind a sweep's speed: prompts derived once, π_ref evaluated once.

(The scoring core's completion-only LM head is checked against the full forward in test_scoring.py.)
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from alignlab.jobs import evaluation
from alignlab.models import train_tokenizer
from alignlab.run_config import EvalConfig
from alignlab.train.config import TrainConfig

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
