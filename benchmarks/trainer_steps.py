"""Seconds per step and peak memory of the trainers on tiny-S IMDb: DPO, KTO, and a PPO iteration
(generation / scoring / update), each in its own process so peak RSS is its own.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/trainer_steps.py [--steps 20] [--ppo-iterations 5]

Uses the shared stages of experiments/prepare_imdb.yaml (tiny-S SFT, gold judge, generated
pairs), built on first use and cached. Prints one row per method: median seconds per optimiser
step (PPO: per iteration, split into phases), tokens per second where it applies, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PREPARE = yaml.safe_load((REPO / "experiments" / "prepare_imdb.yaml").read_text())


def run(method: dict, steps: int, out: Path, batch_size: int) -> tuple[dict, list[dict]]:
    doc = {
        "task": PREPARE["task"],
        "model": PREPARE["model"],
        "sft": PREPARE["sft"],
        "data": {"source": "generated", "generate": PREPARE["pairs"], "eval_pairs": 64},
        "objective": method,
        "reward": {"kind": "gold"},
        "rollout": {"max_new_tokens": 48, "critic": "sft"},
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "optimizer": "rmsprop",
            "lr": 1.0e-5,
            "warmup_steps": 0,
            "eval_every": 10_000,
            "save_every": 10_000,
            "log_with": [],
            "progress": False,
        },
        "eval": {"prompts": 0},
        "out_dir": str(out),
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([sys.executable, "-m", "alignlab.cli", "train", str(path)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), [r for r in rows if r["split"] == "train"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ppo-iterations", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{'method':<6} {'s/step':>8} {'gen s':>7} {'score s':>8} {'update s':>9} {'peak RSS MiB':>13}  models held"
        )
        for method, held in (("dpo", "policy (+ reference once, for the cache)"), ("kto", "policy (+ reference once)")):
            summary, rows = run({"name": method}, args.steps, Path(tmp) / method, args.batch_size)
            s = statistics.median(r["step_s"] for r in rows[1:])
            print(f"{method:<6} {s:>8.3f} {'':>7} {'':>8} {'':>9} {summary['peak_rss_mb']:>13.0f}  {held}")
        summary, rows = run(
            {"name": "ppo", "num_minibatches": 2}, args.ppo_iterations, Path(tmp) / "ppo", args.batch_size
        )
        med = {k: statistics.median(r[k] for r in rows[1:]) for k in ("gen_s", "score_s", "update_s")}
        total = sum(med.values())
        print(
            f"{'ppo':<6} {total:>8.3f} {med['gen_s']:>7.3f} {med['score_s']:>8.3f} {med['update_s']:>9.3f} "
            f"{summary['peak_rss_mb']:>13.0f}  policy, critic, reference, gold judge"
        )
        print(
            f"(batch {args.batch_size}: pairs for DPO, rows for KTO, rollouts of up to 48 tokens per PPO iteration; "
            f"PPO update = 4 epochs × 2 minibatches)"
        )


if __name__ == "__main__":
    main()
