"""No import in alignlab runs upward: a module imports from its own layer and the layers below, never above.

The modules are parsed with ``ast``, never imported, and every import counts: at the top of a module,
inside a function (a lazy import is a dependency all the same) and under ``if TYPE_CHECKING:`` (so is
a type). A module's place is its top-level name under ``alignlab/``: ``alignlab/train/offline.py`` is
``train``, ``alignlab/__init__.py`` is ``__init__``; a new one must be given a layer in ``LAYERS``.
An upward import is mended by moving the shared piece down (or the module up, where it belongs),
never by moving a layer to fit it.

``python tests/test_layering.py`` prints the import graph between the top-level names.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alignlab"

# (top-level names, why they sit there), lowest first
LAYERS: list[tuple[list[str], str]] = [
    (["__init__", "errors"], "the version and the error types: they import nothing of alignlab"),
    (
        ["schema", "config", "plugins", "interrupts", "cache_keys"],
        "helpers on the standard library, yaml and torch: config dataclasses, YAML and dotted overrides, "
        "plugin modules, signals, cache keys",
    ),
    (
        ["progress", "io", "ownership", "data"],
        "the file system and the environment: progress lines, atomic files and locks, the directories "
        "alignlab owns, the data directory, the Hub and the cache root",
    ),
    (
        ["core", "encoding"],
        "the cores (one scoring, one rollout, one KL; torch only) and encoding, the one way from text to their batches",
    ),
    (["objectives"], "the losses: pure functions over log-prob tensors, in a registry"),
    (
        ["adapters", "models", "tasks", "rewards", "pairs"],
        "what a run is made of: models and LoRA adapters, tasks and their data, rewards (gold judges, "
        "reward models as scorers, judges), pairs by the DPO protocol",
    ),
    (
        ["train"],
        "the training engines: loop, checkpoints, the offline and online trainers, evaluation metrics, "
        "reward-model training",
    ),
    (
        ["sft", "stages"],
        "the cached stages before preference training, built with the engines: π_ref by SFT, the gold "
        "judge, generated pairs, the reward model",
    ),
    (["run_config"], "a run YAML's sections gathered into RunConfig, the orchestration's own ones defined"),
    (["jobs"], "`alignlab train`: one run, from its resolved config to its summary"),
    (["experiment", "prepare"], "many runs (sweeps, workers, results, plots), and `alignlab prepare`"),
    (["cli", "__main__", "reference"], "what a user calls: the command line, `python -m alignlab.reference`"),
]
LAYER = {name: i for i, (names, _) in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    """``alignlab.train.offline`` for ``alignlab/train/offline.py``, ``alignlab.train`` for its ``__init__``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def place(module: str) -> str:
    """The top-level name that decides a module's layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, alignlab module) of every import in ``source`` (the module ``module``), wherever it stands;
    ``from alignlab import x`` is the module ``alignlab.x`` when there is one (``known``), relative imports
    are resolved from the module's package."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known else base))
    return [(line, name) for line, name in found if name == "alignlab" or name.startswith("alignlab.")]


def graph() -> dict[str, list[tuple[int, str]]]:
    """Each module's imports of alignlab."""
    every = modules()
    return {
        module: imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", set(every))
        for module, path in every.items()
    }


def test_every_module_has_a_layer() -> None:
    places = {place(m) for m in modules()}
    assert not places - set(LAYER), f"give these a layer in LAYERS: {sorted(places - set(LAYER))}"
    assert not set(LAYER) - places, f"no such module, drop it from LAYERS: {sorted(set(LAYER) - places)}"
    assert len(LAYER) == sum(len(names) for names, _ in LAYERS), "a name is in two layers"


def upward(found: dict[str, list[tuple[int, str]]]) -> list[str]:
    """One line for each import in ``found`` (module -> (line, imported module)) that runs upward."""
    return [
        f"{module}:{line} imports {target} ({place(target)}, layer {LAYER[place(target)]}) "
        f"from {place(module)} (layer {LAYER[place(module)]})"
        for module, targets in found.items()
        for line, target in targets
        if LAYER.get(place(target), -1) > LAYER.get(place(module), len(LAYERS))
    ]


def test_no_import_runs_upward() -> None:
    found = upward(graph())
    assert not found, "imports that run upward:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from alignlab.jobs import job\n", "alignlab.train.x", ["alignlab.jobs.job"]),
        ("from alignlab import stages, errors\n", "alignlab.train.x", ["alignlab.stages", "alignlab.errors"]),
        ("from ..jobs.job import run_training\n", "alignlab.train.x", ["alignlab.jobs.job"]),
        ("from . import offline, x\n", "alignlab.train.x", ["alignlab.train.offline", "alignlab.train"]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from alignlab.run_config import RunConfig\n",
            "alignlab.train.x",
            ["alignlab.run_config"],
        ),
        ("def f():\n    import alignlab.jobs.methods\n", "alignlab.train.x", ["alignlab.jobs.methods"]),
        ("import torch\nimport alignlab\nfrom alignlab import __version__\n", "alignlab.x", ["alignlab", "alignlab"]),
    ],
)
def test_every_kind_of_import_is_seen(source: str, module: str, expected: list[str]) -> None:
    """A lazy import, a type-only one, a relative one and ``from alignlab import <module>`` all count."""
    assert [name for _, name in imports(source, module, False, set(modules()))] == expected


def test_an_upward_import_is_found() -> None:
    """The check itself: the engines importing the orchestration, even lazily, are reported; the
    orchestration importing the engines is not."""
    lazy = "import torch\n\n\ndef f():\n    from alignlab.jobs.job import run_training\n"
    found = {"alignlab.train.offline": imports(lazy, "alignlab.train.offline", False, set(modules()))}
    jobs, train = LAYER["jobs"], LAYER["train"]
    assert upward(found) == [
        f"alignlab.train.offline:5 imports alignlab.jobs.job (jobs, layer {jobs}) from train (layer {train})"
    ]
    down = {"alignlab.jobs.job": imports("from alignlab.train import offline\n", "alignlab.jobs.job", False, set())}
    assert upward(down) == []


if __name__ == "__main__":
    edges: dict[str, set[str]] = defaultdict(set)
    for module, found in graph().items():
        for _, target in found:
            if place(target) != place(module):
                edges[place(module)].add(place(target))
    for name in sorted(edges, key=lambda n: (LAYER.get(n, -1), n)):
        print(f"{name} [{LAYER.get(name, '?')}] -> {', '.join(sorted(edges[name], key=lambda n: LAYER.get(n, -1)))}")
