"""Atomic file writes: a reader sees the old file or the new one, never half of either.

A file is written to a temporary sibling (``.<name>.<random>.tmp``), flushed to disk (``fsync``) and
renamed over its final name; a directory is built in a temporary sibling (``.<name>.tmp-<random>``),
every file in it flushed, and renamed into place. The rename is atomic and the parent directory is
flushed after it, so neither a killed process nor a crash of the machine leaves a half-written file
under a final name. A writer killed mid-write leaves its temporary sibling behind: readers never
open those names, and :func:`clear_temps` removes them (call it holding the lock of whatever writes
there).

What is stored is verified when it is read back. :func:`atomic_dir` writes ``MANIFEST.json`` (the
size and sha256 of every file) as its last act, and :func:`verify_dir` checks a directory against
it; a single file written with ``atomic_file(path, checksum=True)`` gets a ``<name>.sha256`` sidecar
(``sha256sum`` format), checked by :func:`verify_file`. Something written before alignlab wrote
these carries neither and is verified by loading it (:func:`load_intact`). A damaged file or
directory is never deleted: :func:`quarantine` moves it aside to ``damaged-<name>``, a name no
reader opens, and the warning line (:func:`warn`) says where.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from alignlab.errors import AlignlabError, flatten, one_line

MANIFEST = "MANIFEST.json"
"""Written last into every directory :func:`atomic_dir` publishes: ``{"format", "files": {path: {size, sha256}}}``."""
MANIFEST_FORMAT = "alignlab.manifest/1"
CHECKSUM_SUFFIX = ".sha256"
"""The sidecar of a single file written with a checksum: ``<sha256>  <name>`` (``sha256sum -c`` reads it)."""
DAMAGED_PREFIX = "damaged-"
"""What a damaged file or directory is renamed to (``damaged-<name>``): kept, never read."""

T = TypeVar("T")


class Damaged(AlignlabError):
    """A stored file or directory does not match the checksums written with it (or cannot be read)."""


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
def atomic_file(path: str | Path, checksum: bool = False) -> Iterator[Path]:
    """A temporary path in ``path``'s directory to write to; flushed to disk and moved onto ``path``
    only if the block succeeds.

    With ``checksum``, the file's ``<name>.sha256`` sidecar is written after it (an older sidecar is
    removed first, so a kill in between leaves a file without one, never one with a wrong one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
    try:
        yield tmp
        _fsync(tmp)  # the data is on disk before the name points at it
        digest = sha256_file(tmp) if checksum else None
        if digest is not None:
            checksum_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # and the new name itself
    if digest is not None:
        atomic_write_text(checksum_path(path), f"{digest}  {path.name}\n")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, so that it is JSON (``json.dumps``
    writes them as ``NaN``/``Infinity``, which no strict reader accepts)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON, indented, atomically."""
    return atomic_write_text(path, json.dumps(finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


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
    return atomic_write_text(path, "".join(json.dumps(finite(r), allow_nan=False) + "\n" for r in rows))


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it into place only when complete.

    A reader sees no directory or the whole one, with its :data:`MANIFEST` (written last, inside the
    temporary sibling). If another process published ``final`` first, this one's copy is discarded
    (both built the same content from the same key).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, final: Path) -> None:
    """The end of :func:`atomic_dir`: write ``tmp``'s manifest, flush it to disk and rename it to ``final``.

    For a directory that several processes build together (a checkpoint that every process of a
    distributed run writes into, :func:`alignlab.train.checkpoint.save_checkpoint`), called by one of them
    once all have written. If ``final`` exists already, ``tmp`` is discarded.
    """
    write_manifest(tmp)  # last: the checksums of everything above
    _fsync_tree(tmp)  # every file is on disk before the directory takes its final name
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync(final.parent)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> Path:
    """Write ``directory/MANIFEST.json``: the size and sha256 of every file under it (paths POSIX-style)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel != MANIFEST:
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return atomic_write_json(directory / MANIFEST, {"format": MANIFEST_FORMAT, "files": files})


def _check_file(path: Path, name: str, sha256: str, size: int | None = None) -> None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise Damaged(f"{name} is missing") from None
    if size is not None and actual != size:
        raise Damaged(f"{name} has {actual} bytes, {size} were written")
    if sha256_file(path) != sha256:
        raise Damaged(f"{name} ({actual} bytes) differs from the checksum written with it")


