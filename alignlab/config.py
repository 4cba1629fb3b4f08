"""YAML files -> plain dicts, with dotted command-line overrides; ``yaml.safe_load`` only.

The dicts are then turned into frozen :class:`alignlab.schema.Config` dataclasses, which check
every key, type and range and name the file and dotted key in their errors.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import AlignlabError, ConfigError


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Raises:
        AlignlabError: the file is missing or unreadable.
        ConfigError: the YAML is malformed (with line and column) or is not a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise AlignlabError(f"{path}: is a directory, not a YAML file")
    if not path.is_file():
        raise AlignlabError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise AlignlabError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise AlignlabError(
            f"{path}: line {line}: not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}: {err.reason}); "
            "save the file as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(unknown position)"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(where, f"malformed YAML: {problem}", str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level)", f"expected a mapping of keys, got {type(data).__name__}", str(path))
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "command line") -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.sub=value`` overrides applied (values parsed as YAML).

    ``objective.beta=0.2`` sets ``data["objective"]["beta"] = 0.2``; missing intermediate
    mappings are created, so the usual unknown-key check still catches typos.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(item, "an override must look like key.sub=value", source)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    ".".join(parts[: i + 1]), f"is {child!r}, not a mapping, so {key} cannot be set", source
                )
            node = child
        node[parts[-1]] = value
    return data
