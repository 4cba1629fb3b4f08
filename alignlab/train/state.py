"""Run state on disk: which checkpoints a run has and whether they are whole, ``final/``, and the
metrics log and results.

A checkpoint is a directory ``out_dir/checkpoints/step-NNNNNNN/`` published atomically (it exists
whole or not at all) that is itself a model with the run state beside it; what it holds, and how it
is written and read through accelerate's ``save_state``/``load_state``, is
:mod:`alignlab.train.checkpoint`. Every file is listed in its ``MANIFEST.json`` (size and sha256).
A finished run publishes its policy alone as ``out_dir/final/`` (:func:`publish_final`).

Damage is detected, not trusted: a checkpoint that fails its manifest is moved aside to
``checkpoints/damaged-step-NNNNNNN`` and the run resumes from the newest intact one (or from step
0), with one warning line; a damaged ``metrics.jsonl`` is restored from the checkpoint's copy; a
finished run whose results are damaged is not finished (:func:`read_summary`), so it is resumed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from alignlab.errors import one_line
from alignlab.io import (
    MANIFEST,
    Damaged,
    atomic_dir,
    atomic_write_jsonl,
    clear_temps,
    quarantine,
    scan_jsonl,
    verify_dir,
    warn,
)

CHECKPOINTS = "checkpoints"
FINAL = "final"
"""The finished run's policy, model + tokenizer + generation config only (:func:`publish_final`)."""
ACCELERATE = "accelerate"
"""The subdirectory of a checkpoint that ``accelerator.save_state`` writes (the module docstring)."""
LEGACY_STATE = "trainer_state.pt"
"""The training state of an alignlab from before ``accelerate/``: optimiser, scheduler and RNG state dicts."""
RUN_STATE = (ACCELERATE, LEGACY_STATE, "state.json", "metrics.jsonl", MANIFEST)
"""The files of a checkpoint that are run state, not the model."""
LEGACY_MODEL_DIRS = ("model", "policy")
"""Where an alignlab before checkpoints were models saved the trained model, in a subdirectory."""
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
WINRATE = "winrate.json"
_STEP = re.compile(r"^step-(\d+)$")


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS / f"step-{step:07d}"


