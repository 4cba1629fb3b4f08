"""Atomic file writes: a reader sees the old file or the new one, never half of either.

A file is written to a temporary sibling (``.<name>.<random>.tmp``), flushed to disk (``fsync``) and
renamed over its final name; a directory is built in a temporary sibling (``.<name>.tmp-<random>``),
every file in it flushed, and renamed into place. The rename is atomic and the parent directory is
flushed after it, so neither a killed process nor a crash of the machine leaves a half-written file
under a final name. A writer killed mid-write leaves its temporary sibling behind: readers never
open those names, and :func:`clear_temps` removes them (call it holding the lock of whatever writes
there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk (directories: POSIX only)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a directory on Windows cannot be opened: its renames are durable already
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s directory to write to; flushed to disk and moved onto ``path``
    only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
    try:
        yield tmp
        _fsync(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # and the new name itself


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON, indented, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_yaml(path: str | Path, obj: Any) -> Path:
    """YAML (``safe_dump``), atomically."""
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file (blank lines skipped); [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def atomic_write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """JSON Lines, atomically (the whole file is rewritten)."""
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it into place only when complete.

    A reader sees no directory or the whole one. If another process published ``final`` first,
    this one's copy is discarded (both built the same content from the same key).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        _fsync_tree(tmp)  # every file is on disk before the directory takes its final name
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(final.parent)


def _temp_pattern(name: str | None) -> re.Pattern[str]:
    stem = re.escape(name) if name is not None else r".+"
    return re.compile(rf"^\.{stem}\.(?:tmp-[A-Za-z0-9_]+|[A-Za-z0-9_]+\.tmp)$")


def clear_temps(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete what writers killed mid-write left in ``directory``: the temporaries of ``name`` (of
    every name if None). Call it only while no other process may be writing them (holding the lock
    of the stage or run that writes there). Returns the paths removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = _temp_pattern(name)
    removed = []
    for entry in directory.iterdir():
        if pattern.match(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock (``fcntl.flock``) on the file ``path`` (created if missing).

    Yields True when this process holds the lock; with ``blocking=False`` it yields False at once
    if another process holds it. The lock goes with the process: a killed holder frees it.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield True
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
