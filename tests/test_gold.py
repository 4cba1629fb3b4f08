"""The CPU gold sentiment judge: hashing pinned by hand, NB ratios and scores by hand, the gradient
against autograd, separation on a tiny corpus, save/load, determinism, and the committed result."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from alignlab.errors import AlignlabError
from alignlab.rewards import Reward
from alignlab.rewards.gold import (
    FeatureSettings,
    GoldSentiment,
    HashedNgrams,
    fit_gold_sentiment,
    logistic_loss_and_grad,
    measure_gold_sentiment,
    nb_log_count_ratio,
    train_gold_sentiment,
)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "gold" / "imdb_sentiment.json"

POSITIVE = [
    "a great movie, i loved it",
    "wonderful acting and a beautiful story",
    "the best film of the year, excellent!",
    "i loved every minute, brilliant and moving",
    "superb direction, great cast, wonderful",
    "an excellent, beautiful and moving film",
    "brilliant! the cast was superb",
    "a wonderful story with great acting",
    "loved it, the best movie i have seen",
    "beautiful, excellent and brilliant",
]
NEGATIVE = [
    "a terrible movie, i hated it",
    "awful acting and a boring story",
    "the worst film of the year, dreadful!",
    "i hated every minute, boring and stupid",
    "poor direction, terrible cast, awful",
    "a boring, stupid and dreadful film",
    "awful! the cast was poor",
    "a terrible story with awful acting",
    "hated it, the worst movie i have seen",
    "boring, dreadful and stupid",
]
TINY = FeatureSettings(bits=12)


@pytest.fixture(scope="module")
def tiny_judge() -> GoldSentiment:
    judge, _ = fit_gold_sentiment(POSITIVE + NEGATIVE, [1] * 10 + [0] * 10, TINY, l2=1e-3)
    return judge


def test_bucket_indices_are_pinned():
    """bucket(g) = crc32(utf-8 bytes of g) mod 2**20, n-gram tokens joined by one space.

    crc32(b"great") = 1234489951 = 0x4994D25F → 0x4994D25F & 0xFFFFF = 0x4D25F = 315999
    crc32(b"movie") = 492761711 = 0x1D5EF26F → 0xEF26F = 979567
    crc32(b"great movie") = 781645632 = 0x2E96F740 → 0x6F740 = 456512
    crc32(b"!") = 2657877971 = 0x9E6BFFD3 → 0xBFFD3 = 786387
    These are constants: unlike Python's salted ``hash()``, every process on every machine agrees.
    """
    assert [zlib.crc32(g) for g in (b"great", b"movie", b"great movie", b"!")] == [
        1234489951,
        492761711,
        781645632,
        2657877971,
    ]
    featuriser = HashedNgrams(FeatureSettings(bits=20))
    # lowercased, <br /> removed, "!" kept as a token; bigrams: "great movie", "movie !"
    assert featuriser.tokens("GREAT<br />movie!") == ["great", "movie", "!"]
    assert featuriser.buckets("GREAT<br />movie!").tolist() == [
        315999,
        979567,
        786387,
        456512,
        zlib.crc32(b"movie !") & 0xFFFFF,
    ]


def test_transform_is_csr_of_unique_buckets():
    featuriser = HashedNgrams(FeatureSettings(ngram_max=1, bits=20))
    crow, cols = featuriser.transform(["movie great great", "", "great"])
    assert crow.tolist() == [0, 2, 2, 3]
    assert cols.tolist() == [315999, 979567, 315999]  # sorted, a repeat counted once


def test_nb_log_count_ratio_by_hand():
    """Texts {0, 1} (positive) and {1} (negative), 3 buckets, α = 1.

    p = 1 + [1, 1, 0] = [2, 2, 1], ‖p‖₁ = 5; q = 1 + [0, 1, 0] = [1, 2, 1], ‖q‖₁ = 4;
    r = log[(p/5) / (q/4)] = [log 1.6, log 0.8, log 0.8].
    """
    r = nb_log_count_ratio(np.array([0, 2, 3]), np.array([0, 1, 1]), np.array([1, 0]), dim=3, alpha=1.0)
    assert_close(r, torch.tensor([math.log(1.6), math.log(0.8), math.log(0.8)], dtype=torch.float64))


def test_score_by_hand():
    """Unigrams only, w_good = 2, r_good = 3, w_bad = −1, r_bad = 4, b = 0.1.

    "good bad": b + (w_g r_g + w_b r_b) / sqrt(r_g² + r_b²) = 0.1 + (6 − 4) / 5 = 0.5;
    "good": 0.1 + 6 / 3 = 2.1; "bad bad": 0.1 − 4 / 4 = −0.9; "" (no token): b = 0.1.
    """
    settings = FeatureSettings(ngram_max=1, bits=10)
    good, bad = zlib.crc32(b"good") & 1023, zlib.crc32(b"bad") & 1023
    assert good != bad
    weight, ratio = torch.zeros(1024), torch.ones(1024)
    weight[good], ratio[good], weight[bad], ratio[bad] = 2.0, 3.0, -1.0, 4.0
    judge = GoldSentiment(settings, weight, ratio, bias=0.1)
    scores = judge.score_texts(["good bad", "good", "bad bad", ""])
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    assert_close(scores, torch.tensor([0.5, 2.1, -0.9, 0.1]))
    assert_close(judge.predict_proba(["good"]), torch.sigmoid(torch.tensor([2.1])))
    assert judge.score_texts([]).shape == (0,)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_gradient_matches_autograd():
    """The hand-written gradient (Xᵀg + λw, Σg) against autograd of the same loss on a dense X."""
    gen = torch.Generator().manual_seed(0)
    dense = torch.rand(6, 5, generator=gen, dtype=torch.float64) * (torch.rand(6, 5, generator=gen) > 0.5)
    y = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.float64)
    theta = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    loss, grad = logistic_loss_and_grad(dense.to_sparse_csr(), dense.t().to_sparse_csr(), y, theta.detach(), 0.3)
    w, b = theta[:-1], theta[-1]
    ref = torch.nn.functional.binary_cross_entropy_with_logits(dense @ w + b, y) + 0.15 * (w @ w)
    ref.backward()
    assert_close(loss, ref.detach())
    assert_close(grad, theta.grad)


def test_tiny_corpus_separates(tiny_judge: GoldSentiment):
    scores = tiny_judge.score_texts(POSITIVE + NEGATIVE)
    assert (scores[:10] > 0).all() and (scores[10:] < 0).all()
    unseen = tiny_judge.score_texts(["a brilliant, wonderful film", "an awful, boring film"])
    assert unseen[0] > 0 > unseen[1]


def test_reward_protocol(tiny_judge: GoldSentiment):
    assert isinstance(tiny_judge, Reward)
    rewards = tiny_judge(["This film was ", "This film was "], ["wonderful and brilliant", "boring and awful"])
    assert rewards.dtype == torch.float32 and rewards.shape == (2,)
    assert rewards[0] > rewards[1]
    # the judge reads the review so far: prompt + completion, concatenated as they are
    assert torch.equal(
        rewards, tiny_judge.score_texts(["This film was wonderful and brilliant", "This film was boring and awful"])
    )
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        tiny_judge(["a", "b"], ["c"])


def test_save_load_round_trip(tiny_judge: GoldSentiment, tmp_path: Path):
    tiny_judge.save(tmp_path / "judge", extra={"seed": 0})
    assert sorted(p.name for p in (tmp_path / "judge").iterdir()) == ["config.json", "model.safetensors"]
    loaded = GoldSentiment.load(tmp_path / "judge")
    texts = [*POSITIVE, *NEGATIVE, "something else entirely", ""]
    assert loaded.settings == tiny_judge.settings
    assert torch.equal(loaded.score_texts(texts), tiny_judge.score_texts(texts))
    # a bias that float32 cannot hold (0.1) comes back exactly: it is stored as float64
    odd = GoldSentiment(FeatureSettings(bits=10), torch.rand(1024), torch.rand(1024) + 0.5, bias=0.1)
    assert GoldSentiment.load(odd.save(tmp_path / "odd")).bias == 0.1


def test_load_refuses_a_torn_save(tiny_judge: GoldSentiment, tmp_path: Path):
    """Weights from one save beside the config of another (a crash between the two renames)."""
    tiny_judge.save(tmp_path / "a")
    GoldSentiment(FeatureSettings(bits=10), torch.zeros(1024), torch.ones(1024), 0.0).save(tmp_path / "b")
    (tmp_path / "b" / "config.json").replace(tmp_path / "a" / "config.json")
    with pytest.raises(AlignlabError, match="different saves"):
        GoldSentiment.load(tmp_path / "a")
    with pytest.raises(AlignlabError, match="no gold sentiment judge"):
        GoldSentiment.load(tmp_path / "b")


def test_same_data_same_weights():
    first, stats = fit_gold_sentiment(POSITIVE + NEGATIVE, [1] * 10 + [0] * 10, TINY, l2=1e-3, seed=3)
    second, _ = fit_gold_sentiment(POSITIVE + NEGATIVE, [1] * 10 + [0] * 10, TINY, l2=1e-3, seed=3)
    assert stats["iterations"] > 0
    assert torch.equal(first.weight, second.weight) and first.bias == second.bias


def _imdb_rows(data_dir: Path, split: str, every: int) -> tuple[list[str], list[int]]:
    with gzip.open(data_dir / "imdb" / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for i, line in enumerate(f) if i % every == 0]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def test_deterministic_on_an_imdb_subset(data_dir: Path):
    """500 real reviews (every 50th, both classes): two fits give the same weights and scores."""
    texts, labels = _imdb_rows(data_dir, "train", every=50)
    settings = FeatureSettings(bits=16)  # the same code path as 2**20, with 16x cheaper L-BFGS vectors
    first, _ = fit_gold_sentiment(texts, labels, settings, l2=1e-4, seed=0)
    second, _ = fit_gold_sentiment(texts, labels, settings, l2=1e-4, seed=0)
    assert torch.equal(first.weight, second.weight) and first.bias == second.bias
    assert torch.equal(first.score_texts(texts[:50]), second.score_texts(texts[:50]))


def test_committed_result():
    """The committed measurement: full 25k test split, accuracy ≥ 0.88, and how it was made."""
    result = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert result["n"] == 25000
    assert result["accuracy"] >= 0.88
    assert result["command"].startswith("python -m alignlab.rewards.gold ")
    assert result["features"]["hash"] == "crc32"


@pytest.mark.slow
def test_retrain_on_imdb(data_dir: Path, tmp_path: Path):
    """The whole thing on the real data: train on 25k, ≥ 88% on the full 25k test split, reloadable."""
    judge, fit = train_gold_sentiment(data_dir, tmp_path / "gold", seed=0)
    texts, labels = _imdb_rows(data_dir, "test", every=1)
    measured = measure_gold_sentiment(judge, texts, labels)
    assert fit["n_train"] == 25000 and measured["n"] == 25000
    assert measured["accuracy"] >= 0.88
    assert torch.equal(GoldSentiment.load(tmp_path / "gold").score_texts(texts[:100]), judge.score_texts(texts[:100]))
