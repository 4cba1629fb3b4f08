"""The margin-aware family end to end (issue 16): ``alignlab run experiments/margin_family.yaml`` trains
DPO, cDPO, rDPO, MADPO, ODPO, DPOP and β-DPO with 3 seeds on generated IMDb pairs whose training
labels are 20% flipped, the scores of MADPO and ODPO given by a reward model trained on those noisy
pairs, and writes the seed-aggregated frontier and its summaries; run again, it trains nothing.
21 runs at smoke size: several minutes on 2 CPU cores, ``slow``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from alignlab.cli import main

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
LABELS = {"DPO", "cDPO", "rDPO", "MADPO", "ODPO", "DPOP", "beta-DPO"}


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
    rows = [json.loads(line) for line in (runs / "MADPO-seed0" / "metrics.jsonl").read_text().splitlines()]
    weights = [r["weights"] for r in rows if r["split"] == "train"]
    assert weights and all(w != 1.0 for w in weights)
    rows = [json.loads(line) for line in (runs / "ODPO-seed0" / "metrics.jsonl").read_text().splitlines()]
    defined = [r["offset_defined"] for r in rows if r["split"] == "train"]
    assert 0 < sum(defined) / len(defined) < 1
    summary_json = json.loads((runs / "DPO-seed0" / "summary.json").read_text())
    assert summary_json["reward_model"]["train_pairs"] > 0  # the scores' reward model, on the training pairs
    capsys.readouterr()
    assert main(argv) == 0  # again: everything is finished, nothing trains
    assert '"trained": 0' in capsys.readouterr().out
