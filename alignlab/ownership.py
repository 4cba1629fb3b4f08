"""What alignlab may write into, replace and delete: only directories and files it wrote itself.

A run directory (``out_dir`` of ``alignlab train``, each run of ``alignlab run``), a results
directory (``out_dir`` of ``alignlab run``) and an exported model (``--out`` of ``alignlab export``,
by default ``merged/`` in the run directory) carry a marker file, :data:`MARKER`, written when
alignlab first claims them. Before it writes anything, alignlab checks each directory it is about
to use (:func:`check_claimable`):

- missing or empty: alignlab's to claim;
- marked by alignlab, as the same kind of directory: alignlab's;
- written by an alignlab from before the marker (a run directory whose ``config.yaml`` is a
  resolved run config, a results directory with ``experiment.yaml`` and a ``configs/`` folder):
  alignlab's, and marked from now on;
- anything else (a non-empty directory of the user's, the working directory, a file): refused
  with one line, ``--force`` or not.

``--force`` removes only the entries a run of alignlab writes (:data:`RUN_ENTRIES`); anything else
in the directory (a user's ``notes.txt``) is kept and named (:func:`remove_owned`).
Every check happens before any work, as does :func:`check_writable` for every path alignlab will
write under (output, results and cache directories).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import yaml

from alignlab.errors import ConfigError, one_line
from alignlab.io import atomic_write_json

Kind = Literal["run", "results", "export"]
MARKER = ".alignlab.json"
"""The marker of a directory alignlab owns: ``{"written_by": "alignlab", "kind": "run" | "results"}``."""
_RUN_NAMES = r"config\.yaml|summary\.json|metrics\.jsonl|diverged\.txt|winrate\.json|checkpoints|final|merged|alignlab"
RUN_ENTRIES = re.compile(
    rf"^(?:{_RUN_NAMES}|\.alignlab\.json"  # what a run writes, and the marker
    rf"|damaged-(?:\d+-)?(?:{_RUN_NAMES})"  # its results moved aside as damaged (alignlab.io.quarantine)
    rf"|\.(?:{_RUN_NAMES}|alignlab\.json)\.(?:tmp-[A-Za-z0-9_]+|[A-Za-z0-9_]+\.tmp))$"  # a killed writer's
)
"""The names a run of alignlab writes in its directory (``alignlab/`` holds the tracker's events;
``damaged-<name>`` are its results moved aside as damaged; ``.<name>.<random>.tmp`` what a writer
killed mid-write leaves) — and nothing else: a user's ``damaged-notes.txt`` is not one of them."""


class OwnershipError(ConfigError):
    """A directory alignlab was asked to write into, or to delete, is not alignlab's (or not writable).

    ``key`` is the setting that named it (``out_dir``, ``$ALIGNLAB_CACHE_DIR``); ``source`` its file.
    """


def _marker_kind(path: Path) -> str | None:
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) and data.get("written_by") == "alignlab" else None


