"""Tuning on validation prompts, reported on test prompts (DESIGN.md, the comparison protocol).

A tuned method (``tune:`` in the experiment or the method, :class:`~alignlab.experiment.config.TuneConfig`)
has *candidates*, the points of its grid. Each candidate's tuning runs are ordinary runs
(``tune-<label>-lr0.001-...``, cached, resumable and locked like every run), the method's sweep at
that grid point with the first ``tune.seeds`` seeds, evaluated on the validation prompts
(``eval.split: validation``), which share no prompt text with the test prompts of the frontier
(:meth:`~alignlab.tasks.base.Task.held_out_prompts`). Then:

1. each candidate is scored from its frontier rows (:func:`score`): per tuning seed, the Pareto front
   over all its runs and steps with that seed (:func:`~alignlab.experiment.summary.seed_fronts`),
   read as "the best reward within a KL budget": linear between the front's points
   (:func:`~alignlab.experiment.summary.interpolate_front`) and, beyond its last point, that point's
   reward (a policy that stopped at KL 3 is within a budget of 5). ``reward_at_kl``: that function at
   ``tune.kl``; ``area``: its integral (:func:`~alignlab.experiment.summary.area_under_front`) from the
   largest first KL of any candidate's front (0 where step 0, π_ref itself, is evaluated) to
   ``tune.kl``, the same range for every candidate. The score is the mean over tuning seeds;
2. the highest-scoring candidate whose tuning runs all finished is selected (:func:`select`; ties go to
   the first in grid order);
3. its final runs, the sweep at the selected values with every seed on the test prompts, join the
   experiment's runs; ``tuning.csv`` and ``tuning.md`` give every candidate's score and the choice.
   With ``tune.reuse`` (the default) the tuning runs also evaluate the test prompts
   (``eval.also_test``), and a final run whose settings and seed a tuning run of the chosen candidate
   has is that tuning run (:attr:`~alignlab.experiment.config.PlannedRun.trained_by`): its frontier
   rows are the tuning run's test-prompt rows, and it is never trained apart.

Selecting is a pure function of the runs' rows, so re-running a finished experiment selects the same
candidate and trains nothing; adding a seed adds final runs only (tuning uses the first seeds).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from alignlab.experiment.config import Experiment, PlannedRun, TuneConfig
from alignlab.experiment.summary import area_under_front, interpolate_front, seed_fronts, t_interval

TUNING_COLUMNS = [
    "method",
    "candidate",
    "criterion",
    "kl",
    "score",
    "score_ci_low",
    "score_ci_high",
    "seeds",
    "runs",
    "finished",
    "selected",
]
CRITERIA = {"reward_at_kl": "reward at KL {kl:g}", "area": "area under the front to KL {kl:g}"}


def tune_runs(exp: Experiment) -> list[PlannedRun]:
    """Every tuning run of the experiment, method by method, candidate by candidate."""
    return [r for t in exp.tuned for c in t.candidates for r in c.tune_runs]


def every_run(exp: Experiment) -> list[PlannedRun]:
    """The untuned runs, every tuning run, and the final runs of every candidate (for pre-flight checks)."""
    return exp.runs + [r for t in exp.tuned for c in t.candidates for r in (*c.tune_runs, *c.final_runs)]


def describe(values: dict[str, Any]) -> str:
    """``train.lr=0.001 beta=0.1``: a candidate's grid values."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


# ---------------------------------------------------------------------------------------- the criterion


def _within_budget(kl: np.ndarray, reward: np.ndarray, upto: float) -> tuple[np.ndarray, np.ndarray]:
    """The front with its last reward held to KL ``upto``: the best reward within any budget ≤ ``upto``."""
    if len(kl) and kl[-1] < upto:
        return np.append(kl, upto), np.append(reward, reward[-1])
    return kl, reward


def _fronts(frame: pd.DataFrame) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """seed → that seed's Pareto front over the candidate's rows (finite KL and reward only)."""
    frame = frame[np.isfinite(frame["kl"].astype(float)) & np.isfinite(frame["reward"].astype(float))]
    if frame.empty:
        return {}
    return seed_fronts(frame.assign(method="candidate")).get("candidate", {})


def score(frame: pd.DataFrame, criterion: str, kl: float, low: float = 0.0) -> tuple[float, float, float, int]:
    """A candidate's score: (mean over its tuning seeds, 95% t-interval low, high, seeds scored).

    Args:
        frame: the candidate's frontier rows (``run``, ``step``, ``setting``, ``seed``, ``kl``, ``reward``).
        criterion: ``reward_at_kl`` (the front's reward at ``kl``) or ``area`` (its area from ``low``
            to ``kl``), the front held at its last reward beyond its last point.
        low: where the area starts: the same for every candidate of a method (:func:`select`).
    """
    values = []
    for front_kl, front_reward in _fronts(frame).values():
        xs, ys = _within_budget(front_kl, front_reward, kl)
        if criterion == "reward_at_kl":
            values.append(interpolate_front(xs, ys, kl))
        else:
            values.append(area_under_front(xs, ys, low, kl) if low < kl else math.nan)
    ci = t_interval(values)
    return ci.mean, ci.low, ci.high, ci.n


