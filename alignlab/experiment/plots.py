"""The plots of a results directory, from the rows of its CSVs (matplotlib, Agg; every file written atomically).

- ``frontier.png`` / ``.svg``: reward against KL. One colour per method; within it, one marker per
  setting (its swept values without the seed), the setting's means over seeds joined step by step,
  faint, and labelled at its last step (``β=0.1``); the method's Pareto front of those means, bold
  (in panels of methods, ``plot_panels``); beside them, a bar chart of the reward at the KL budgets.
  ``--fit`` draws the same plot with the Gao et al. (2023) over-optimisation fits into
  ``frontier_fit.png`` / ``.svg``, leaving ``frontier.png`` as it is.
- ``frontier_compute.png`` / ``.svg``: reward against cumulative training compute, forward-equivalent
  tokens and measured seconds, log x, with the same colours and markers.
- ``winrate.png`` / ``.svg``: win rate against sampling temperature, one line per run.

The y axis says which reward it shows: the gold judge's log-odds of positive, plotted as
P(positive) = σ(log-odds), the DPO paper's Fig. 2 axis (``reward_scale: log_odds``), or the reward
model's score (``reward_scale: reward_model``: the task has no gold judge).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alignlab.errors import AlignlabError
from alignlab.experiment.summary import (
    base_setting,
    is_log_odds,
    p_positive,
    pareto_front,
    reward_at_budgets,
    seed_means,
)
from alignlab.io import atomic_file
from alignlab.objectives.registry import samples_only

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
"""One per setting of a method, in the order the settings first appear."""
SYMBOLS = {
    "beta": "β",
    "tau": "τ",
    "alpha": "α",
    "epsilon": "ε",
    "gamma": "γ",
    "delta": "δ",
    "lambda_d": "λ_D",
    "lambda_u": "λ_U",
    "target_kl": "target KL",
    "kl_coef": "KL coef",
    "n": "N",
}
"""How a swept knob is written on a plot (``beta=0.1`` → ``β=0.1``); dotted keys keep their last part."""
COMPUTE_AXES = {
    "compute_tokens": "training compute, policy forward-equivalent tokens (log)",
    "compute_s": "training compute, measured seconds (log)",
}


def setting_label(setting: str) -> str:
    """A setting as a plot writes it: ``beta=0.1 train.lr=0.001`` → ``β=0.1, lr=0.001``; ``-`` stays ``-``."""
    parts = []
    for token in str(setting).split():
        key, sep, value = token.partition("=")
        key = key.rsplit(".", 1)[-1]
        parts.append(f"{SYMBOLS.get(key, key)}={value}" if sep else token)
    return ", ".join(parts) or "-"


def reward_label(frame: pd.DataFrame, use_p: bool) -> str:
    """The y axis, named by the reward the rows hold (their ``reward_scale``)."""
    scales = set(frame["reward_scale"].dropna()) if "reward_scale" in frame.columns else set()
    if use_p:
        return "P(positive) = σ(mean gold-judge log-odds)"
    if is_log_odds(frame):
        return "mean gold-judge log-odds of positive"
    if scales == {"reward_model"}:
        return "mean reward-model score of samples"
    return "mean reward of samples"


def _scale(use_p: bool) -> Callable[[Any], Any]:
    return p_positive if use_p else (lambda v: np.asarray(v, float))


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only: no display is needed or opened)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(methods: Sequence[str]) -> dict[str, Any]:
    cmap = _pyplot().get_cmap("tab20" if len(methods) > 10 else "tab10")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _markers(settings: Sequence[str]) -> dict[str, str]:
    return {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(dict.fromkeys(settings))}


# ----------------------------------------------------------------------------------------- frontier


def gao_curve(d: np.ndarray, alpha: float, beta: float, kind: str) -> np.ndarray:
    """Gao et al. (2023) gold-reward gain at d = sqrt(KL): RL d(α − β log d); best-of-N d(α − β d)."""
    if kind == "bon":
        return d * (alpha - beta * d)
    return d * (alpha - beta * np.log(np.maximum(d, 1e-12)))


def fit_gao(kl: np.ndarray, gain: np.ndarray, kind: str) -> tuple[float, float] | None:
    """(α, β) fitted by least squares (scipy), or None with fewer than 3 points of positive KL."""
    from scipy.optimize import curve_fit

    keep = kl > 1e-6
    if keep.sum() < 3:
        return None
    try:
        params, _ = curve_fit(
            lambda d, a, b: gao_curve(d, a, b, kind), np.sqrt(kl[keep]), gain[keep], p0=(1.0, 0.1), maxfev=10000
        )
    except (RuntimeError, ValueError):
        return None
    return float(params[0]), float(params[1])


def plot_frontier(
    frame: pd.DataFrame,
    out_dir: Path,
    title: str = "",
    fit: bool = False,
    error_bars: bool = True,
    kl_budgets: Sequence[float] = (),
    panels: Sequence[Sequence[str]] = (),
    axis: str = "auto",
) -> list[Path]:
    """frontier.png and frontier.svg (and, with ``fit``, frontier_fit.png and .svg: the same plot with
    the Gao et al. fits): per method, each setting's means over seeds by step, and the method's
    Pareto front of those means, bold; beside them, the reward at ``kl_budgets`` as bars.

    Args:
        frame: the rows of frontier.csv.
        error_bars: 95% intervals on both axes: over seeds (n ≥ 2), else the one run's over prompts.
        kl_budgets: the bar chart's budgets (none: no bar chart).
        panels: method labels drawn together in one panel each; the others share a last panel.
        axis: ``auto`` (P(positive) for a log-odds reward, else the reward), ``reward`` or ``p_positive``.

    Raises:
        AlignlabError: the frame has no evaluated point.
    """
    if frame.empty:
        raise AlignlabError(f"{out_dir}: frontier.csv has no evaluated point yet")
    use_p = axis == "p_positive" or (axis == "auto" and is_log_odds(frame))
    paths = []
    for stem, fits in (("frontier", False), ("frontier_fit", True)) if fit else (("frontier", False),):
        figure = _frontier_figure(frame, title, fits, error_bars, kl_budgets, panels, use_p)
        paths += _save(figure, out_dir, stem)
    return paths


def _frontier_figure(
    frame: pd.DataFrame,
    title: str,
    fit: bool,
    error_bars: bool,
    kl_budgets: Sequence[float],
    panels: Sequence[Sequence[str]],
    use_p: bool,
) -> Any:
    """The frontier figure: a panel per group of methods (one KL scale), then the budgets' bars."""
    plt = _pyplot()
    means = seed_means(frame)
    methods = list(dict.fromkeys(frame["method"]))
    colours = _colours(methods)
    groups = [g for g in ([m for m in p if m in colours] for p in panels) if g]
    rest = [m for m in methods if not any(m in g for g in groups)]
    groups += [rest] if rest else []
    budgets = reward_at_budgets(frame, kl_budgets) if len(kl_budgets) else None
    ncols = len(groups) + (budgets is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 5.4), sharey=True, squeeze=False)
    base = reference_reward(means)
    for ax, group in zip(axes[0], groups, strict=False):
        handles = []
        for method in group:
            rows = means[means["method"] == method].reset_index(drop=True)
            handles += _draw_method(ax, rows, frame[frame["method"] == method], colours[method], use_p, error_bars)
            if fit and base is not None:
                _draw_fit(ax, rows, base, colours[method], use_p)
        ax.set_xlabel("KL(π ‖ π_ref), sequence, nats")
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=2 if len(handles) > 12 else 1)
    lows, highs = zip(*(ax.get_xlim() for ax in axes[0][: len(groups)]), strict=True)
    # one KL scale across the panels; a method far past the budgets (a reference-free loss can leave
    # π_ref by 100+ nats) would squeeze the others into the left edge: it runs off the axis, named
    edge = KL_AXIS_PAST_BUDGETS * max(kl_budgets) if len(kl_budgets) else float("inf")
    left, right = min(lows), min(max(highs), edge)
    if right < max(highs):  # the far method's error bars no longer set the left end either
        left = max(left, -0.05 * right)
    for ax, group in zip(axes[0], groups, strict=False):
        ax.set_xlim(left, right)
        _name_points_off_axis(ax, means, group, edge)
    axes[0][0].set_ylabel(reward_label(frame, use_p))
    if budgets is not None:
        _draw_budgets(axes[0][-1], budgets, methods, colours, use_p, base)
    n = int(means["n"].max())
    seeds = f"means over {n} seeds, 95% t-intervals over seeds" if n > 1 else "one seed"
    fitted = "; dotted: Gao et al. (2023) fits" if fit else ""
    fig.suptitle(
        f"{title or 'reward–KL frontier'} ({seeds})\nmarkers: settings, by step; ringed and labelled: each "
        f"setting's last step; bold: each method's Pareto front of the means{fitted}",
        fontsize=10,
    )
    return fig


