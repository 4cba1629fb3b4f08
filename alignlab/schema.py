"""Typed, documented, range-checked frozen dataclasses: the one way alignlab declares settings.

Every setting is a :func:`knob` with its default, a one-sentence help and its bounds; a
:class:`Config` checks types and ranges when it is built and refuses unknown keys with a
"did you mean ...?". Objective configs, experiment sections and the YAML reference are all
built on this. Standard library only.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from alignlab.errors import ConfigError

_MISSING = dataclasses.MISSING


def knob(
    default: Any = _MISSING,
    help: str = "",
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """A config field with its documentation and allowed range.

    Args:
        default: the default value (the only place defaults live); omit for a required key.
        help: one sentence on what the knob does, shown by ``alignlab objectives`` and the docs.
        gt, ge, lt, le: bounds checked when the config is built.
        default_factory: for mutable defaults (lists).
    """
    bounds = {k: v for k, v in {"gt": gt, "ge": ge, "lt": lt, "le": le}.items() if v is not None}
    metadata = {"help": help, "bounds": bounds}
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


INT_LIMIT = 2**63
"""Every integer setting lies in [−2⁶³, 2⁶³): what torch and numpy can hold."""
SEED_BOUNDS = {"ge": 0, "lt": 2**32}
"""The range of every ``seed`` / ``*_seed`` setting, declared or not: numpy's seeds are 32-bit."""


def field_bounds(f: dataclasses.Field[Any]) -> dict[str, float]:
    """The bounds of a field: those its :func:`knob` declares, and :data:`SEED_BOUNDS` for seeds."""
    bounds = dict(f.metadata.get("bounds", {}))
    if f.name == "seed" or f.name.endswith("_seed"):
        for kind, bound in SEED_BOUNDS.items():
            bounds.setdefault(kind, bound)
    return bounds


def _numbers(value: Any) -> list[Any]:
    """The numbers a value holds: itself, or the items of a list (bools are not numbers here)."""
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, int | float) and not isinstance(v, bool)]


_BOUND_CHECKS = {
    "gt": (lambda v, b: v > b, ">"),
    "ge": (lambda v, b: v >= b, ">="),
    "lt": (lambda v, b: v < b, "<"),
    "le": (lambda v, b: v <= b, "<="),
}


def type_name(tp: Any) -> str:
    """A readable name for a field's annotation: ``float | None``, ``'sum' | 'mean'``, ``list[str]``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if tp is float:  # an int is a fine float; a bool is not a number here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


_SCIENTIFIC = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)[eE][+-]?\d+$")  # linear: no nested repeats
_YAML_BOOLS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _config_type(tp: Any) -> type[Config] | None:
    """The Config subclass a field holds (directly or as ``X | None``), if any."""
    candidates = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, Config):
            return c
    return None


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error line quotes what was given, not all of it."""
    if isinstance(value, int) and abs(value) >= 10**limit:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Config:
    """Base of every settings dataclass: checks types and ranges of all fields on creation."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp = hints[f.name]
            # YAML 1.1 reads an unquoted no/yes/off/on as a bool: `mixed_precision: no` means the choice 'no'
            if isinstance(value, bool) and typing.get_origin(tp) is Literal:
                words = [c for c in typing.get_args(tp) if isinstance(c, str) and c in _YAML_BOOLS[value]]
                if len(words) == 1:
                    value = words[0]
                    object.__setattr__(self, f.name, value)
            # YAML 1.1 (PyYAML) reads 1e-3 as a string: it needs a dot (1.0e-3) to be a float
            if isinstance(value, str) and _SCIENTIFIC.match(value) and _matches(1.5, tp):
                value = float(value)
                object.__setattr__(self, f.name, value)
            elif isinstance(value, list) and _matches([1.5], tp):
                value = [float(v) if isinstance(v, str) and _SCIENTIFIC.match(v) else v for v in value]
                object.__setattr__(self, f.name, value)
            if not _matches(value, tp):
                raise ConfigError(f.name, f"expected {type_name(tp)}, got {_short_repr(value)}")
            for number in _numbers(value):
                if isinstance(number, float) and not math.isfinite(number):
                    hint = " (null means no limit here)" if _matches(None, tp) else ""
                    raise ConfigError(f.name, f"must be a finite number, got {number!r}{hint}")
                if isinstance(number, int) and not -INT_LIMIT <= number < INT_LIMIT:
                    raise ConfigError(f.name, f"must lie in [-2**63, 2**63), got {_short_repr(number)}")
                for kind, bound in field_bounds(f).items():
                    check, symbol = _BOUND_CHECKS[kind]
                    if not check(number, bound):
                        raise ConfigError(f.name, f"must be {symbol} {bound}, got {number!r}")
            if tp is float and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def from_dict(cls, values: Any, source: str | None = None, prefix: str = "") -> Any:
        """Build the config from a mapping, recursing into nested configs.

        Args:
            values: key -> value, as read from YAML.
            source: the file the values came from, named in errors.
            prefix: the dotted path of this mapping in that file (e.g. ``objective.``).

        Raises:
            ConfigError: naming the file and the dotted key, for an unknown key (with a
                suggestion), a missing required key, a wrong type or an out-of-range value.
        """
        if not isinstance(values, dict):
            where = prefix.rstrip(".") or "(top level)"
            raise ConfigError(where, f"expected a mapping of keys, got {_short_repr(values)}", source)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key in values:
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(fields) or 'none'}"
                raise ConfigError(prefix + str(key), f"unknown key; {hint}", source)
        kwargs = {}
        for name, value in values.items():
            sub = _config_type(hints[name])
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value, source, f"{prefix}{name}.")
            elif sub is not None and not isinstance(value, sub) and not (value is None and _matches(None, hints[name])):
                # a section written as a scalar or a list: say what a section looks like
                raise ConfigError(
                    prefix + name, f"expected a mapping of keys (a section), got {_short_repr(value)}", source
                )
            kwargs[name] = value
        for name, f in fields.items():
            if name not in kwargs and f.default is _MISSING and f.default_factory is _MISSING:
                raise ConfigError(prefix + name, "required key is missing", source)
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(prefix + err.key, err.message, source) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for writing the resolved config)."""
        return dataclasses.asdict(self)

    @classmethod
    def knobs(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of each field, in declaration order."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is _MISSING else f.default_factory()
            rows.append((f.name, type_name(hints[f.name]), default, f.metadata.get("help", "")))
        return rows
