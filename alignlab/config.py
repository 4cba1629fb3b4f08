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
            value = parse_yaml(raw) if raw else ""
        except YAMLLimitError as err:
            raise ConfigError(key, f"YAML refused: {err.problem}", source) from None
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
