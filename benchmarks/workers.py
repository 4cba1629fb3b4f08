"""Sweep runs in worker processes against one process using every thread, on the same runs.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/workers.py [--runs 4] [--steps 16] [--rounds 1]

A small sweep cut from ``experiments/imdb_frontier.yaml`` (IPO at ``--runs`` values of τ, tiny-S,
the experiment's batch and evaluation, ``--steps`` steps each) is run from scratch by
``alignlab run`` in one process (torch's default threads: one per core) and by
``alignlab run --workers W`` (W processes splitting the runs, the cores split between them),
alternating, each in a fresh runs directory; the shared stages come from the cache. Prints the wall
time of each and the ratio; the frontier numbers of both must be identical (same runs, same seeds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def sweep(tmp: Path, runs: int, steps: int, tag: str) -> Path:
    base = yaml.safe_load((REPO / "experiments" / "imdb_frontier.yaml").read_text())
    ipo = next(m for m in base["methods"] if m.get("label") == "IPO")
    taus = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0][:runs]
    doc = {k: v for k, v in base.items() if k not in ("methods", "name", "description", "out_dir", "runs_dir")}
    doc.update(
        name=f"workers_{tag}",
        description="benchmarks/workers.py",
        methods=[{**ipo, "sweep": {"tau": taus}}],
        out_dir=str(tmp / tag / "results"),
        runs_dir=str(tmp / tag / "runs"),
    )
    doc["train"] = {**doc["train"], "steps": steps, "eval_every": steps // 2, "save_every": steps}
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def timed(path: Path, workers: int) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "alignlab.cli", "run", str(path), "--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"1 process": [], f"{args.workers} workers": []}
    frontiers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            sides = [("1 process", 1), (f"{args.workers} workers", args.workers)]
            for name, w in sides if r % 2 == 0 else sides[::-1]:
                path = sweep(Path(tmp), args.runs, args.steps, f"{w}w{r}")
                times[name].append(timed(path, w))
                csv = pd.read_csv(Path(tmp) / f"{w}w{r}" / "results" / "frontier.csv")
                frontiers[name] = csv.drop(columns=["wall_s"]).sort_values(["run", "step"]).reset_index(drop=True)
                print(f"  round {r + 1}: {name} {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    one, many = (statistics.median(v) for v in times.values())
    a, b = frontiers["1 process"], frontiers[f"{args.workers} workers"]
    # one thread per worker against two in one process: the matmuls round differently
    diff = {c: float((a[c] - b[c]).abs().max()) for c in ("kl", "reward")}
    print(
        f"{args.runs} IPO runs × {args.steps} steps (tiny-S, {os.cpu_count()} cores): 1 process {one:.1f} s, "
        f"{args.workers} workers {many:.1f} s, speed-up {one / many:.2f}x; frontier rows identical: {a.equals(b)} "
        f"(max |diff| KL {diff['kl']:.2e}, reward {diff['reward']:.2e})"
    )


if __name__ == "__main__":
    main()
