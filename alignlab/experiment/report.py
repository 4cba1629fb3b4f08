"""From run directories to the experiment's results: frontier.csv, the frontier plot, win rates, tables.

Every writer reads only files (``metrics.jsonl``, ``winrate.json``, ``summary.json`` of each run,
and the CSVs), so ``alignlab plot DIR`` / ``alignlab table DIR`` redraw from a results directory
alone, and every output is written atomically.

- ``frontier.csv``: one row per (run, evaluation step): method, setting, seed, step, kl (+ 95% CI),
  reward (+ 95% CI), samples, wall time.
- ``frontier.png`` / ``.svg``: reward against KL, one colour per method, every evaluated point and
  each method's Pareto front; optionally the Gao et al. (2023) over-optimisation curves.
- ``frontier.md``: the last evaluation of every run, and each method's Pareto front.
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
from alignlab.experiment.csvs import WINRATE_COLUMNS, read_csv
from alignlab.io import atomic_file, atomic_write_text, scan_jsonl


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
    frontier = []
    for r in scan_jsonl(out / "metrics.jsonl")[0]:  # a damaged log: the rows before the damage
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
                "samples": r.get("samples"),
                "wall_s": r.get("wall_s"),
                "finished": finished,
                "knobs": json.dumps(run.method.cfg.to_dict(), sort_keys=True),
            }
        )
    winrate = []
    for r in _winrate_json(out / "winrate.json"):
        winrate.append({**common, **{k: r.get(k) for k in WINRATE_COLUMNS if k in r}})
    return frontier, winrate


def _winrate_json(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``winrate.json``; none when it is missing or damaged (the run redoes it)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


# ----------------------------------------------------------------------------------------- frontier


def pareto_front(kl: Sequence[float], reward: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower KL, higher reward), by KL.

    A point is on the front when every point with KL ≤ its KL has a lower reward (ties in KL keep
    the higher reward).
    """
    order = sorted(range(len(kl)), key=lambda i: (kl[i], -reward[i]))
    front, best = [], -math.inf
    for i in order:
        if reward[i] > best:
            front.append(i)
            best = reward[i]
    return front


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
    frame: pd.DataFrame, out_dir: Path, title: str = "", fit: bool = False, error_bars: bool = True
) -> list[Path]:
    """frontier.png and frontier.svg: reward against KL per method, with each method's Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty:
        raise AlignlabError(f"{out_dir}: frontier.csv has no evaluated point yet")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = plt.get_cmap("tab20" if frame["method"].nunique() > 10 else "tab10")
    methods = list(dict.fromkeys(frame["method"]))
    base = frame[frame["step"] == 0]["reward"].mean() if (frame["step"] == 0).any() else None
    for i, method in enumerate(methods):
        rows = frame[frame["method"] == method].reset_index(drop=True)
        colour = colours(i % colours.N)
        kl, reward = rows["kl"].to_numpy(float), rows["reward"].to_numpy(float)
        if error_bars and rows["kl_ci_low"].notna().all():
            xerr = np.abs(np.vstack([kl - rows["kl_ci_low"], rows["kl_ci_high"] - kl]))
            yerr = np.abs(np.vstack([reward - rows["reward_ci_low"], rows["reward_ci_high"] - reward]))
            ax.errorbar(kl, reward, xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, alpha=0.25, lw=0.8)
        ax.scatter(kl, reward, s=18, color=colour, alpha=0.55, edgecolors="none")
        front = pareto_front(list(kl), list(reward))
        ax.plot(kl[front], reward[front], "-", color=colour, lw=1.8, label=method, drawstyle="steps-post")
        if fit and base is not None:
            kind = "bon" if (rows["objective"] == "best_of_n").all() else "rl"
            params = fit_gao(kl, reward - base, kind)
            if params is not None:
                grid = np.linspace(0, math.sqrt(kl.max()), 100)
                ax.plot(grid**2, base + gao_curve(grid, *params, kind), ":", color=colour, lw=1.2)
    ax.set_xlabel("KL(π ‖ π_ref), sequence, nats")
    ax.set_ylabel("mean reward of samples (gold judge, else the reward model)")
    ax.set_title(title or "reward–KL frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=2 if len(methods) > 8 else 1)
    return _save(fig, out_dir, "frontier")


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


def frontier_table(frame: pd.DataFrame) -> str:
    """Markdown: the last evaluation of every run, then each method's Pareto front."""
    out = io.StringIO()
    out.write("## Last evaluation of each run\n\n")
    out.write("| method | setting | seed | step | KL [95% CI] | reward [95% CI] |\n|---|---|---|---|---|---|\n")
    last = frame.sort_values("step").groupby("run", sort=False).tail(1)
    for _, r in last.sort_values(["method", "run"]).iterrows():
        out.write(
            f"| {r['method']} | {r['setting']} | {r['seed']} | {r['step']} | "
            f"{_ci(r['kl'], r['kl_ci_low'], r['kl_ci_high'])} | "
            f"{_ci(r['reward'], r['reward_ci_low'], r['reward_ci_high'])} |\n"
        )
    out.write("\n## Pareto front of each method (every evaluated point)\n\n")
    out.write("| method | points | front (KL → reward) |\n|---|---|---|\n")
    for method in dict.fromkeys(frame["method"]):
        rows = frame[frame["method"] == method].reset_index(drop=True)
        front = pareto_front(list(rows["kl"]), list(rows["reward"]))
        text = ", ".join(f"{rows['kl'][i]:.2f} → {rows['reward'][i]:.2f}" for i in front)
        out.write(f"| {method} | {len(rows)} | {text} |\n")
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
    """Per finished run: seconds per step (PPO: per iteration, split into phases), peak RSS, models held."""
    from alignlab.train.state import read_summary

    rows = []
    for run in runs:
        out = Path(run.cfg.out_dir)
        summary = read_summary(out)
        if summary is None:  # not finished, or its results are damaged (it will be resumed)
            continue
        train = [r for r in scan_jsonl(out / "metrics.jsonl")[0] if r.get("split") == "train"]
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
            }
        )
    return rows


