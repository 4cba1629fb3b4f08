"""The YAML reference, generated from the config dataclasses: ``python -m alignlab.reference [--check]``.

Every key of the three YAMLs alignlab reads — a run (``alignlab train``, :class:`RunConfig`), an
experiment (``alignlab run``, :class:`ExperimentConfig`) and the shared stages
(``alignlab prepare``, :class:`PrepareConfig`) — is rendered with its type, default, allowed
values and help text by walking the dataclasses: nested sections are found from the field types,
each task's keys from the task registry, each objective's knobs from the objective registry. The
result is ``docs/yaml_reference.md``; ``--check`` exits 1 when that file is out of date.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from alignlab.schema import Config, field_bounds, type_name

DEFAULT_OUTPUT = Path("docs/yaml_reference.md")
HEADER = "| key | type | default | allowed | description |\n|---|---|---|---|---|\n"

# methods[] entries are free-form mappings (objective knobs and run sections besides these keys),
# so their own keys are documented here; tests check this covers experiment.config.METHOD_KEYS.
METHOD_KEY_DOCS = {
    "name": ("str", "required", "", "A registered objective (see the objectives above; `best_of_n` among them)."),
    "label": (
        "str",
        "the objective's display name (`DPO`, `SimPO`, `Preferred-FT`, `best-of-N`)",
        "letters, digits, `_ - + .`",
        "The method's name on the plot, in the tables and in `methods.<label>.<key>=...` overrides on the "
        "command line; run ids start with it when it is given (else with the objective's name). Two methods "
        "with the same objective need different labels.",
    ),
    "sweep": (
        "mapping of lists",
        "{}",
        "non-empty lists",
        "The runs: the product of these lists. A key is one of the objective's knobs, `seed` "
        "(= `train.seed`), or a dotted run key (`train.lr`). Run ids are built from the label as written "
        "(else the objective's name) and the swept values (`dpo-beta0.1-seed1`).",
    ),
}


# ------------------------------------------------------------------------------------------ cells


def _options(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def config_class(tp: Any) -> type[Config] | None:
    """The :class:`Config` subclass a field holds (directly or as ``X | None``), if any."""
    for option in _options(tp):
        if isinstance(option, type) and issubclass(option, Config):
            return option
    return None


def _type_cell(tp: Any) -> str:
    """The type as a YAML user sees it: ``str`` for a choice, ``mapping`` for a section."""
    parts = []
    for option in _options(tp):
        if typing.get_origin(option) is Literal:
            parts.append(type(typing.get_args(option)[0]).__name__)
        elif option is Any or (isinstance(option, type) and issubclass(option, Config)):
            parts.append("mapping")
        elif typing.get_origin(option) is list and typing.get_args(option)[0] is Any:
            parts.append("list[mapping]")
        elif option is type(None):
            parts.append("null")
        else:
            parts.append(type_name(option))
    return " | ".join(dict.fromkeys(parts))


_SYMBOLS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _allowed_cell(tp: Any, bounds: dict[str, float]) -> str:
    """Choices of a Literal, or the bounds of a number (``> 0, ≤ 1``)."""
    choices = [a for option in _options(tp) if typing.get_origin(option) is Literal for a in typing.get_args(option)]
    if choices:
        return ", ".join(f"`{c}`" for c in choices) + (", `null`" if type(None) in _options(tp) else "")
    return ", ".join(f"{_SYMBOLS[k]} {_yaml(v)}" for k, v in bounds.items())


def _yaml(value: Any) -> str:
    """A value as it is written in YAML: ``null``, ``true``, ``1.0e-06``, ``[tensorboard]``, ``''``."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1000).strip()
    return text.removesuffix("...").strip()


def _default_cell(f: dataclasses.Field[Any], tp: Any) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    if isinstance(value, Config):
        return "see below"
    return f"`{_yaml(value)}`"


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _row(key: str, type_: str, default: str, allowed: str, doc: str) -> str:
    return f"| `{key}` | {_escape(type_)} | {_escape(default)} | {_escape(allowed)} | {_escape(doc)} |\n"


