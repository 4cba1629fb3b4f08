"""From run directories to the experiment's results: frontier.csv, the frontier plot, win rates, tables.

Every writer reads only files (``metrics.jsonl``, ``winrate.json``, ``summary.json`` of each run,
and the CSVs), so ``alignlab plot DIR`` / ``alignlab table DIR`` redraw from a results directory
alone, and every output is written atomically.

- ``frontier.csv``: one row per (run, evaluation step): method, setting, seed, step, kl (+ 95% CI),
  reward (+ 95% CI), its scale (``log_odds``: the gold judge), samples, wall time, and the training
  compute spent to reach it: ``compute_tokens`` (cumulative policy forward-equivalent tokens, defined
  in :mod:`alignlab.train.loop`) and ``compute_s`` (the measured seconds of the training steps so
  far, evaluation excluded: the sum of each train row's ``step_s``, for PPO ``gen_s + score_s + update_s``).
- ``frontier.png`` / ``.svg``: reward against KL, one colour per method: the means over seeds of
  every (setting, step), faint, and each method's Pareto front of those means, bold (in panels of
  methods, ``plot_panels``), beside a bar chart of the reward at the KL budgets; for a log-odds
  reward the y axis is P(positive) = σ(log-odds), the DPO paper's Fig. 2 axis. Optionally the Gao
  et al. (2023) over-optimisation curves. ``frontier_compute.png`` / ``.svg``: reward against the
  cumulative compute, forward-equivalent tokens and seconds, log x: the same means, each setting's
  curve faint and the method's front (the best reward for at most that compute) bold.
- ``frontier.md``: the last evaluation of every run, the means over seeds, each method's Pareto
  front, its reward at the KL budgets, the area under its front, and the pairwise "A above B"
  table (:mod:`alignlab.experiment.summary` says how each is computed); ``summary.csv``: the same
  summaries as a tidy table.
- ``winrate.csv`` / ``winrate.md`` / ``winrate.png``: win rate against the references by sampling
  temperature, one column per method (DPO paper, Figs. 2 right and 3 left).

A run whose results are damaged counts as unfinished (:func:`alignlab.train.state.read_summary`)
and gives the rows before the damage; a CSV edited into something else is one
:class:`~alignlab.errors.AlignlabError` naming the file and what is wrong (:mod:`alignlab.experiment.csvs`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alignlab.errors import AlignlabError
from alignlab.experiment.csvs import SUMMARY_COLUMNS, WINRATE_COLUMNS, read_csv, write_csv
from alignlab.experiment.summary import (
    MARK,
    base_setting,
    is_log_odds,
    means_markdown,
    p_positive,
    reward_at_budgets,
    seed_means,
    summary_frame,
    summary_markdown,
)
from alignlab.experiment.summary import pareto_front as pareto_front  # re-exported
from alignlab.io import atomic_file, atomic_write_text, scan_jsonl
from alignlab.objectives.registry import samples_only


def setting_text(setting: dict[str, Any]) -> str:
    """``beta=0.1 seed=1``; ``-`` when nothing is swept."""
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "-"


def run_rows(experiment: str, run: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(frontier rows, win-rate rows) of one planned run, from its directory (empty if not run yet)."""
    from alignlab.train.state import read_summary

    out = Path(run.cfg.out_dir)
    finished = read_summary(out) is not None
    common = {
        "experiment": experiment,
        "method": run.label,
        "objective": run.method.name,
        "run": run.run_id,
        "setting": setting_text(run.setting),
        "seed": run.cfg.train.seed,
    }
    scale = reward_scale(run.cfg.task.get("name") if isinstance(run.cfg.task, dict) else None)
    frontier = []
    seconds = 0.0  # the training steps' seconds so far: timing is kept on the train rows only
    for r in scan_jsonl(out / "metrics.jsonl")[0]:  # a damaged log: the rows before the damage
        if r.get("split") == "train":
            seconds += step_seconds(r)
        if r.get("split") != "eval" or "sample_kl" not in r:
            continue
        frontier.append(
            {
                **common,
                "step": r["step"],
                "kl": r["sample_kl"],
                "kl_ci_low": r.get("sample_kl_ci_low"),
                "kl_ci_high": r.get("sample_kl_ci_high"),
                "reward": r["sample_reward"],
                "reward_ci_low": r.get("sample_reward_ci_low"),
                "reward_ci_high": r.get("sample_reward_ci_high"),
                "reward_scale": scale,
                "samples": r.get("samples"),
                "wall_s": r.get("wall_s"),
                "compute_tokens": r.get("compute_tokens"),
                "compute_s": round(seconds, 4),
                "finished": finished,
                "knobs": json.dumps(run.method.cfg.to_dict(), sort_keys=True),
            }
        )
    winrate = []
    for r in _winrate_json(out / "winrate.json"):
        winrate.append({**common, **{k: r.get(k) for k in WINRATE_COLUMNS if k in r}})
    return frontier, winrate


