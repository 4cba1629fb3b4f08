"""Tasks: IMDb controlled sentiment, Anthropic HH dialogue, TL;DR summarisation.

``build_task({"name": "imdb", ...})`` validates the task's settings and returns the task.
"""

from __future__ import annotations

import difflib
from typing import Any

from alignlab.data import DATA_DIR_ENV, DataDirError
from alignlab.errors import ConfigError
from alignlab.tasks.base import DataReport, PreferencePair, Task, TaskConfig
from alignlab.tasks.hh import HHTask
from alignlab.tasks.imdb import IMDbTask
from alignlab.tasks.tldr import CNNDMTask, TLDRTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (IMDbTask, HHTask, TLDRTask, CNNDMTask)}


def task_config(spec: Any, source: str | None = None, prefix: str = "task.") -> TaskConfig:
    """The validated settings of the task ``spec`` names, without reading anything.

    Raises:
        ConfigError: naming ``source`` and the dotted key, for a spec that is not a mapping, an
            unknown task (with a "did you mean ...?"), or a bad setting.
    """
    if not isinstance(spec, dict):
        raise ConfigError(
            prefix.rstrip("."), f"expected a mapping with the task's name, e.g. {{name: imdb}}, got {spec!r}", source
        )
    if "name" not in spec:
        raise ConfigError(prefix + "name", "required key is missing", source)
    name = spec["name"]
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(prefix + "name", f"unknown task {name!r}{hint} (tasks: {', '.join(TASKS)})", source)
    return TASKS[name].config_cls.from_dict(spec, source, prefix)


def build_task(spec: Any, source: str | None = None, prefix: str = "task.") -> Task:
    """The task named by ``spec["name"]``, its settings validated (errors name ``source`` and the key)."""
    cfg = task_config(spec, source, prefix)
    try:
        return TASKS[cfg.name](cfg)
    except DataDirError as err:  # the data directory is a setting: name the file and key it came from
        if cfg.data_dir:
            raise ConfigError(f"{prefix}data_dir", err.message, source) from err
        raise DataDirError(f"${DATA_DIR_ENV}: {err.message}") from err


__all__ = ["TASKS", "DataReport", "PreferencePair", "Task", "TaskConfig", "build_task", "task_config"]
