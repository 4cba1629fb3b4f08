"""The comparison protocol end to end (issue 13): ``alignlab run experiments/protocol_demo.yaml``
tunes each method's learning rate on validation prompts, runs the chosen one with two seeds on the
test prompts, and writes tuning.csv, a seed-aggregated frontier, summary.csv and both plots; run
again, it trains nothing. About three minutes on 2 CPU cores (stages cached): ``slow``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from alignlab.cli import main

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_the_protocol_demo_tunes_runs_seeds_and_summarises(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["run", "experiments/protocol_demo.yaml", f"out_dir={results}", f"runs_dir={runs}"]
    assert main(argv) == 0
    tuning = pd.read_csv(results / "tuning.csv")
    assert set(tuning["method"]) == {"DPO", "IPO", "PPO-GT"}  # labels default to display names
    assert (tuning.groupby("method")["selected"].sum() == 1).all()  # one choice per method, by its score
    for _, chosen in tuning[tuning["selected"]].iterrows():
        same = tuning[tuning["method"] == chosen["method"]]
        assert chosen["score"] == same["score"].max()
    frontier = pd.read_csv(results / "frontier.csv")
    assert not frontier["run"].str.startswith("tune-").any()  # tuning runs stay out of the frontier
    assert (frontier.groupby("method")["seed"].nunique() == 2).all()
    assert sorted(frontier["step"].unique())[:3] == [0, 1, 2]  # dense at the start
    summary = pd.read_csv(results / "summary.csv")
    assert set(summary["method"]) == {"DPO", "IPO", "PPO-GT"}
    for name in ("frontier.png", "frontier.md", "tuning.md"):
        assert (results / name).stat().st_size > 0
    capsys.readouterr()
    assert main(argv) == 0  # again: everything is finished, nothing trains
    assert '"trained": 0' in capsys.readouterr().out
    assert main(["list", *argv[1:]]) == 0
    listed = capsys.readouterr().out
    assert "DPO: tuned by reward_at_kl at KL 2, 2 candidates" in listed and "finished  tune-dpo-lr0.002-seed0" in listed
    # tune.reuse: each candidate's seed-0 final run is its tuning run, its seed-1 run its own
    assert "if selected: dpo-lr0.002-seed0 (is tune-dpo-lr0.002-seed0), dpo-lr0.002-seed1 (" in listed
