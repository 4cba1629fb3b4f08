"""docs/yaml_reference.md: generated from the config dataclasses, up to date, and complete."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from alignlab import reference
from alignlab.experiment.config import METHOD_KEYS, ExperimentConfig
from alignlab.objectives import Needs, ObjectiveConfig, registry
from alignlab.prepare import PrepareConfig
from alignlab.run_config import RunConfig
from alignlab.schema import Config
from alignlab.tasks import TASKS, TaskConfig

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "yaml_reference.md"


def parse(text: str) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(## heading, ### heading) -> key -> the row's cells [key, type, default, allowed, description]."""
    tables: dict[tuple[str, str], dict[str, list[str]]] = {}
    h2 = h3 = ""
    for line in text.splitlines():
        if line.startswith("## "):
            h2, h3 = line[3:], ""
        elif line.startswith("### "):
            h3 = line[4:]
        elif line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            assert len(cells) == 5, line
            tables.setdefault((h2, h3), {})[cells[0].strip("`")] = cells
    return tables


def rows_under(tables: dict[tuple[str, str], dict[str, list[str]]], h2: str, h3: str | None = None) -> dict:
    """Every row of the tables under the ``## h2`` heading (and the ``### h3`` heading, if given)."""
    found: dict[str, list[str]] = {}
    for (a, b), rows in tables.items():
        if a.startswith(h2) and (h3 is None or b == h3):
            found.update(rows)
    return found


def section_of(tp: object) -> type[Config] | None:
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return next((o for o in options if isinstance(o, type) and issubclass(o, Config)), None)


def dotted_keys(cls: type[Config], prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every key of ``cls`` and of the sections nested in it, found from the field types."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(cls):
        keys[prefix + f.name] = f
        sub = section_of(hints[f.name])
        if sub is not None:
            keys.update(dotted_keys(sub, f"{prefix}{f.name}."))
    return keys


def builtin_objectives():
    return [o for o in registry.list_objectives() if o.loss_fn.__module__.startswith("alignlab.objectives.")]


@pytest.fixture(scope="module")
def tables():
    return parse(DOC.read_text(encoding="utf-8"))


def test_the_reference_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == reference.render(), (
        "docs/yaml_reference.md is out of date: run python -m alignlab.reference to update it"
    )


def test_check_fails_on_a_stale_file_and_passes_after_writing(tmp_path, capsys):
    out = tmp_path / "ref.md"
    assert reference.main(["--check", "--output", str(out)]) == 1  # missing
    out.write_text(reference.render().replace("Optimiser steps", "Optimizer steps"))
    assert reference.main(["--check", "--output", str(out)]) == 1  # one word differs
    assert "run python -m alignlab.reference to update it" in capsys.readouterr().err
    assert reference.main(["--output", str(out)]) == 0
    assert reference.main(["--check", "--output", str(out)]) == 0
    assert out.read_text() == reference.render()


def test_every_run_and_prepare_key_is_documented(tables):
    for h2, cls in [("Run YAML", RunConfig), ("Prepare YAML", PrepareConfig)]:
        rows = rows_under(tables, h2)
        keys = dotted_keys(cls)
        assert len(keys) > 20
        for key, f in keys.items():
            assert key in rows, f"{h2}: {key} is missing from {DOC.name}"
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}: {key} has no doc text"
            assert rows[key][4] == " ".join(f.metadata["help"].split()), key
        assert set(rows) == set(keys), f"{h2}: rows that are no key: {set(rows) - set(keys)}"


