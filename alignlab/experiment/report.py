"""From run directories to the experiment's results: frontier.csv, win rates, compute, tables (the plots:
:mod:`alignlab.experiment.plots`).

Every writer reads only files (``metrics.jsonl``, ``winrate.json``, ``summary.json`` of each run,
and the CSVs), so ``alignlab plot DIR`` / ``alignlab table DIR`` redraw from a results directory
alone, and every output is written atomically.

- ``frontier.csv``: one row per (run, evaluation step): method, setting, seed, step, kl (+ 95% CI),
  reward (+ 95% CI), its scale (``log_odds``: the gold judge), samples, wall time, and the training
  compute spent to reach it: ``compute_tokens`` (cumulative policy forward-equivalent tokens, defined
  in :mod:`alignlab.train.loop`) and ``compute_s`` (the measured seconds of the training steps so
  far, evaluation excluded: the sum of each train row's ``step_s``, for PPO ``gen_s + score_s + update_s``).
- ``frontier.png`` / ``.svg``, ``frontier_fit.png`` / ``.svg`` (``--fit``), ``frontier_compute.png`` /
  ``.svg``, ``winrate.png`` / ``.svg``: drawn by :mod:`alignlab.experiment.plots` from the CSVs.
- ``frontier.md``: the last evaluation of every run, the means over seeds, each method's Pareto
  front, its reward at the KL budgets, the area under its front, and the pairwise "A above B"
  table (:mod:`alignlab.experiment.summary` says how each is computed); ``summary.csv``: the same
  summaries as a tidy table.
- ``winrate.csv`` / ``winrate.md``: win rate against the references by sampling
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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alignlab.errors import AlignlabError
from alignlab.experiment.csvs import SUMMARY_COLUMNS, WINRATE_COLUMNS, read_csv, write_csv
from alignlab.experiment.plots import COMPUTE_AXES, plot_compute, plot_frontier, plot_winrate
from alignlab.experiment.summary import MARK, is_log_odds, means_markdown, seed_means, summary_frame, summary_markdown
from alignlab.experiment.summary import pareto_front as pareto_front  # re-exported
from alignlab.io import atomic_write_text, scan_jsonl

if TYPE_CHECKING:
    from alignlab.experiment.config import PlannedRun


def setting_text(setting: dict[str, Any]) -> str:
    """``beta=0.1 seed=1``; ``-`` when nothing is swept."""
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "-"


def run_rows(experiment: str, run: PlannedRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(frontier rows, win-rate rows) of one planned run, from its directory (empty if not run yet)."""
    from alignlab.train.state import read_summary

    out = run.run_dir
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
    for r in logged_rows(run):
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


def logged_rows(run: PlannedRun) -> list[dict[str, Any]]:
    """A planned run's metric rows (a damaged log: the rows before the damage); a final run trained by
    its tuning run reads that run's test-prompt evaluation (``test_sample_*``) as its ``sample_*``."""
    rows = scan_jsonl(run.run_dir / "metrics.jsonl")[0]
    if run.trained_by is None:
        return rows
    return [_test_prompts(r) if r.get("split") == "eval" else r for r in rows]


def _test_prompts(row: dict[str, Any]) -> dict[str, Any]:
    """An eval row of a tuning run with its test-prompt sampling evaluation as the row's own."""
    own = {k: v for k, v in row.items() if not k.startswith(("sample_", "test_")) and k != "samples"}
    return own | {k.removeprefix("test_"): v for k, v in row.items() if k.startswith("test_")}


def mixed_references(runs: Sequence[PlannedRun]) -> str | None:
    """What is wrong when finished runs that should share π_ref were trained on different ones, else None.

    Runs with the same task, model and SFT settings share one SFT stage; its cache key also hashes the
    code that builds it, so an experiment resumed after that code (or the data) changed trains its
    remaining runs on a new π_ref while the finished ones keep the old: their points are not
    comparable. The newest finished run's π_ref (its ``summary.json``'s ``policy``) counts as current.
    """
    from alignlab.sft import sft_model_settings
    from alignlab.train.state import read_summary

    groups: dict[str, list[tuple[float, str, str]]] = {}
    for run in runs:
        out = run.run_dir
        summary = read_summary(out)
        if summary is None or not summary.get("policy"):
            continue
        key = json.dumps(
            [run.cfg.task, sft_model_settings(run.cfg.model), run.cfg.sft.to_dict()], sort_keys=True, default=str
        )
        groups.setdefault(key, []).append(((out / "summary.json").stat().st_mtime, run.run_id, str(summary["policy"])))
    for members in groups.values():
        current = max(members)[2]
        stale = [(run_id, policy) for _, run_id, policy in sorted(members) if policy != current]
        if stale:
            names = ", ".join(run_id for run_id, _ in stale[:4]) + (
                f" and {len(stale) - 4} more" if len(stale) > 4 else ""
            )
            return (
                f"{len(stale)} finished run(s) were trained on another π_ref ({stale[0][1]}) than the newest runs "
                f"({current}): {names}; the SFT stage changed between them (its code, data or settings), so their "
                "points are not comparable: delete those run directories and run the experiment again to retrain them"
            )
    return None