def verify_dir(directory: str | Path) -> bool:
    """Check every file :data:`MANIFEST` lists (extra files are allowed).

    Returns:
        True when every file matches; False when there is no manifest (a directory written before
        alignlab wrote them: only loading it can tell).

    Raises:
        Damaged: naming the first file that is missing, of another size or of other content, or an
            unreadable manifest.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise Damaged(f"{directory.name} is not a directory")
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as err:
        raise Damaged(f"{MANIFEST} is unreadable ({one_line(err)})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise Damaged(f"{MANIFEST} is not an alignlab manifest")
    for name, entry in files.items():
        try:
            sha256, size = str(entry["sha256"]), int(entry["size"])
        except (TypeError, KeyError, ValueError):
            raise Damaged(f"{MANIFEST}: the entry of {name} is unreadable") from None
        _check_file(directory / name, name, sha256, size)
    return True


def checksum_path(path: str | Path) -> Path:
    """The ``<name>.sha256`` sidecar of a single file."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def verify_file(path: str | Path) -> bool:
    """Check a single file against its ``.sha256`` sidecar: True if it matches, False without one.

    Raises:
        Damaged: the file is missing or differs, or the sidecar is unreadable.
    """
    path = Path(path)
    try:
        text = checksum_path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        if not path.exists():
            raise Damaged(f"{path.name} is missing") from None
        return False
    except (OSError, ValueError) as err:
        raise Damaged(f"{checksum_path(path).name} is unreadable ({one_line(err)})") from None
    sha256 = text.split()[0] if text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise Damaged(f"{checksum_path(path).name} holds no sha256")
    _check_file(path, path.name, sha256)
    return True


def verify(path: str | Path) -> bool:
    """:func:`verify_dir` for a directory, else :func:`verify_file`."""
    return verify_dir(path) if Path(path).is_dir() else verify_file(path)


def quarantine(path: str | Path) -> Path:
    """Move a damaged file or directory aside to ``damaged-<name>`` beside it (``damaged-2-<name>``, ...
    when taken), with its checksum sidecar; nothing is deleted. Returns the new path.

    Raises:
        OSError: the rename failed (``FileNotFoundError``: another process moved it first).
    """
    path = Path(path)
    target = path.with_name(DAMAGED_PREFIX + path.name)
    n = 1
    while target.exists() or target.is_symlink():
        n += 1
        target = path.with_name(f"{DAMAGED_PREFIX}{n}-{path.name}")
    os.rename(path, target)
    if checksum_path(path).exists():
        os.replace(checksum_path(path), checksum_path(target))
    return target


def warn(message: str) -> None:
    """One warning line on stderr: ``alignlab: warning: <message>``."""
    print(f"alignlab: warning: {flatten(message)}", file=sys.stderr, flush=True)


def load_intact(path: str | Path, load: Callable[[Path], T], what: str, then: str = "rebuilding it") -> T | None:
    """``load(path)`` of a stored file or directory when it is intact; None when it is missing or damaged.

    Something with a manifest or checksum is verified against it and then loaded (a load error is
    then a real error, and raised). Something without (written before alignlab wrote them) is
    verified by loading it: any error counts as damage. A damaged one is moved aside
    (:func:`quarantine`) with one warning line naming it, what is wrong and ``then``. Call it
    holding the lock of whatever writes ``path``.

    Args:
        path: the file or directory.
        load: reads it.
        what: what it is, for the warning (e.g. ``"the cached SFT policy"``).
        then: what the caller does next, for the warning.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        verified = verify(path)
    except Damaged as err:
        problem = str(err)
    else:
        if verified:
            return load(path)
        try:
            return load(path)
        except Exception as err:  # unverifiable and unreadable: damaged, whatever the reader raised
            problem = f"it does not load: {one_line(err)}"
    try:
        where = f"moved aside to {quarantine(path).name}"
    except FileNotFoundError:
        where = "moved aside by another process"
    warn(f"{what} {path} is damaged ({problem}); {where}; {then}")
    return None


def scan_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of a JSON Lines file up to its first damaged line, and what is wrong there (None if nothing).

    A missing file has no rows and nothing wrong; blank lines are skipped; every other line must be
    a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], None
    except (OSError, UnicodeDecodeError) as err:
        return [], f"it is unreadable ({one_line(err)})"
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return rows, f"line {n} is not JSON"
        if not isinstance(row, dict):
            return rows, f"line {n} is not a JSON object"
        rows.append(row)
    return rows, None


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
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                yield False
                return
            # another process holds it (building the same cache entry, say): a silent wait looks like a hang
            from alignlab.progress import say

            say(f"waiting for {path}: another alignlab process holds it (building the same stage, or a stopped one)")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
