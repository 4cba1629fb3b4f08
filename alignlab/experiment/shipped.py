"""The experiments shipped in the repository's ``experiments/`` directory: listing and lookup."""

from __future__ import annotations

import difflib
from pathlib import Path

from alignlab.config import parse_yaml
from alignlab.errors import AlignlabError

# ``alignlab reproduce NAME``: short names for the paper reproductions
ALIASES = {"imdb": "imdb_frontier", "smoke": "imdb_smoke", "tldr": "tldr_winrate", "hh": "hh_winrate"}


def experiments_dir() -> Path:
    """``experiments/`` beside the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "experiments"


def shipped() -> dict[str, Path]:
    """name -> YAML of every shipped experiment (a YAML with ``methods:``), paper-scale twins included."""
    root = experiments_dir()
    found = {}
    for path in sorted([*root.glob("*.yaml"), *root.glob("paper/*.yaml")]):
        text = path.read_text(encoding="utf-8")
        if "\nmethods:" in text or "\nextends:" in text or text.startswith(("methods:", "extends:")):
            name = path.stem if path.parent == root else f"paper/{path.stem}"
            found[name] = path
    return found


def find(name: str) -> Path:
    """The shipped experiment called ``name`` (or one of :data:`ALIASES`)."""
    known = shipped()
    if not known:
        raise AlignlabError(f"no shipped experiments found in {experiments_dir()}: run from a source checkout")
    key = ALIASES.get(name, name)
    if key in known:
        return known[key]
    close = difflib.get_close_matches(name, [*known, *ALIASES], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise AlignlabError(f"no shipped experiment {name!r}{hint} (alignlab list shows them)")


def description(path: Path) -> str:
    """The experiment's ``description:``, or the first comment line of its file."""
    data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    if isinstance(data, dict) and data.get("description"):
        return str(data["description"])
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