KL_AXIS_PAST_BUDGETS = 3.0
"""The frontier's KL axis ends at this multiple of the largest KL budget, when any point lies beyond."""


def _name_points_off_axis(ax: Any, means: pd.DataFrame, group: Sequence[str], edge: float) -> None:
    """A note in the panel's corner for each method with points past ``edge`` (the axis's end)."""
    notes = []
    for method in group:
        beyond = means[(means["method"] == method) & (means["kl"] > edge)]
        if len(beyond):
            notes.append(f"{method}: {len(beyond)} more point(s) off the axis, up to KL {beyond['kl'].max():.0f} →")
    if notes:
        ax.text(0.99, 0.99, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=7)


def _draw_method(ax: Any, means: pd.DataFrame, rows: pd.DataFrame, colour: Any, use_p: bool, error_bars: bool) -> list:
    """One method: each setting's means by step, faint, its marker filled (hollow where seeds are
    missing), labelled at its last step; the method's front, bold. Returns the legend's handles."""
    from matplotlib.lines import Line2D

    y = _scale(use_p)
    if error_bars:
        _draw_error_bars(ax, means, rows, colour, y)
    markers = _markers(list(means["setting"]))
    handles = []
    for setting, curve in means.groupby("setting", sort=False):
        curve = curve.sort_values("step")
        kl, reward = curve["kl"].to_numpy(float), y(curve["reward"].to_numpy(float))
        full = curve["complete"].to_numpy(bool)
        ax.plot(kl, reward, "-", color=colour, alpha=0.45, lw=0.9)
        marker = markers[str(setting)]
        ax.scatter(kl[full], reward[full], s=22, marker=marker, color=colour, alpha=0.75, edgecolors="none")
        ax.scatter(kl[~full], reward[~full], s=22, marker=marker, facecolors="none", edgecolors=colour, lw=0.8)
        label = setting_label(str(setting))
        # the run's end: its marker ringed, and the setting written beside it
        ax.scatter(kl[-1:], reward[-1:], s=46, marker=marker, facecolors="none", edgecolors="black", lw=0.7, zorder=4)
        box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}
        if label != "-":  # a method run at one unnamed setting: its line in the legend says it all
            ax.annotate(
                label,
                (kl[-1], reward[-1]),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize=7,
                color=colour,
                bbox=box,
            )
        handles.append(Line2D([], [], ls="", marker=marker, color=colour, alpha=0.75, label=f"  {label}"))
    front = means[means["on_front"]].sort_values("kl")
    full_method = bool(means["complete"].all())
    name = str(means["method"].iloc[0]) + ("" if full_method else " (missing seeds)")
    (line,) = ax.plot(front["kl"], y(front["reward"]), "-", color=colour, lw=2.4, label=name, zorder=3)
    return [line, *(handles if len(handles) > 1 else [])]


