"""How well each win-rate judge agrees with held-out human labels (issue 14, point 4).

    python scripts/judge_agreement.py experiments/hh_winrate.yaml experiments/tldr_winrate.yaml \\
        --reward-variant "reward.max_pairs=null reward.model.epochs=3" --judge-model smollm2-135m

For each experiment YAML — a win-rate experiment on a task of human pairs (``data.source: task``:
HH, TL;DR) — through alignlab's own stages and cache (``$ALIGNLAB_CACHE_DIR``):

1. the task, split as the experiment splits it (``task.eval_fraction``), and its SFT policy;
2. the reward model exactly as the experiment's runs build it (:func:`alignlab.jobs.job.run_reward_model`:
   Bradley–Terry from the SFT policy on the train pairs only), then one per ``--reward-variant``
   (dotted overrides on the experiment, e.g. more pairs or epochs);
3. the LLM judge of ``eval.winrate.judge: llm`` (:func:`alignlab.rewards.judges.llm_judge`) for each
   ``--judge-model``;
4. every judge scored on the same held-out human pairs (those whose prompt fits the policy's
   context, as the runs' held-out pairs), each pair shown in both orders
   (:func:`alignlab.rewards.agreement.judge_agreement`).

Writes ``<out>/agreement.csv`` (one row per task and judge) and ``<out>/README.md`` (the table, the
best judge per task and whether it is above chance, the command, wall times and the machine).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FIELDS = [
    "task",
    "experiment",
    "judge",
    "setup",
    "n",
    "prompts",
    "agreement",
    "ci_low",
    "ci_high",
    "soft_agreement",
    "first_slot_rate",
    "above_chance",
    "wall_s",
]


class _Chunked:
    """An LLM judge asked in chunks, with a progress line per chunk (its batches are invisible)."""

    def __init__(self, judge: Any, label: str, total: int, chunk: int = 64) -> None:
        self.judge, self.label, self.total, self.chunk, self.done = judge, label, total, chunk, 0
        self.name = judge.name
        self.t0 = time.time()

    def prefer_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> Any:
        import torch

        out = []
        for i in range(0, len(prompts), self.chunk):
            j = i + self.chunk
            out.append(self.judge.prefer_first(prompts[i:j], first[i:j], second[i:j]))
            self.done += len(out[-1])
            print(f"  {self.label}: {self.done}/{self.total} showings, {time.time() - self.t0:.0f} s", file=sys.stderr)
        return torch.cat(out)


def _settings(cfg: Any) -> tuple[Any, ...]:
    """What decides a run's held-out pairs and its reward model (equal across an experiment's runs)."""
    return (
        repr(cfg.task),
        cfg.model.to_dict(),
        cfg.sft.to_dict(),
        cfg.data.to_dict(),
        cfg.reward.model.to_dict(),
        cfg.reward.max_pairs,
        cfg.train.max_length,
    )


def _run_config(path: str, overrides: list[str]) -> Any:
    """The experiment's run settings (its first run's), checked to be those of every run."""
    from alignlab.errors import ConfigError
    from alignlab.experiment.config import load_experiment

    exp = load_experiment(path, overrides)
    cfg = exp.runs[0].cfg
    for run in exp.runs[1:]:
        if repr(_settings(run.cfg)) != repr(_settings(cfg)):
            raise ConfigError("methods", f"run {run.run_id} has its own task, SFT, data or reward model", path)
    if cfg.data.source != "task":
        raise ConfigError("data.source", "judge agreement needs human pairs (data.source: task)", path)
    return exp, cfg


def _rm_setup(cfg: Any, metrics: dict[str, Any]) -> str:
    rm = cfg.reward.model
    pairs = metrics["train_pairs"]
    return f"Bradley-Terry from the SFT policy: {pairs} train pairs, {rm.epochs} epoch(s), lr {rm.lr:g}"


def judge_task(path: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of one experiment: every judge on the same held-out human pairs."""
    from alignlab.data import cache_root
    from alignlab.jobs.job import run_reward_model
    from alignlab.models import model_context
    from alignlab.rewards.agreement import judge_agreement
    from alignlab.rewards.judges import RewardJudge, llm_judge
    from alignlab.sft import prepare_policy
    from alignlab.tasks import build_task

    root = cache_root()
    exp, cfg = _run_config(path, [])
    task = build_task(cfg.task, path)
    policy = prepare_policy(task, cfg.model, cfg.sft, cache=root, progress=args.progress)
    context = cfg.train.max_length or model_context(policy.model)
    # 1. the held-out human pairs the runs hold out (every one, not only data.eval_pairs of them)
    held_out = task.fit_to_context(task.pairs("eval"), policy.tokenizer, context)
    held_out = held_out[: args.max_pairs or len(held_out)]
    for_llm = held_out[: args.llm_max_pairs or len(held_out)]  # the first ones, in file order
    print(f"{exp.name}: {len(held_out)} held-out pairs of task {task.name}", file=sys.stderr)

    rows = []

    def add(judge: Any, setup: str, t0: float, pairs: list[Any], both_orders: bool = False) -> None:
        """A row for ``judge``; with ``both_orders`` (an LLM judge) a second row, from the same showings,
        for the judge that shows each pair both ways and averages (eval.winrate.judge_orders: both)."""
        # similar lengths together: the LLM judge pads each batch to its longest row (the order changes
        # nothing else)
        r = judge_agreement(judge, sorted(pairs, key=lambda p: len(p.prompt) + len(p.chosen) + len(p.rejected)))
        wall = round(time.time() - t0, 1)
        variants = [("", r["agreement"], r["ci"])]
        if both_orders:
            variants.append((" (both orders)", r["both_orders_agreement"], r["both_orders_ci"]))
        for suffix, agreement, ci in variants:
            rows.append(
                {
                    "task": task.name,
                    "experiment": exp.name,
                    "judge": judge.name + suffix,
                    "setup": setup if not suffix else setup + "; P averaged over the two orders",
                    "n": r["n"],
                    "prompts": r["prompts"],
                    "agreement": round(agreement, 4),
                    "ci_low": round(ci[0], 4),
                    "ci_high": round(ci[1], 4),
                    "soft_agreement": round(r["soft_agreement"], 4),
                    "first_slot_rate": round(r["first_slot_rate"], 4) if not suffix else 0.5,
                    "above_chance": ci[0] > 0.5,
                    "wall_s": wall,
                }
            )
            slot = rows[-1]["first_slot_rate"]
            interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]"
            print(f"  {judge.name}{suffix}: agreement {agreement:.3f} {interval}, first slot {slot:.3f}")

    # 2. the reward model as the win-rate table trains it, then the variants
    for overrides in [[], *[shlex.split(v) for v in args.reward_variant]]:
        t0 = time.time()
        _, vcfg = _run_config(path, overrides)
        vpolicy = policy if repr(vcfg.sft) == repr(cfg.sft) else prepare_policy(task, vcfg.model, vcfg.sft, cache=root)
        rm, metrics = run_reward_model(vcfg, task, vpolicy, None, root)
        rm.name = "reward_model" + (f" ({' '.join(overrides)})" if overrides else "")
        add(RewardJudge(rm), _rm_setup(vcfg, metrics), t0, held_out)
    # 3. the LLM judges, as eval.winrate.judge: llm builds them
    for name in args.judge_model:
        t0 = time.time()
        judge = llm_judge(name, task.name, cfg.eval.seed, batch_size=args.llm_batch_size)
        setup = f"{name}, the DPO paper's prompt, each pair in both orders"
        if len(for_llm) < len(held_out):
            setup += f"; the first {len(for_llm)} held-out pairs"
        add(_Chunked(judge, judge.name, 2 * len(for_llm)), setup, t0, for_llm, both_orders=True)
    return rows


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}; torch {torch.__version__}; load average at the end {load}"


