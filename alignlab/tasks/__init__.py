"""Tasks: IMDb controlled sentiment, Anthropic HH dialogue, TL;DR summarisation.

``build_task({"name": "imdb", ...})`` validates the task's settings and returns the task.
"""

from __future__ import annotations

import difflib
from typing import Any

from alignlab.errors import ConfigError
from alignlab.tasks.base import DataReport, PreferencePair, Task, TaskConfig
from alignlab.tasks.hh import HHTask
from alignlab.tasks.imdb import IMDbTask
from alignlab.tasks.tldr import CNNDMTask, TLDRTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (IMDbTask, HHTask, TLDRTask, CNNDMTask)}


def build_task(spec: dict[str, Any], source: str | None = None, prefix: str = "task.") -> Task:
    """The task named by ``spec["name"]``, its settings validated (errors name ``source`` and the key)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(prefix + "name", "required key is missing", source)
    name = spec["name"]
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(prefix + "name", f"unknown task {name!r}{hint} (tasks: {', '.join(TASKS)})", source)
    cls = TASKS[name]
    return cls(cls.config_cls.from_dict(spec, source, prefix))


__all__ = ["TASKS", "DataReport", "PreferencePair", "Task", "TaskConfig", "build_task"]
