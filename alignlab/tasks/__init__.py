"""Tasks: IMDb controlled sentiment, Anthropic HH dialogue, TL;DR summarisation — and any a plugin registers.

``build_task({"name": "imdb", ...})`` validates the task's settings and returns the task. The tasks are
looked up in the registry (:func:`register_task`, :data:`TASKS`); what one can do is read from what its
class declares (:meth:`Task.data_sources`, :meth:`Task.has_gold_judge`, :attr:`Task.judge_template`).
"""

from __future__ import annotations

from typing import Any

from alignlab.data import DATA_DIR_ENV, DataDirError
from alignlab.errors import ConfigError
from alignlab.tasks.base import DataReport, PreferencePair, Task, TaskConfig
from alignlab.tasks.capabilities import DATA_SOURCES, GoldJudge
from alignlab.tasks.hh import HHTask
from alignlab.tasks.imdb import IMDbTask
from alignlab.tasks.registry import TASKS, UnknownTaskError, get_task, register_task, task_names
from alignlab.tasks.tldr import CNNDMTask, TLDRTask

for _builtin in (IMDbTask, HHTask, TLDRTask, CNNDMTask):  # in this order: listings and the YAML reference
    register_task(_builtin)

DEFAULT_TASK = "imdb"
"""The task of a run whose YAML names none."""


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
    try:
        cls = get_task(str(spec["name"]))
    except UnknownTaskError as err:
        raise ConfigError(prefix + "name", str(err), source) from None
    return cls.config_cls.from_dict(spec, source, prefix)


def build_task(spec: Any, source: str | None = None, prefix: str = "task.") -> Task:
    """The task named by ``spec["name"]``, its settings validated (errors name ``source`` and the key)."""
    cfg = task_config(spec, source, prefix)
    try:
        return get_task(cfg.name)(cfg)
    except DataDirError as err:  # the data directory is a setting: name the file and key it came from
        if cfg.data_dir:
            raise ConfigError(f"{prefix}data_dir", err.message, source) from err
        raise DataDirError(f"${DATA_DIR_ENV}: {err.message}") from err


__all__ = [
    "DATA_SOURCES",
    "DEFAULT_TASK",
    "TASKS",
    "DataReport",
    "GoldJudge",
    "PreferencePair",
    "Task",
    "TaskConfig",
    "UnknownTaskError",
    "build_task",
    "get_task",
    "register_task",
    "task_config",
    "task_names",
]
