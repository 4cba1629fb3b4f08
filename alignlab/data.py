"""Data access: a Hub dataset id, or the same schema from local files under a data directory.

The data directory is a setting (``data_dir:`` in a YAML) or the ``ALIGNLAB_DATA_DIR``
environment variable; nothing in alignlab names a machine's path. Files are read through
``datasets`` (``.jsonl``, ``.jsonl.gz``, ``.parquet``), so they are cached as Arrow after the
first read.
"""

from __future__ import annotations

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
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataError(
            f"no data directory is set and the Hub is offline (HF_HUB_OFFLINE=1), so {hub_id!r} cannot be "
            f"downloaded: set data_dir in the YAML or ${DATA_DIR_ENV} to a directory holding {stem}.jsonl.gz"
        )
    try:
        with quiet_datasets():
            return datasets.load_dataset(hub_id, split=split)
    except Exception as err:
        raise DataError(
            f"could not load {hub_id!r} (split {split!r}) from the Hugging Face Hub: {one_line(err)}. "
            f"Without the Hub, set data_dir in the YAML or ${DATA_DIR_ENV} to a directory holding "
            f"{stem}.jsonl.gz"
        ) from err
