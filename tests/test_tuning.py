"""Tuning on validation prompts, reported on test prompts (issue 13, part 3).

- Validation and test prompts share no text: IMDb (validation: train-review prefixes, with a train
  review that opens like a test review, so the filter is exercised) and HH (a hash split of its eval
  prompts), asserted on the prompt texts ``eval_prompts`` hands the sampling evaluation.
- The selection picks what the criterion says, on hand-built frontier rows.
- End to end on the tiny fixture data (``run/ok.yaml``): the tuning runs run on validation prompts,
  the selected value runs with every seed on test prompts, tuning.csv names it; running again trains
  nothing, and adding a seed trains only the new final runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from alignlab.errors import ConfigError
from alignlab.experiment.config import TuneConfig, _reused, load_experiment
from alignlab.experiment.tuning import score, select
from alignlab.jobs.evaluation import eval_prompts
from alignlab.models import train_tokenizer
from alignlab.tasks import build_task

CORPUS = Path(__file__).resolve().parent / "fixtures" / "bad_inputs"

# ------------------------------------------------------------------------------------------ disjoint prompts

OPENINGS = ["This movie", "I loved", "The plot", "What a", "Never again", "A quiet", "My wife", "Some films"]


def _imdb(tmp_path: Path) -> Path:
    root = tmp_path / "imdb_data"
    (root / "imdb").mkdir(parents=True)
    train = [
        {"text": f"{o} review number {i} of the train split, good or bad.", "label": i % 2}
        for i, o in enumerate(OPENINGS * 3)
    ]
    test = [{"text": f"{o} test review {i}, it was fine.", "label": i % 2} for i, o in enumerate(OPENINGS[:4])]
    for name, rows in (("train", train), ("test", test)):
        (root / "imdb" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_imdb_validation_prompts_are_train_prefixes_sharing_no_text_with_the_test_or_train_prompts(
    tmp_path: Path,
) -> None:
    """Prefixes of 2 tokens of a word-ish tokenizer: "This movie" opens a train and a test review, so a
    train prefix "This movie" is never a validation prompt; the test prompts are the eval prompts; the
    train prompts (pairs, rollouts) and the validation prompts split the train prefixes by text."""
    root = _imdb(tmp_path)
    task = build_task({"name": "imdb", "data_dir": str(root), "use_unsup": False, "prompt_tokens_max": 2})
    texts = [t for t, _ in task.reviews("train") + task.reviews("test")]  # type: ignore[attr-defined]
    tok = train_tokenizer(texts * 4, vocab_size=400)
    test = eval_prompts(task, tok, 64, 8, 0, split="test")
    validation = eval_prompts(task, tok, 64, 8, 0, split="validation")
    assert test == eval_prompts(task, tok, 64, 8, 0, split="eval")  # the frontier's prompts are unchanged
    assert test and validation and not set(test) & set(validation)
    every = set(task._prefixes("train", tok))  # type: ignore[attr-defined]
    train = task.prompts("train", tok)
    assert not set(train) & set(validation)  # a validation prompt is never trained on
    assert set(validation) == every - set(train) - set(test)  # the rest of the train prefixes
    assert len(validation) == len(set(validation))  # each text once
    assert every & set(test)  # the collision the filter removes is there
    assert sorted(train) == sorted(p for p in task._prefixes("train", tok) if p in set(train))  # type: ignore[attr-defined]
    assert train != [p for p in task._prefixes("train", tok) if p in set(train)]  # type: ignore[attr-defined]


def test_hh_validation_and_test_prompts_are_a_hash_split_of_its_eval_prompts(tmp_path: Path) -> None:
    root = tmp_path / "hh_data" / "hh-rlhf" / "harmless-base"
    root.mkdir(parents=True)
    rows = [
        {
            "chosen": f"\n\nHuman: question {i}?\n\nAssistant: a kind answer {i}.",
            "rejected": f"\n\nHuman: question {i}?\n\nAssistant: a rude answer {i}.",
        }
        for i in range(200)
    ]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = build_task({"name": "hh", "data_dir": str(tmp_path / "hh_data"), "eval_fraction": 0.3})
    tok = train_tokenizer([r["chosen"] for r in rows], vocab_size=400)
    every = task.prompts("eval")
    test = eval_prompts(task, tok, 256, 8, 0, split="test")
    validation = eval_prompts(task, tok, 256, 8, 0, split="validation")
    assert not set(test) & set(validation) and sorted(test + validation) == sorted(every)
    assert 0.3 < len(validation) / len(every) < 0.7  # validation_fraction 0.5 of ~60 prompts
    assert eval_prompts(task, tok, 256, 8, 5, split="test") == test[:5]  # the sampling evaluation's first n
    assert not set(test) & set(task.prompts("train"))


# ------------------------------------------------------------------------------------------ the selection


def _rows(points: dict[int, list[tuple[float, float]]]) -> pd.DataFrame:
    """Frontier rows of one candidate: seed → its (KL, reward) points, one run per seed."""
    rows = [
        {"run": f"r{seed}", "step": step, "setting": f"seed={seed}", "seed": seed, "kl": kl, "reward": reward}
        for seed, pts in points.items()
        for step, (kl, reward) in enumerate(pts)
    ]
    return pd.DataFrame(rows)


# A: front (0, 0), (2, 1), (4, 1.5); B: (0, 0), (1, 1.2), (8, 1.6), with (3, 0.5) dominated; C: ends at (1, 1.3).
A = _rows({0: [(0, 0), (2, 1), (4, 1.5)]})
B = _rows({0: [(0, 0), (1, 1.2), (3, 0.5), (8, 1.6)]})
C = _rows({0: [(0, 0), (1, 1.3)]})


def test_reward_at_kl_interpolates_along_the_front_and_holds_the_last_point():
    """At KL 2: A 1.0 (a vertex); B 1.2 + 0.4 · (2 − 1)/(8 − 1) = 1.2571 (the dominated (3, 0.5) is
    off its front); C 1.3 (its front ends at KL 1, within the budget). At KL 4: A 1.5,
    B 1.2 + 0.4 · 3/7 = 1.3714, C 1.3."""
    at2 = [score(f, "reward_at_kl", 2.0)[0] for f in (A, B, C)]
    assert at2 == pytest.approx([1.0, 1.2 + 0.4 / 7, 1.3], abs=1e-12)
    at4 = [score(f, "reward_at_kl", 4.0)[0] for f in (A, B, C)]
    assert at4 == pytest.approx([1.5, 1.2 + 1.2 / 7, 1.3], abs=1e-12)
    tune = TuneConfig(grid={"train.lr": [1, 2, 3]}, criterion="reward_at_kl", kl=2.0)
    assert select([A, B, C], [True] * 3, tune)[0] == 2
    assert select([A, B], [True] * 2, tune)[0] == 1
    assert select([A, B, C], [True] * 3, TuneConfig(grid={}, kl=4.0))[0] == 0


def test_area_to_the_cap_picks_the_largest_area_and_not_the_reward_at_the_cap():
    """To KL 4 from 0: A = (0 + 1)/2 · 2 + (1 + 1.5)/2 · 2 = 3.5; B = (0 + 1.2)/2 · 1 + (1.2 + 1.3714)/2 · 3
    = 0.6 + 3.8571 = 4.4571; so area picks B where reward at KL 4 picks A."""
    tune = TuneConfig(grid={}, criterion="area", kl=4.0)
    best, scores = select([A, B], [True, True], tune)
    assert [s[0] for s in scores] == pytest.approx([3.5, 0.6 + (1.2 + 1.2 + 1.2 / 7) / 2 * 3], abs=1e-12)
    assert best == 1


def test_unfinished_candidates_are_never_picked_ties_go_first_and_seeds_are_averaged():
    """B unfinished: A wins. Two copies of A tie: the first. Two seeds with reward at KL 2 of 1.0 and
    2.0 score 1.5 ± t_{0.975,1} · 0.7071/√2 = 1.5 ± 12.706 · 0.5 = 1.5 ± 6.353."""
    tune = TuneConfig(grid={}, kl=2.0)
    assert select([A, B], [True, False], tune)[0] == 0
    assert select([A, A], [True, True], tune)[0] == 0
    assert select([A, B], [False, False], tune)[0] is None
    two = _rows({0: [(0, 0), (2, 1)], 1: [(0, 0), (2, 2)]})
    mean, _low, high, n = score(two, "reward_at_kl", 2.0)
    assert (mean, n) == (1.5, 2) and high - mean == pytest.approx(12.7062047 * 0.5, abs=1e-6)
    assert math.isnan(score(A.iloc[:0], "reward_at_kl", 2.0)[0])  # no rows: no score


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("method", "key", "said"),
    [
        ("{name: dpo, sweep: {beta: [0.1]}, tune: {grid: {beta: [0.1, 1]}}}", "methods[0].tune.grid.beta", "sweep"),
        ("{name: dpo, tune: {grid: {seed: [0, 1]}}}", "methods[0].tune.grid.seed", "not tuned"),
        ("{name: dpo, tune: {grid: {train.lr: [0.1]}, seeds: 3}}", "methods[0].tune.seeds", "runs 2 seed"),
        ("{name: dpo, tune: {grid: {}}}", "methods[0].tune.grid", "expected a mapping"),
        ("{name: dpo, tune: {grid: {train.lr: [0.1]}, criterion: auc}}", "methods[0].tune.criterion", ""),
        (
            "{name: dpo, sweep: {beta: [0.1, 1]}, tune: {grid: {train.lr: [0.1]}, sweep: {beta: [0.5]}}}",
            "methods[0].tune.sweep.beta",
            "some of the values of methods[0].sweep.beta",
        ),
        ("{name: dpo, tune: {grid: {train.lr: [0.1]}, sweep: {tau: [1]}}}", "methods[0].tune.sweep.tau", "some of"),
        (
            "{name: dpo, tune: {grid: {train.lr: [0.1]}, sweep: {seed: [0]}}}",
            "methods[0].tune.sweep.seed",
            "tune.seeds",
        ),
    ],
)
def test_a_bad_tune_block_names_its_key(method: str, key: str, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    with pytest.raises(ConfigError) as err:
        load_experiment("run/ok.yaml", ["seeds=2", f"methods=[{method}]"])
    # the methods came from the command line: the error names that argument, then the key inside it
    assert err.value.source == "command line" and err.value.key == f"methods=[{method}]"
    assert err.value.message.startswith(f"{key}: ") and said in err.value.message


def test_tune_sweep_tunes_at_some_settings_and_the_choice_runs_at_every_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """DPO β ∈ {0.05, 0.1, 1}, lr grid of 2, tuned at β 0.1 only, 2 seeds, 1 tuning seed: 2 tuning runs
    (β 0.1, seed 0, each lr); each candidate's final runs are every β with both seeds (6)."""
    monkeypatch.chdir(CORPUS)
    method = "{name: dpo, sweep: {beta: [0.05, 0.1, 1]}, tune: {grid: {train.lr: [0.01, 0.001]}, sweep: {beta: [0.1]}}}"
    exp = load_experiment("run/ok.yaml", ["seeds=2", f"methods=[{method}]"])
    (tuned,) = exp.tuned
    assert [c.values for c in tuned.candidates] == [{"train.lr": 0.01}, {"train.lr": 0.001}]
    for candidate in tuned.candidates:
        assert [(r.setting["beta"], r.setting["seed"]) for r in candidate.tune_runs] == [(0.1, 0)]
        assert sorted((r.setting["beta"], r.setting["seed"]) for r in candidate.final_runs) == [
            (b, s) for b in (0.05, 0.1, 1) for s in (0, 1)
        ]
        assert all(r.cfg.eval.split == "validation" and r.cfg.eval.also_test for r in candidate.tune_runs)
        # tune.reuse (the default): the tuning run is the final run with its β and seed, the others train
        reused = {(r.setting["beta"], r.setting["seed"]): r.trained_by for r in candidate.final_runs}
        assert reused.pop((0.1, 0)) is candidate.tune_runs[0]
        assert set(reused.values()) == {None}
    off = load_experiment("run/ok.yaml", ["seeds=2", f"methods=[{method}]", "tune={reuse: false}"]).tuned[0]
    assert all(r.trained_by is None for c in off.candidates for r in c.final_runs)
    assert not any(r.cfg.eval.also_test for c in off.candidates for r in c.tune_runs)
    # a final run with win rates to judge (which tuning runs do not) trains anew
    first = tuned.candidates[0]
    final = next(r for r in first.final_runs if r.trained_by is not None)
    judged = dataclasses.replace(final.cfg.eval, winrate=dataclasses.replace(final.cfg.eval.winrate, temperatures=[0]))
    final = dataclasses.replace(final, cfg=dataclasses.replace(final.cfg, eval=judged), trained_by=None)
    assert _reused(final, first.tune_runs).trained_by is None


