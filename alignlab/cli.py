"""The ``alignlab`` command line (``alignlab --help``).

User errors (:class:`alignlab.errors.AlignlabError`) print one line and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError


def _objectives(args: argparse.Namespace) -> int:
    from alignlab.objectives import list_objectives
    from alignlab.plugins import load_plugins

    load_plugins(args.plugin)
    objectives = list_objectives()
    if args.names_only:
        print("\n".join(o.name for o in objectives))
        return 0
    for o in objectives:
        alias = f"  (alias: {', '.join(o.aliases)})" if o.aliases else ""
        print(f"{o.name}{alias}")
        print(f"  {o.summary}")
        print(f"  needs:    {o.needs.describe()}")
        print(f"  citation: {o.citation}")
        print(f"  defined:  {o.origin}")
        knobs = o.config_cls.knobs()
        if not knobs:
            print("  knobs:    none")
        for name, type_, default, help_ in knobs:
            head = f"    {name}: {type_} = {default!r}"
            print(head)
            for line in textwrap.wrap(help_, width=88):
                print(f"        {line}")
        print()
    print(f"{len(objectives)} objectives")
    return 0


def _train(args: argparse.Namespace) -> int:
    import json

    from alignlab.jobs.job import run_training

    summary = run_training(args.file, args.overrides, force=args.force)
    print(json.dumps(summary, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from alignlab.adapters import export_merged
    from alignlab.io import Damaged, verify_dir
    from alignlab.ownership import check_claimable
    from alignlab.train.state import FINAL, latest_checkpoint

    run = Path(args.run_dir)
    if not run.is_dir():
        raise AlignlabError(f"command line: RUN_DIR: {run} is not a directory (give a run's out_dir)")
    final = run / FINAL
    intact = final.is_dir()
    if intact:
        try:
            verify_dir(final)  # False without a manifest (an older alignlab's): loading it tells
        except Damaged:  # a damaged final/: the newest intact checkpoint holds the same policy
            intact = False
    source = final if intact else latest_checkpoint(run)
    if source is None:
        raise AlignlabError(f"command line: RUN_DIR: {run} holds no trained policy (no final/ and no checkpoint)")
    out = Path(args.out) if args.out else run / "merged"
    check_claimable(out, "export", "command line: --out")
    export_merged(source, out)
    what = "with its LoRA adapter merged" if (source / "adapter_config.json").is_file() else "(no adapter to merge)"
    print(f"{out}: the policy of {source} {what}; AutoModelForCausalLM.from_pretrained loads it")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import json

    from alignlab.prepare import run_prepare

    report = run_prepare(args.file, args.overrides)
    print(json.dumps({k: v for k, v in report.items() if k != "data_report"}, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    import json

    from alignlab.experiment.runner import run_experiment

    if args.workers < 1:
        from alignlab.errors import AlignlabError

        raise AlignlabError(f"command line: --workers: expected a positive number, got {args.workers}")
    result = run_experiment(args.file, args.overrides, workers=args.workers, force=args.force, worker=args.worker)
    if not args.worker:
        print(json.dumps(result, indent=2))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from alignlab.experiment.shipped import find

    args.file = str(find(args.name))
    args.worker = False
    return _run(args)


def _plot(args: argparse.Namespace) -> int:
    from alignlab.experiment.report import plot_dir

    for path in plot_dir(_results_dir(Path(args.dir)), fit=args.fit):
        print(path)
    return 0


def _table(args: argparse.Namespace) -> int:
    from alignlab.experiment.report import table_dir

    for path in table_dir(_results_dir(Path(args.dir))):
        print(path)
        if args.print and path.suffix == ".md":  # the tables; summary.csv holds frontier.md's summaries
            print(path.read_text())
    return 0


def _results_dir(path: Path) -> Path:
    from alignlab.errors import AlignlabError

    if not path.is_dir():
        raise AlignlabError(f"{path}: no such directory (a results directory, e.g. results/imdb_smoke)")
    return path


def _list(args: argparse.Namespace) -> int:
    from alignlab.experiment.shipped import ALIASES, description, shipped

    if args.file:
        from alignlab.experiment.config import load_experiment
        from alignlab.experiment.runner import listed_status

        exp = load_experiment(args.file, args.overrides)
        more = f" (+ {len(exp.tuned)} tuned methods)" if exp.tuned else ""
        print(f"{exp.name}: {len(exp.runs)} runs{more}; results in {exp.out_dir}, runs in {exp.runs_dir}")

        def status(run: Any) -> str:
            return listed_status(run, exp.source)

        states = [status(run) for run in exp.runs]
        tuning = {run.run_id: status(run) for t in exp.tuned for c in t.candidates for run in c.tune_runs}
        for run, state in zip(exp.runs, states, strict=True):
            print(f"  {state:9s} {run.run_id}")
        for tuned in exp.tuned:  # tuning runs on validation prompts, then the selected candidate's runs
            how = f"tuned by {tuned.tune.criterion} at KL {tuned.tune.kl:g}"
            print(f"  {tuned.label}: {how}, {len(tuned.candidates)} candidates")
            for candidate in tuned.candidates:
                for run in candidate.tune_runs:
                    print(f"    {tuning[run.run_id]:9s} {run.run_id}")
                finals = ", ".join(
                    f"{r.run_id} ({status(r) if r.trained_by is None else 'is ' + r.trained_by.run_id})"
                    for r in candidate.final_runs
                )
                print(f"      if selected: {finals}")
        if "changed" in [*states, *tuning.values()]:
            print(
                "changed: the run directory holds a run of another config (the YAML or an override changed): "
                "alignlab run refuses it; give another runs_dir, or pass --force to train it again"
            )
        return 0
    short = {v: k for k, v in ALIASES.items()}
    for name, path in shipped().items():
        alias = f" (alignlab reproduce {short[name]})" if name in short else ""
        print(f"{name}{alias}\n  {path}\n  {description(path)}")
    return 0


def error_line(err: AlignlabError, overrides: Sequence[str] = ()) -> str:
    """The one line a user error prints. A setting's error about a key that a command-line override set
    names that argument rather than the YAML file (``command line: out_dir=.: ...``): most are named
    so where they are raised (:func:`alignlab.config.blaming`); this catches those found later, at work."""
    from alignlab.config import Override, blame
    from alignlab.errors import ConfigError, flatten

    if isinstance(err, ConfigError):
        err = blame(err, [Override(item, item.partition("=")[0], None) for item in overrides if "=" in item])
    return flatten(str(err))  # one line, even when a message carries another library's newlines


DESCRIPTION = """\
alignlab: RLHF-PPO (reward model + critic) against DPO and its variants on one footing -
one scoring core, one KL, one evaluation. Run an experiment YAML to get a reward-KL frontier.

