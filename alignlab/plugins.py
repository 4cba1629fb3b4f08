"""Plugins: user modules that register objectives without touching alignlab.

An experiment YAML lists them under ``plugins:``; each entry is either a path to a ``.py`` file
(relative to the YAML's own directory) or an importable dotted module name::

    plugins:
      - my_losses.py            # a file beside the YAML
      - mylab.objectives.fancy  # a module on the Python path

Importing the module runs its ``@register_objective`` decorators; that is all a plugin does.
Installed packages can do the same through the ``alignlab.objectives`` entry-point group.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from alignlab.errors import PluginError, one_line


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def load_plugin(spec: str, base_dir: Path | None = None, source: str | None = None) -> ModuleType:
    """Import one plugin: a ``.py`` path (relative to ``base_dir``) or a dotted module name.

    Args:
        spec: the entry as written in the YAML.
        base_dir: the directory relative paths are resolved against (the YAML's directory).
        source: the file that named the plugin, for error messages.

    Raises:
        PluginError: the file or module does not exist, or importing it failed.
    """
    where = f"{source}: " if source else ""
    if "\0" in spec or not spec.strip():
        raise PluginError(f"{where}plugins: {spec!r} is not a file or module name")
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        if not path.is_file():
            raise PluginError(f"{where}plugins: no such file {spec!r} (looked for {path})")
        # a stable, unique module name per file, so importing the same file twice is a no-op
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        name = f"alignlab_plugin_{path.stem}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        spec_obj = importlib.util.spec_from_file_location(name, path)
        if spec_obj is None or spec_obj.loader is None:
            raise PluginError(f"{where}plugins: cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[name] = module
        try:
            spec_obj.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise PluginError(f"{where}plugins: importing {path} failed: {one_line(err)}") from err
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name and spec.startswith(err.name):
            raise PluginError(
                f"{where}plugins: no module named {spec!r} (give a path ending in .py for a file, "
                "or install the package)"
            ) from err
        raise PluginError(f"{where}plugins: importing {spec!r} failed: {one_line(err)}") from err
    except Exception as err:
        raise PluginError(f"{where}plugins: importing {spec!r} failed: {one_line(err)}") from err


def load_plugins(specs: Iterable[str], base_dir: Path | None = None, source: str | None = None) -> list[ModuleType]:
    """Import every plugin of a YAML's ``plugins:`` list, in order."""
    return [load_plugin(spec, base_dir, source) for spec in specs]