def step_seconds(row: dict[str, Any]) -> float:
    """The measured seconds of one train row's step: PPO's phases (generation, scoring, update), else ``step_s``."""
    if "gen_s" in row:
        return float(row["gen_s"]) + float(row.get("score_s", 0.0)) + float(row.get("update_s", 0.0))
    return float(row.get("step_s", 0.0))


def reward_scale(task: str | None) -> str:
    """What a run's sample reward is: ``log_odds`` — the gold judge's log-odds of positive, which a run
    evaluates with when its task has labelled text to train one (IMDb) — else ``reward_model``."""
    from alignlab.tasks import TASKS
    from alignlab.tasks.base import Task

    cls = TASKS.get(task or "imdb")  # a run's default task is imdb
    return "log_odds" if cls is not None and cls.labelled is not Task.labelled else "reward_model"


def _winrate_json(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``winrate.json``; none when it is missing or damaged (the run redoes it)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


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
    """frontier.png and frontier.svg: per method, the means over seeds of every (setting, step), faint,
    and the Pareto front of those means, bold; beside them, the reward at ``kl_budgets`` as bars.

    Args:
        frame: the rows of frontier.csv.
        error_bars: 95% intervals on both axes: over seeds (n ≥ 2), else the one run's over prompts.
        kl_budgets: the bar chart's budgets (none: no bar chart).
        panels: method labels drawn together in one panel each; the others share a last panel.
        axis: ``auto`` (P(positive) for a log-odds reward, else the reward), ``reward`` or ``p_positive``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty:
        raise AlignlabError(f"{out_dir}: frontier.csv has no evaluated point yet")
    means = seed_means(frame)
    use_p = axis == "p_positive" or (axis == "auto" and is_log_odds(frame))
    methods = list(dict.fromkeys(frame["method"]))
    cmap = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    colours = {m: cmap(i % cmap.N) for i, m in enumerate(methods)}
    groups = [g for g in ([m for m in p if m in colours] for p in panels) if g]
    rest = [m for m in methods if not any(m in g for g in groups)]
    groups += [rest] if rest else []
    budgets = reward_at_budgets(frame, kl_budgets) if len(kl_budgets) else None
    ncols = len(groups) + (budgets is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(5.4 * ncols, 4.8), sharey=True, squeeze=False)
    base = float(means.loc[means["step"] == 0, "reward"].mean()) if (means["step"] == 0).any() else None
    for ax, group in zip(axes[0], groups, strict=False):
        for method in group:
            rows = means[means["method"] == method].reset_index(drop=True)
            _draw_method(ax, rows, frame[frame["method"] == method], colours[method], use_p, error_bars)
            if fit and base is not None:
                kind = "bon" if rows["objective"].map(samples_only).all() else "rl"
                kl, reward = rows["kl"].to_numpy(float), rows["reward"].to_numpy(float)
                params = fit_gao(kl, reward - base, kind)
                if params is not None:
                    grid = np.linspace(0, math.sqrt(kl.max()), 100)
                    curve = base + gao_curve(grid, *params, kind)
                    ax.plot(grid**2, p_positive(curve) if use_p else curve, ":", color=colours[method], lw=1.2)
        ax.set_xlabel("KL(π ‖ π_ref), sequence, nats")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", ncol=2 if len(group) > 8 else 1)
    lows, highs = zip(*(ax.get_xlim() for ax in axes[0][: len(groups)]), strict=True)
    for ax in axes[0][: len(groups)]:  # one KL scale across the panels
        ax.set_xlim(min(lows), max(highs))
    axes[0][0].set_ylabel(_reward_label(frame, use_p))
    if budgets is not None:
        _draw_budgets(axes[0][-1], budgets, methods, colours, use_p, base)
    n = int(means["n"].max())
    seeds = f"means over {n} seeds, 95% t-intervals over seeds" if n > 1 else "one seed"
    fig.suptitle(f"{title or 'reward–KL frontier'} ({seeds}; bold: Pareto front of the means)", fontsize=10)
    return _save(fig, out_dir, "frontier")


COMPUTE_AXES = {
    "compute_tokens": "training compute, policy forward-equivalent tokens (log)",
    "compute_s": "training compute, measured seconds (log)",
}


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
    setting's evaluations, faint, joined by step, and the front of those means, bold; π_ref's reward
    (step 0, no compute yet) as a dotted line. Points without compute (an older alignlab's runs) are left out.

    Raises:
        AlignlabError: no evaluated point has any compute recorded.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = compute_means(frame)
    if not (means[list(COMPUTE_AXES)] > 0).any().any():
        raise AlignlabError(f"{out_dir}: frontier.csv has no evaluated point with its training compute")
    use_p = axis == "p_positive" or (axis == "auto" and is_log_odds(frame))
    y = p_positive if use_p else (lambda v: np.asarray(v, float))
    methods = list(dict.fromkeys(frame["method"]))
    cmap = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    fig, axes = plt.subplots(1, len(COMPUTE_AXES), figsize=(5.8 * len(COMPUTE_AXES), 4.8), sharey=True)
    base = means.loc[means["step"] == 0, "reward"]
    for ax, (c, label) in zip(axes, COMPUTE_AXES.items(), strict=True):
        for i, method in enumerate(methods):
            colour = cmap(i % cmap.N)
            rows = means[(means["method"] == method) & (means[c] > 0)]
            for _, curve in rows.groupby("setting", sort=False):
                curve = curve.sort_values("step")
                ax.plot(curve[c], y(curve["reward"]), "-", color=colour, alpha=0.3, lw=0.8, ms=3, marker="o")
            front = rows[rows[f"on_front_{c}"]].sort_values(c)
            if not front.empty:
                ax.plot(front[c], y(front["reward"]), "-o", color=colour, lw=2.2, ms=3, label=method)
        if not base.empty:
            ax.axhline(float(y(base.mean())), color="grey", lw=0.8, ls=":", label="π_ref (step 0)")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right", ncol=2 if len(methods) > 8 else 1)
    axes[0].set_ylabel(_reward_label(frame, use_p))
    runs = frame.drop_duplicates(["run"])
    n = int(runs.assign(setting=runs["setting"].map(base_setting)).groupby(["method", "setting"]).size().max())
    seeds = f"means over {n} seeds" if n > 1 else "one seed"
    fig.suptitle(
        f"{title or 'reward against training compute'} ({seeds}; bold: the best reward for the compute)", fontsize=10
    )
    return _save(fig, out_dir, "frontier_compute")


def _reward_label(frame: pd.DataFrame, use_p: bool) -> str:
    if use_p:
        return "P(positive) = σ(mean gold log-odds)"
    if is_log_odds(frame):
        return "mean gold reward (log-odds of positive)"
    return "mean reward of samples (gold judge, else the reward model)"


def _draw_method(ax: Any, means: pd.DataFrame, rows: pd.DataFrame, colour: Any, use_p: bool, error_bars: bool) -> None:
    """One method: its mean points, faint (hollow where seeds are missing), and its front, bold."""
    y = p_positive if use_p else (lambda v: np.asarray(v, float))
    kl, reward = means["kl"].to_numpy(float), means["reward"].to_numpy(float)
    if error_bars:
        # one seed: the run's own interval over prompts, from its frontier row
        own = rows.assign(setting=rows["setting"].map(base_setting)).drop_duplicates(["setting", "step"], keep="last")
        own = own.set_index(["setting", "step"]).reindex(pd.MultiIndex.from_frame(means[["setting", "step"]]))
        single = (means["n"] == 1).to_numpy()
        ci = {}
        for c in ("kl_ci_low", "kl_ci_high", "reward_ci_low", "reward_ci_high"):
            ci[c] = np.where(single, own[c].to_numpy(float), means[c].to_numpy(float))
        xerr = np.nan_to_num(np.abs(np.vstack([kl - ci["kl_ci_low"], ci["kl_ci_high"] - kl])))
        yerr = np.abs(np.vstack([y(reward) - y(ci["reward_ci_low"]), y(ci["reward_ci_high"]) - y(reward)]))
        ax.errorbar(kl, y(reward), xerr=xerr, yerr=np.nan_to_num(yerr), fmt="none", ecolor=colour, alpha=0.15, lw=0.7)
    full = means["complete"].to_numpy(bool)
    ax.scatter(kl[full], y(reward[full]), s=14, color=colour, alpha=0.35, edgecolors="none")
    ax.scatter(kl[~full], y(reward[~full]), s=16, facecolors="none", edgecolors=colour, alpha=0.6, lw=0.8)
    front = means[means["on_front"]].sort_values("kl")
    label = str(means["method"].iloc[0]) + ("" if full.all() else " (missing seeds)")
    ax.plot(front["kl"], y(front["reward"]), "-o", color=colour, lw=2.2, ms=3, label=label)


def _draw_budgets(
    ax: Any, budgets: pd.DataFrame, methods: list[str], colours: dict[str, Any], use_p: bool, base: float | None
) -> None:
    """Bars of each method's reward at each KL budget (mean over seeds, 95% t-interval), from π_ref's reward."""
    y = p_positive if use_p else (lambda v: np.asarray(v, float))
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


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """``stem``.png and ``stem``.svg in ``out_dir``, each written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{stem}.{ext}"
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths


def _ci(value: float, low: Any, high: Any, digits: int = 2) -> str:
    if pd.isna(low) or pd.isna(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def frontier_table(frame: pd.DataFrame, kl_budgets: Sequence[float] = (), kl_cap: float | None = None) -> str:
    """Markdown: the summaries (reward at ``kl_budgets``, area to ``kl_cap``, A above B; none when
    neither is given), each method's Pareto front of the means over seeds, the means, and the last
    evaluation of every run."""
    out = io.StringIO()
    if len(kl_budgets) or kl_cap is not None:
        out.write(summary_markdown(frame, kl_budgets, kl_cap) + "\n")
    means = seed_means(frame)
    out.write("## Pareto front of each method (the means over seeds of every evaluated point)\n\n")
    out.write("| method | points | front (KL → reward) |\n|---|---|---|\n")
    for method, rows in means.groupby("method", sort=False):
        front = rows[rows["on_front"]].sort_values("kl")
        text = ", ".join(
            f"{r.kl:.2f} → {r.reward:.2f}{'' if r.complete else MARK}" for r in front.itertuples(index=False)
        )
        out.write(f"| {method} | {len(rows)} | {text} |\n")
    out.write("\n" + means_markdown(means, is_log_odds(frame)))
    out.write("\n## Last evaluation of each run\n\n")
    out.write("| method | setting | seed | step | KL [95% CI] | reward [95% CI] |\n|---|---|---|---|---|---|\n")
    last = frame.sort_values("step").groupby("run", sort=False).tail(1)
    for _, r in last.sort_values(["method", "run"]).iterrows():
        out.write(
            f"| {r['method']} | {r['setting']} | {r['seed']} | {r['step']} | "
            f"{_ci(r['kl'], r['kl_ci_low'], r['kl_ci_high'])} | "
            f"{_ci(r['reward'], r['reward_ci_low'], r['reward_ci_high'])} |\n"
        )
    return out.getvalue()


# ----------------------------------------------------------------------------------------- win rate


def winrate_table(frame: pd.DataFrame) -> str:
    """Markdown: temperature × method (each run: setting, seed), win rate % with its 95% CI."""
    frame = frame.assign(column=frame["method"] + " " + frame["setting"].where(frame["setting"] != "-", ""))
    columns = list(dict.fromkeys(c.strip() for c in frame["column"]))
    judge = ", ".join(sorted(set(frame["judge"].dropna())))
    n = ", ".join(str(v) for v in sorted(set(frame["n"].dropna().astype(int))))
    out = io.StringIO()
    out.write(f"Win rate against the references (%, 95% bootstrap CI); judge: {judge}; prompts: {n}.\n\n")
    out.write("| temperature | " + " | ".join(columns) + " |\n")
    out.write("|---" * (len(columns) + 1) + "|\n")
    for temperature in sorted(set(frame["temperature"])):
        cells = []
        for column in columns:
            rows = frame[(frame["column"].str.strip() == column) & (frame["temperature"] == temperature)]
            if rows.empty:
                cells.append("")
                continue
            r = rows.iloc[0] if len(rows) == 1 else rows.mean(numeric_only=True)
            cells.append(
                f"{100 * r['win_rate']:.1f} [{100 * r['win_rate_ci_low']:.0f}, {100 * r['win_rate_ci_high']:.0f}]"
            )
        out.write(f"| {temperature:g} | " + " | ".join(cells) + " |\n")
    return out.getvalue()


def plot_winrate(frame: pd.DataFrame, out_dir: Path, title: str = "") -> list[Path]:
    """winrate.png and .svg: win rate against sampling temperature, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ----------------------------------------------------------------------------------------- compute


def compute_rows(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Per finished run: seconds per step (PPO: per iteration, split into phases), peak RSS, models held,
    forward-equivalent tokens per step and in all (:mod:`alignlab.train.loop`), seconds of training in all."""
    from alignlab.train.state import read_summary

    rows = []
    for run in runs:
        out = Path(run.cfg.out_dir)
        summary = read_summary(out)
        if summary is None:  # not finished, or its results are damaged (it will be resumed)
            continue
        logged = scan_jsonl(out / "metrics.jsonl")[0]
        train = [r for r in logged if r.get("split") == "train"]
        per_step = [r["step_tokens"] for r in train if "step_tokens" in r]
        totals = [r["compute_tokens"] for r in logged if "compute_tokens" in r]
        phases = {k: [r[k] for r in train if k in r] for k in ("step_s", "gen_s", "score_s", "update_s")}
        if phases["gen_s"]:
            step = [g + c + u for g, c, u in zip(phases["gen_s"], phases["score_s"], phases["update_s"], strict=False)]
        else:
            step = phases["step_s"]
        held = summary.get("models_held") or (summary.get("final") or {}).get("models_held") or []
        rows.append(
            {
                "method": run.label,
                "objective": run.method.name,
                "run": run.run_id,
                "batch_size": run.cfg.train.batch_size,
                "steps": len(train),
                "s_per_step": float(np.median(step)) if step else None,
                "gen_s": float(np.median(phases["gen_s"])) if phases["gen_s"] else None,
                "score_s": float(np.median(phases["score_s"])) if phases["score_s"] else None,
                "update_s": float(np.median(phases["update_s"])) if phases["update_s"] else None,
                "wall_time_s": summary.get("wall_time_s"),
                "peak_rss_mb": summary.get("peak_rss_mb"),
                "models_held": len(held),
                "trainable": sum(m["trainable"] for m in held),
                "frozen": sum(not m["trainable"] for m in held),
                "roles": " + ".join(m["role"] for m in held),
                "parameters_held": sum(m["parameters"] for m in held),
                "tokens_per_step": float(np.median(per_step)) if per_step else None,
                "compute_tokens": totals[-1] if totals else None,
                "compute_s": round(sum(step_seconds(r) for r in train), 4) if train else None,
            }
        )
    return rows


COMPUTE_NOTE = (
    "Forward-equivalent tokens (FE): one token through one forward of the policy is 1; another network's "
    "forward costs its parameters over the policy's, a backward twice a forward, so a trained token is 3; "
    "generation 1 per prompt and generated token; the reference cache once (alignlab/train/loop.py). "
    "Evaluation, SFT and the reward model's training are not counted.\n\n"
)


def compute_table(frame: pd.DataFrame) -> str:
    """Markdown: one row per method (medians over its runs): the networks it holds, seconds and
    forward-equivalent tokens per step and per training example, and its runs' total compute, also
    relative to the method with the least."""
    out = io.StringIO()
    out.write(COMPUTE_NOTE)
    out.write(
        "| method | networks held (trainable + frozen) | parameters held | batch | s / step | generation | scoring "
        "| update | FE tokens / step | FE tokens / example | FE tokens in all | × least | training s | peak RSS (MiB) "
        "|\n" + "|---" * 14 + "|\n"
    )

    def cell(v: Any, fmt: str = ".2f") -> str:
        return "" if v is None or pd.isna(v) else format(v, fmt)

    medians = {m: frame[frame["method"] == m].median(numeric_only=True) for m in dict.fromkeys(frame["method"])}
    totals = [float(med["compute_tokens"]) for med in medians.values() if pd.notna(med.get("compute_tokens"))]
    least = min((t for t in totals if t > 0), default=math.nan)
    for method, med in medians.items():
        r = frame[frame["method"] == method].iloc[0]
        tokens, total = med.get("tokens_per_step"), med.get("compute_tokens")
        per_example = tokens / r["batch_size"] if tokens is not None and pd.notna(tokens) else None
        out.write(
            f"| {method} | {r['models_held']} ({r['trainable']} + {r['frozen']}): {r['roles']} | "
            f"{r['parameters_held']:,} | {r['batch_size']} | {cell(med['s_per_step'])} | {cell(med['gen_s'])} | "
            f"{cell(med['score_s'])} | {cell(med['update_s'])} | {cell(tokens, ',.0f')} | "
            f"{cell(per_example, ',.0f')} | {cell(total, ',.0f')} | {cell(total / least if total else None)} | "
            f"{cell(med.get('compute_s'), '.1f')} | {cell(med['peak_rss_mb'], '.0f')} |\n"
        )
    return out.getvalue()


# ----------------------------------------------------------------------------------------- entry points


def report_settings(results: Path) -> Any:
    """The experiment's ``kl_budgets``, ``kl_cap`` and ``plot_panels``, from the ``experiment.yaml`` the run
    wrote in ``results`` (their defaults without one), as an ``ExperimentConfig``.

    Raises:
        ConfigError: naming the file and the key, for a value that is not one of these keys' values.
    """
    from alignlab.config import load_yaml
    from alignlab.experiment.config import ExperimentConfig

    path = results / "experiment.yaml"
    data = load_yaml(path) if path.is_file() else {}
    return ExperimentConfig.from_dict(
        {k: data[k] for k in ("kl_budgets", "kl_cap", "plot_panels") if k in data}, str(path)
    )


def plot_dir(results: Path, fit: bool = False, title: str = "") -> list[Path]:
    """``alignlab plot DIR``: the plots of a results directory from its CSVs (and its experiment.yaml)."""
    paths: list[Path] = []
    if (results / "frontier.csv").exists():
        frame = read_csv(results / "frontier.csv")
        if not frame.empty:
            cfg = report_settings(results)
            title = title or f"{results.name}: reward–KL frontier"
            paths += plot_frontier(frame, results, title, fit=fit, kl_budgets=cfg.kl_budgets, panels=cfg.plot_panels)
            if (frame[list(COMPUTE_AXES)] > 0).any().any():  # runs of an older alignlab have no compute
                paths += plot_compute(frame, results, f"{results.name}: reward against training compute")
    if (results / "winrate.csv").exists():
        frame = read_csv(results / "winrate.csv")
        if not frame.empty:
            paths += plot_winrate(frame, results, title or f"{results.name}: win rate")
    if not paths:
        raise AlignlabError(f"{results}: no frontier.csv or winrate.csv with rows to plot")
    return paths


def table_dir(results: Path) -> list[Path]:
    """``alignlab table DIR``: frontier.md, summary.csv, winrate.md and compute.md from the CSVs."""
    paths: list[Path] = []
    if (results / "frontier.csv").exists():
        frame = read_csv(results / "frontier.csv")
        if not frame.empty:
            cfg = report_settings(results)
            text = frontier_table(frame, cfg.kl_budgets, cfg.kl_cap)
            paths.append(atomic_write_text(results / "frontier.md", text))
            summary = summary_frame(frame, cfg.kl_budgets, cfg.kl_cap)
            paths.append(write_csv(results / "summary.csv", summary.to_dict("records"), SUMMARY_COLUMNS))
    if (results / "winrate.csv").exists():
        frame = read_csv(results / "winrate.csv")
        if not frame.empty:
            paths.append(atomic_write_text(results / "winrate.md", winrate_table(frame)))
    if (results / "compute.csv").exists():
        frame = read_csv(results / "compute.csv")
        if not frame.empty:
            paths.append(atomic_write_text(results / "compute.md", compute_table(frame)))
    if not paths:
        raise AlignlabError(f"{results}: no frontier.csv or winrate.csv with rows to tabulate")
    return paths