def field_rows(cls: type[Config], prefix: str = "", only: Sequence[str] | None = None) -> str:
    """One table row per field of ``cls`` (or of the fields named in ``only``), keys dotted under ``prefix``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    rows = []
    for name in only if only is not None else fields:
        f = fields[name]
        tp = hints[name]
        doc = f.metadata.get("help", "")
        rows.append(
            _row(prefix + f.name, _type_cell(tp), _default_cell(f, tp), _allowed_cell(tp, field_bounds(f)), doc)
        )
    return "".join(rows)


def sections(cls: type[Config], prefix: str = "", title: str = "top level") -> str:
    """The table of ``cls`` and then, depth first, one table per nested section."""
    out = [f"### {title}\n\n", HEADER, field_rows(cls, prefix), "\n"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = config_class(hints[f.name])
        if sub is not None:
            key = prefix + f.name
            out.append(sections(sub, key + ".", f"`{key}`"))
    return "".join(out)


# ------------------------------------------------------------------------------------------ registries


def builtin_objectives() -> list[Any]:
    """The objectives alignlab itself registers (not plugins, entry points or tests), by name."""
    from alignlab.objectives import list_objectives

    return [o for o in list_objectives() if o.loss_fn.__module__.startswith("alignlab.objectives.")]


def builtin_tasks() -> dict[str, Any]:
    """The tasks alignlab itself registers (not plugins or tests), by name, in the order registered."""
    from alignlab.tasks import TASKS

    return {name: cls for name, cls in TASKS.items() if cls.__module__.startswith("alignlab.tasks.")}


def _capabilities(task: Any) -> str:
    """What a task offers, as the orchestration reads it from the class."""
    sources = ", ".join(f"`{s}`" for s in task.data_sources())
    gold = "yes" if task.has_gold_judge() else "no"
    references = "yes (win rates)" if task.has_references() else "no"
    return f"Data sources (`data.source`): {sources}. Gold judge: {gold}. Reference completions: {references}."


def _tasks() -> str:
    from alignlab.tasks import TaskConfig

    out = [
        "## `task`: the tasks\n\n",
        "`task` is a mapping with the task's `name` and its settings: the keys every task has, then the "
        "keys of its own (`alignlab/tasks/`). The same mapping is the `task` of a run, an experiment and "
        "a `prepare` YAML. A task of your own, registered by a plugin (`plugins:`, `register_task`), has "
        "the keys of its `config_cls`.\n\n",
        "### every task\n\n",
        HEADER,
        field_rows(TaskConfig, "task."),
        "\n",
    ]
    shared = {f.name for f in dataclasses.fields(TaskConfig)}
    for name, task in builtin_tasks().items():
        doc = (task.__doc__ or "").strip().splitlines()[0]
        out.append(f"### `{name}`\n\n{doc} Hub dataset: `{task.hub_id}`. {_capabilities(task)}\n\n")
        own = [f.name for f in dataclasses.fields(task.config_cls) if f.name not in shared]
        if own:
            out += [HEADER, field_rows(task.config_cls, "task.", own), "\n"]
        else:
            out.append("No keys of its own.\n\n")
    return "".join(out)


def _objectives() -> str:
    objectives = builtin_objectives()
    names = ", ".join(f"`{o.name}`" for o in objectives)
    out = [
        "## `objective`: the objectives\n\n",
        f"`objective` is a mapping with the objective's `name` — one of {names} — and its "
        "knobs. An objective registered by a plugin (`plugins:`) or by an installed package (the "
        "`alignlab.objectives` entry-point group) has knobs of its own: `alignlab objectives --plugin FILE` "
        "lists them. In an experiment the knobs sit in the `methods[]` entry instead.\n\n",
    ]
    for o in objectives:
        alias = f" (alias: {', '.join(f'`{a}`' for a in o.aliases)})" if o.aliases else ""
        out.append(f"### `{o.name}`{alias}\n\n{o.summary} Needs: {o.needs.describe()}. {o.citation}.\n\n")
        if dataclasses.fields(o.config_cls):
            out += [HEADER, field_rows(o.config_cls, "objective."), "\n"]
        else:
            out.append("No knobs.\n\n")
    return "".join(out)


# ------------------------------------------------------------------------------------------ the document


def _experiment() -> str:
    from alignlab.experiment.config import METHOD_KEYS, RUN_SECTIONS, ExperimentConfig
    from alignlab.run_config import RunConfig

    run_fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    own = list(inspect.get_annotations(ExperimentConfig))  # its own keys, in the order it declares them
    shared = [name for name in run_fields if name not in own and name != "objective"]
    out = [
        "## Experiment YAML (`alignlab run`)\n\n",
        "An experiment (`ExperimentConfig`, `alignlab/experiment/config.py`) is a list of methods, each "
        "with a sweep, expanded into runs. It holds the run YAML's keys — "
        f"{', '.join(f'`{k}`' for k in shared)} — as the defaults of every run (meaning and defaults as "
        "above), and its own keys below. `objective` is refused: the objectives are listed under "
        "`methods`.\n\n",
        "### top level\n\n",
        HEADER,
        field_rows(ExperimentConfig, "", own),
        "\n",
        "### `methods[]`\n\n",
        "Each entry of `methods` is one method and its sweep. Besides the keys below, an entry holds the "
        "objective's knobs (`beta: 0.1`, fixed for every run of the method) and any run section — "
        f"{', '.join(f'`{k}`' for k in RUN_SECTIONS)} — merged key by key over the experiment's.\n\n",
        HEADER,
    ]
    for key in METHOD_KEYS:
        out.append(_row(f"methods[].{key}", *METHOD_KEY_DOCS[key]))
    out.append("\n")
    return "".join(out)


def render() -> str:
    """The whole of ``docs/yaml_reference.md``."""
    from alignlab.prepare import PrepareConfig
    from alignlab.run_config import RunConfig

    intro = (
        "# YAML reference\n\n"
        "<!-- Generated by `python -m alignlab.reference` from the config dataclasses; do not edit. -->\n\n"
        "Every key of the YAMLs alignlab reads, generated from the frozen dataclasses that read them "
        "(`python -m alignlab.reference` rewrites this file; `tests/test_docs.py` fails when it is out of "
        "date). Unknown keys, wrong types and values outside *allowed* are errors that name the file and "
        "the dotted key. Any key can be overridden on the command line as `key.sub=value` "
        "(`alignlab train run.yaml train.lr=1.0e-4 objective.beta=0.5`); an experiment's methods by index or "
        "by label, `methods[0].sweep.beta=[0.2]` or `methods.DPO.sweep.beta=[0.2]` (the label the plots show: "
        "`label`, else the objective's display name). An error about a key an override set names the "
        "argument (`command line: methods.DPO.sweep.betta=[0.2]: unknown key; did you mean 'beta'?`). "
        "PyYAML reads `1e-3` as a string; float keys accept it, but `1.0e-3` is a float everywhere.\n\n"
        "- [Run YAML (`alignlab train`)](#run-yaml-alignlab-train)\n"
        "- [`task`: the tasks](#task-the-tasks)\n"
        "- [`objective`: the objectives](#objective-the-objectives)\n"
        "- [Experiment YAML (`alignlab run`)](#experiment-yaml-alignlab-run)\n"
        "- [Prepare YAML (`alignlab prepare`)](#prepare-yaml-alignlab-prepare)\n\n"
    )
    run = (
        "## Run YAML (`alignlab train`)\n\n"
        "One training run (`RunConfig`, `alignlab/run_config.py`). `task` and `objective` are described "
        "in their own sections below.\n\n"
    )
    prepare = (
        "## Prepare YAML (`alignlab prepare`)\n\n"
        "The shared stages of a task (`PrepareConfig`, `alignlab/prepare.py`): SFT, the gold judge, "
        "generated pairs and a reward model, each cached. A section whose default is `null` is skipped "
        "unless given.\n\n"
    )
    parts = [intro, run, sections(RunConfig), _tasks(), _objectives(), _experiment(), prepare, sections(PrepareConfig)]
    return "".join(parts).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignlab.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs; write nothing")
    args = parser.parse_args(argv)
    text = render()
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            print(f"{args.output} is out of date: run python -m alignlab.reference to update it", file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
