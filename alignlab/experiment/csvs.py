"""The CSVs of a results directory — ``frontier.csv``, ``winrate.csv``, ``compute.csv``, ``summary.csv`` — their
columns, and their reading and writing: written atomically, read back checked, so that a CSV edited
by hand into something else is one :class:`~alignlab.errors.AlignlabError` line naming the file and
what is wrong (not CSV, a missing column, a row whose value is not a number), not a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alignlab.errors import AlignlabError, one_line
from alignlab.io import atomic_file

RUN_COLUMNS = ["experiment", "method", "objective", "run", "setting", "seed"]  # identify a run in every CSV
FRONTIER_COLUMNS = [
    *RUN_COLUMNS,
    "step",
    "kl",
    "kl_ci_low",
    "kl_ci_high",
    "reward",
    "reward_ci_low",
    "reward_ci_high",
    "reward_scale",
    "samples",
    "wall_s",
    "compute_tokens",  # cumulative policy forward-equivalent tokens of training (alignlab.train.loop)
    "compute_s",  # cumulative measured seconds of the training steps, evaluation excluded
    "finished",
    "knobs",
]
COMPUTE_COLUMNS = [
    "method",
    "objective",
    "run",
    "batch_size",
    "steps",
    "s_per_step",
    "gen_s",
    "score_s",
    "update_s",
    "wall_time_s",
    "peak_rss_mb",
    "models_held",
    "trainable",
    "frozen",
    "roles",
    "parameters_held",
    "trainable_parameters",  # the parameters that train (a LoRA policy: its adapters')
    "tokens_per_step",  # median policy forward-equivalent tokens of a step (PPO: an iteration)
    "compute_tokens",  # the whole run's, the reference cache included
    "compute_s",  # the whole run's measured seconds of training steps
]
SUMMARY_COLUMNS = [  # summary.csv: alignlab.experiment.summary.summary_frame
    "quantity",  # reward_at_kl | area_to_cap | a_above_b
    "method",  # a_above_b: the method with the higher mean (A)
    "versus",  # a_above_b: B
    "kl",  # the KL budget; area_to_cap: the cap
    "kl_from",  # area_to_cap: the KL range integrated over
    "kl_to",
    "seeds",  # the method's seeds
    "n",  # the seeds the value is a mean over
    "value",  # mean reward at the budget; the area (reward × nats); A − B
    "ci_low",  # 95% Student-t interval over seeds (blank with one seed)
    "ci_high",
    "p_positive",  # σ of value (a_above_b: σ(A) − σ(B)), for a log-odds reward
    "p_positive_ci_low",
    "p_positive_ci_high",
    "separate",  # a_above_b: yes | no (the intervals overlap) | blank (no interval)
    "complete",  # False: fewer seeds than the others, or seeds whose fronts stop before the budget
    "reward_scale",  # log_odds (the gold judge) | reward_model
]
WINRATE_COLUMNS = [
    *RUN_COLUMNS,
    "temperature",
    "win_rate",
    "win_rate_ci_low",
    "win_rate_ci_high",
    "n",
    "judge",
]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    frame = pd.DataFrame(rows, columns=columns)
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


@dataclass(frozen=True)
class CsvColumns:
    """What the plots and tables read from one of the CSVs (other columns may be there too)."""

    text: tuple[str, ...]
    """Columns read as text."""
    numbers: tuple[str, ...]
    """Columns that must hold numbers (or nothing)."""
    filled: tuple[str, ...]
    """Columns of either kind that no row may leave empty."""
    optional: tuple[str, ...] = ()
    """Number columns an older alignlab did not write: empty when missing."""


READ_COLUMNS = {
    "frontier.csv": CsvColumns(
        ("method", "objective", "run", "setting"),
        ("seed", "step", "kl", "kl_ci_low", "kl_ci_high", "reward", "reward_ci_low", "reward_ci_high"),
        ("method", "run", "step", "kl", "reward"),
        ("compute_tokens", "compute_s"),
    ),
    "winrate.csv": CsvColumns(
        ("method", "run", "setting", "judge"),
        ("temperature", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "n"),
        ("method", "run", "temperature", "win_rate"),
    ),
    "compute.csv": CsvColumns(
        ("method", "roles"),
        (
            "batch_size",
            *("s_per_step", "gen_s", "score_s", "update_s", "peak_rss_mb"),
            *("models_held", "trainable", "frozen", "parameters_held"),
        ),
        ("method",),
        ("tokens_per_step", "compute_tokens", "compute_s", "trainable_parameters"),
    ),
}


def read_csv(path: Path) -> pd.DataFrame:
    """One of the CSVs, its columns checked against :data:`READ_COLUMNS` (by file name).

    Raises:
        AlignlabError: one line naming the file and what is wrong: missing, not CSV, a column
            missing, a value that is not a number or an empty cell where one is needed (with its row).
    """
    if not path.exists():
        raise AlignlabError(f"{path}: no such file (run the experiment first: alignlab run <experiment.yaml>)")
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (ValueError, UnicodeDecodeError, OSError) as err:  # pandas' ParserError, EmptyDataError: ValueErrors
        raise AlignlabError(f"{path}: not a CSV table ({one_line(err)})") from None
    columns = READ_COLUMNS.get(path.name)
    return frame if columns is None else _checked(path, frame, columns)


def _checked(path: Path, frame: pd.DataFrame, columns: CsvColumns) -> pd.DataFrame:
    """``frame`` with its number columns as numbers and its text columns as text, or the first problem."""
    needed = [*columns.text, *columns.numbers]
    missing = [c for c in needed if c not in frame.columns]
    if missing == needed:
        raise AlignlabError(f"{path}: not a CSV table of alignlab's (none of the columns {', '.join(needed)})")
    if missing:
        raise AlignlabError(f"{path}: no column {', '.join(missing)} (alignlab run writes it again)")

    def row(bad: pd.Series) -> int:
        return int(np.argmax(bad.to_numpy())) + 1

    for c in columns.optional:
        if c not in frame.columns:
            frame[c] = np.nan
    for c in (*columns.numbers, *columns.optional):
        values = pd.to_numeric(frame[c], errors="coerce")
        bad = values.isna() & frame[c].notna()
        if bad.any():
            raise AlignlabError(f"{path}: row {row(bad)}: {c} is {frame[c][bad].iloc[0]!r}, not a number")
        frame[c] = values
    for c in columns.text:
        frame[c] = frame[c].map(lambda v: v if pd.isna(v) else str(v))
    for c in columns.filled:
        if frame[c].isna().any():
            raise AlignlabError(f"{path}: row {row(frame[c].isna())}: {c} is empty")
    return frame