def step_seconds(row: dict[str, Any]) -> float:
    """The measured seconds of one train row's step: PPO's phases (generation, scoring, update), else ``step_s``."""
    if "gen_s" in row:
        return float(row["gen_s"]) + float(row.get("score_s", 0.0)) + float(row.get("update_s", 0.0))
    return float(row.get("step_s", 0.0))


def reward_scale(task: str | None) -> str:
    """What a run's sample reward is: its task's gold judge's (``GoldJudge.reward_scale``: ``log_odds`` for
    IMDb's, a classifier's log-odds of positive), which a run evaluates with when its task has a gold
    judge, else ``reward_model``."""
    from alignlab.tasks import DEFAULT_TASK, TASKS

    cls = TASKS.get(task or DEFAULT_TASK)
    judge = cls.gold_judge if cls is not None else None
    return judge.reward_scale if judge is not None else "reward_model"


def _winrate_json(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``winrate.json``; none when it is missing or damaged (the run redoes it)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


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


# ----------------------------------------------------------------------------------------- compute


def compute_rows(runs: Sequence[PlannedRun]) -> list[dict[str, Any]]:
    """Per finished run: seconds per step (PPO: per iteration, split into phases), peak RSS, models held,
    forward-equivalent tokens per step and in all (:mod:`alignlab.train.loop`), seconds of training in all."""
    from alignlab.train.state import read_summary

    rows = []
    for run in runs:
        summary = read_summary(run.run_dir)
        if summary is None:  # not finished, or its results are damaged (it will be resumed)
            continue
        logged = logged_rows(run)
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
                # an older summary has no trainable_parameters: a trained network trained all of them
                "trainable_parameters": sum(
                    m.get("trainable_parameters", m["parameters"]) for m in held if m["trainable"]
                ),
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
        "| method | networks held (trainable + frozen) | parameters held | parameters trained | batch | s / step "
        "| generation | scoring | update | FE tokens / step | FE tokens / example | FE tokens in all | × least "
        "| training s | peak RSS (MiB) |\n" + "|---" * 15 + "|\n"
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
            f"{r['parameters_held']:,} | {cell(r.get('trainable_parameters'), ',.0f')} | {r['batch_size']} | "
            f"{cell(med['s_per_step'])} | {cell(med['gen_s'])} | "
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


def read_rows(path: Path) -> pd.DataFrame:
    """A results CSV (:func:`~alignlab.experiment.csvs.read_csv`) with its methods as plots and tables
    name them: a method an older alignlab labelled with its objective's name (``dpo``) gets the
    objective's display name (``DPO``), as a method without a label now does."""
    from alignlab.objectives import display_name

    frame = read_csv(path)
    if {"method", "objective"} <= set(frame.columns) and not frame.empty:
        default = frame["method"] == frame["objective"]
        frame.loc[default, "method"] = frame.loc[default, "objective"].map(lambda name: display_name(str(name)))
    return frame


def plot_dir(results: Path, fit: bool = False, title: str = "") -> list[Path]:
    """``alignlab plot DIR``: the plots of a results directory from its CSVs (and its experiment.yaml);
    with ``fit``, also frontier_fit.png/.svg."""
    paths: list[Path] = []
    if (results / "frontier.csv").exists():
        frame = read_rows(results / "frontier.csv")
        if not frame.empty:
            cfg = report_settings(results)
            title = title or f"{results.name}: reward–KL frontier"
            paths += plot_frontier(frame, results, title, fit=fit, kl_budgets=cfg.kl_budgets, panels=cfg.plot_panels)
            if (frame[list(COMPUTE_AXES)] > 0).any().any():  # runs of an older alignlab have no compute
                paths += plot_compute(frame, results, f"{results.name}: reward against training compute")
    if (results / "winrate.csv").exists():
        frame = read_rows(results / "winrate.csv")
        if not frame.empty:
            paths += plot_winrate(frame, results, title or f"{results.name}: win rate")
    if not paths:
        raise AlignlabError(f"{results}: no frontier.csv or winrate.csv with rows to plot")
    return paths


def table_dir(results: Path) -> list[Path]:
    """``alignlab table DIR``: frontier.md, summary.csv, winrate.md and compute.md from the CSVs."""
    paths: list[Path] = []
    if (results / "frontier.csv").exists():
        frame = read_rows(results / "frontier.csv")
        if not frame.empty:
            cfg = report_settings(results)
            text = frontier_table(frame, cfg.kl_budgets, cfg.kl_cap)
            paths.append(atomic_write_text(results / "frontier.md", text))
            summary = summary_frame(frame, cfg.kl_budgets, cfg.kl_cap)
            paths.append(write_csv(results / "summary.csv", summary.to_dict("records"), SUMMARY_COLUMNS))
    if (results / "winrate.csv").exists():
        frame = read_rows(results / "winrate.csv")
        if not frame.empty:
            paths.append(atomic_write_text(results / "winrate.md", winrate_table(frame)))
    if (results / "compute.csv").exists():
        frame = read_rows(results / "compute.csv")
        if not frame.empty:
            paths.append(atomic_write_text(results / "compute.md", compute_table(frame)))
    if not paths:
        raise AlignlabError(f"{results}: no frontier.csv or winrate.csv with rows to tabulate")
    return paths
