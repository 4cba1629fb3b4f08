"""User-facing errors.

Everything a user can cause (a bad YAML key, an unknown objective, a missing file) raises an
:class:`AlignlabError`. The command line prints its message on one line and exits with status 2;
``--debug`` shows the traceback. Anything else is a bug in alignlab and keeps its traceback.
"""

from __future__ import annotations


class AlignlabError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class ConfigError(AlignlabError, ValueError):
    """A configuration value is unknown, of the wrong type, or out of range.

    Args:
        key: the dotted key, e.g. ``objective.beta``.
        message: what is wrong and what is allowed.
        source: the file the value came from, when there is one.
    """

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}")


class UnknownObjectiveError(AlignlabError, KeyError):
    """No objective is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginError(AlignlabError, ImportError):
    """A plugin module could not be found or imported."""


def flatten(text: str) -> str:
    """``text`` on one line: its lines (and runs of spaces) joined by single spaces."""
    return " ".join(text.split())


def one_line(err: BaseException) -> str:
    """``Type: message`` of another library's exception, on one line (theirs often span several)."""
    return f"{type(err).__name__}: {flatten(str(err))}"
