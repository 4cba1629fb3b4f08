"""Stopping cleanly on SIGTERM and SIGINT (Ctrl-C): a checkpoint, then one line on how to resume.

The command line runs inside :func:`installed`. From then on either signal raises
:class:`Interrupted` where the process is, except inside a training loop
(:func:`at_step_boundaries`, which a trainer enters before its step-0 evaluation and checkpoint):
there the signal is remembered, the step in progress (or that evaluation) finishes, the loop saves a
checkpoint of it (:meth:`alignlab.train.loop.RunLoop.periodic`) and then stops. A
second signal while the first waits for the end of its step stops at once. Every file alignlab
writes is written atomically, so stopping anywhere else loses only the work since the last
checkpoint or cached stage; the same command resumes.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}
"""The exit status of a process stopped by each signal (128 + its number, as a shell reports it)."""


class Interrupted(BaseException):
    """The process was asked to stop (SIGTERM, SIGINT); the message says what was saved.

    A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` on its way (a loader
    that takes any error for a damaged file, a plugin's loss) may catch it and carry on.

    Args:
        signame: ``SIGTERM`` or ``SIGINT``.
        message: what happened and how to resume.
    """

    def __init__(self, signame: str, message: str | None = None) -> None:
        self.signame = signame
        super().__init__(
            message or f"stopped by {signame}; what was finished is kept: run the same command again to resume"
        )

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.signame, 130)


_deferring = 0
_pending: str | None = None


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    name = signal.Signals(signum).name
    if _deferring and _pending is None:
        _pending = name  # the training loop stops at the end of this step, after its checkpoint
        return
    raise Interrupted(name)


@contextmanager
def installed() -> Iterator[None]:
    """Within the block SIGTERM and SIGINT raise :class:`Interrupted` (see the module doc); the
    previous handlers come back after it. From the main thread only (elsewhere: nothing changes)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def at_step_boundaries() -> Iterator[None]:
    """Inside the block a first signal waits for the end of the step (:func:`pending`); one that
    arrived after the last step stops the process when the block ends."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        name, _pending = _pending, (_pending if _deferring else None)
    if name is not None and not _deferring:
        raise Interrupted(name)


def pending() -> str | None:
    """The signal waiting for the end of the step in progress, if any."""
    return _pending
