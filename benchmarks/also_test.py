"""What ``tune.reuse`` costs a tuning run: a second sampling evaluation, on the test prompts.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/also_test.py [--steps 40] [--rounds 2]

One DPO run of ``experiments/imdb_frontier.yaml`` (β 0.1, lr 3e-4, ``--steps`` steps, the
experiment's 10 log-spaced evaluations) three ways, alternated (A B C, then C B A, ...), each by
``alignlab run`` in a fresh runs directory, the shared stages from the cache:

- A: ``eval.split: validation`` — a tuning run without reuse;
- B: ``eval.split: validation, eval.also_test: true`` — a tuning run with ``tune.reuse``;
- C: ``eval.split: test`` — a final run.

Prints each run's evaluation seconds (each eval row's ``wall_s`` minus its step's train row's) and
training seconds, and checks that B's validation rows are A's and B's ``test_*`` rows are C's,
number for number: the second evaluation moves neither the first nor the training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIDES = {
    "A": ["eval.split=validation"],
    "B": ["eval.split=validation", "eval.also_test=true"],
    "C": ["eval.split=test"],
}
COMPARED = ["sample_reward", "sample_reward_ci_low", "sample_reward_ci_high", "sample_kl", "sample_kl_ci_high"]


def run(side: str, steps: int, where: Path) -> list[dict]:
    """One run of ``side`` in ``where``; its metric rows."""
    command = [sys.executable, "-m", "alignlab.cli", "run", str(REPO / "experiments" / "imdb_frontier.yaml")]
    command += ["methods=[{name: dpo, beta: 0.1}]", "tune=null", "seeds=1", "train.lr=3.0e-4"]
    command += [f"train.steps={steps}", "train.eval_points=10", *SIDES[side]]
    command += [f"out_dir={where / 'results'}", f"runs_dir={where / 'runs'}"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (log,) = where.glob("runs/*/metrics.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def seconds(rows: list[dict]) -> tuple[float, float]:
    """(evaluation seconds, training-step seconds) of one run."""
    train = {r["step"]: r["wall_s"] for r in rows if r["split"] == "train"}
    evaluation = sum(r["wall_s"] - train.get(r["step"], 0.0) for r in rows if r["split"] == "eval")
    return evaluation, sum(r["step_s"] for r in rows if r["split"] == "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            rows = {}
            for side in "ABC" if k % 2 == 0 else "CBA":
                rows[side] = run(side, args.steps, Path(tmp) / f"{k}{side}")
                evaluation, training = seconds(rows[side])
                times[side].append(evaluation)
                said = f"evaluation {evaluation:.1f} s, training steps {training:.1f} s"
                print(f"round {k + 1} {side}: {said}", flush=True)
            a, b, c = ([r for r in rows[s] if r["split"] == "eval"] for s in "ABC")
            same_a = all(x[key] == y[key] for x, y in zip(a, b, strict=True) for key in COMPARED)
            same_c = all(x[f"test_{key}"] == y[key] for x, y in zip(b, c, strict=True) for key in COMPARED)
            print(f"round {k + 1}: B's validation rows are A's: {same_a}; B's test rows are C's: {same_c}")
    extra = statistics.median(times["B"]) - statistics.median(times["A"])
    print(
        f"median evaluation seconds: A {statistics.median(times['A']):.1f}, B {statistics.median(times['B']):.1f}, "
        f"C {statistics.median(times['C']):.1f}: the test prompts add {extra:.1f} s to a run of 10 evaluations"
    )


if __name__ == "__main__":
    main()
