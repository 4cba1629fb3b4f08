"""The task registry: a name -> :class:`~alignlab.tasks.base.Task` subclass.

The built-in tasks are registered by :mod:`alignlab.tasks`; a task of your own joins from your own
module, which a YAML lists under ``plugins:`` (:mod:`alignlab.plugins`), without touching alignlab::

    @register_task
    class MyTask(Task):
        name = "my_task"  # the YAML's task.name
        ...

What a task can do is asked of its class (:meth:`Task.data_sources`, :meth:`Task.has_gold_judge`,
:meth:`Task.has_references`, :attr:`Task.judge_template`), never told by its name.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from alignlab.errors import AlignlabError
from alignlab.tasks.base import Task, TaskConfig
from alignlab.tasks.capabilities import JUDGE_FIELDS, GoldJudge

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
_REGISTRY: dict[str, type[Task]] = {}
TASKS: Mapping[str, type[Task]] = MappingProxyType(_REGISTRY)
"""Every registered task by name, in the order registered (a read-only view: :func:`register_task` adds)."""
TaskT = TypeVar("TaskT", bound=type[Task])


class UnknownTaskError(AlignlabError, KeyError):
    """No task is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_task(cls: TaskT) -> TaskT:
    """Class decorator: register a :class:`Task` subclass under its ``name`` (the YAML's ``task.name``).

    Registering another class under a taken name is an error; registering the same class again (a
    plugin module imported twice) replaces the entry.

    Raises:
        TypeError: ``cls`` is not a concrete :class:`Task` subclass, or declares a capability of the
            wrong type (``config_cls``, ``gold_judge``, ``judge_template``).
        ValueError: its name is missing, malformed or taken by another class.
    """
    if not isinstance(cls, type) or not issubclass(cls, Task):
        raise TypeError(f"register_task: {cls!r} is not a Task subclass (class MyTask(alignlab.tasks.Task))")
    where = f"task class {_origin(cls)}"
    name = cls.__dict__.get("name")  # its own: a subclass of a registered task names itself
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{where}: set its name, lower-case letters, digits, '_' or '-' (name = \"my_task\"), got {name!r}"
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise TypeError(f"{where}: implement {missing} (every task gives SFT texts and prompts)")
    if not isinstance(cls.config_cls, type) or not issubclass(cls.config_cls, TaskConfig):
        raise TypeError(f"{where}: config_cls must be a TaskConfig subclass, got {cls.config_cls!r}")
    if cls.gold_judge is not None and not isinstance(cls.gold_judge, GoldJudge):
        raise TypeError(f"{where}: gold_judge must be a GoldJudge or None, got {cls.gold_judge!r}")
    _check_template(cls, where)
    taken = _REGISTRY.get(name)
    if taken is not None and _qualname(taken) != _qualname(cls):
        raise ValueError(f"task name {name!r} is already registered by {_origin(taken)}; pick another name")
    _REGISTRY[name] = cls
    return cls


def _check_template(cls: type[Task], where: str) -> None:
    template = cls.judge_template
    try:
        template.format(**dict.fromkeys(JUDGE_FIELDS, ""))
    except (AttributeError, KeyError, IndexError, ValueError) as err:
        fields = ", ".join(f"{{{f}}}" for f in JUDGE_FIELDS)
        raise TypeError(f"{where}: judge_template must be a format string of {fields}; {err!r}") from None
    missing = [f for f in JUDGE_FIELDS if f"{{{f}}}" not in template]
    if missing:
        raise TypeError(f"{where}: judge_template shows no {', '.join(f'{{{f}}}' for f in missing)}")


def _qualname(cls: type) -> str:
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        UnknownTaskError: with a "did you mean ...?" when a close name is registered.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; is the plugin that registers it listed under plugins:?"
    raise UnknownTaskError(f"unknown task {name!r}{hint} (tasks: {', '.join(_REGISTRY)})")


def task_names(having: Callable[[type[Task]], bool]) -> list[str]:
    """The registered tasks that have a capability, e.g. ``task_names(lambda t: t.has_gold_judge())``, for
    errors that say which tasks would do."""
    return [name for name, cls in _REGISTRY.items() if having(cls)]
