"""What a command is doing, one line at a time on stderr: each shared stage as it starts (or that it
was reused from the cache) and how long it took, a resumed run's step.

The lines are progress, not results: they go to stderr, from the main process only (under
``accelerate launch`` the others load what it built), and they are printed whatever
``train.progress`` says — that setting turns off the bars (tqdm) of the stages that have steps.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    """``alignlab: <message>`` on stderr, one write (processes sharing a terminal do not interleave)."""
    if _main_process():
        sys.stderr.write(f"alignlab: {message}\n")
        sys.stderr.flush()


def cached(what: str, path: Path, detail: str = "") -> None:
    """Say that the stage ``what`` was reused from the cache entry ``path`` (and ``detail``, what it holds)."""
    say(f"{what}: reused from the cache ({_short(path)}){'; ' + detail if detail else ''}")


@contextmanager
def stage(what: str, doing: str) -> Iterator[None]:
    """Say that the stage ``what`` starts ``doing``, then, when it is done, how long it took."""
    say(f"{what}: {doing}")
    t0 = time.time()
    yield
    say(f"{what}: done in {_duration(time.time() - t0)}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _short(path: Path) -> str:
    """A cache entry as ``<stage>/<key>`` under the cache root (long, and the same for every stage)."""
    from alignlab.data import cache_root

    try:
        return path.relative_to(cache_root()).as_posix()
    except ValueError:
        return str(path)
