"""judge_agreement (alignlab.rewards.agreement): a judge's agreement with human labels, each pair shown in both
orders; the judges themselves; scripts/judge_agreement.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from alignlab.rewards.agreement import judge_agreement
from alignlab.rewards.judges import LLMJudge, RewardJudge
from alignlab.tasks.base import PreferencePair

# P(first is better) for each (first, second) showing of four pairs (c = chosen, r = rejected):
#   pair 1: (c1, r1) 0.9 -> chosen;  (r1, c1) 0.2 -> chosen       score 1,   first slot 1, 0
#   pair 2: (c2, r2) 0.7 -> chosen;  (r2, c2) 0.6 -> rejected     score 1/2, first slot 1, 1
#   pair 3: (c3, r3) 0.3 -> rejected; (r3, c3) 0.8 -> rejected    score 0,   first slot 0, 1
#   pair 4: (c4, r4) 0.5 -> tie;     (r4, c4) 0.5 -> tie          score 1/2, first slot 1/2, 1/2
TABLE = {
    ("c1", "r1"): 0.9,
    ("r1", "c1"): 0.2,
    ("c2", "r2"): 0.7,
    ("r2", "c2"): 0.6,
    ("c3", "r3"): 0.3,
    ("r3", "c3"): 0.8,
    ("c4", "r4"): 0.5,
    ("r4", "c4"): 0.5,
}
REPO = Path(__file__).resolve().parents[1]
PAIRS = [PreferencePair(f"q{i}", f"c{i}", f"r{i}") for i in range(1, 5)]


class TableJudge(LLMJudge):
    """A judge with positions: P(first is better) looked up in TABLE."""

    name = "table"

    def prefer_first(self, prompts, first, second):
        return torch.tensor([TABLE[(f, s)] for f, s in zip(first, second, strict=True)], dtype=torch.float64)


def test_hand_computed_agreement_first_slot_and_soft():
    """Scores 1, 1/2, 0, 1/2: agreement 2/4 = 0.5. First slot wins 1+0+1+1+0+1+1/2+1/2 = 5 of 8
    showings: 0.625. Soft: P(chosen) per pair (0.9+0.8)/2, (0.7+0.4)/2, (0.3+0.2)/2, (0.5+0.5)/2 =
    0.85, 0.55, 0.25, 0.5, mean 2.15/4 = 0.5375."""
    r = judge_agreement(TableJudge(), PAIRS)
    assert r["n"] == 4
    assert r["scores"] == [1.0, 0.5, 0.0, 0.5]
    assert r["agreement"] == 0.5
    assert r["first_slot_rate"] == 0.625
    assert r["soft_agreement"] == pytest.approx(0.5375, abs=1e-12)


def _copies(prompt_of) -> list[PreferencePair]:
    """The four pairs four times (j = 0..3), pair i of copy j asked with prompt ``prompt_of(i, j)``."""
    return [PreferencePair(prompt_of(i, j), p.chosen, p.rejected) for j in range(4) for i, p in enumerate(PAIRS)]


def test_hand_computed_interval():
    """The four pairs four times, 16 distinct prompts: n = G = 16, mean 0.5, squared deviations
    4 × (0.25 + 0 + 0.25 + 0) = 2, s² = 2/15, s = 0.3651484, s/√16 = 0.0912871 (the cluster-robust
    se with one pair per prompt: 16/15 · 2 / 16² gives the same); t(0.975, 15) = 2.1314495, so the
    half-width is 0.1945738: [0.3054262, 0.6945738]. With the four alone (n = 4) the half-width,
    3.1824463 × 0.4082483/2 = 0.6496, runs past both ends and is clipped to [0, 1]."""
    r = judge_agreement(TableJudge(), _copies(lambda i, j: f"q{i}-{j}"))
    assert r["n"] == 16 and r["prompts"] == 16 and r["agreement"] == 0.5
    assert r["ci"] == pytest.approx((0.3054262, 0.6945738), abs=1e-7)
    assert judge_agreement(TableJudge(), PAIRS)["ci"] == (0.0, 1.0)


def test_pairs_sharing_a_prompt_are_one_cluster():
    """The same 16 scores, copies 0–1 of pair i under prompt a_i and copies 2–3 under b_i: G = 8
    prompts, each holding two equal scores, so the residual sums are 2 × (0.5, 0, −0.5, 0) twice:
    1, 0, −1, 0, 1, 0, −1, 0, Σ R² = 4; se² = 8/7 · 4 / 16² = 0.0178571, se = 0.1336306;
    t(0.975, 7) = 2.3646243, half-width 0.3159862: [0.1840138, 0.8159862] — wider than the
    independent 16 above, as it must be."""
    r = judge_agreement(TableJudge(), _copies(lambda i, j: f"{'ab'[j // 2]}{i}"))
    assert r["n"] == 16 and r["prompts"] == 8 and r["agreement"] == 0.5
    assert r["ci"] == pytest.approx((0.1840138, 0.8159862), abs=1e-7)


def test_position_randomised_judge_is_scored_without_its_coin():
    """The seed of the judge's coin (used by compare) changes nothing: both orders are always shown."""
    assert judge_agreement(TableJudge(seed=0), PAIRS) == judge_agreement(TableJudge(seed=7), PAIRS)