# ------------------------------------------------------------------------------------------ end to end


def test_tune_then_final_runs_on_test_prompts_and_a_rerun_trains_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alignlab.experiment.runner import run_experiment

    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))
    argv = [
        f"out_dir={tmp_path / 'results'}",
        f"runs_dir={tmp_path / 'runs'}",
        "eval.prompts=4",
        "eval.max_new_tokens=4",
        "tune={grid: {train.lr: [0.001, 0.01]}, kl: 1.0, reuse: false}",
        "methods=[{name: dpo}, {name: ipo, tune: null}]",
    ]
    first = run_experiment("run/ok.yaml", [*argv, "seeds=1"])
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    tuning = pd.read_csv(tmp_path / "results" / "tuning.csv")
    chosen = tuning.loc[tuning["selected"], "candidate"].tolist()
    assert len(chosen) == 1 and list(tuning["candidate"]) == ["train.lr=0.001", "train.lr=0.01"]
    lr = chosen[0].split("=")[1]
    assert runs == sorted(["tune-dpo-lr0.001-seed0", "tune-dpo-lr0.01-seed0", f"dpo-lr{lr}-seed0", "ipo-seed0"])
    assert first["trained"] == 4 and (tmp_path / "results" / "tuning.md").is_file()

    def config(run: str) -> dict:
        return yaml.safe_load((tmp_path / "runs" / run / "config.yaml").read_text())

    assert config("tune-dpo-lr0.01-seed0")["eval"]["split"] == "validation"
    final = config(f"dpo-lr{lr}-seed0")
    assert final["eval"]["split"] == "test" and final["train"]["lr"] == float(lr)
    frontier = pd.read_csv(tmp_path / "results" / "frontier.csv")
    assert set(frontier["run"]) == {f"dpo-lr{lr}-seed0", "ipo-seed0"}  # no tuning run on the frontier

    again = run_experiment("run/ok.yaml", [*argv, "seeds=1"])
    assert again["trained"] == 0 and again["skipped_finished"] == 4
    assert pd.read_csv(tmp_path / "results" / "tuning.csv").equals(tuning)

    # the same runs under tune.reuse (its tuning runs would evaluate the test prompts too): refused, the key named
    with pytest.raises(ConfigError, match=r"tune\.reuse.*trained without eval\.also_test.*reuse: false"):
        run_experiment("run/ok.yaml", [*(a.replace(", reuse: false", "") for a in argv), "seeds=1"])
    more = run_experiment("run/ok.yaml", [*argv, "seeds=2"])  # tuning keeps the first seed
    assert more["trained"] == 2 and more["skipped_finished"] == 4
    assert (tmp_path / "runs" / f"dpo-lr{lr}-seed1").is_dir() and (tmp_path / "runs" / "ipo-seed1").is_dir()