Data: $ALIGNLAB_DATA_DIR (or data_dir: in a YAML) names a directory holding the task's files
in the Hub datasets' schema; unset, alignlab reads the Hugging Face Hub. Shared stages are
cached under $ALIGNLAB_CACHE_DIR (default ~/.cache/alignlab)."""

EPILOG = """\
examples:
  alignlab run experiments/imdb_smoke.yaml         the main job: DPO, IPO and PPO-GT on IMDb
  alignlab run X.yaml methods.DPO.sweep.beta=[0.2]  override a method's keys (or methods[0]....)
  alignlab train experiments/quickstart.yaml objective.beta=0.2 out_dir=runs/b02
  alignlab list experiments/imdb_smoke.yaml        its runs: finished, started, pending, changed
  alignlab plot results/imdb_smoke --fit           redraw the plots, and the fits beside them

'alignlab COMMAND --help' describes each command; docs/yaml_reference.md every YAML key."""

OVERRIDES_HELP = (
    "dotted overrides KEY=VALUE (values are YAML), e.g. train.steps=100; a method's keys by index "
    "or label: methods[0].sweep.beta=[0.2], methods.DPO.train.lr=1e-3"
)

# name -> (one line for `alignlab --help`, the description of `alignlab NAME --help`)
COMMANDS = {
    "objectives": (
        "list the registered objectives: knobs, needs, citation",
        "List every registered objective (the built-in losses, and those of --plugin modules) with its "
        "knobs and their defaults, what it needs from the trainer, the paper it implements and where it is defined.",
    ),
    "train": (
        "one training run from a YAML: any objective, PPO, or best-of-N",
        "Train one run from a run YAML: the shared stages (tokenizer, SFT, gold judge, pairs, reward model, "
        "reference log-probs; cached), then the objective's trainer, evaluated on held-out prompts. It writes "
        "out_dir: config.yaml, metrics.jsonl, checkpoints/step-N/ and final/ (each loads with "
        "AutoModelForCausalLM.from_pretrained), summary.json. Run it again to resume an interrupted run.",
    ),
    "prepare": (
        "build a task's shared stages (SFT, gold judge, pairs, reward model)",
        "Build the shared stages of a prepare YAML into the cache and write out_dir/stages.json with their "
        "wall times and metrics, so later runs start from them.",
    ),
    "run": (
        "run an experiment YAML: every method x sweep, then the frontier, plots, tables",
        "Run every run of an experiment YAML (methods x sweeps x seeds; tuning first where asked), skipping "
        "finished runs and resuming unfinished ones, then write the results directory: frontier.csv, "
        "frontier.png/.svg, frontier.md, summary.csv (and win rates, compute).",
    ),
    "reproduce": (
        "run a shipped experiment by name (imdb, smoke, tldr, hh, ...)",
        "Run one of the shipped experiments (see 'alignlab list') by its name, as 'alignlab run' would.",
    ),
    "plot": (
        "redraw the plots of a results directory from its CSVs",
        "Draw frontier.png/.svg, frontier_compute.png/.svg (and winrate.png/.svg) from the CSVs of a results "
        "directory; --fit also writes frontier_fit.png/.svg with the Gao et al. (2023) fits.",
    ),
    "export": (
        "write a run's trained policy as a plain model, LoRA adapters merged into its weights",
        "Write the trained policy of a run directory (its final/, else its newest checkpoint) as a plain "
        "model + tokenizer that AutoModelForCausalLM.from_pretrained loads: LoRA adapters are merged into the "
        "weights (merge_and_unload). Written atomically; an existing --out is replaced only if alignlab exported it.",
    ),
    "table": (
        "rewrite the tables of a results directory from its CSVs",
        "Write frontier.md, summary.csv (and winrate.md, compute.md) from the CSVs of a results directory.",
    ),
    "list": (
        "list the shipped experiments, or the runs of one experiment and their state",
        "Without a file: the shipped experiments. With an experiment YAML (and overrides): each of its runs, "
        "finished, started, pending, diverged, or changed (its directory holds a run of another config).",
    ),
}


class _Help(argparse.RawDescriptionHelpFormatter):
    """The top-level help: the description and examples as written, one line per command (without
    argparse's ``{objectives,train,...}`` header line above them)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=16)

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(a) for a in action._get_subactions())
        return super()._format_action(action)


