"""The comparison protocol's numbers, from a frontier DataFrame: means over seeds, fronts, summaries.

Pure functions over the rows of ``frontier.csv`` (one row per run and evaluation step): pandas,
numpy and scipy, no file I/O. A *seed* is a value of the ``seed`` column; a *setting* is the run's
swept values without the seed (``beta=0.1 seed=2`` → ``beta=0.1``), so the runs of one
(method, setting) are the seeds of one configuration.

- :func:`seed_means`: per (method, setting, step), the mean KL and mean reward over its seeds with a
  95% Student-t interval over seeds, ``mean ± t_{0.975, n−1} · s / √n`` (``s`` the sample standard
  deviation, ``ddof=1``; blank with one seed), the number of seeds ``n``, whether the point has as
  many seeds as the best-covered (method, setting) of the frame (``complete``), and whether it is
  on its method's Pareto front of the means (``on_front``).
- :func:`reward_at_budgets`: a method's reward at KL budget ``k``. Per seed, the Pareto front over
  every run and step of the method with that seed, linearly interpolated at ``k`` (blank when ``k``
  lies below the front's smallest KL or beyond its largest); then the mean and the t-interval
  over the seeds whose front covers ``k``, with their number ``n``.
- :func:`front_areas`: the area under each seed's front over the KL range every seed of the method
  covers, ``[max_s first KL_s, min(cap, min_s last KL_s)]`` (trapezoids of the linear
  interpolation), then the mean and the t-interval over seeds. A front that ends before the cap is
  integrated only to where it ends, and the range is reported (``kl_from``, ``kl_to``), so an area
  is compared knowing its range.
- :func:`pairwise`: at each budget, every pair of methods with a value there, the higher first,
  the difference of their means, and whether their 95% intervals separate (the higher one's lower
  end above the other's upper end; blank without an interval).

Rewards on the log-odds scale (``reward_scale`` ``log_odds``: the IMDb gold judge) are also given
as P(positive) = σ(log-odds) (the DPO paper's Fig. 2 axis). σ is applied to the mean log-odds and to
the ends of its interval, which σ maps exactly since it is increasing; it is σ of the mean log-odds,
not the mean of per-sample probabilities (which the frontier rows do not hold).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

LOG_ODDS = "log_odds"
"""``reward_scale`` of a row whose reward is a classifier's log-odds of positive (the IMDb gold judge)."""
SEED_KEY = re.compile(r"(?:train\.)?seed=\S*")


class Interval(NamedTuple):
    """A mean with its 95% t-interval over ``n`` values (``low`` and ``high`` NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


def t_interval(values: Sequence[float] | pd.Series, level: float = 0.95) -> Interval:
    """Mean of the finite ``values`` and its Student-t interval, ``mean ± t_{(1+level)/2, n−1} · s/√n``.

    ``s`` is the sample standard deviation (``ddof=1``). With one value the interval is NaN; with none,
    everything is NaN and n = 0.
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def p_positive(log_odds: Any) -> Any:
    """P(positive) = σ(log-odds) = 1 / (1 + e^(−x)), elementwise (NaN stays NaN)."""
    from scipy.special import expit

    return expit(log_odds)


def is_log_odds(frame: pd.DataFrame) -> bool:
    """Whether every row's reward is a log-odds of positive (then P(positive) is reported too)."""
    return "reward_scale" in frame.columns and len(frame) > 0 and bool((frame["reward_scale"] == LOG_ODDS).all())


def base_setting(setting: Any) -> str:
    """The swept values without the seed: ``beta=0.1 seed=2`` → ``beta=0.1``; ``seed=0`` → ``-``."""
    if setting is None or (isinstance(setting, float) and math.isnan(setting)):
        return "-"
    tokens = [t for t in str(setting).split() if not SEED_KEY.fullmatch(t)]
    return " ".join(tokens) or "-"


def pareto_front(kl: Sequence[float], reward: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower KL, higher reward), by KL.

    A point is on the front when every point with KL ≤ its KL has a lower reward (ties in KL keep
    the higher reward). Along the front both KL and reward strictly increase.
    """
    order = sorted(range(len(kl)), key=lambda i: (kl[i], -reward[i]))
    front, best = [], -math.inf
    for i in order:
        if reward[i] > best:
            front.append(i)
            best = reward[i]
    return front


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, step) (the last, if a step was logged twice), ``setting`` without the seed."""
    frame = frame.drop_duplicates(["run", "step"], keep="last")
    return frame.assign(setting=frame["setting"].map(base_setting))


# ---------------------------------------------------------------------------------------- means over seeds


