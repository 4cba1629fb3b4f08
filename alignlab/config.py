"""YAML files -> plain dicts, with dotted command-line overrides; the safe loader only, with limits.

The dicts are then turned into frozen :class:`alignlab.schema.Config` dataclasses, which check
every key, type and range and name the file and dotted key in their errors.

:func:`parse_yaml` is the one way alignlab reads YAML a user wrote. It is ``yaml.SafeLoader`` plus:

- a size limit (:data:`MAX_YAML_BYTES`): a config is a few KB;
- duplicate keys in a mapping are an error naming both lines (plain YAML lets the last one win
  silently, so ``lr: 1e-4`` twice in a file trains with whichever came last);
- aliases may not expand beyond :data:`MAX_YAML_NODES` values, and may not refer to themselves:
  an "alias bomb" (each anchor repeated ten times by the next) is refused from its node graph
  before any Python object is built, so neither the loading nor a later error message that
  prints the value can blow up;
- nesting deeper than :data:`MAX_YAML_DEPTH` is refused instead of exhausting the stack.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import AlignlabError, ConfigError

MAX_YAML_BYTES = 1 << 20
"""The largest YAML file alignlab reads (1 MiB)."""
MAX_YAML_NODES = 100_000
"""The most values a YAML document may hold once its aliases are expanded."""
MAX_YAML_DEPTH = 100
"""The deepest nesting of mappings and sequences a YAML document may have."""


class YAMLLimitError(yaml.YAMLError):
    """A document that is valid YAML but not a sane config (duplicate keys, an alias bomb, too deep)."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (naming both lines)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # `<<: *base` merges are meant to be overridden; complex keys are refused later
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YAMLLimitError(
                    f"duplicate key {key!r} on lines {seen[key]} and {line} (the value on line {line} "
                    "would silently win): keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_graph(root: yaml.Node) -> None:
    """Refuse a node graph whose expansion is too large or too deep, or that contains itself.

    The expanded size of every node is computed once (memoised by node), so an alias bomb costs
    time linear in the document, not in its expansion.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise YAMLLimitError(f"nested more than {MAX_YAML_DEPTH} levels deep", node.start_mark)
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise YAMLLimitError("an alias refers to the value that contains it (a cycle)", node.start_mark)
        on_path.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1 + sum(size(child, depth + 1) for child in children)
        on_path.discard(key)
        if total > MAX_YAML_NODES:
            raise YAMLLimitError(
                f"expands to more than {MAX_YAML_NODES:,} values (aliases repeating aliases?); a config is small",
                node.start_mark,
            )
        sizes[key] = total
        return total

    size(root, 0)


def parse_yaml(text: str) -> Any:
    """``text`` parsed by the safe loader within alignlab's limits (see the module docstring).

    Raises:
        yaml.YAMLError: malformed YAML, or a document beyond the limits (:class:`YAMLLimitError`).
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:
        raise YAMLLimitError(f"larger than {MAX_YAML_BYTES >> 20} MiB; a config is a few KB")
    loader = _LimitedLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLLimitError(f"nested more than {MAX_YAML_DEPTH} levels deep") from None
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


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
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError("(whole file)", f"YAML refused: larger than {MAX_YAML_BYTES >> 20} MiB", str(path))
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
        data = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(whole file)"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        what = "YAML refused" if isinstance(err, YAMLLimitError) else "malformed YAML"
        raise ConfigError(where, f"{what}: {problem}", str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level)", f"expected a mapping of keys, got {type(data).__name__}", str(path))
    return data


COMMAND_LINE = "command line"
_PART = re.compile(r"^([^\[\]]*)((?:\[-?\d+\])*)$")  # a key and its list indices: methods[0], a[1][2]


@dataclass(frozen=True)
class Override:
    """One ``key.sub=value`` argument of the command line.

    ``argument`` is the argument as typed, which every error about it names; ``key`` the dotted key
    it sets, list items as ``name[i]`` (``methods[0].sweep.beta``; a caller may have resolved another
    spelling, such as a method's label, into it); ``value`` the value parsed as YAML.
    """

    argument: str
    key: str
    value: Any

    def error(self, message: str) -> ConfigError:
        """A :class:`ConfigError` naming this argument: ``command line: <argument>: <message>``."""
        return ConfigError(self.argument, message, COMMAND_LINE)


def parse_override(item: str) -> Override:
    """``key.sub=value`` → an :class:`Override` (the value parsed as YAML; text YAML cannot parse stays text).

    Raises:
        ConfigError: no ``=`` or no key; a value beyond the YAML limits.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(item, "an override must look like key.sub=value", COMMAND_LINE)
    try:
        value = parse_yaml(raw) if raw else ""
    except YAMLLimitError as err:
        raise ConfigError(item, f"YAML refused: {err.problem}", COMMAND_LINE) from None
    except yaml.YAMLError:
        value = raw
    return Override(item, key, value)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str | Override]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.sub=value`` overrides applied (values parsed as YAML).

    ``objective.beta=0.2`` sets ``data["objective"]["beta"] = 0.2``; missing intermediate mappings are
    created, so the usual unknown-key check still catches typos. ``name[i]`` is item ``i`` of the list
    ``name`` (``methods[0].sweep.beta=[0.2]``), which must exist.

    Raises:
        ConfigError: naming the argument (``command line: <argument>: ...``).
    """
    data = copy.deepcopy(data)
    for item in overrides:
        override = parse_override(item) if isinstance(item, str) else item
        node: Any = data
        parts = override.key.split(".")
        for i, part in enumerate(parts):
            node = _step(node, part, ".".join(parts[:i]), i == len(parts) - 1, override)
    return data


def _step(node: Any, part: str, above: str, last: bool, override: Override) -> Any:
    """One dotted part of an override's key (``train``, ``methods[0]``): the child of ``node`` it
    names, a mapping created if missing; for the last part, the value is set there instead.
    ``above`` is the key up to ``node``."""
    match = _PART.match(part)
    if not part or match is None:
        raise override.error(f"{part!r} is not a key (keys look like train.lr or methods[0].sweep.beta)")
    if not isinstance(node, dict):
        raise override.error(f"{above} is {node!r}, not a mapping, so {override.key} cannot be set")
    name, path = match.group(1), f"{above}.{match.group(1)}" if above else match.group(1)
    container: Any = node
    slot: Any = name
    for index in (int(i) for i in re.findall(r"-?\d+", match.group(2))):  # methods[0]: the list, then its item
        items = container.get(slot) if isinstance(container, dict) else container[slot]
        if not isinstance(items, list):
            raise override.error(f"{path} is {'missing' if items is None else repr(items)}, not a list")
        if not 0 <= index < len(items):
            n = len(items)
            have = "none" if not n else f"{path}[0]" if n == 1 else f"{path}[0] .. {path}[{n - 1}]"
            raise override.error(f"there is no {path}[{index}]: {path} has {n} item{'s' * (n != 1)} ({have})")
        container, slot, path = items, index, f"{path}[{index}]"
    if last:
        container[slot] = override.value
        return container
    return container.setdefault(slot, {}) if isinstance(container, dict) else container[slot]


def blame(err: ConfigError, overrides: Sequence[Override]) -> ConfigError:
    """``err`` naming the command-line argument that set its key (the file it names has that key only
    because of the argument), when one did: ``command line: objective.beta=-1: must be > 0, got -1``.
    Otherwise ``err`` itself."""
    for override in reversed(overrides):  # the last override of a key is the one that holds
        key = override.key
        if err.source != COMMAND_LINE and (err.key == key or err.key.startswith((key + ".", key + "["))):
            inner = "" if err.key == key else f"{err.key}: "
            return override.error(f"{inner}{err.message}")
    return err


@contextmanager
def blaming(overrides: Sequence[Override]) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` of the block naming the command-line argument behind it (:func:`blame`)."""
    try:
        yield
    except ConfigError as err:
        blamed = blame(err, overrides)
        if blamed is err:
            raise
        raise blamed from err
