"""The default IMDb toy world (issue 14; results/toy_world/README.md).

- Its shared stages, through the same YAML and code path as the default
  (``experiments/prepare_imdb.yaml``) at smoke size: built once, then reused from the cache and
  reloaded whole (the pairs, the reward model and its held-out metrics).
- ``slow``: on the default toy world (``experiments/toy_world/default.yaml``, one seed), tuned DPO's
  held-out implicit-reward accuracy rises above 0.60 and its gold reward rises over π_ref within
  KL 10. The full targets (accuracy ≥ 0.70, a gain ≥ +1.0, 3 seeds) are measured in
  results/toy_world/, not asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from alignlab.data import in_cache
from alignlab.pairs import load_pairs
from alignlab.prepare import run_prepare

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "experiments" / "prepare_imdb.yaml"
DEFAULT = REPO / "experiments" / "toy_world" / "default.yaml"


def smoke_size(small_imdb: Path, out: Path) -> list[str]:
    """The default's stages with tiny counts: a smoke model, 4 SFT steps, 30 train prefixes × 4 samples."""
    return [
        f"task.data_dir={small_imdb}",
        "task.use_unsup=false",
        "model.preset=smoke",
        "model.vocab_size=500",
        "model.tokenizer_texts=300",
        "sft.steps=4",
        "sft.batch_size=8",
        "sft.seq_len=32",
        "sft.warmup_steps=1",
        "sft.eval_blocks=2",
        "samples.n=2",
        "samples.max_new_tokens=6",
        "pairs.max_prompts=30",
        "pairs.max_new_tokens=8",
        "reward_model.batch_size=4",
        f"out_dir={out}",
    ]


def test_the_default_stages_build_cache_and_reload_at_smoke_size(small_imdb: Path, cache: Path, tmp_path: Path):
    first = run_prepare(PREPARE, smoke_size(small_imdb, tmp_path / "first"), progress=False)["stages"]
    # the default's protocol at tiny counts: 4 samples per prefix -> all 6 pairs of each prefix
    assert first["pairs"]["prompts"] == 30 and first["pairs"]["samples"] == 120
    assert first["pairs"]["pairs"] + first["pairs"]["ties_dropped"] == 180
    assert first["reward_model"]["held_out"]["pairs"] > 0  # the held-out prompts' pairs (split by prompt)
    assert first["sft"]["cached"] is False and first["reward_model"]["cached"] is False
    assert first["sft"]["held_out_ppl"] < first["sft"]["held_out_ppl_before"]
    assert all("gold_reward" in s for s in first["samples"]["samples"])

    again = run_prepare(PREPARE, smoke_size(small_imdb, tmp_path / "again"), progress=False)["stages"]
    assert again["sft"]["cached"] is True and again["pairs"]["cached"] is True and again["reward_model"]["cached"]
    assert again["sft"]["path"] == first["sft"]["path"] and again["pairs"]["path"] == first["pairs"]["path"]
    assert again["sft"]["held_out_ppl"] == first["sft"]["held_out_ppl"]
    # the reward model reloaded from the cache gives the held-out metrics it was built with
    assert again["reward_model"]["held_out"] == first["reward_model"]["held_out"]
    # the cached pairs read back whole, as many as were made
    pairs_dir = in_cache(first["pairs"]["path"])
    assert pairs_dir.parent.parent == cache
    assert len(load_pairs(pairs_dir)) == first["pairs"]["pairs"]
    assert json.loads((tmp_path / "again" / "stages.json").read_text())["stages"]["pairs"]["cached"] is True


@pytest.mark.slow
def test_tuned_dpo_learns_on_the_default_toy_world(data_dir: Path, tmp_path: Path):
    """About 40 minutes alone on 2 cores (the stages cached; ~9 more from an empty cache): 3 tuning
    runs of 800 steps on validation prompts, then the chosen learning rate's run on the test prompts."""
    from alignlab.experiment.runner import run_experiment

    runs, out = tmp_path / "runs", tmp_path / "results"
    run_experiment(DEFAULT, ["seeds=1", f"runs_dir={runs}", f"out_dir={out}"])
    tuning = pd.read_csv(out / "tuning.csv")
    chosen = tuning[tuning["selected"].astype(bool)]
    assert len(chosen) == 1
    frontier = pd.read_csv(out / "frontier.csv")
    final = frontier[~frontier["run"].str.startswith("tune-")]
    assert final["run"].nunique() == 1
    (run,) = final["run"].unique()
    ref = final.loc[final["step"] == 0, "reward"].item()  # step 0: π_ref itself on the test prompts
    within = final[(final["kl"] <= 10) & (final["step"] > 0)]
    assert len(within) > 0 and within["reward"].max() > ref
    rows = [json.loads(line) for line in (runs / run / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["eval_reward_accuracy"] for r in rows if r.get("split") == "eval" and "eval_reward_accuracy" in r]
    assert accuracy[-1] > 0.60


def test_a_reward_model_without_held_out_pairs_is_trained_not_measured(small_imdb: Path, cache: Path, tmp_path: Path):
    """6 prefixes: all of them fall in the train split (split by a hash of the prompt), so no pair is
    held out; the reward model still trains, and its held-out accuracy is None, not a crash."""
    stages = run_prepare(PREPARE, [*smoke_size(small_imdb, tmp_path), "pairs.max_prompts=6"], progress=False)["stages"]
    assert stages["reward_model"]["train_pairs"] == stages["pairs"]["pairs"] > 0
    assert stages["reward_model"]["held_out"] is None and stages["reward_model"]["held_out_before"] is None


def test_too_few_pairs_for_the_reward_model_batch_is_one_clear_error(small_imdb: Path, cache: Path, tmp_path: Path):
    from alignlab.errors import AlignlabError

    with pytest.raises(AlignlabError, match=r"training pairs, fewer than its batch size of 4096"):
        run_prepare(PREPARE, [*smoke_size(small_imdb, tmp_path), "reward_model.batch_size=4096"], progress=False)


def test_a_reports_cache_path_reads_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Reports and summary.json write the stage cache as $ALIGNLAB_CACHE_DIR; ``in_cache`` reads it back
    under the variable when set, under the default cache when it is not (expandvars would leave it)."""
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))
    assert in_cache("$ALIGNLAB_CACHE_DIR/sft/abc") == tmp_path / "cache" / "sft" / "abc"
    monkeypatch.delenv("ALIGNLAB_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert in_cache("$ALIGNLAB_CACHE_DIR/sft/abc") == tmp_path / "home" / ".cache" / "alignlab" / "sft" / "abc"
    assert in_cache("/elsewhere/sft/abc") == Path("/elsewhere/sft/abc")
