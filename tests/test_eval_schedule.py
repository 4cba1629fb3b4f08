"""When a run evaluates: ``train.eval_schedule`` (every | log | list) and the one function behind it.

- ``log`` puts step 0, step 1 and the last step in, strictly increasing and dense at the start
  (hand-computed list), with fewer distinct steps on short runs; ``list`` is the user's steps
  plus 0 and the last; ``every`` is the old ``eval_every`` rule, step for step.
- Bad schedules are ConfigErrors naming the key as written, in a run and in an experiment.
- A real run (the corpus's tiny ``train/ok.yaml``, DPO), stopped once by a signal just after an
  evaluation and once killed between an evaluation and its checkpoint, resumed each time by the
  same command, evaluates at exactly the steps, and to the numbers, of an uninterrupted run; PPO
  evaluates at the same schedule's steps.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from alignlab.errors import ConfigError
from alignlab.experiment.config import load_experiment
from alignlab.interrupts import Interrupted
from alignlab.jobs.job import resolve, run_training
from alignlab.train.config import TrainConfig, eval_steps

CORPUS = Path(__file__).resolve().parent / "fixtures" / "bad_inputs"


def _log(steps: int, points: int) -> list[int]:
    return eval_steps(TrainConfig(steps=steps, eval_schedule="log", eval_points=points))


def test_the_log_schedule_of_200_steps_and_12_points_by_hand():
    """0 and 200^(k/10), k = 0..10; 200^(1/10) = e^(5.2983/10) = 1.6986, so the powers are
    1, 1.6986, 2.8852, 4.9007, 8.3244, 14.140, 24.018, 40.797, 69.298, 117.71, 200, rounded half up
    1, 2, 3, 5, 8, 14, 24, 41, 69, 118, 200: half the 12 evaluations fall in the first 8 steps
    (every 50 would give 0, 50, 100, 150, 200)."""
    assert _log(200, 12) == [0, 1, 2, 3, 5, 8, 14, 24, 41, 69, 118, 200]


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 18, 20, 48, 200, 2000, 10**6])
@pytest.mark.parametrize("points", [3, 4, 8, 12, 16, 40])
def test_the_log_schedule_holds_0_1_and_the_end_increases_strictly_and_is_dense_early(steps, points):
    """At most n steps (rounding merges early ones on short runs: 3 steps, 12 points -> [0, 1, 2, 3]);
    the gaps between them grow along the run: a geometric gap never shrinks, and rounding each
    point by at most 1/2 moves a gap by less than 1, so an integer gap is at least the one before
    it minus 1, and the last gap is the largest but for 1."""
    got = _log(steps, points)
    assert got[0] == 0 and got[1] == 1 and got[-1] == steps
    gaps = [b - a for a, b in itertools.pairwise(got)]
    assert min(gaps) >= 1 and len(got) <= points
    assert all(after >= before - 1 for before, after in itertools.pairwise(gaps)), gaps
    assert gaps[-1] >= max(gaps) - 1
    assert _log(3, 12) == [0, 1, 2, 3] and _log(3, 3) == [0, 1, 3]


def test_explicit_steps_get_0_and_the_last_step_added():
    cfg = TrainConfig(steps=20, eval_schedule="list", eval_steps=[5, 10])
    assert eval_steps(cfg) == [0, 5, 10, 20]
    assert eval_steps(TrainConfig(steps=20, eval_schedule="list", eval_steps=[0, 20])) == [0, 20]
    assert eval_steps(TrainConfig(steps=20, eval_schedule="list")) == [0, 20]  # []: start and end only


@pytest.mark.parametrize(("steps", "every"), [(200, 50), (48, 20), (7, 3), (5, 5), (3, 10), (1, 1)])
def test_every_evaluates_where_eval_every_always_did(steps, every):
    """The rule ``RunLoop.periodic`` had: step % eval_every == 0, or the last step."""
    old = [s for s in range(steps + 1) if s % every == 0 or s == steps]
    assert eval_steps(TrainConfig(steps=steps, eval_every=every)) == old
    assert TrainConfig().eval_schedule == "every"  # the default: a YAML without the new keys is unchanged


@pytest.mark.parametrize(
    ("overrides", "key", "source", "said"),
    [
        (["train.eval_schedule=log"], "train.eval_points", "train/ok.yaml", "required with eval_schedule: log"),
        # a key set on the command line: the error names the argument
        (["train.eval_schedule=log", "train.eval_points=2"], "train.eval_points=2", "command line", "must be >= 3"),
        (["train.eval_points=12"], "train.eval_points=12", "command line", "applies to eval_schedule: log, but"),
        (["train.eval_steps=[1]"], "train.eval_steps=[1]", "command line", "applies to eval_schedule: list, but"),
        (
            ["train.eval_schedule=list", "train.eval_steps=[1, 3]"],
            "train.eval_steps=[1, 3]",
            "command line",
            "3 is not a step of this run",
        ),
        (
            ["train.eval_schedule=list", "train.eval_steps=[-1]"],
            "train.eval_steps=[-1]",
            "command line",
            "must be >= 0, got -1",
        ),
        (
            ["train.eval_schedule=list", "train.eval_steps=[2, 1]"],
            "train.eval_steps=[2, 1]",
            "command line",
            "strictly increasing",
        ),
        (
            ["train.eval_schedule=list", "train.eval_steps=[1, 1]"],
            "train.eval_steps=[1, 1]",
            "command line",
            "got 1 after 1",
        ),
        (
            ["train.eval_schedule=list", "train.eval_steps=[1.5]"],
            "train.eval_steps=[1.5]",
            "command line",
            "expected list[int]",
        ),
        (
            ["train.eval_schedule=list", "train.eval_steps=2"],
            "train.eval_steps=2",
            "command line",
            "expected list[int]",
        ),
        (
            ["train.eval_schedule=geometric"],
            "train.eval_schedule=geometric",
            "command line",
            "'every' | 'log' | 'list'",
        ),
    ],
)
def test_bad_schedules_are_config_errors_naming_the_key(overrides, key, source, said, monkeypatch):
    monkeypatch.chdir(CORPUS)
    with pytest.raises(ConfigError) as err:
        resolve("train/ok.yaml", overrides)
    assert (err.value.key, err.value.source) == (key, source) and said in err.value.message


def test_an_experiment_checks_each_runs_steps_against_its_own_length(monkeypatch):
    """The shared train section's steps fit the shared 2 steps, not a method's own 1 step."""
    monkeypatch.chdir(CORPUS)
    shared = ["train.eval_schedule=list", "train.eval_steps=[1, 2]"]
    assert len(load_experiment("run/ok.yaml", shared).runs) == 3
    with pytest.raises(ConfigError) as err:
        load_experiment("run/ok.yaml", [*shared, "methods=[{name: dpo, train: {steps: 1}}]"])
    # the method's steps came with the methods= argument: the error names it, and the key inside it
    assert (err.value.key, err.value.source) == ("methods=[{name: dpo, train: {steps: 1}}]", "command line")
    assert "methods[0].train.eval_steps: 2 is not a step of this run" in err.value.message


# ---------------------------------------------------------------------------------- real runs


def _run(out: Path, extra: list[str] = ()) -> list[dict[str, Any]]:
    """``alignlab train train/ok.yaml`` for 12 DPO steps, checkpoints every 4, log schedule of 6
    points (0, 1, 2, 3, 6, 12); its eval rows without the wall clock."""
    run_training(
        "train/ok.yaml",
        [
            f"out_dir={out}",
            "objective={name: dpo, beta: 0.1}",
            "train.steps=12",
            "train.save_every=4",
            "train.eval_schedule=log",
            "train.eval_points=6",
            *extra,
        ],
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows if r["split"] == "eval"]


def test_a_resumed_run_evaluates_at_the_steps_of_an_uninterrupted_one(corpus_cache, tmp_path, stop_after):
    """SIGTERM after step 3 (an evaluation step off the checkpoint grid: checkpointed at 3, resumed
    from 3, the evaluation at 3 not run again), then a kill after the evaluation at 6 and before
    its checkpoint (resumed from 4: the evaluation at 6 is run again, once in the log): the eval
    rows are the uninterrupted run's, steps and numbers."""
    whole = _run(tmp_path / "whole")
    assert [r["step"] for r in whole] == [0, 1, 2, 3, 6, 12]
    assert len({r["eval_loss"] for r in whole}) == 6  # the policy moved between them
    # the loop's end-of-step check, after the step's evaluation and before its checkpoint, asks to
    # stop (a signal's name) or dies (an exception) after the steps in `stop`
    stop = stop_after
    cut = tmp_path / "cut"
    stop[3] = "SIGTERM"
    with pytest.raises(Interrupted):
        _run(cut)
    stop.clear()
    stop[6] = KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(cut)
    steps = sorted(int(p.name.removeprefix("step-")) for p in (cut / "checkpoints").glob("step-*"))
    assert steps[-1] == 4  # resumed from 3, killed before the checkpoint of 6: it resumes from 4
    stop.clear()
    assert _run(cut) == whole


def test_ppo_evaluates_at_the_same_schedule(corpus_cache, tmp_path):
    """PPO-GT, 4 iterations, log schedule of 4 points: 0 and 4^(k/2) = 1, 2, 4."""
    rows = _run(
        tmp_path / "ppo",
        [
            "objective={name: ppo}",
            "rollout.minibatches=1",
            "rollout.epochs=1",
            "reward.kind=gold",
            "train.steps=4",
            "train.eval_points=4",
            "eval.prompts=2",
            "rollout.max_new_tokens=4",
            "eval.max_new_tokens=4",
        ],
    )
    assert [r["step"] for r in rows] == [0, 1, 2, 4] and all(r["samples"] == 2 for r in rows)