def clear_checkpoint_temps(out_dir: Path) -> list[Path]:
    """Remove what a process killed while writing or pruning a checkpoint left (never a checkpoint)."""
    return clear_temps(out_dir / CHECKPOINTS)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint all at once: renamed out of the ``step-*`` names first, so that a kill
    during the deletion leaves a temporary for :func:`clear_checkpoint_temps`, not a checkpoint
    missing some of its files."""
    doomed = path.with_name(f".{path.name}.tmp-deleted")
    shutil.rmtree(doomed, ignore_errors=True)
    try:
        os.rename(path, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Every ``step-N`` directory under ``out_dir/checkpoints``, oldest first (not checked)."""
    root = out_dir / CHECKPOINTS
    found = [p for p in root.iterdir() if _STEP.match(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def _read_whole(path: Path) -> None:
    """Read every file of a checkpoint without a manifest (an older alignlab's, or one whose manifest
    was lost): JSON, safetensors, and torch files through accelerate's ``weights_only`` loader."""
    from accelerate.utils import load

    for file in sorted(path.rglob("*")):
        if file.suffix == ".json":
            json.loads(file.read_text(encoding="utf-8"))
        elif file.suffix == ".safetensors":
            load_file(str(file))
        elif file.suffix in (".pt", ".bin", ".pkl") and file.is_file():
            load(file)


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with the checkpoint directory ``path``; None when it is intact.

    Checked against its manifest (size and sha256 of every file); one written without a manifest is
    read whole instead. Either way ``state.json`` must name the checkpoint's own step, and the
    training state must be there: ``accelerate/`` with process 0's RNG file, or an older alignlab's
    ``trainer_state.pt``.
    """
    try:
        if not verify_dir(path):
            _read_whole(path)
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except Damaged as err:
        return str(err)
    except Exception as err:  # an older checkpoint that does not read back, whatever the reader raised
        return f"it does not load: {one_line(err)}"
    step = state.get("step") if isinstance(state, dict) else None
    if step != int(path.name[5:]):
        return f"its state.json names step {step!r}"
    if (path / ACCELERATE).is_dir():
        if not (path / ACCELERATE / "random_states_0.pkl").is_file():
            return f"{ACCELERATE}/random_states_0.pkl is missing"
    elif not (path / LEGACY_STATE).is_file():
        return f"its training state ({ACCELERATE}/) is missing"
    return None


def read_state(path: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint: its step and the trainer's own state (the module docstring)."""
    return dict(json.loads((path / "state.json").read_text(encoding="utf-8")))


def _set_aside(path: Path, problem: str) -> str:
    """Quarantine a damaged checkpoint; what happened, for the warning line."""
    try:
        where = f"moved aside to {quarantine(path).name}"
    except FileNotFoundError:
        where = "moved aside by another process"
    except OSError as err:
        where = f"left in place ({one_line(err)})"
    return f"{path.name} ({problem}), {where}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest intact checkpoint (half-written ones never carry the final name); None if none is.

    Newer damaged ones (:func:`checkpoint_problem`) are moved aside to ``damaged-step-NNNNNNN``,
    never deleted, and one warning line names them and the checkpoint resumed from instead, or says
    that the run starts over from step 0.
    """
    damaged, found = [], None
    for path in reversed(list_checkpoints(out_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            found = path
            break
        damaged.append(_set_aside(path, problem))
    if damaged:
        then = f"resuming from {found.name}" if found else "no intact checkpoint is left: starting over from step 0"
        warn(f"{out_dir / CHECKPOINTS}: damaged checkpoint {'; '.join(damaged)}; {then}")
    return found


def checkpoint_model_files(path: Path) -> list[Path]:
    """The files at a checkpoint's top that are the policy: model (or adapter), tokenizer, generation config."""
    return sorted(p for p in path.iterdir() if p.is_file() and p.name not in RUN_STATE)


def publish_final(out_dir: Path) -> Path | None:
    """``out_dir/final/``: the newest checkpoint's model, tokenizer and generation config alone (no
    run state, no critic), published atomically with its manifest; None when the run has no checkpoint.

    The files are hard links to the checkpoint's where the file system allows (no second copy of the
    weights), else copies. A ``final/`` already there is kept when it is intact and holds the same
    files as the checkpoint (a run stopped after publishing it); otherwise it is moved aside
    (``damaged-final``) with one warning line and published again.
    """
    last = latest_checkpoint(out_dir)
    if last is None:
        return None
    files = checkpoint_model_files(last)
    final = out_dir / FINAL
    if final.exists() or final.is_symlink():
        problem = _final_problem(final, last, [p.name for p in files])
        if problem is None:
            return final
        warn(f"{out_dir}: {_set_aside(final, problem)}; publishing it again from {last.name}")
    with atomic_dir(final) as tmp:
        for file in files:
            try:
                os.link(file, tmp / file.name)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(file, tmp / file.name)
    return final


def _final_problem(final: Path, checkpoint: Path, names: list[str]) -> str | None:
    """What keeps ``final`` from being the policy of ``checkpoint``; None when it is."""
    try:
        if not verify_dir(final):
            return "it has no manifest"
        ours = json.loads((final / MANIFEST).read_text(encoding="utf-8"))["files"]
        theirs = json.loads((checkpoint / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (Damaged, OSError, ValueError, KeyError, TypeError) as err:
        return one_line(err)
    if sorted(ours) != names or any(ours[n] != theirs.get(n) for n in names):
        return f"it is not the policy of {checkpoint.name}"
    return None


def _up_to(rows: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    return [r for r in rows if isinstance(r.get("step"), int) and r["step"] <= step]


class MetricsLog:
    """Rows of metrics: ``metrics.jsonl`` (rewritten atomically on flush) and accelerate's trackers.

    On resume the file keeps only the rows up to the checkpoint's step, so a resumed run's log
    is the one an uninterrupted run would have written. Those rows come from the checkpoint's copy
    of the log when it has one (verified with it); a damaged or shortened ``metrics.jsonl`` is
    rewritten from it at once, with one warning line.
    """

    def __init__(self, out_dir: Path, accelerator: Any, resume_step: int | None) -> None:
        self.path = out_dir / METRICS
        self.accelerator = accelerator
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None:
            self.rows = self._resumed(checkpoint_dir(out_dir, resume_step) / METRICS, resume_step)

    def _resumed(self, saved_path: Path, step: int) -> list[dict[str, Any]]:
        """The rows up to ``step``; the log repaired (and a warning) when it lacks any of them."""
        rows, problem = scan_jsonl(self.path)
        kept = _up_to(rows, step)
        if saved_path.is_file():  # a checkpoint of this alignlab: the log as it stood then
            saved = _up_to(scan_jsonl(saved_path)[0], step)
            if saved == kept:
                return kept
            what = f"is damaged ({problem})" if problem else f"lacks rows: {len(kept)} of {len(saved)} to step {step}"
            warn(f"{self.path} {what}; rewritten from the copy in {saved_path.parent.name}")
            kept = saved
        elif problem:
            warn(f"{self.path} is damaged ({problem}); kept the {len(kept)} rows up to step {step} before it")
        else:
            return kept
        self.rows = kept
        self.flush()
        return kept

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        numbers = {k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}
        self.accelerator.log(numbers, step=row["step"])

    def flush(self) -> None:
        if self.accelerator.is_main_process:
            atomic_write_jsonl(self.path, self.rows)


def _json_problem(path: Path, kind: type) -> str | None:
    """What is wrong with a JSON file that must hold a ``kind`` (dict or list); None when it does."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"not JSON: {one_line(err)}"
    return None if isinstance(value, kind) else f"not a JSON {'object' if kind is dict else 'list'}"


def _metrics_problem(out_dir: Path) -> str | None:
    """What is wrong with a finished run's log: a damaged line, no rows, fewer rows than its last checkpoint saved."""
    rows, problem = scan_jsonl(out_dir / METRICS)
    checkpoints = list_checkpoints(out_dir)
    saved = len(scan_jsonl(checkpoints[-1] / METRICS)[0]) if checkpoints else 0
    if problem or not rows:
        return problem or "missing or empty"
    return f"{len(rows)} rows, fewer than the {saved} its last checkpoint saved" if len(rows) < saved else None


def result_problems(out_dir: Path) -> dict[str, str]:
    """What is wrong with each result file of a run directory that holds ``summary.json`` (name -> problem).

    ``summary.json`` must be a JSON object, ``metrics.jsonl`` whole (:func:`_metrics_problem`) and
    ``winrate.json``, if there is one, a JSON list.
    """
    found = {SUMMARY: _json_problem(out_dir / SUMMARY, dict), METRICS: _metrics_problem(out_dir)}
    if (out_dir / WINRATE).exists():
        found[WINRATE] = _json_problem(out_dir / WINRATE, list)
    return {name: problem for name, problem in found.items() if problem is not None}


def read_summary(out_dir: Path, repair: bool = False) -> dict[str, Any] | None:
    """The summary of a finished run; None when it has none, or when a result file is damaged
    (:func:`result_problems`): such a run is not finished, and resuming it writes them again.

    Args:
        out_dir: the run directory.
        repair: the caller holds the run and is about to resume it: move a damaged ``summary.json``
            and ``winrate.json`` aside (``damaged-<name>``; :class:`MetricsLog` restores
            ``metrics.jsonl`` from the checkpoint), with one warning line.
    """
    if not (out_dir / SUMMARY).exists():
        return None
    problems = result_problems(out_dir)
    if not problems:
        return dict(json.loads((out_dir / SUMMARY).read_text(encoding="utf-8")))
    if repair:
        found = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        moved = [f"{n} moved aside to {quarantine(out_dir / n).name}" for n in (SUMMARY, WINRATE) if n in problems]
        warn(f"{out_dir}: damaged results of a finished run ({found}); {', '.join(moved) or 'nothing moved'}; resuming")
    return None
