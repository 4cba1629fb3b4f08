"""Run state on disk: checkpoints that resume exactly, and the metrics log.

A checkpoint is a directory ``out_dir/checkpoints/step-NNNNNNN/`` published atomically (it
exists whole or not at all) holding every trained model (``save_pretrained``, safetensors), the
optimiser and scheduler state, the RNG states and ``state.json`` (the step, the data position,
any trainer state such as PPO's KL coefficient). Loading uses ``weights_only=True`` and
safetensors only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignlab.io import atomic_dir, atomic_write_json, atomic_write_jsonl, clear_temps, read_jsonl

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


def rng_state() -> dict[str, Any]:
    """Every RNG a run may draw from: torch (CPU and CUDA), Python's ``random`` and numpy's."""
    np_state: Any = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _save_module(module: torch.nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None) -> None:
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(path, state_dict=state_dict, safe_serialization=True)  # type: ignore[operator]
    else:
        path.mkdir(parents=True, exist_ok=True)
        tensors = state_dict if state_dict is not None else module.state_dict()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "module.safetensors"))


def _load_module(module: torch.nn.Module, path: Path) -> None:
    if (path / "module.safetensors").exists():
        module.load_state_dict(load_file(str(path / "module.safetensors")))
        return
    # from_pretrained knows the model's tied and renamed weights; copy its tensors into ours
    loaded = type(module).from_pretrained(path)  # type: ignore[attr-defined]
    module.load_state_dict(loaded.state_dict())


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS / f"step-{step:07d}"


def clear_checkpoint_temps(out_dir: Path) -> list[Path]:
    """Remove what a process killed while writing or pruning a checkpoint left (never a checkpoint)."""
    return clear_temps(out_dir / CHECKPOINTS)


def _remove(path: Path) -> None:
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


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (half-written ones never carry the final name)."""
    root = out_dir / CHECKPOINTS
    found = sorted(p for p in root.glob("step-*") if (p / "state.json").exists()) if root.is_dir() else []
    return found[-1] if found else None


def save_checkpoint(
    out_dir: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    state_dicts: dict[str, dict[str, torch.Tensor]] | None = None,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then drop all but the newest ``keep``.

    Args:
        modules: name -> the unwrapped module; HF models go through ``save_pretrained``.
        state_dicts: name -> a full state dict gathered by accelerate (FSDP, DeepSpeed), if any.
        extra_files: file name -> an object saved as JSON beside ``state.json`` (e.g. a tokenizer is
            passed through ``save_pretrained`` when it has one).
    """
    path = checkpoint_dir(out_dir, step)
    if path.exists():
        return path
    with atomic_dir(path) as tmp:
        for name, module in modules.items():
            _save_module(module, tmp / name, (state_dicts or {}).get(name))
        for name, obj in (extra_files or {}).items():
            if hasattr(obj, "save_pretrained"):
                obj.save_pretrained(tmp / name)
            else:
                atomic_write_json(tmp / name, obj)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / "trainer_state.pt",
        )
        atomic_write_json(tmp / "state.json", {**state, "step": step})  # the step of this checkpoint, always
    older = sorted(p for p in (out_dir / CHECKPOINTS).glob("step-*") if p != path and p.name < path.name)
    for stale in older[: max(0, len(older) - (keep - 1))]:
        _remove(stale)
    return path


def load_checkpoint(
    path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore modules, optimiser, scheduler and RNGs from ``path``; returns ``state.json``."""
    for name, module in modules.items():
        _load_module(module, path / name)
    saved = torch.load(path / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return json.loads((path / "state.json").read_text())


class MetricsLog:
    """Rows of metrics: ``metrics.jsonl`` (rewritten atomically on flush) and accelerate's trackers.

    On resume the file keeps only the rows up to the checkpoint's step, so a resumed run's log
    is the one an uninterrupted run would have written.
    """

    def __init__(self, out_dir: Path, accelerator: Any, resume_step: int | None) -> None:
        self.path = out_dir / METRICS
        self.accelerator = accelerator
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.exists():
            self.rows = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        numbers = {k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}
        self.accelerator.log(numbers, step=row["step"])

    def flush(self) -> None:
        if self.accelerator.is_main_process:
            atomic_write_jsonl(self.path, self.rows)