def select(frames: Sequence[pd.DataFrame], finished: Sequence[bool], tune: TuneConfig) -> tuple[int | None, list]:
    """(index of the selected candidate or None, [(score, low, high, n)] per candidate), by ``tune``'s criterion.

    Only a candidate whose runs all ``finished`` (none diverged) and whose score is a number can be
    selected; the highest score wins, ties going to the first.
    """
    firsts = [float(kl[0]) for f in frames for kl, _ in _fronts(f).values()]
    low = max(firsts, default=0.0)
    scores = [score(f, tune.criterion, tune.kl, low) for f in frames]
    best: int | None = None
    for i, (value, *_rest) in enumerate(scores):
        if finished[i] and math.isfinite(value) and (best is None or value > scores[best][0]):
            best = i
    return best, scores


# ---------------------------------------------------------------------------------------- the runner's part


def select_all(exp: Experiment) -> tuple[Experiment, list[dict[str, Any]]]:
    """The experiment with each tuned method's selected final runs in its place, and the tuning.csv rows.

    A method none of whose candidates can be selected (:func:`unselected`) gets no final runs.
    """
    from alignlab.experiment.report import run_rows
    from alignlab.experiment.runner import status

    rows: list[dict[str, Any]] = []
    chosen: dict[int, list[PlannedRun]] = {}
    for t in exp.tuned:
        frames = []
        for c in t.candidates:
            found = [row for run in c.tune_runs for row in run_rows(exp.name, run)[0]]
            frames.append(pd.DataFrame(found, columns=["run", "step", "setting", "seed", "kl", "reward"]))
        finished = [all(status(r) == "finished" for r in c.tune_runs) for c in t.candidates]
        best, scores = select(frames, finished, t.tune)
        for i, (c, (value, low, high, n)) in enumerate(zip(t.candidates, scores, strict=True)):
            rows.append(
                {
                    "method": t.label,
                    "candidate": describe(c.values),
                    "criterion": t.tune.criterion,
                    "kl": t.tune.kl,
                    "score": value,
                    "score_ci_low": low,
                    "score_ci_high": high,
                    "seeds": n,
                    "runs": len(c.tune_runs),
                    "finished": finished[i],
                    "selected": i == best,
                }
            )
        if best is not None:
            chosen[t.index] = t.candidates[best].final_runs
    runs = sorted([*exp.runs, *(r for rs in chosen.values() for r in rs)], key=lambda r: r.method_index)
    return dataclasses.replace(exp, runs=runs), rows


def unselected(exp: Experiment, rows: list[dict[str, Any]]) -> list[str]:
    """Labels of the tuned methods no candidate of which could be selected."""
    picked = {r["method"] for r in rows if r["selected"]}
    return [t.label for t in exp.tuned if t.label not in picked]


def tuning_markdown(exp: Experiment, rows: list[dict[str, Any]]) -> str:
    """tuning.md: per tuned method, the criterion, the choice and every candidate's score."""
    lines = [
        f"# Tuning: {exp.name}",
        "",
        "Candidates run on validation prompts (disjoint from the test prompts of frontier.md) with the first "
        "tune.seeds seeds; the score is the mean over those seeds (95% t-interval with 2 or more). The selected "
        "candidate runs with every seed on the test prompts.",
    ]
    for t in exp.tuned:
        mine = [r for r in rows if r["method"] == t.label]
        criterion = CRITERIA[t.tune.criterion].format(kl=t.tune.kl)
        pick = next((r["candidate"] for r in mine if r["selected"]), None)
        pick = pick or "none (no finished candidate with a score)"
        lines += ["", f"## {t.label}", "", f"Criterion: {criterion}. Selected: {pick}.", ""]
        lines += ["| candidate | score | 95% CI | seeds | finished | selected |", "|---|---|---|---|---|---|"]
        for r in mine:
            ci = "" if math.isnan(r["score_ci_low"]) else f"[{r['score_ci_low']:.3f}, {r['score_ci_high']:.3f}]"
            value = "" if math.isnan(r["score"]) else f"{r['score']:.3f}"
            lines.append(
                f"| {r['candidate']} | {value} | {ci} | {r['seeds']} | {'yes' if r['finished'] else 'no'} | "
                f"{'**yes**' if r['selected'] else ''} |"
            )
    return "\n".join(lines) + "\n"
