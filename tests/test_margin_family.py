"""The margin-aware family end to end (issue 16): ``alignlab run experiments/margin_family.yaml`` trains
DPO, cDPO, rDPO, MADPO, ODPO, DPOP and β-DPO with 3 seeds on generated IMDb pairs whose training
labels are 20% flipped, the scores of MADPO and ODPO given by a reward model trained on those noisy
pairs (and, for MADPO-gold and ODPO-gold, by the gold judge), and writes the seed-aggregated frontier
and its summaries; run again, it trains nothing. 27 runs at smoke size: tens of minutes on 2 CPU
cores, ``slow``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from alignlab.cli import main

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
LABELS = {"DPO", "cDPO", "rDPO", "MADPO", "ODPO", "DPOP", "beta-DPO", "MADPO-gold", "ODPO-gold"}


def train_rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def test_the_margin_family_runs_under_label_noise_and_summarises(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["run", "experiments/margin_family.yaml", f"out_dir={results}", f"runs_dir={runs}"]
    assert main(argv) == 0
    frontier = pd.read_csv(results / "frontier.csv")
    assert set(frontier["method"]) == LABELS
    assert (frontier.groupby("method")["seed"].nunique() == 3).all()
    assert (frontier[frontier["step"] == 0]["kl"].abs() < 1e-9).all()  # every run starts at π_ref
    summary = pd.read_csv(results / "summary.csv")
    assert set(summary["method"]) == LABELS
    for name in ("frontier.png", "frontier.md", "compute.md"):
        assert (results / name).stat().st_size > 0
    # the scored objectives read the reward model's scores: MADPO weighed its pairs, ODPO left out those
    # whose reward-model margin contradicts their (possibly flipped) label
    weights = [r["weights"] for r in train_rows(runs / "MADPO-seed0")]
    assert len(weights) == 48 and all(w != 1.0 for w in weights)
    defined = [r["offset_defined"] for r in train_rows(runs / "ODPO-seed0")]
    assert 0 < sum(defined) / len(defined) < 1
    # the gold judge's scores travel with the flipped completions: a fifth of the pairs has a chosen side
    # that scored lower, where ODPO's logarithm is undefined
    defined = [r["offset_defined"] for r in train_rows(runs / "ODPO-gold-seed0")]
    assert abs(sum(defined) / len(defined) - 0.8) < 0.05
    summary_json = json.loads((runs / "DPO-seed0" / "summary.json").read_text())
    assert summary_json["reward_model"]["train_pairs"] > 0  # the scores' reward model, on the training pairs
    capsys.readouterr()
    assert main(argv) == 0  # again: everything is finished, nothing trains
    assert '"trained": 0' in capsys.readouterr().out