def test_reward_judge_is_blind_to_order():
    """Reward = completion length. Pair 1: chosen 'long one' (8) > 'x' (1): agrees, 1. Pair 2: 'a' (1) <
    'bb' (2): disagrees, 0. Pair 3: 'cc' = 'dd': a tie, ½. Agreement (1 + 0 + ½)/3 = 0.5; the first
    slot wins exactly half the showings (each pair once of its two orders; a tie ½ each time)."""

    def length(prompts, completions):
        return torch.tensor([float(len(c)) for c in completions])

    pairs = [PreferencePair("p", "long one", "x"), PreferencePair("q", "a", "bb"), PreferencePair("r", "cc", "dd")]
    r = judge_agreement(RewardJudge(length), pairs)
    assert r["scores"] == [1.0, 0.0, 0.5]
    assert r["agreement"] == 0.5 and r["first_slot_rate"] == 0.5 and r["soft_agreement"] == 0.5


def test_a_judge_always_preferring_the_first_slot():
    """P(first) = 1 always: each pair is right in one order and wrong in the other, so every score
    is ½ (agreement 0.5 with a zero-width interval) and the first slot wins every showing."""

    class First(LLMJudge):
        def prefer_first(self, prompts, first, second):
            return torch.ones(len(prompts))

    r = judge_agreement(First(), PAIRS)
    assert r["agreement"] == 0.5 and r["ci"] == (0.5, 0.5) and r["first_slot_rate"] == 1.0


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="at least 2 prompts"):
        judge_agreement(TableJudge(), PAIRS[:1])
    with pytest.raises(ValueError, match="at least 2 prompts"):  # one prompt: no interval over prompts
        judge_agreement(TableJudge(), [PreferencePair("q", p.chosen, p.rejected) for p in PAIRS])
    with pytest.raises(ValueError, match="confidence"):
        judge_agreement(TableJudge(), PAIRS, confidence=95)

    class Short(LLMJudge):
        name = "short"

        def prefer_first(self, prompts, first, second):
            return torch.full((len(prompts) - 1,), 0.5)

    with pytest.raises(ValueError, match="3 probabilities for 4 pairs"):
        judge_agreement(Short(), PAIRS)

    class Logits(LLMJudge):
        name = "logits"

        def prefer_first(self, prompts, first, second):
            return torch.full((len(prompts),), 2.0)

    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        judge_agreement(Logits(), PAIRS)