def _command(sub: Any, name: str) -> argparse.ArgumentParser:
    short, description = COMMANDS[name]
    return sub.add_parser(name, help=short, description=description)


def _experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.add_argument("--workers", type=int, default=1, help="split the runs over this many processes (default 1)")
    p.add_argument("--force", action="store_true", help="delete the experiment's runs and run them again")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Help)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    p = _command(sub, "objectives")
    p.add_argument("--plugin", action="append", default=[], help="a module or .py file to load first (repeatable)")
    p.add_argument("--names-only", action="store_true", help="print the names only")
    p.set_defaults(func=_objectives)

    p = _command(sub, "train")
    p.add_argument("file", help="the run YAML, e.g. experiments/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides KEY=VALUE, e.g. objective.beta=0.2 train.steps=100")
    p.add_argument("--force", action="store_true", help="run again even if out_dir holds a finished run")
    p.set_defaults(func=_train)

    p = _command(sub, "prepare")
    p.add_argument("file", help="the prepare YAML, e.g. experiments/prepare_imdb.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides KEY=VALUE, e.g. sft.steps=100 model.preset=smoke")
    p.set_defaults(func=_prepare)

    p = _command(sub, "export")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's out_dir, e.g. runs/dpo_lora")
    p.add_argument("--out", help="where to write the model (default RUN_DIR/merged)")
    p.set_defaults(func=_export)

    p = _command(sub, "run")
    p.add_argument("file", help="the experiment YAML, e.g. experiments/imdb_smoke.yaml")
    _experiment_options(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)

    p = _command(sub, "reproduce")
    p.add_argument("name", help="a name from `alignlab list`")
    _experiment_options(p)
    p.set_defaults(func=_reproduce)

    p = _command(sub, "plot")
    p.add_argument("dir", help="a results directory, e.g. results/imdb_smoke")
    p.add_argument("--fit", action="store_true", help="also draw frontier_fit.png/.svg: Gao et al. (2023) fits")
    p.set_defaults(func=_plot)

    p = _command(sub, "table")
    p.add_argument("dir", help="a results directory, e.g. results/imdb_smoke")
    p.add_argument("--print", action="store_true", help="also print the tables")
    p.set_defaults(func=_table)

    p = _command(sub, "list")
    p.add_argument("file", nargs="?", help="an experiment YAML: show its runs and their state")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    p.set_defaults(func=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:  # Hugging Face's weight-loading bars and load reports, once per model, drown the log
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from alignlab.interrupts import Interrupted, installed

    try:
        with installed():  # SIGTERM and Ctrl-C: a training loop finishes its step and checkpoints, then stops
            return int(args.func(args))
    except Interrupted as err:
        sys.stderr.write(f"alignlab: {err}\n")  # one write: workers sharing a terminal do not interleave lines
        return err.exit_status
    except AlignlabError as err:
        if args.debug:
            raise
        sys.stderr.write(f"alignlab: error: {error_line(err, getattr(args, 'overrides', None) or [])}\n")
        return 2
    except KeyboardInterrupt:
        print("alignlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `alignlab list | head`: the reader left; not an error of ours
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stderr at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
