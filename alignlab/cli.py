"""The ``alignlab`` command line.

User errors (:class:`alignlab.errors.AlignlabError`) print one line and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except AlignlabError as err:
        if args.debug:
            raise
        print(f"alignlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
