"""Data access: a Hub dataset id, or the same schema from local files under a data directory.

The data directory is a setting (``data_dir:`` in a YAML) or the ``ALIGNLAB_DATA_DIR``
environment variable; nothing in alignlab names a machine's path. Files are read through
``datasets`` (``.jsonl``, ``.jsonl.gz``, ``.parquet``), so they are cached as Arrow after the
first read.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError, one_line

DATA_DIR_ENV = "ALIGNLAB_DATA_DIR"
CACHE_DIR_ENV = "ALIGNLAB_CACHE_DIR"
LOCAL_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")
CACHE_STAGES = ("tokenizer", "sft", "gold", "pairs", "reward_model", "reference", "scores")
"""The folders of the cache, one per stage."""


class DataError(AlignlabError):
    """Data could not be found or read."""


class DataDirError(DataError):
    """The data directory (a setting, or ``$ALIGNLAB_DATA_DIR``) does not exist.

    Args:
        message: what is wrong, without saying where the directory was named.
        origin: where it was named (``data_dir``, ``$ALIGNLAB_DATA_DIR``), prefixed to the message.
    """

    def __init__(self, message: str, origin: str | None = None) -> None:
        self.message = message
        super().__init__(f"{origin}: {message}" if origin else message)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars, and no log lines from ``datasets`` while it reads: what it cannot read
    becomes alignlab's own one-line :class:`DataError`, which says the same once."""
    import datasets

    datasets.disable_progress_bars()
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def cache_root() -> Path:
    """Where shared stages (tokenizers, SFT models, generated pairs) are cached: $ALIGNLAB_CACHE_DIR or
    ~/.cache/alignlab."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "alignlab").expanduser()


def in_cache(path: str) -> Path:
    """A path as ``summary.json`` and the stage reports write it (the stage cache as ``$ALIGNLAB_CACHE_DIR``,
    so that they read the same on any machine), on this machine: the default cache too when the variable
    is unset (where ``os.path.expandvars`` would leave it as it is)."""
    return Path(path.replace(f"${CACHE_DIR_ENV}", str(cache_root())))


def check_cache_writable() -> Path:
    """The cache root, checked before any work: a directory alignlab can write in (one line naming
    ``$ALIGNLAB_CACHE_DIR`` otherwise)."""
    from alignlab.ownership import check_writable

    root = cache_root()
    key = (
        f"${CACHE_DIR_ENV}"
        if os.environ.get(CACHE_DIR_ENV)
        else f"the cache directory (set ${CACHE_DIR_ENV} to move it)"
    )
    check_writable(root, key)
    for stage in CACHE_STAGES:  # where each stage writes: a file in its place would fail mid-run
        if (root / stage).exists() and not (root / stage).is_dir():
            check_writable(root / stage, f"{key} (its {stage}/)")
    return root


def resolve_data_dir(setting: str | None = None) -> Path | None:
    """The data directory: the explicit setting, else ``$ALIGNLAB_DATA_DIR``, else None (use the Hub)."""
    value = setting or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        origin = "data_dir" if setting else f"${DATA_DIR_ENV}"
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise DataDirError(
            f"data directory {value!r} {what} (resolved to {path.resolve()}): give a directory holding the "
            "task's files in the Hub schema (relative paths are to the working directory)",
            origin,
        )
    return path


def find_local_file(data_dir: Path, stem: str) -> Path:
    """``<data_dir>/<stem>`` with the first existing suffix of ``.jsonl.gz``, ``.jsonl``, ``.parquet``."""
    tried = [data_dir / f"{stem}{suffix}" for suffix in LOCAL_SUFFIXES]
    for path in tried:
        if path.is_file():
            return path
    raise DataError(f"no file for {stem!r} in data directory {data_dir}: looked for {', '.join(str(p) for p in tried)}")


OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Environment variables that turn the Hugging Face Hub off (``1``, ``true``, ``yes`` or ``on``)."""
HUB_PROBE_TIMEOUT_S = 5.0
"""How long the Hub may take to answer one request before alignlab says it cannot be reached (the
Hub's own clients retry for half a minute and more before they give up)."""


def hub_endpoint() -> str:
    """The Hub's address: ``$HF_ENDPOINT``, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_problem() -> str | None:
    """Why the Hugging Face Hub cannot be used, or None: an environment variable that turns it off, or no
    answer to one request to :func:`hub_endpoint` within :data:`HUB_PROBE_TIMEOUT_S` (once per process)."""
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"the Hub is offline ({name}={os.environ[name]})"
    endpoint = hub_endpoint()
    reason = _probe(endpoint, HUB_PROBE_TIMEOUT_S)
    return None if reason is None else f"the Hugging Face Hub ({endpoint}) cannot be reached ({reason})"


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout: float) -> str | None:
    """None when ``endpoint`` answers a HEAD request (any HTTP status) within ``timeout`` seconds, else why
    not. The request runs in a daemon thread, so a name lookup that hangs is bounded by the timeout too."""
    import threading
    import urllib.error
    import urllib.request

    said: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            said.append(None)
        except urllib.error.HTTPError:  # it answered
            said.append(None)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            said.append(f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else str(reason))

    thread = threading.Thread(target=ask, name="alignlab-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return said[0] if said else f"no answer within {timeout:g} s"


def check_hub(what: str, why: str, instead: str) -> None:
    """Before ``what`` is read from the Hub (``why``: what sent alignlab there): one :class:`DataError`
    at once when the Hub is off or cannot be reached, naming ``instead`` (what to do); otherwise a
    line saying that it reads the Hub, before the download starts.

    Raises:
        DataError: ``<why> and <the problem>, so <what> cannot be downloaded: <instead>``.
    """
    from alignlab.progress import say

    problem = hub_problem()
    if problem is not None:
        raise DataError(f"{why} and {problem}, so {what} cannot be downloaded: {instead}")
    say(f"{why}: reading {what} from the Hugging Face Hub ({hub_endpoint()})")


def load_records(data_dir: Path | None, stem: str, hub_id: str, split: str) -> Any:
    """A ``datasets.Dataset``: from ``<data_dir>/<stem>.*`` if a data directory is set, else from the Hub.

    Args:
        data_dir: the local data directory, or None to use the Hub.
        stem: the file path under the data directory without suffix, e.g. ``imdb/train``.
        hub_id: the Hub dataset id with the same schema, e.g. ``stanfordnlp/imdb``.
        split: the Hub split to read.
    """
    import datasets

    if data_dir is not None:
        path = find_local_file(data_dir, stem)
        builder = "parquet" if path.suffix == ".parquet" else "json"
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty; it should hold the rows of {hub_id} ({split} split)")
        try:
            with quiet_datasets():
                return datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as err:
            raise DataError(f"{path}: cannot be read as {builder}: {one_line(err)}") from err
    instead = f"set data_dir in the YAML or ${DATA_DIR_ENV} to a directory holding {stem}.jsonl.gz"
    check_hub(f"{hub_id!r} ({split})", "no data directory is set", instead)
    try:
        with quiet_datasets():
            return datasets.load_dataset(hub_id, split=split)
    except Exception as err:
        raise DataError(
            f"could not load {hub_id!r} (split {split!r}) from the Hugging Face Hub: {one_line(err)}. "
            f"Without the Hub, set data_dir in the YAML or ${DATA_DIR_ENV} to a directory holding "
            f"{stem}.jsonl.gz"
        ) from err