def test_with_tune_reuse_the_chosen_tuning_run_is_the_first_seeds_final_run_to_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same tuned DPO with tune.reuse off and on (2 seeds): on, the tuning runs evaluate the test
    prompts too and the chosen one is the seed-0 final run — one run fewer trained, the same choice,
    and that run's frontier rows are the separately trained seed-0 run's, number for number."""
    from alignlab.experiment.runner import run_experiment

    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))

    def run(name: str, reuse: bool) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
        done = run_experiment(
            "run/ok.yaml",
            [
                f"out_dir={tmp_path / name / 'results'}",
                f"runs_dir={tmp_path / name / 'runs'}",
                "eval.prompts=4",
                "eval.max_new_tokens=4",
                "seeds=2",
                f"tune={{grid: {{train.lr: [0.001, 0.01]}}, kl: 1.0, reuse: {str(reuse).lower()}}}",
                "methods=[{name: dpo}]",
            ],
        )
        results = tmp_path / name / "results"
        return done, pd.read_csv(results / "frontier.csv"), pd.read_csv(results / "tuning.csv")

    apart, apart_frontier, apart_tuning = run("apart", reuse=False)
    reused, frontier, tuning = run("reused", reuse=True)
    assert (apart["trained"], reused["trained"]) == (4, 3)  # 2 tuning + 2 seeds; 2 tuning + seed 1
    score = ["candidate", "score", "selected"]
    assert tuning[score].equals(apart_tuning[score])  # the validation evaluation is the same
    lr = tuning.loc[tuning["selected"], "candidate"].item().split("=")[1]
    runs = sorted(p.name for p in (tmp_path / "reused" / "runs").iterdir() if p.is_dir())
    assert runs == ["dpo-lr" + lr + "-seed1", "tune-dpo-lr0.001-seed0", "tune-dpo-lr0.01-seed0"]
    numbers = ["run", "step", "kl", "kl_ci_low", "kl_ci_high", "reward", "reward_ci_low", "reward_ci_high", "samples"]
    for seed in (0, 1):
        mine = frontier.loc[frontier["seed"] == seed, numbers].reset_index(drop=True)
        theirs = apart_frontier.loc[apart_frontier["seed"] == seed, numbers].reset_index(drop=True)
        assert len(mine) >= 2 and mine.equals(theirs), seed
    log = tmp_path / "reused" / "runs" / f"tune-dpo-lr{lr}-seed0" / "metrics.jsonl"
    tuned = json.loads(log.read_text().splitlines()[0])
    assert tuned["sample_reward"] != tuned["test_sample_reward"]  # validation and test prompts: two evaluations
    again, _, _ = run("reused", reuse=True)  # everything finished: nothing trains
    assert (again["trained"], again["skipped_finished"]) == (0, 3)
    config = (tmp_path / "reused" / "results" / "configs" / f"dpo-lr{lr}-seed0.yaml").read_text()
    assert config.startswith(f"# tune.reuse: trained as the tuning run tune-dpo-lr{lr}-seed0")
    assert yaml.safe_load(config)["eval"]["split"] == "test"