def _draw_error_bars(ax: Any, means: pd.DataFrame, rows: pd.DataFrame, colour: Any, y: Callable[[Any], Any]) -> None:
    """Faint 95% intervals on both axes: over seeds, or with one seed the run's own over prompts."""
    kl, reward = means["kl"].to_numpy(float), means["reward"].to_numpy(float)
    own = rows.assign(setting=rows["setting"].map(base_setting)).drop_duplicates(["setting", "step"], keep="last")
    own = own.set_index(["setting", "step"]).reindex(pd.MultiIndex.from_frame(means[["setting", "step"]]))
    single = (means["n"] == 1).to_numpy()
    ci = {}
    for c in ("kl_ci_low", "kl_ci_high", "reward_ci_low", "reward_ci_high"):
        ci[c] = np.where(single, own[c].to_numpy(float), means[c].to_numpy(float))
    xerr = np.nan_to_num(np.abs(np.vstack([kl - ci["kl_ci_low"], ci["kl_ci_high"] - kl])))
    yerr = np.abs(np.vstack([y(reward) - y(ci["reward_ci_low"]), y(ci["reward_ci_high"]) - y(reward)]))
    ax.errorbar(kl, y(reward), xerr=xerr, yerr=np.nan_to_num(yerr), fmt="none", ecolor=colour, alpha=0.12, lw=0.7)


