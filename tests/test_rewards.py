"""Reward models (Bradley–Terry) and the HF sequence-classifier reward."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from alignlab.errors import AlignlabError
from alignlab.models import build_preset, train_tokenizer
from alignlab.rewards import Reward
from alignlab.rewards.model import RewardModel
from alignlab.tasks import build_task
from alignlab.tasks.base import PreferencePair
from alignlab.train.data import PairData
from alignlab.train.reward_model import (
    RewardModelConfig,
    bradley_terry_loss,
    evaluate_reward_model,
    pair_rewards,
    train_reward_model,
)

GOOD = ["great", "wonderful", "superb", "lovely"]
BAD = ["awful", "boring", "dreadful", "dull"]


def test_bradley_terry_hand_values():
    """r_w − r_l = [1, 0, −2] → −log σ(·) = [log(1 + e^{−1}), log 2, log(1 + e^{2})]."""
    loss = bradley_terry_loss(
        torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    )
    expected = torch.tensor([math.log1p(math.exp(-1)), math.log(2), math.log1p(math.exp(2))], dtype=torch.float64)
    assert_close(loss, expected, rtol=0, atol=1e-12)


def toy_pairs(n: int, seed: int) -> list[PreferencePair]:
    g = torch.Generator().manual_seed(seed)
    pick = lambda words: words[int(torch.randint(0, len(words), (1,), generator=g))]  # noqa: E731
    return [
        PreferencePair("the film was", f" {pick(GOOD)} and {pick(GOOD)}", f" {pick(BAD)} and {pick(BAD)}")
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_rm_factory(tmp_path_factory):
    texts = [f"the film was {a} and {b}" for a in GOOD + BAD for b in GOOD + BAD] * 5
    tokenizer = train_tokenizer(texts, vocab_size=300)
    path = tmp_path_factory.mktemp("policy")
    build_preset("smoke", tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return lambda: RewardModel.from_policy(path, tokenizer, seed=0)


def test_reward_model_learns_a_clear_preference(tiny_rm_factory):
    rm = tiny_rm_factory()
    metrics = train_reward_model(
        rm, toy_pairs(96, 0), toy_pairs(48, 1), RewardModelConfig(epochs=3, batch_size=16, lr=3e-3), progress=False
    )
    assert metrics["held_out"]["accuracy"] >= 0.95 > metrics["held_out_before"]["accuracy"] - 0.3
    assert metrics["held_out"]["loss"] < metrics["held_out_before"]["loss"]
    assert isinstance(rm, Reward)
    good, bad = rm(["the film was"] * 2, [" superb and lovely", " dull and dreadful"]).tolist()
    assert good > bad


def test_one_forward_scores_equal_separate_scores(tiny_rm_factory):
    rm = tiny_rm_factory()
    rm.model.eval()
    pairs = toy_pairs(5, 2)
    data = PairData.build(rm.tokenizer, pairs, rm.context)
    chosen, rejected = pair_rewards(rm, data, list(range(5)))
    with torch.no_grad():
        assert_close(chosen, rm([p.prompt for p in pairs], [p.chosen for p in pairs]), rtol=1e-5, atol=1e-5)
        assert_close(rejected, rm([p.prompt for p in pairs], [p.rejected for p in pairs]), rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip(tiny_rm_factory, tmp_path):
    rm = tiny_rm_factory()
    rm.save(tmp_path / "rm")
    again = RewardModel.load(tmp_path / "rm")
    prompts, completions = ["the film was"] * 2, [" great", " dull"]
    assert torch.equal(rm(prompts, completions), again(prompts, completions))


def test_reward_model_trains_on_real_hh_pairs(data_dir, tmp_path):
    """Real pairs end to end: 2 epochs on 128 HH train pairs fit those pairs (accuracy and loss
    move the right way on the data seen); held-out accuracy is measured, not asserted."""
    task = build_task({"name": "hh", "data_dir": str(data_dir)})
    train = task.pairs("train")[:400]
    texts = [p.prompt + p.chosen for p in task.pairs("train")[:1000]]
    tokenizer = train_tokenizer(texts, vocab_size=1000)
    build_preset("smoke", tokenizer, seed=0).save_pretrained(tmp_path)
    rm = RewardModel.from_policy(tmp_path, tokenizer, seed=0)
    train = task.fit_to_context(train, tokenizer, 128)[:128]  # long dialogues are skipped and counted
    assert 0 < task.report.files["hh-rlhf/harmless-base/test.jsonl.gz"].skipped["prompt too long"] < 400 - 128
    seen = PairData.build(rm.tokenizer, train, 128)
    before = evaluate_reward_model(rm, seen)
    held_out = task.fit_to_context(task.pairs("eval"), tokenizer, 128)[:64]
    metrics = train_reward_model(
        rm, train, held_out, RewardModelConfig(epochs=3, batch_size=16, lr=2e-3, max_length=128), progress=False
    )
    after = evaluate_reward_model(rm, seen)
    assert after["loss"] < before["loss"] and after["accuracy"] > max(before["accuracy"], 0.6)
    assert 0.0 <= metrics["held_out"]["accuracy"] <= 1.0 and metrics["held_out"]["pairs"] == 64


def test_hf_classifier_reward_is_the_positive_log_odds(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = train_tokenizer([f"a {w} film" for w in GOOD + BAD] * 10, vocab_size=300)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    from alignlab.rewards.hf import HFClassifierReward

    reward = HFClassifierReward(str(tmp_path), positive_label="positive", batch_size=2)
    prompts, completions = ["a"] * 3, [" great film", " dull film", " lovely"]
    ours = reward(prompts, completions)
    for i, text in enumerate(p + c for p, c in zip(prompts, completions, strict=True)):
        logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
        assert ours[i].item() == pytest.approx((logits[1] - logits[0]).item(), abs=1e-5)  # 2 classes: a logit gap
    with pytest.raises(AlignlabError, match="no label 'joy'"):
        HFClassifierReward(str(tmp_path), positive_label="joy")


def test_hf_classifier_reward_offline_hub_error(monkeypatch):
    from alignlab.rewards.hf import HFClassifierReward

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AlignlabError, match="Hub is offline"):
        HFClassifierReward("siebert/sentiment-roberta-large-english")