def test_every_task_key_is_documented(tables):
    shared = rows_under(tables, "`task`", "every task")
    assert set(shared) == {f"task.{f.name}" for f in dataclasses.fields(TaskConfig)}
    for name, task in TASKS.items():
        own = rows_under(tables, "`task`", f"`{name}`")
        assert f"\n### `{name}`\n" in DOC.read_text(encoding="utf-8"), f"task {name} has no section"
        for f in dataclasses.fields(task.config_cls):
            assert f"task.{f.name}" in shared or f"task.{f.name}" in own, f"task {name}: {f.name} is missing"
            assert f.metadata.get("help", "").strip(), f"{task.config_cls.__name__}.{f.name} has no doc text"
    assert set(rows_under(tables, "`task`", "`imdb`")) == {
        "task.prompt_tokens_min",
        "task.prompt_tokens_max",
        "task.use_unsup",
    }


def test_every_objective_knob_is_documented(tables):
    objectives = builtin_objectives()
    assert len(objectives) == 20
    for o in objectives:
        heading = f"`{o.name}`" + (f" (alias: {', '.join(f'`{a}`' for a in o.aliases)})" if o.aliases else "")
        rows = rows_under(tables, "`objective`", heading)
        assert set(rows) == {f"objective.{f.name}" for f in dataclasses.fields(o.config_cls)}, o.name
        for f in dataclasses.fields(o.config_cls):
            assert f.metadata.get("help", "").strip(), f"{o.name}: {f.name} has no doc text"
            assert rows[f"objective.{f.name}"][4], f"{o.name}: {f.name}"


def test_every_experiment_key_is_documented(tables):
    run_top = rows_under(tables, "Run YAML", "top level")
    own = rows_under(tables, "Experiment YAML", "top level")
    for f in dataclasses.fields(ExperimentConfig):
        assert f.name in own or f.name in run_top, f"experiment key {f.name} is missing"
        assert f.metadata.get("help", "").strip(), f"ExperimentConfig.{f.name} has no doc text"
    assert {"name", "description", "methods", "extends", "out_dir", "runs_dir"} <= set(own)
    # out_dir means something else in an experiment: its own row, with its own doc
    assert own["out_dir"][4].startswith("Results:") and run_top["out_dir"][4].startswith("The run directory")
    methods = rows_under(tables, "Experiment YAML", "`methods[]`")
    assert set(methods) == {f"methods[].{k}" for k in METHOD_KEYS}
    assert all(row[4] for row in methods.values())


def test_cells_say_type_default_and_range(tables):
    """Pinned rows: the cells are read from the annotations, defaults and bounds."""
    run = rows_under(tables, "Run YAML")
    assert run["train.lr"][1:4] == ["float", "`1.0e-06`", "> 0"]
    assert run["train.optimizer"][1:4] == ["str", "`rmsprop`", "`rmsprop`, `adamw`"]
    assert run["train.grad_clip"][1:4] == ["float | null", "`10.0`", "> 0"]
    assert run["train.log_with"][1:3] == ["list[str]", "`[tensorboard]`"]
    assert run["rollout.top_p"][3] == "> 0, ≤ 1"
    assert run["eval.winrate"][1:3] == ["mapping", "see below"]
    assert run["task"][1:3] == ["mapping", "`{name: imdb}`"]
    cdpo = rows_under(tables, "`objective`", "`cdpo`")
    assert cdpo["objective.epsilon"][1:4] == ["float", "`0.1`", "≥ 0, < 0.5"]
    assert rows_under(tables, "`task`", "every task")["task.name"][2] == "required"


def test_plugins_and_test_objectives_stay_out_of_the_reference(monkeypatch):
    """What a session happens to have registered must not change the generated file."""

    @dataclasses.dataclass(frozen=True)
    class Knobs(ObjectiveConfig):
        pass

    def loss(batch, cfg):  # pragma: no cover - never called
        raise NotImplementedError

    fake = registry.Objective("zz_plugin_loss", loss, Knobs, Needs(reference=False, data="paired"), "nobody")
    monkeypatch.setitem(registry._REGISTRY, "zz_plugin_loss", fake)
    assert "zz_plugin_loss" in [o.name for o in registry.list_objectives()]
    assert "zz_plugin_loss" not in reference.render()