def _draw_fit(ax: Any, means: pd.DataFrame, base: float, colour: Any, use_p: bool) -> None:
    """The Gao et al. form fitted to the method's gain over π_ref's reward, dotted (nothing if it does not fit)."""
    kind = "bon" if means["objective"].map(samples_only).all() else "rl"
    kl, reward = means["kl"].to_numpy(float), means["reward"].to_numpy(float)
    params = fit_gao(kl, reward - base, kind)
    if params is not None:
        grid = np.linspace(0, math.sqrt(kl.max()), 100)
        ax.plot(grid**2, _scale(use_p)(base + gao_curve(grid, *params, kind)), ":", color=colour, lw=1.4)


def reference_reward(means: pd.DataFrame) -> float | None:
    """π_ref's reward, from :func:`seed_means` rows: the mean of the step-0 rows of the methods that
    train (their step 0 evaluates π_ref itself), not of a sampling-only method's rows (best-of-N's are
    at step 0 too, but they are its samples' reward); None when no trained method has a step 0."""
    trains = ~means["objective"].map(samples_only).astype(bool)
    rows = means.loc[(means["step"] == 0) & trains, "reward"]
    return float(rows.mean()) if len(rows) else None


def _draw_budgets(
    ax: Any, budgets: pd.DataFrame, methods: list[str], colours: dict[str, Any], use_p: bool, base: float | None
) -> None:
    """Bars of each method's reward at each KL budget (mean over seeds, 95% t-interval), from π_ref's reward."""
    y = _scale(use_p)
    ks = sorted(set(budgets["kl"]))
    width = 0.8 / max(len(methods), 1)
    bottom = float(y(base)) if base is not None else (0.5 if use_p else 0.0)
    for j, method in enumerate(methods):
        g = budgets[budgets["method"] == method].set_index("kl").reindex(ks)
        value = y(g["reward"].to_numpy(float))
        xs = np.arange(len(ks)) + (j - (len(methods) - 1) / 2) * width
        for full, hatch in ((True, None), (False, "///")):
            keep = np.isfinite(value) & (g["complete"].fillna(False).to_numpy(bool) == full)
            ax.bar(xs[keep], value[keep] - bottom, width, bottom=bottom, color=colours[method], hatch=hatch, alpha=0.8)
        low, high = y(g["reward_ci_low"].to_numpy(float)), y(g["reward_ci_high"].to_numpy(float))
        yerr = np.nan_to_num(np.abs(np.vstack([value - low, high - value])))
        ax.errorbar(xs, value, yerr=yerr, fmt="none", ecolor="black", lw=0.7, capsize=1.5)
    ax.axhline(bottom, color="grey", lw=0.8)
    ax.set_xticks(np.arange(len(ks)), [f"KL {k:g}" for k in ks])
    ax.set_title("reward at KL budgets (bars from π_ref's reward; hatched: missing seeds)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")


# ----------------------------------------------------------------------------------------- compute