def _legacy(path: Path, kind: Kind) -> bool:
    """A directory an alignlab from before the marker wrote, on strong evidence only: a run
    directory whose ``config.yaml`` is a fully resolved run config beside its ``metrics.jsonl`` or
    ``checkpoints/``; a results directory whose ``experiment.yaml`` lists its runs, each with its
    resolved config in ``configs/``. A user's own YAMLs are never taken for these."""
    from alignlab.config import parse_yaml

    if kind == "export":  # exports came after the marker: none is legacy
        return False

    def read(file: Path) -> Any:
        try:
            return parse_yaml(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            return None

    if kind == "results":
        held = read(path / "experiment.yaml")
        runs = held.get("runs") if isinstance(held, dict) else None
        return (
            isinstance(runs, list)
            and bool(runs)
            and all(isinstance(r, str) and (path / "configs" / f"{r}.yaml").is_file() for r in runs)
        )
    held = read(path / "config.yaml")
    sections = {"task", "model", "sft", "data", "reward", "objective", "train", "rollout", "eval", "plugins", "out_dir"}
    return (
        isinstance(held, dict)
        and sections <= set(held)
        and ((path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir())
    )


def owned(path: Path, kind: Kind) -> bool:
    """Whether ``path`` is missing, empty, or a ``kind`` directory alignlab wrote."""
    if not path.exists():
        return True
    if not path.is_dir() or (path.is_symlink() and not path.resolve().is_dir()):
        return False
    if not any(path.iterdir()):
        return True
    marked = _marker_kind(path)
    if marked is not None:
        return marked == kind
    return _legacy(path, kind)


def _describe(path: Path) -> str:
    entries = sorted(p.name for p in path.iterdir())
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    return f"holds files alignlab did not write ({shown})"


def real_path(path: str | Path) -> Path:
    """``path`` as the file system will resolve it once created: ``~`` expanded, symbolic links of
    its existing part followed, ``..`` applied (``new/..`` is the directory that holds ``new``)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def check_writable(path: Path, key: str, source: str | None = None) -> None:
    """``path`` is a directory alignlab can create or write in, else one line naming ``key``.

    Checks the nearest existing ancestor when ``path`` does not exist yet; uses ``os.access``,
    so it answers for the user running alignlab (root may write where others may not).
    """
    try:
        probe = real_path(path)
        while not probe.exists():
            if probe.is_symlink():  # a dangling link
                raise OwnershipError(key, f"{path}: {probe} is a broken symbolic link", source)
            if probe.parent == probe:
                break
            probe = probe.parent
        is_dir, writable = probe.is_dir(), os.access(probe, os.W_OK | os.X_OK)
    except (OSError, ValueError) as err:  # a name too long, a NUL byte, a loop of links
        raise OwnershipError(key, f"{str(path)[:200]!r} is not a usable path: {one_line(err)}", source) from None
    shown = probe if Path(path).expanduser().is_absolute() else Path(os.path.relpath(probe))
    if probe.exists() and not is_dir:
        what = "is a file" if probe == real_path(path) else f"cannot be created: {shown} is a file"
        raise OwnershipError(key, f"{path} {what}, not a directory", source)
    if not writable:
        where = "" if probe == real_path(path) else f" (its parent {shown} is not writable)"
        raise OwnershipError(key, f"{path}: permission denied, alignlab cannot write there{where}", source)


def check_claimable(path: Path, kind: Kind, key: str, source: str | None = None) -> None:
    """Refuse, before any write, a ``kind`` directory that is not alignlab's (see the module doc).

    Args:
        path: the directory.
        kind: ``run`` or ``results``.
        key: the setting that named it (``out_dir``, ``runs_dir``), and ``source`` its file.
    """
    check_writable(path, key, source)
    real = real_path(path)
    if not owned(real, kind):
        marked = _marker_kind(real) if real.is_dir() else None
        if marked is not None:
            reason = f"is an alignlab {marked} directory, not a {kind} directory"
        elif real.is_dir():
            reason = _describe(real)
        else:
            reason = "is not a directory"
        raise OwnershipError(
            key,
            f"{path} {reason}; alignlab writes only into a new or empty directory or one it wrote itself: pick another",
            source,
        )


def mark(path: Path, kind: Kind) -> None:
    """Record that alignlab owns ``path`` (a ``kind`` directory), once."""
    if _marker_kind(path) != kind:
        atomic_write_json(path / MARKER, {"written_by": "alignlab", "kind": kind})


def remove_owned(path: Path) -> list[str]:
    """Delete what a run of alignlab wrote in run directory ``path``; keep the rest, and say so.

    Returns the names kept because alignlab did not write them (one line on stderr names them).
    Symbolic links are removed, never followed.
    """
    if not path.is_dir():
        return []
    kept = []
    # the marker last: a --force killed half-way leaves a directory alignlab still knows as its own
    for entry in sorted(path.iterdir(), key=lambda e: (e.name == MARKER, e.name)):
        if not RUN_ENTRIES.match(entry.name):
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    if kept:
        shown = ", ".join(kept[:5]) + (", ..." if len(kept) > 5 else "")
        print(f"{path}: --force kept {len(kept)} files alignlab did not write: {shown}", file=sys.stderr)
    return kept


@contextmanager
def directory_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive advisory ``flock`` on the directory ``path`` itself (created if missing): taking
    it writes nothing into the directory. Yields whether this process holds it (with
    ``blocking=False``, False at once when another does). It goes with the process: a killed holder
    frees it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield True
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextmanager
def training_lock(path: Path, key: str, source: str | None = None) -> Iterator[None]:
    """Hold run directory ``path``'s lock (:func:`directory_lock`) for the block, or refuse at once
    with one line if another process holds it (it is training that run)."""
    with directory_lock(path, blocking=False) as mine:
        if not mine:
            raise OwnershipError(
                key,
                f"{path} is in use: another alignlab process is training this run; wait for it to finish "
                "(or stop it), or pick another directory",
                source,
            )
        yield