def _verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One line per task: the best judge (highest agreement among those whose CI excludes ½), or none."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        above = [r for r in mine if r["above_chance"]]
        if above:
            best = max(above, key=lambda r: r["agreement"])
            lines.append(
                f"- **{task}**: best judge `{best['judge']}`, agreement {best['agreement']:.3f} "
                f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}] on n = {best['n']} held-out pairs: above chance."
            )
        else:
            top = max(mine, key=lambda r: r["agreement"])
            lines.append(
                f"- **{task}**: **no judge is above chance** (the best, `{top['judge']}`, agrees on "
                f"{top['agreement']:.3f} [{top['ci_low']:.3f}, {top['ci_high']:.3f}], n = {top['n']}): a win-rate "
                "table judged by any of them cannot rank methods."
            )
    return lines


def write_readme(out: Path, rows: list[dict[str, Any]], command: str, wall_s: float) -> None:
    table = [
        "| task | judge | setup | n (prompts) | agreement [95% CI] | soft agreement | first-slot rate | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['task']} | `{r['judge']}` | {r['setup']} | {r['n']} ({r['prompts']}) | {r['agreement']:.3f} "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['soft_agreement']:.3f} | {r['first_slot_rate']:.3f} "
            f"| {r['wall_s']:.0f} |"
        )
    text = f"""# Judges against held-out human labels

How often each judge available to the win-rate tables (`eval.winrate.judge`) prefers the completion
the human labellers chose, on held-out human pairs that no judge was trained on. Written by
`scripts/judge_agreement.py`; `agreement.csv` holds the same rows.

```bash
{command}
```

- **Machine:** {_machine()}.
- **Wall time:** {wall_s / 60:.1f} minutes in all (per judge in the table; a reward model's includes its
  training when it was not cached, the LLM's its loading).

## Verdict

{chr(10).join(_verdicts(rows))}

## Agreement

{chr(10).join(table)}

## How it is measured

- **Pairs:** every held-out human pair of the experiment's own split (`task.eval_fraction`, by a
  hash of the prompt) whose prompt fits the SFT policy's context, as the runs' held-out pairs
  (but all of them, not only `data.eval_pairs`). The reward models train on the other side of
  the split only.
- **Judges:** `reward_model` is the Bradley–Terry reward model exactly as the experiment's runs
  build it (`alignlab.jobs.job.run_reward_model`, the same cache entry); a row with overrides in its
  name is a variant trained with those settings. `llm:…` is the pairwise LLM judge of
  `eval.winrate.judge: llm` (`alignlab.rewards.judges.llm_judge`: the DPO paper's prompt for the
  task, next-token odds of "A" against "B").
- **Agreement:** each pair is shown in both orders; a showing's verdict is 1 when the judge's
  P(first is better) > ½ (½ on a tie), and a pair scores the mean of its two verdicts for the
  human-chosen completion — the expected agreement of the position-randomised judge
  (`alignlab.rewards.agreement.judge_agreement`). A `(both orders)` row scores, from the same
  showings, the judge of `eval.winrate.judge_orders: both`, which averages P over the two orders
  before its verdict, so a constant slot preference cancels within each pair (its first-slot rate is
  ½ by construction). 95% t-interval with the pairs clustered by
  prompt (TL;DR compares several summaries of one post). **Soft agreement:** the
  mean probability given to the chosen completion (what a win rate averages). **First-slot rate:**
  the share of the 2n showings won by the first slot; ½ for a judge blind to order (a reward model).
- **Above chance** means the interval's lower end is above 0.5. Agreeing with humans on human
  pairs is necessary for a judge of the win-rate tables, not sufficient: those tables compare the
  tiny policies' samples with human text, a different distribution.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("experiments", nargs="+", help="win-rate experiment YAMLs on human pairs (hh_winrate, ...)")
    parser.add_argument(
        "--reward-variant",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help='a better-trained reward model: dotted overrides on the experiment, e.g. "reward.model.epochs=3"',
    )
    parser.add_argument(
        "--judge-model",
        action="append",
        default=None,
        help="an LLM judge's model (default: smollm2-135m; 'none' for no LLM judge)",
    )
    parser.add_argument("--max-pairs", type=int, default=0, help="judge at most this many held-out pairs (0: all)")
    parser.add_argument(
        "--llm-max-pairs", type=int, default=0, help="the LLM judges: at most this many of them, the first (0: all)"
    )
    parser.add_argument("--llm-batch-size", type=int, default=8, help="judge prompts per forward pass")
    parser.add_argument("--out", default="results/judges", help="where agreement.csv and README.md go")
    parser.add_argument("--progress", action="store_true", help="progress bars of SFT and reward-model training")
    args = parser.parse_args(argv)
    args.judge_model = [m for m in (args.judge_model or ["smollm2-135m"]) if m != "none"]
    if min(args.max_pairs, args.llm_max_pairs) < 0 or args.llm_batch_size < 1:
        parser.error("--max-pairs and --llm-max-pairs must be ≥ 0, --llm-batch-size ≥ 1")

    from alignlab.errors import AlignlabError

    t0 = time.time()
    try:
        rows = [row for path in args.experiments for row in judge_task(path, args)]
    except (AlignlabError, ValueError) as err:
        print(f"judge_agreement: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "agreement.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    command = "ALIGNLAB_DATA_DIR=../shared/data python scripts/judge_agreement.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    write_readme(out, rows, command, time.time() - t0)
    print("\n".join(_verdicts(rows)))
    print(f"wrote {out / 'agreement.csv'} and {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