def compute_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (method, setting, step): the means over seeds of reward, ``compute_tokens`` and ``compute_s``,
    and ``on_front`` per compute axis (``on_front_<axis>``: the best reward for at most that compute)."""
    frame = frame.drop_duplicates(["run", "step"], keep="last")
    frame = frame.assign(setting=frame["setting"].map(base_setting))
    for c in COMPUTE_AXES:
        frame[c] = pd.to_numeric(frame[c], errors="coerce") if c in frame.columns else np.nan
    means = frame.groupby(["method", "setting", "step"], sort=False)[["reward", *COMPUTE_AXES]].mean().reset_index()
    for c in COMPUTE_AXES:
        means[f"on_front_{c}"] = False
        for _, rows in means[means[c] > 0].groupby("method", sort=False):
            front = pareto_front(list(rows[c]), list(rows["reward"]))
            means.loc[rows.index[front], f"on_front_{c}"] = True
    return means


def plot_compute(frame: pd.DataFrame, out_dir: Path, title: str = "", axis: str = "auto") -> list[Path]:
    """frontier_compute.png and .svg: reward against cumulative training compute, forward-equivalent
    tokens (left) and measured seconds (right), log x; per method, the means over seeds of each
    setting's evaluations, faint, joined by step (the frontier's markers), and the front of those
    means, bold; π_ref's reward (step 0, no compute yet) as a dotted line. Points without compute (an
    older alignlab's runs) are left out.

    Raises:
        AlignlabError: no evaluated point has any compute recorded.
    """
    plt = _pyplot()
    means = compute_means(frame)
    if not (means[list(COMPUTE_AXES)] > 0).any().any():
        raise AlignlabError(f"{out_dir}: frontier.csv has no evaluated point with its training compute")
    use_p = axis == "p_positive" or (axis == "auto" and is_log_odds(frame))
    y = _scale(use_p)
    methods = list(dict.fromkeys(frame["method"]))
    colours = _colours(methods)
    fig, axes = plt.subplots(1, len(COMPUTE_AXES), figsize=(6.2 * len(COMPUTE_AXES), 5.0), sharey=True)
    base = reference_reward(seed_means(frame))
    for ax, (c, label) in zip(axes, COMPUTE_AXES.items(), strict=True):
        for method in methods:
            rows = means[(means["method"] == method) & (means[c] > 0)]
            markers = _markers(list(means.loc[means["method"] == method, "setting"]))
            for setting, curve in rows.groupby("setting", sort=False):
                curve = curve.sort_values("step")
                style = {"color": colours[method], "alpha": 0.35, "lw": 0.8, "ms": 4, "marker": markers[str(setting)]}
                ax.plot(curve[c], y(curve["reward"]), "-", **style)
            front = rows[rows[f"on_front_{c}"]].sort_values(c)
            if not front.empty:
                ax.plot(front[c], y(front["reward"]), "-", color=colours[method], lw=2.4, label=method)
        if base is not None:
            ax.axhline(float(y(base)), color="grey", lw=0.8, ls=":", label="π_ref (step 0)")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right", ncol=2 if len(methods) > 8 else 1)
    axes[0].set_ylabel(reward_label(frame, use_p))
    runs = frame.drop_duplicates(["run"])
    n = int(runs.assign(setting=runs["setting"].map(base_setting)).groupby(["method", "setting"]).size().max())
    seeds = f"means over {n} seeds" if n > 1 else "one seed"
    fig.suptitle(
        f"{title or 'reward against training compute'} ({seeds}; markers: settings as in frontier.png; "
        "bold: the best reward for the compute)",
        fontsize=10,
    )
    return _save(fig, out_dir, "frontier_compute")


# ----------------------------------------------------------------------------------------- win rate


def plot_winrate(frame: pd.DataFrame, out_dir: Path, title: str = "") -> list[Path]:
    """winrate.png and .svg: win rate against sampling temperature, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = plt.get_cmap("tab10")
    for i, run in enumerate(dict.fromkeys(frame["run"])):
        rows = frame[frame["run"] == run].sort_values("temperature")
        colour = colours(i % colours.N)
        t = rows["temperature"].to_numpy(float)
        ax.fill_between(t, rows["win_rate_ci_low"], rows["win_rate_ci_high"], color=colour, alpha=0.12)
        ax.plot(t, rows["win_rate"], "o-", color=colour, label=run)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("sampling temperature")
    ax.set_ylabel("win rate against the references")
    ax.set_title(title or "win rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "winrate")


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """``stem``.png and ``stem``.svg in ``out_dir``, each written atomically; the figure is closed.

    The same figure gives the same bytes: the SVG carries no date and its element ids are salted
    with a constant (matplotlib's defaults are the time and a random salt).
    """
    import matplotlib

    plt = _pyplot()
    fig.tight_layout()
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "alignlab"}):
        for ext, metadata in (("png", {"Software": None}), ("svg", {"Date": None})):
            path = out_dir / f"{stem}.{ext}"
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=150, metadata=metadata)
            paths.append(path)
    plt.close(fig)
    return paths
