"""Reward at KL budgets of a results directory's ``frontier.csv`` with another's rows added under the
same method labels: how a method's row moves when it is evaluated more densely. For ``imdb_frontier``
with its tuned PPO setting evaluated at every iteration (``experiments/checks/frontier_ppo_dense.yaml``):

    python benchmarks/merged_front.py results/imdb_frontier results/imdb_frontier/ppo_dense

Checks that every point the two share (method, setting, seed, step) is the same, then prints the
``reward_at_kl`` and ``a_above_b`` rows of ``summary.csv`` for the added methods, as committed and
merged (the added rows join each seed's Pareto front; nothing else changes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from alignlab.experiment.summary import summary_frame

KEY = ["method", "seed", "step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="the experiment's results directory (frontier.csv)")
    p.add_argument("added", type=Path, help="the results directory whose frontier.csv rows are added")
    p.add_argument("--budgets", type=float, nargs="+", default=[1, 2, 5, 10, 15])
    p.add_argument("--cap", type=float, default=15)
    args = p.parse_args()
    base = pd.read_csv(args.results / "frontier.csv")
    added = pd.read_csv(args.added / "frontier.csv")
    methods = set(added["method"])
    pairs = base.merge(added, on=KEY, how="inner", suffixes=("", "_added"))
    tokens = [set(t.split()) for t in pairs["setting"]]  # added's setting names fewer knobs (no lr)
    same = pairs[[set(a.split()) <= t for a, t in zip(pairs["setting_added"], tokens, strict=True)]]
    differ = same[(same["kl"] != same["kl_added"]) | (same["reward"] != same["reward_added"])]
    if same.empty:
        sys.exit(f"{args.added}/frontier.csv shares no (method, seed, step, setting) with {args.results}/frontier.csv")
    if not differ.empty:
        sys.exit(f"{len(differ)} of {len(same)} shared points differ: not the same training")
    print(f"{len(same)} points shared with {args.results}/frontier.csv, all equal")
    merged = pd.concat([base, added.assign(run=added["run"] + "-added")], ignore_index=True)
    cols = ["method", "versus", "kl", "n", "value", "ci_low", "ci_high", "separate"]
    for name, frame in (("committed", base), ("merged", merged)):
        s = summary_frame(frame, args.budgets, args.cap)
        rows = s[(s["quantity"] == "reward_at_kl") & s["method"].isin(methods)]
        above = s[(s["quantity"] == "a_above_b") & (s["method"].isin(methods) | s["versus"].isin(methods))]
        print(f"\n## {name}: reward at KL budgets\n{rows[cols].round(2).to_string(index=False)}")
        print(f"\n## {name}: a above b\n{above[cols].round(2).to_string(index=False)}")


if __name__ == "__main__":
    main()