def compute_table(frame: pd.DataFrame) -> str:
    """Markdown: one row per method (medians over its runs)."""
    out = io.StringIO()
    out.write(
        "| method | batch | s / step | generation | scoring | update | peak RSS (MiB) | models held "
        "(trainable + frozen) | parameters held |\n|---|---|---|---|---|---|---|---|---|\n"
    )

    def cell(v: Any, fmt: str = ".2f") -> str:
        return "" if v is None or pd.isna(v) else format(v, fmt)

    for method in dict.fromkeys(frame["method"]):
        rows = frame[frame["method"] == method]
        r = rows.iloc[0]
        med = rows.median(numeric_only=True)
        out.write(
            f"| {method} | {r['batch_size']} | {cell(med['s_per_step'])} | {cell(med['gen_s'])} | "
            f"{cell(med['score_s'])} | {cell(med['update_s'])} | {cell(med['peak_rss_mb'], '.0f')} | "
            f"{r['models_held']} ({r['trainable']} + {r['frozen']}): {r['roles']} | {r['parameters_held']:,} |\n"
        )
    return out.getvalue()


# ----------------------------------------------------------------------------------------- entry points


def plot_dir(results: Path, fit: bool = False, title: str = "") -> list[Path]:
    """``alignlab plot DIR``: the plots of a results directory from its CSVs."""
    paths: list[Path] = []
    if (results / "frontier.csv").exists():
        frame = read_csv(results / "frontier.csv")
        if not frame.empty:
            paths += plot_frontier(frame, results, title or f"{results.name}: reward–KL frontier", fit=fit)
    if (results / "winrate.csv").exists():
        frame = read_csv(results / "winrate.csv")
        if not frame.empty:
            paths += plot_winrate(frame, results, title or f"{results.name}: win rate")
    if not paths:
        raise AlignlabError(f"{results}: no frontier.csv or winrate.csv with rows to plot")
    return paths


def table_dir(results: Path) -> list[Path]:
    """``alignlab table DIR``: frontier.md and winrate.md from the CSVs."""
    paths: list[Path] = []
    if (results / "frontier.csv").exists():
        frame = read_csv(results / "frontier.csv")
        if not frame.empty:
            paths.append(atomic_write_text(results / "frontier.md", frontier_table(frame)))
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