def seed_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (method, setting, step): mean KL and reward over its seeds, with t-intervals over seeds.

    Returns:
        One row per point, in the frame's order of methods and settings, by step: ``method``,
        ``objective``, ``setting``, ``step``, ``n`` (seeds), ``seeds`` (their values), ``expected``
        (the most seeds any (method, setting) of the frame has), ``complete`` (n == expected),
        ``kl``/``reward`` with ``*_ci_low``/``*_ci_high`` (NaN with one seed), ``on_front`` (on the
        method's Pareto front of these means), and ``reward_scale``.
    """
    frame = _tidy(frame)
    if frame.empty:
        return pd.DataFrame()
    scale = frame["reward_scale"] if "reward_scale" in frame.columns else pd.Series("", index=frame.index)
    rows = []
    for (method, setting, step), g in frame.groupby(["method", "setting", "step"], sort=False):
        kl, reward = t_interval(g["kl"]), t_interval(g["reward"])
        rows.append(
            {
                "method": method,
                "objective": g["objective"].iloc[0],
                "setting": setting,
                "step": step,
                "n": g["run"].nunique(),
                "seeds": ", ".join(str(_seed(s)) for s in sorted(g["seed"].dropna().unique())),
                "kl": kl.mean,
                "kl_ci_low": kl.low,
                "kl_ci_high": kl.high,
                "reward": reward.mean,
                "reward_ci_low": reward.low,
                "reward_ci_high": reward.high,
                "reward_scale": scale[g.index[0]],
            }
        )
    means = pd.DataFrame(rows)
    methods = {m: i for i, m in enumerate(dict.fromkeys(frame["method"]))}
    settings = {s: i for i, s in enumerate(dict.fromkeys(frame["setting"]))}
    means = means.sort_values(
        ["method", "setting", "step"],
        key=lambda c: c.map(methods) if c.name == "method" else c.map(settings) if c.name == "setting" else c,
        kind="stable",
    ).reset_index(drop=True)
    means["expected"] = int(frame.groupby(["method", "setting"])["run"].nunique().max())
    means["complete"] = means["n"] >= means["expected"]
    means["on_front"] = False
    for _, idx in means.groupby("method", sort=False).groups.items():
        rows_ = means.loc[idx]
        front = pareto_front(list(rows_["kl"]), list(rows_["reward"]))
        means.loc[rows_.index[front], "on_front"] = True
    return means


def _seed(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# ---------------------------------------------------------------------------------------- fronts per seed


def seed_fronts(frame: pd.DataFrame) -> dict[str, dict[Any, tuple[np.ndarray, np.ndarray]]]:
    """method → seed → (KL, reward) of that seed's Pareto front over all the method's runs and steps
    with that seed, by increasing KL.

    The front is the best reward reached within each KL: where the seed's runs went on to larger KL
    without a better reward, it is held flat at its last reward up to the largest KL they reached
    (so a budget inside the range the seed explored has a value, one beyond it has none).
    """
    frame = _tidy(frame)
    fronts: dict[str, dict[Any, tuple[np.ndarray, np.ndarray]]] = {}
    for (method, seed), g in frame.groupby(["method", "seed"], sort=False, dropna=False):
        kl, reward = g["kl"].to_numpy(float), g["reward"].to_numpy(float)
        front = pareto_front(list(kl), list(reward))
        front_kl, front_reward = kl[front], reward[front]
        reached = float(np.nanmax(kl)) if len(kl) else math.nan
        if len(front_kl) and reached > front_kl[-1]:
            front_kl, front_reward = np.append(front_kl, reached), np.append(front_reward, front_reward[-1])
        fronts.setdefault(str(method), {})[_seed(seed)] = (front_kl, front_reward)
    return fronts


def interpolate_front(kl: np.ndarray, reward: np.ndarray, budget: float) -> float:
    """The front's reward at KL ``budget``, linear between its points; NaN outside [kl[0], kl[-1]].

    Args:
        kl, reward: (P,) a Pareto front by increasing KL (:func:`pareto_front`).
    """
    if len(kl) == 0 or budget < kl[0] or budget > kl[-1]:
        return math.nan
    return float(np.interp(budget, kl, reward))


def area_under_front(kl: np.ndarray, reward: np.ndarray, low: float, high: float) -> float:
    """∫ from ``low`` to ``high`` of the front's linear interpolation (trapezoids), in reward × nats.

    NaN unless ``kl[0] ≤ low < high ≤ kl[-1]``: the area is never extrapolated.

    Args:
        kl, reward: (P,) a Pareto front by increasing KL.
    """
    if len(kl) == 0 or not kl[0] <= low < high <= kl[-1]:
        return math.nan
    xs = np.concatenate([[low], kl[(kl > low) & (kl < high)], [high]])
    ys = np.interp(xs, kl, reward)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def _method_complete(frame: pd.DataFrame) -> dict[str, bool]:
    """method → whether each of its (setting, step) points has as many seeds as the best-covered one."""
    means = seed_means(frame)
    return {str(m): bool(g["complete"].all()) for m, g in means.groupby("method", sort=False)}


def reward_at_budgets(frame: pd.DataFrame, budgets: Sequence[float]) -> pd.DataFrame:
    """Each method's reward at each KL budget: per seed from its own front, then mean and t-interval.

    Returns:
        One row per (method, budget): ``method``, ``kl`` (the budget), ``seeds`` (the method's),
        ``n`` (seeds whose front covers the budget), ``reward``, ``reward_ci_low``, ``reward_ci_high``
        (NaN when n < 2; everything NaN when n = 0), ``complete`` (every point of the method has all
        the seeds and every seed's front covers the budget), ``per_seed`` (the values, by seed).
    """
    complete = _method_complete(frame)
    rows = []
    for method, fronts in seed_fronts(frame).items():
        for budget in sorted(set(budgets)):
            values = {seed: interpolate_front(kl, reward, budget) for seed, (kl, reward) in fronts.items()}
            ci = t_interval(list(values.values()))
            rows.append(
                {
                    "method": method,
                    "kl": float(budget),
                    "seeds": len(fronts),
                    "n": ci.n,
                    "reward": ci.mean,
                    "reward_ci_low": ci.low,
                    "reward_ci_high": ci.high,
                    "complete": complete[method] and ci.n == len(fronts),
                    "per_seed": " ".join(f"{s}:{v:.4g}" for s, v in values.items() if not math.isnan(v)),
                }
            )
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)


BUDGET_COLUMNS = ["method", "kl", "seeds", "n", "reward", "reward_ci_low", "reward_ci_high", "complete", "per_seed"]
AREA_COLUMNS = ["method", "kl_cap", "kl_from", "kl_to", "seeds", "n", "area", "area_ci_low", "area_ci_high", "complete"]


def front_areas(frame: pd.DataFrame, cap: float) -> pd.DataFrame:
    """Each method's area under its front to KL ``cap``: per seed over the range all its seeds cover.

    Returns:
        One row per method: ``kl_cap``, ``kl_from`` = max over seeds of the front's first KL,
        ``kl_to`` = min(cap, min over seeds of the front's last KL), ``seeds``, ``n``, ``area`` with
        ``area_ci_low``/``area_ci_high`` (t over seeds), ``complete``; the area is NaN when
        ``kl_to ≤ kl_from``.
    """
    complete = _method_complete(frame)
    rows = []
    for method, fronts in seed_fronts(frame).items():
        low = max(float(kl[0]) for kl, _ in fronts.values())
        high = min(cap, *(float(kl[-1]) for kl, _ in fronts.values()))
        areas = [area_under_front(kl, reward, low, high) for kl, reward in fronts.values()]
        ci = t_interval(areas)
        rows.append(
            {
                "method": method,
                "kl_cap": float(cap),
                "kl_from": low,
                "kl_to": high,
                "seeds": len(fronts),
                "n": ci.n,
                "area": ci.mean,
                "area_ci_low": ci.low,
                "area_ci_high": ci.high,
                "complete": complete[method],
            }
        )
    return pd.DataFrame(rows, columns=AREA_COLUMNS)


PAIR_COLUMNS = ["kl", "above", "below", "difference", "separate", "complete"]


def pairwise(budgets: pd.DataFrame) -> pd.DataFrame:
    """At each budget, every pair of methods with a value there: the higher mean first.

    Args:
        budgets: :func:`reward_at_budgets`.

    Returns:
        One row per (budget, pair): ``kl``, ``above``, ``below``, ``difference`` (above − below, ≥ 0),
        ``separate`` (``yes`` when above's interval lies wholly above below's, ``no`` when they
        overlap, blank when either has no interval), ``complete`` (both rows complete).
    """
    rows = []
    for budget, g in budgets[budgets["reward"].notna()].groupby("kl", sort=True):
        records = list(g.itertuples(index=False))
        for i, a in enumerate(records):
            for b in records[i + 1 :]:
                hi, lo = (a, b) if a.reward >= b.reward else (b, a)
                if any(math.isnan(v) for v in (hi.reward_ci_low, lo.reward_ci_high)):
                    separate = ""
                else:
                    separate = "yes" if hi.reward_ci_low > lo.reward_ci_high else "no"
                rows.append(
                    {
                        "kl": budget,
                        "above": hi.method,
                        "below": lo.method,
                        "difference": hi.reward - lo.reward,
                        "separate": separate,
                        "complete": bool(hi.complete and lo.complete),
                    }
                )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


# ---------------------------------------------------------------------------------------- summary.csv


def summary_frame(frame: pd.DataFrame, budgets: Sequence[float], cap: float) -> pd.DataFrame:
    """The rows of ``summary.csv``: ``reward_at_kl``, ``area_to_cap`` and ``a_above_b``, in one tidy
    table (:data:`alignlab.experiment.csvs.SUMMARY_COLUMNS`); P(positive) columns filled for log-odds."""
    log_odds = is_log_odds(frame)
    at = reward_at_budgets(frame, budgets)
    rows: list[dict[str, Any]] = []
    for r in at.itertuples(index=False):
        rows.append(
            {
                "quantity": "reward_at_kl",
                "method": r.method,
                "kl": r.kl,
                "seeds": r.seeds,
                "n": r.n,
                "value": r.reward,
                "ci_low": r.reward_ci_low,
                "ci_high": r.reward_ci_high,
                "complete": r.complete,
                **_p(log_odds, r.reward, r.reward_ci_low, r.reward_ci_high),
            }
        )
    for r in front_areas(frame, cap).itertuples(index=False):
        rows.append(
            {
                "quantity": "area_to_cap",
                "method": r.method,
                "kl": r.kl_cap,
                "kl_from": r.kl_from,
                "kl_to": r.kl_to,
                "seeds": r.seeds,
                "n": r.n,
                "value": r.area,
                "ci_low": r.area_ci_low,
                "ci_high": r.area_ci_high,
                "complete": r.complete,
            }
        )
    for r in pairwise(at).itertuples(index=False):
        value = at.set_index(["method", "kl"])["reward"]
        rows.append(
            {
                "quantity": "a_above_b",
                "method": r.above,
                "versus": r.below,
                "kl": r.kl,
                "value": r.difference,
                "separate": r.separate,
                "complete": r.complete,
                **(
                    {"p_positive": float(p_positive(value[r.above, r.kl]) - p_positive(value[r.below, r.kl]))}
                    if log_odds
                    else {}
                ),
            }
        )
    from alignlab.experiment.csvs import SUMMARY_COLUMNS

    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"seeds": "Int64", "n": "Int64"})
    scales = frame["reward_scale"].dropna().astype(str) if "reward_scale" in frame.columns else pd.Series(dtype=str)
    out["reward_scale"] = " + ".join(sorted(set(scales)))
    return out


def _p(log_odds: bool, value: float, low: float, high: float) -> dict[str, float]:
    if not log_odds:
        return {}
    return {
        "p_positive": float(p_positive(value)),
        "p_positive_ci_low": float(p_positive(low)),
        "p_positive_ci_high": float(p_positive(high)),
    }


# ---------------------------------------------------------------------------------------- markdown

MARK = "†"
FEWER = f"{MARK}: fewer seeds than the best-covered method/setting (or, at a budget, than the method's own)"


def _cell(value: float, low: float = math.nan, high: float = math.nan, digits: int = 2) -> str:
    """``v [lo, hi]``, ``v`` without an interval, blank without a value."""
    if value is None or math.isnan(value):
        return ""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def means_markdown(means: pd.DataFrame, log_odds: bool) -> str:
    """Markdown: the mean over seeds of each (method, setting, step), with its n and front mark."""
    out = io.StringIO()
    p_head, p_rule = (" P(positive) [95% CI] |", "---|") if log_odds else ("", "")
    reward = "reward (log-odds)" if log_odds else "reward"
    out.write("## Mean over seeds of each (method, setting, step)\n\n")
    out.write(
        f"Means over seeds with 95% Student-t intervals over seeds (blank with one seed); n: seeds at the point; "
        f"front: on the method's Pareto front of these means. {FEWER}.\n\n"
    )
    out.write(f"| method | setting | step | n | KL [95% CI] | {reward} [95% CI] |{p_head} front |\n")
    out.write(f"|---|---|---|---|---|---|{p_rule}---|\n")
    for r in means.itertuples(index=False):
        mark = "" if r.complete else MARK
        p, low, high = p_positive([r.reward, r.reward_ci_low, r.reward_ci_high])
        p_cell = f" {_cell(p, low, high, digits=3)} |" if log_odds else ""
        out.write(
            f"| {r.method} | {r.setting} | {r.step} | {r.n}{mark} | {_cell(r.kl, r.kl_ci_low, r.kl_ci_high)} | "
            f"{_cell(r.reward, r.reward_ci_low, r.reward_ci_high)} |{p_cell} {'yes' if r.on_front else ''} |\n"
        )
    return out.getvalue()


def summary_markdown(frame: pd.DataFrame, budgets: Sequence[float], cap: float | None) -> str:
    """Markdown: reward at the KL budgets (log-odds and P(positive) for a log-odds reward), the area
    under each front to the cap (none when ``cap`` is None), and the pairwise "A above B at KL k" table."""
    log_odds = is_log_odds(frame)
    at = reward_at_budgets(frame, budgets)
    out = io.StringIO()
    ks = sorted(set(float(k) for k in budgets))
    if ks:
        scales = [("log-odds", lambda v: v, 2), ("P(positive) = σ(log-odds)", p_positive, 3)] if log_odds else []
        for name, f, digits in scales or [("", lambda v: v, 2)]:
            out.write(f"## Reward at KL budgets{f' ({name})' if name else ''}\n\n")
            out.write(
                "Per seed, the Pareto front over all the method's runs and steps with that seed, linearly "
                "interpolated at the budget and held at its best reward up to the largest KL the seed reached "
                "(blank below its smallest KL or beyond that); then the mean "
                "and a 95% Student-t interval over the seeds whose front reaches the budget (n of them). "
                f"{FEWER}.\n\n"
            )
            out.write("| method | seeds | " + " | ".join(f"KL {k:g}" for k in ks) + " |\n")
            out.write("|---|---|" + "---|" * len(ks) + "\n")
            for method, g in at.groupby("method", sort=False):
                cells = []
                for r in g.itertuples(index=False):
                    value, low, high = (float(f(v)) for v in (r.reward, r.reward_ci_low, r.reward_ci_high))
                    text = _cell(value, low, high, digits=digits)
                    cells.append(f"{text} n={r.n}{'' if r.complete else MARK}" if text else "")
                out.write(f"| {method} | {g['seeds'].iloc[0]} | " + " | ".join(cells) + " |\n")
            out.write("\n")
    if cap is not None:
        out.write(_area_markdown(front_areas(frame, cap), cap))
    if ks:
        out.write(_pairs_markdown(at, log_odds))
    return out.getvalue()


def _area_markdown(areas: pd.DataFrame, cap: float) -> str:
    out = io.StringIO()
    out.write(f"## Area under the front to KL {cap:g}\n\n")
    out.write(
        "Per seed, the area (trapezoids, reward × nats) under the linear interpolation of the seed's front over "
        "the KL range every seed of the method covers — from the largest first KL to the smallest of the cap and "
        "the seeds' last KLs — then the mean and a 95% Student-t interval over seeds. A front that stops before the "
        f"cap is integrated only to where it stops: compare areas over the same KL range. {FEWER}.\n\n"
    )
    out.write("| method | seeds | area [95% CI] | KL covered | reaches the cap |\n|---|---|---|---|---|\n")
    for r in areas.itertuples(index=False):
        covered = f"{r.kl_from:.2f} – {r.kl_to:.2f}" if r.kl_to > r.kl_from else "none"
        out.write(
            f"| {r.method} | {r.seeds}{'' if r.complete else MARK} | {_cell(r.area, r.area_ci_low, r.area_ci_high)} "
            f"| {covered} | {'yes' if r.kl_to >= cap else 'no'} |\n"
        )
    return out.getvalue() + "\n"


def _pairs_markdown(at: pd.DataFrame, log_odds: bool) -> str:
    out = io.StringIO()
    pairs = pairwise(at)
    out.write("## A above B at each KL budget\n\n")
    out.write(
        "For each budget and each pair of methods with a value there: the higher mean reward (A), the "
        "difference A − B of the means, and whether the 95% intervals over seeds separate (A's lower end "
        "above B's upper end; blank when either has one seed).\n\n"
    )
    p_head, p_rule = (" A − B in P(positive) |", "---|") if log_odds else ("", "")
    out.write(f"| KL | A | B | A − B |{p_head} CIs separate |\n|---|---|---|---|{p_rule}---|\n")
    value = at.set_index(["method", "kl"])["reward"]
    for r in pairs.itertuples(index=False):
        mark = "" if r.complete else MARK
        p_cell = (
            f" {float(p_positive(value[r.above, r.kl]) - p_positive(value[r.below, r.kl])):.3f} |" if log_odds else ""
        )
        out.write(f"| {r.kl:g} | {r.above} | {r.below} | {r.difference:.2f}{mark} |{p_cell} {r.separate} |\n")
    return out.getvalue()
