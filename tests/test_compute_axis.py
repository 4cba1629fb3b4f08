"""The compute axis (issue 13, part 6): policy forward-equivalent tokens (alignlab/train/loop.py) by
hand for a tiny offline batch, cumulative and monotone over a tiny DPO run's eval rows, in frontier.csv,
compute.csv and the reward-against-compute plot, and PPO's accounting on a tiny PPO run.

The real runs use the tiny fixture data (tests/fixtures/bad_inputs/train/ok.yaml: a smoke policy,
2 training pairs, batch 2) with a cache in tmp, as tests/test_faults.py does.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch

from alignlab.core.scoring import EncodedBatch
from alignlab.experiment.csvs import COMPUTE_COLUMNS, FRONTIER_COLUMNS, read_csv, write_csv
from alignlab.experiment.report import compute_rows, plot_dir, run_rows, table_dir
from alignlab.jobs.job import run_training
from alignlab.objectives import get_objective
from alignlab.tasks.base import PreferencePair
from alignlab.train import online as ppo_module
from alignlab.train.data import PairData, UnpairedData, UnpairedExample
from alignlab.train.offline import objective_step

CORPUS = Path(__file__).resolve().parent / "fixtures" / "bad_inputs"


def _batch(lengths: list[int], prompt: int, width: int = 6) -> EncodedBatch:
    """Right-padded rows of ``lengths`` real tokens, the first ``prompt`` of each the prompt."""
    attention = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    completion = attention.clone()
    completion[:, :prompt] = 0
    return EncodedBatch(torch.ones_like(attention), attention, completion)


def test_offline_tokens_by_hand():
    """Three pairs, prompts of 2 tokens, right-padded to 6 (padding is not counted):

    |x y_w| = 5, 3, 4 and |x y_l| = 4, 6, 2, so the pairs hold 9, 9, 6 tokens.
    DPO, a step on rows [0, 2]: 3 (forward + backward) × (9 + 6) = 45; on [1]: 27.
    Its reference cache, once: one forward of π_ref over every row = 9 + 9 + 6 = 24.
    SimPO (reference-free): the same 45 per step, no reference cache (0).
    KTO, rows |x y| = 5, 3 and their mismatched twins |x' y| = 4, 6 (a policy forward, no gradient):
    a step on [0, 1] = 3 × (5 + 3) + (4 + 6) = 34; the reference cache = (5 + 3) + (4 + 6) = 18.
    """
    pairs = [PreferencePair(f"p{i}", "a", "b") for i in range(3)]
    data = PairData(pairs, _batch([5, 3, 4], 2), _batch([4, 6, 2], 2), 0)
    dpo = get_objective("dpo")
    step = objective_step(dpo, dpo.config_cls(), data, SimpleNamespace())
    assert step.compute_tokens([0, 2]) == 45.0 and step.compute_tokens([1]) == 27.0
    assert step.reference_tokens() == 24.0
    simpo = get_objective("simpo")
    free = objective_step(simpo, simpo.config_cls(), data, SimpleNamespace())
    assert free.compute_tokens([0, 2]) == 45.0 and free.reference_tokens() == 0.0
    kto = get_objective("kto")
    examples = [UnpairedExample("p0", "a", True), UnpairedExample("p1", "b", False)]
    unpaired = UnpairedData(examples, _batch([5, 3], 2), _batch([4, 6], 2), torch.tensor([True, False]))
    k = objective_step(kto, kto.config_cls(), unpaired, SimpleNamespace())
    assert k.compute_tokens([0, 1]) == 34.0 and k.reference_tokens() == 18.0


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


SAMPLING = ["eval.prompts=2", "eval.max_new_tokens=4", "train.eval_every=1"]


def test_a_dpo_run_counts_its_compute_at_every_eval_row_and_frontier_csv_has_it(corpus_cache, tmp_path):
    """DPO on 2 pairs, batch 2: every step trains on both pairs, so a step costs 3 × the tokens the
    reference cache costs once (the step-0 eval row's total); the totals are cumulative: eval row
    k = the reference cache + k steps, strictly increasing; frontier.csv and compute.csv carry them,
    compute_s the sum of the train rows' step_s; ``alignlab table``/``plot`` write the compute
    table and frontier_compute.png from a results directory."""
    out = tmp_path / "dpo"
    run_training("train/ok.yaml", [f"out_dir={out}", "objective={name: dpo, beta: 0.1}", "train.steps=3", *SAMPLING])
    rows = _rows(out)
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    reference = evals[0]["compute_tokens"]
    assert evals[0]["step"] == 0 and reference > 0
    assert all(r["step_tokens"] == 3 * reference for r in train)
    assert [r["compute_tokens"] for r in train] == [reference * (1 + 3 * k) for k in (1, 2, 3)]
    assert [r["compute_tokens"] for r in evals] == [reference * (1 + 3 * r["step"]) for r in evals]
    totals = [r["compute_tokens"] for r in evals]
    assert [r["step"] for r in evals] == [0, 1, 2, 3] and totals == sorted(set(totals))

    run = SimpleNamespace(
        cfg=SimpleNamespace(out_dir=str(out), train=SimpleNamespace(seed=0, batch_size=2), task={"name": "imdb"}),
        label="dpo",
        method=SimpleNamespace(name="dpo", cfg=get_objective("dpo").config_cls()),
        run_id="dpo-a",
        setting={},
        run_dir=out,
        trained_by=None,
    )
    frontier, _ = run_rows("x", run)
    assert [r["compute_tokens"] for r in frontier] == totals
    seconds = [sum(r["step_s"] for r in train if r["step"] <= e["step"]) for e in evals]
    assert [r["compute_s"] for r in frontier] == pytest.approx(seconds, abs=1e-3)
    assert frontier[0]["compute_s"] == 0
    results = tmp_path / "results"
    results.mkdir()
    write_csv(results / "frontier.csv", frontier, FRONTIER_COLUMNS)
    (compute,) = compute_rows([run])
    assert compute["tokens_per_step"] == 3 * reference and compute["compute_tokens"] == totals[-1]
    held = json.loads((out / "summary.json").read_text())["models_held"]  # full weights: the policy trains all
    assert compute["trainable_parameters"] == held[0]["parameters"] < compute["parameters_held"]
    write_csv(results / "compute.csv", [compute], COMPUTE_COLUMNS)
    read = read_csv(results / "frontier.csv")
    assert list(read["compute_tokens"]) == totals
    names = {p.name for p in [*table_dir(results), *plot_dir(results)]}
    assert {"frontier_compute.png", "frontier_compute.svg", "compute.md", "frontier.png"} <= names
    table = (results / "compute.md").read_text()
    assert "FE tokens / step" in table and f"| {3 * reference:,.0f} |" in table and "policy + reference" in table
    assert f"| {held[0]['parameters']:,} | 2 |" in table  # parameters trained, then the batch


def test_an_older_frontier_csv_without_compute_still_reads_and_plots(tmp_path):
    """A frontier.csv of an older alignlab (no compute columns): read with them empty, the KL plot drawn,
    no compute plot."""
    old = [c for c in FRONTIER_COLUMNS if c not in ("compute_tokens", "compute_s")]
    rows = [
        {"experiment": "x", "method": "dpo", "objective": "dpo", "run": "a", "setting": "-", "seed": 0}
        | {"step": s, "kl": kl, "reward": r, "samples": 2, "finished": True, "knobs": "{}"}
        for s, kl, r in ((0, 0.0, 0.1), (2, 0.5, 0.3))
    ]
    pd.DataFrame(rows, columns=old).to_csv(tmp_path / "frontier.csv", index=False)
    read = read_csv(tmp_path / "frontier.csv")
    assert read["compute_tokens"].isna().all() and read["compute_s"].isna().all()
    assert [p.name for p in plot_dir(tmp_path)] == ["frontier.png", "frontier.svg"]


def test_ppo_counts_generation_scoring_and_every_update(corpus_cache, tmp_path, monkeypatch):
    """PPO-GT, batch 2, 2 epochs of 1 minibatch, 2 iterations; S = the real tokens (prompt +
    completion) of an iteration's rollouts, ρ = parameters over the policy's. Per iteration:
    generation S + gold reward 0 + old log-probs and values (1 + ρ_c) S + π_ref ρ_ref S
    + 2 epochs × 3 (1 + ρ_c) S = S (1 + ρ_ref + 7 (1 + ρ_c)); π_ref is the SFT policy (ρ_ref = 1),
    the critic the SFT backbone with a scalar head (ρ_c near 1)."""
    seen: list[tuple[float, Any]] = []
    collect = ppo_module.collect

    def spy(*args: Any, **kwargs: Any) -> Any:
        exp = collect(*args, **kwargs)
        seen.append((float(exp.sequences.attention_mask.sum()), args[-2]))  # (..., costs, estimator state)
        return exp

    monkeypatch.setattr(ppo_module, "collect", spy)
    out = tmp_path / "ppo"
    run_training(
        "train/ok.yaml",
        [
            f"out_dir={out}",
            "objective={name: ppo}",
            "rollout.epochs=2",
            "rollout.minibatches=1",
            "reward.kind=gold",
            "rollout.max_new_tokens=4",
            "train.steps=2",
            *SAMPLING,
        ],
    )
    rows = _rows(out)
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert len(seen) == 2
    costs = seen[0][1]
    assert costs.reference == 1.0 and costs.reward == 0.0 and 0.5 < costs.critic < 1.5
    expected = [S * (1 + costs.reference + 7 * (1 + costs.critic)) for S, _ in seen]
    assert [r["step_tokens"] for r in train] == pytest.approx(expected, rel=1e-12)
    assert [r["compute_tokens"] for r in train] == pytest.approx([expected[0], sum(expected)], rel=1e-12)
    assert evals[0]["compute_tokens"] == 0 and evals[-1]["compute_tokens"] == train[-1]["compute_tokens"]
