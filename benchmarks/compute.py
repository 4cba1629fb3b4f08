"""The compute table of an experiment: per method, seconds per step, peak memory, and the models it
holds — "DPO needs two models, PPO four", measured.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/compute.py experiments/imdb_frontier.yaml \
        [--steps 8] [--ppo-steps 3] [--out results/compute]
    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/compute.py experiments/integration/smollm2.yaml \
        --steps 4 --ppo-steps 3 --out results/compute/smollm2

For each method (label) of the experiment, its first run is trained for a few steps in a fresh
process — the experiment's own settings (model, LoRA or not, data, batch, evaluation), only fewer
steps, evaluated at step 0 and the last — so the peak resident memory is that method's alone. A
method with ``model.lora`` under its own label (``DPO+LoRA``) is a row of its own. The shared stages
come from the cache (built on first use). Prints the table and writes ``compute.csv`` and
``compute.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignlab.experiment import load_experiment  # noqa: E402
from alignlab.experiment.csvs import COMPUTE_COLUMNS, write_csv  # noqa: E402
from alignlab.experiment.report import compute_rows, compute_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="an experiment YAML")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps of each offline method")
    parser.add_argument("--ppo-steps", type=int, default=3, help="PPO iterations")
    parser.add_argument("--out", default="results/compute", help="where compute.csv / compute.md go")
    args = parser.parse_args()

    exp = load_experiment(args.experiment)
    firsts = list({run.label: run for run in reversed(exp.planned)}.values())[::-1]
    planned = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in firsts:
            online = run.method.objective is not None and run.method.objective.needs.data == "online"
            steps = args.ppo_steps if online else args.steps
            doc = {**run.data, "out_dir": str(Path(tmp) / run.run_id)}
            train = {k: v for k, v in doc.get("train", {}).items() if k not in ("eval_points", "eval_steps")}
            doc["train"] = train | {"steps": steps, "eval_schedule": "every", "eval_every": steps, "save_every": steps}
            doc["train"]["log_with"] = []
            path = Path(tmp) / f"{run.run_id}.yaml"
            path.write_text(yaml.safe_dump(doc))
            print(f"{run.label}: {steps} steps in a fresh process ...", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, "-m", "alignlab.cli", "train", str(path)], capture_output=True)
            if proc.returncode:
                sys.exit(proc.stderr.decode()[-3000:])
            planned.append(replace(run, cfg=replace(run.cfg, out_dir=doc["out_dir"]), trained_by=None))
        rows = compute_rows(planned)
    out = Path(args.out)

    write_csv(out / "compute.csv", rows, COMPUTE_COLUMNS)
    table = compute_table(pd.DataFrame(rows, columns=COMPUTE_COLUMNS))
    machine = f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPU cores"
    if os.environ.get("OMP_NUM_THREADS"):
        machine += f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    text = (
        f"Measured by `python benchmarks/compute.py {args.experiment} --steps {args.steps} "
        f"--ppo-steps {args.ppo_steps}` ({machine}); each method in a fresh process, the experiment's "
        f"settings, medians over the steps.\n\n{table}"
    )
    (out / "compute.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