def test_causal_lm_judge_does_not_depend_on_its_batch():
    """A row's P(first) is the same alone as beside longer rows that left-pad it (GPT-2 has absolute
    position embeddings: without position ids counted from the first real token, padding moves it)."""
    from alignlab.models import build_preset, train_tokenizer
    from alignlab.rewards.judges import CausalLMJudge

    tokenizer = train_tokenizer(["Response A or Response B: which is more helpful? " * 5] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = build_preset("tiny-s", tokenizer)
    prompts, first, second = ["hi", "how are you today, friend?", "?"], ["hello", "fine", "yes"], ["bye", "bad", "no"]
    together = CausalLMJudge(model, tokenizer, batch_size=3).prefer_first(prompts, first, second)
    alone = CausalLMJudge(model, tokenizer, batch_size=1).prefer_first(prompts, first, second)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_script_scores_the_win_rate_tables_own_reward_model(tmp_path, data_dir, cache):
    """scripts/judge_agreement.py on a tiny HH win-rate experiment, after the experiment ran: it loads
    the experiment's cached reward model (the cache holds one) rather than training another, and on
    the run's own held-out pairs (--max-pairs = data.eval_pairs) its agreement is the reward model's
    held-out accuracy that the run recorded."""
    import importlib.util
    import json

    import pandas as pd
    import yaml

    from alignlab.experiment.runner import run_experiment

    doc = {
        "name": "hh_judges",
        "task": {"name": "hh", "data_dir": str(data_dir), "max_rows": 600},
        "model": {"preset": "smoke", "vocab_size": 1000, "tokenizer_texts": 2000},
        "sft": {"steps": 10, "batch_size": 16, "seq_len": 64, "lr": 2.0e-3, "warmup_steps": 4, "eval_blocks": 8},
        "data": {"source": "task", "eval_pairs": 16},
        "reward": {"model": {"epochs": 1, "batch_size": 16}, "max_pairs": 64},
        "train": {"progress": False, "log_with": []},
        "eval": {"prompts": 0, "max_new_tokens": 8, "winrate": {"temperatures": [0.0], "prompts": 4}},
        "methods": [{"name": "best_of_n", "label": "SFT", "n": 1, "reward": {"kind": "model"}}],
        "out_dir": str(tmp_path / "results"),
        "runs_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_experiment(path)
    held_out_accuracy = json.loads((tmp_path / "runs" / "SFT" / "summary.json").read_text())["reward_model"][
        "held_out"
    ]["accuracy"]

    spec = importlib.util.spec_from_file_location("judge_agreement", REPO / "scripts" / "judge_agreement.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "judges"
    assert script.main([str(path), "--judge-model", "none", "--max-pairs", "16", "--out", str(out)]) == 0
    assert len([p for p in (cache / "reward_model").iterdir() if not p.name.startswith(".")]) == 1
    row = pd.read_csv(out / "agreement.csv").iloc[0]
    assert (row["task"], row["judge"], row["n"]) == ("hh", "reward:reward_model", 16)
    assert row["agreement"] == pytest.approx(held_out_accuracy, abs=1e-4)
    assert row["first_slot_rate"] == 0.5
    assert "Verdict" in (out / "README.md").read_text()


def test_script_refuses_generated_pairs_in_one_line(tmp_path, capsys):
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("judge_agreement", REPO / "scripts" / "judge_agreement.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "methods": [{"name": "dpo"}]}))
    assert script.main([str(path), "--judge-model", "none", "--out", str(tmp_path / "j")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data.source" in err and "human pairs" in err


def test_hand_computed_both_orders_agreement():
    """The judge that shows each pair both ways and averages: P(chosen) 0.85, 0.55, 0.25, 0.5 (as in
    the soft agreement above), verdicts 1, 1, 0, ½: 2.5/4 = 0.625 — pair 2, which the one-order judge
    gets right in one order only (0.7 first, 0.6 second), is right once the slot preference cancels."""
    r = judge_agreement(TableJudge(), PAIRS)
    assert r["both_orders_scores"] == [1.0, 1.0, 0.0, 0.5]
    assert r["both_orders_agreement"] == 0.625
    assert judge_agreement(TableJudge(), _copies(lambda i, j: f"q{i}-{j}"))["both_orders_agreement"] == 0.625


def test_both_orders_cancel_a_constant_slot_preference():
    """P(first better) = σ(3 + (q_first − q_second)/2) with the chosen completions of quality 1 and the
    rejected of 0: shown one way, the first slot always wins (σ(3.5) and σ(2.5) both > ½), so every
    pair scores ½; both ways, P(chosen) = ½ [σ(3.5) + 1 − σ(2.5)] = 0.5233 > ½ for every pair: 1.
    The judge that always answers "first" ties every pair both ways (½), not 1 and 0."""
    quality = {p.chosen: 1.0 for p in PAIRS} | {p.rejected: 0.0 for p in PAIRS}

    class Biased(LLMJudge):
        def prefer_first(self, prompts, first, second):
            gap = [quality[f] - quality[s] for f, s in zip(first, second, strict=True)]
            return torch.tensor([1 / (1 + math.exp(-(3 + g / 2))) for g in gap])

    pairs = _copies(lambda i, j: f"q{i}-{j}")
    r = judge_agreement(Biased(), pairs)
    assert r["agreement"] == 0.5 and r["first_slot_rate"] == 1.0
    assert r["both_orders_agreement"] == 1.0 and r["both_orders_ci"] == (1.0, 1.0)
    p = 0.5 * (1 / (1 + math.exp(-3.5)) + 1 - 1 / (1 + math.exp(-2.5)))
    got = Biased(orders="both").compare(["q"], ["c1"], ["r1"])
    assert got.item() == pytest.approx(p, abs=1e-6) and p == pytest.approx(0.5233, abs=1e-4)

    class First(LLMJudge):
        def prefer_first(self, prompts, first, second):
            return torch.ones(len(prompts))

    assert judge_agreement(First(), pairs)["both_orders_scores"] == [0.5] * len(pairs)
    assert First(orders="both").compare(["q"], ["a"], ["b"]).tolist() == [0.5]
    with pytest.raises(ValueError, match="orders"):
        First(orders="twice")


def test_the_llm_judge_of_the_win_rate_tables_shows_both_orders_when_asked(tmp_path):
    """``eval.winrate.judge_orders: both`` reaches the judge: its P(a better) is the mean over the two
    orders of a real causal LM's next-token odds, so swapping a and b gives exactly 1 − P."""
    from alignlab.models import build_preset, train_tokenizer
    from alignlab.rewards.judges import llm_judge

    tokenizer = train_tokenizer(["Response A or Response B: which is more helpful? " * 5] * 20, vocab_size=300)
    torch.manual_seed(0)
    build_preset("tiny-s", tokenizer).save_pretrained(tmp_path / "judge")
    tokenizer.save_pretrained(tmp_path / "judge")
    prompts, a, b = ["hi", "how are you?"], ["hello", "fine"], ["bye", "bad"]
    both = llm_judge(str(tmp_path / "judge"), "hh", seed=0, orders="both")
    one = llm_judge(str(tmp_path / "judge"), "hh", seed=0)
    assert (both.orders, one.orders) == ("both", "random")
    p_ab, p_ba = both.compare(prompts, a, b), both.compare(prompts, b, a)
    torch.testing.assert_close(p_ab + p_ba, torch.ones(2), rtol=0, atol=1e-6)
    want = 0.5 * (both.prefer_first(prompts, a, b) + 1 - both.prefer_first(prompts, b, a))
    torch.testing.assert_close(p_ab, want.float())
