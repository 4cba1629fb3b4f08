"""The ``alignlab`` command line.

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

    from alignlab.train.job import run_training

    summary = run_training(args.file, args.overrides, force=args.force)
    print(json.dumps(summary, indent=2))
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
        from alignlab.experiment.runner import status

        exp = load_experiment(args.file, args.overrides)
        more = f" (+ {len(exp.tuned)} tuned methods)" if exp.tuned else ""
        print(f"{exp.name}: {len(exp.runs)} runs{more}; results in {exp.out_dir}, runs in {exp.runs_dir}")
        for run in exp.runs:
            print(f"  {status(run):9s} {run.run_id}")
        for tuned in exp.tuned:  # tuning runs on validation prompts, then the selected candidate's runs
            how = f"tuned by {tuned.tune.criterion} at KL {tuned.tune.kl:g}"
            print(f"  {tuned.label}: {how}, {len(tuned.candidates)} candidates")
            for candidate in tuned.candidates:
                for run in candidate.tune_runs:
                    print(f"    {status(run):9s} {run.run_id}")
                finals = ", ".join(f"{r.run_id} ({status(r)})" for r in candidate.final_runs)
                print(f"      if selected: {finals}")
        return 0
    short = {v: k for k, v in ALIASES.items()}
    for name, path in shipped().items():
        alias = f" (alignlab reproduce {short[name]})" if name in short else ""
        print(f"{name}{alias}\n  {path}\n  {description(path)}")
    return 0


def _experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 eval.prompts=32")
    p.add_argument("--workers", type=int, default=1, help="split the runs over this many processes (default 1)")
    p.add_argument("--force", action="store_true", help="delete the experiment's runs and run them again")


def error_line(err: AlignlabError, overrides: Sequence[str] = ()) -> str:
    """The one line a user error prints: its message, with the command-line override that set the
    offending key named (the message names the YAML file the override was applied to)."""
    from alignlab.errors import ConfigError, flatten

    message = flatten(str(err))  # one line, even when a message carries another library's newlines
    if isinstance(err, ConfigError):
        for item in overrides:
            key = item.partition("=")[0]
            if key and (err.key == key or err.key.startswith(key + ".")) and item not in message:
                return f"{message} (set on the command line: {item})"
    return message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("objectives", help="list every registered objective with its knobs, needs and citation")
    p.add_argument("--plugin", action="append", default=[], help="a module or .py file to load first (repeatable)")
    p.add_argument("--names-only", action="store_true", help="print the names only")
    p.set_defaults(func=_objectives)

    p = sub.add_parser("train", help="one training run from a YAML: any objective, PPO, or best-of-N")
    p.add_argument("file", help="the YAML file, e.g. experiments/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. objective.beta=0.2 train.steps=100")
    p.add_argument("--force", action="store_true", help="run again even if out_dir holds a finished run")
    p.set_defaults(func=_train)
    p = sub.add_parser("prepare", help="build a task's shared stages (SFT, gold judge, pairs, reward model)")
    p.add_argument("file", help="the YAML file, e.g. experiments/prepare_imdb.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. sft.steps=100 model.preset=smoke")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("run", help="run an experiment YAML: every method × sweep, then frontier, plots, tables")
    p.add_argument("file", help="the experiment YAML, e.g. experiments/imdb_smoke.yaml")
    _experiment_options(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)

    p = sub.add_parser("reproduce", help="run a shipped experiment by name (imdb, smoke, tldr, hh, ...)")
    p.add_argument("name", help="a name from `alignlab list`")
    _experiment_options(p)
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("plot", help="draw frontier.png/.svg (and winrate.png/.svg) from a results directory")
    p.add_argument("dir", help="a results directory, e.g. results/imdb_smoke")
    p.add_argument("--fit", action="store_true", help="overlay Gao et al. (2023) over-optimisation fits")
    p.set_defaults(func=_plot)

    p = sub.add_parser("table", help="write frontier.md (and winrate.md) from a results directory")
    p.add_argument("dir", help="a results directory, e.g. results/imdb_smoke")
    p.add_argument("--print", action="store_true", help="also print the tables")
    p.set_defaults(func=_table)

    p = sub.add_parser("list", help="list the shipped experiments, or the runs of one experiment and their state")
    p.add_argument("file", nargs="?", help="an experiment YAML: show its runs (finished / started / pending)")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
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
