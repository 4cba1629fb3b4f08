"""A PPO iteration, phase by phase, against bare ``model.generate`` on the same prompts and lengths.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/ppo_phases.py [--iterations 4] [--rounds 5]

1. PPO-GT and PPO (reward model) of ``experiments/imdb_frontier.yaml`` trained for a few iterations
   (the experiment's own settings: 64 rollouts of 48 new tokens per iteration, tiny-S): the median
   time per iteration split into generation, scoring (reward; policy + value in one forward;
   reference) and the updates, with the tokens/s each phase achieves.
2. Rollout overhead: the rollout core's generation (:func:`alignlab.core.rollout.rollout`, as PPO
   calls it: tokenise, generate, mask at EOS, decode) against bare ``model.generate`` on the same
   pre-tokenised prompts with the same seed — so the same tokens and the same lengths — alternating
   A/B, medians over ``--rounds``. The goal: the rollout within 15% of bare generation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignlab.core.rollout import encode_prompts, rollout  # noqa: E402
from alignlab.experiment import load_experiment  # noqa: E402

EXPERIMENT = REPO / "experiments" / "imdb_frontier.yaml"


def ppo_phases(label: str, iterations: int) -> dict[str, float]:
    """Train ``label``'s first run for ``iterations`` in this process; medians of its phase times."""
    from alignlab.jobs.job import execute, resolve_dict

    run = next(r for r in load_experiment(EXPERIMENT).planned if r.label == label)
    with tempfile.TemporaryDirectory() as tmp:
        doc = {**run.data, "out_dir": tmp}
        doc["train"] = {**doc.get("train", {}), "steps": iterations, "eval_every": 10**6, "save_every": 10**6}
        doc["train"].update(log_with=[], progress=False)
        doc["eval"] = {**doc.get("eval", {}), "prompts": 0}
        cfg, method = resolve_dict(yaml.safe_load(yaml.safe_dump(doc)), str(EXPERIMENT), REPO)
        summary = execute(cfg, method, str(EXPERIMENT))
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"][1:]  # the first iteration warms up
    med = {k: statistics.median(r[k] for r in rows) for k in ("gen_s", "score_s", "update_s", "length")}
    med["rollouts"] = cfg.train.batch_size
    med["peak_rss_mb"] = summary["peak_rss_mb"]
    return med


def rollout_overhead(rounds: int, n_prompts: int, max_new_tokens: int) -> dict[str, float]:
    from alignlab.data import cache_root
    from alignlab.sft import prepare_policy
    from alignlab.tasks import build_task

    run = load_experiment(EXPERIMENT).planned[0]
    task = build_task(run.cfg.task, str(EXPERIMENT))
    policy = prepare_policy(task, run.cfg.model, run.cfg.sft, cache=cache_root(), progress=False)
    model, tok = policy.model.eval(), policy.tokenizer
    prompts = task.prompts("train", policy.tokenizer)[:n_prompts]
    encoded = encode_prompts(tok, prompts)

    def ours(seed: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = rollout(model, tok, prompts, max_new_tokens=max_new_tokens, seed=seed, batch_size=n_prompts)
        return time.perf_counter() - t0, int(r.sequences.completion_mask.sum())

    def bare(seed: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(
                input_ids=encoded.input_ids,
                attention_mask=encoded.attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=None,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        return time.perf_counter() - t0, int(out.shape[1] - encoded.input_ids.shape[1])

    ours(0), bare(0)  # warm-up
    times: dict[str, list[float]] = {"rollout core": [], "bare generate": []}
    widths: dict[str, list[int]] = {"rollout core": [], "bare generate": []}
    for r in range(rounds):
        sides = [("rollout core", ours), ("bare generate", bare)]
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            seconds, tokens = fn(100 + r)
            times[name].append(seconds)
            widths[name].append(tokens)
    return {
        "rollout_s": statistics.median(times["rollout core"]),
        "bare_s": statistics.median(times["bare generate"]),
        "completion_tokens": statistics.median(widths["rollout core"]),
        "generated_steps": statistics.median(widths["bare generate"]),
        "prompts": len(prompts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations per method (first is warm-up)")
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds of rollout vs bare generate")
    parser.add_argument("--skip-ppo", action="store_true", help="only the rollout-overhead comparison")
    args = parser.parse_args()
    exp = load_experiment(EXPERIMENT)
    rc = exp.planned[0].cfg.rollout
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores")
    o = rollout_overhead(args.rounds, 64, rc.max_new_tokens)
    ratio = o["rollout_s"] / o["bare_s"]
    print(
        f"rollout core {o['rollout_s']:.3f} s vs bare generate {o['bare_s']:.3f} s for {o['prompts']} prompts × "
        f"≤{rc.max_new_tokens} new tokens ({o['completion_tokens']:.0f} completion tokens, "
        f"{o['generated_steps']:.0f} decoding steps): rollout/bare = {ratio:.3f} "
        f"({(ratio - 1) * 100:+.1f}%; goal ≤ +15%), {o['completion_tokens'] / o['rollout_s']:.0f} tok/s"
    )
    if args.skip_ppo:
        return
    print(
        f"{'method':<8} {'gen s':>7} {'score s':>8} {'update s':>9} {'s/iter':>7} "
        f"{'gen tok/s':>10} {'score tok/s':>12} {'peak RSS MiB':>13}"
    )
    for label in ("PPO-GT", "PPO"):
        m = ppo_phases(label, args.iterations)
        total = m["gen_s"] + m["score_s"] + m["update_s"]
        tokens = m["length"] * m["rollouts"]
        print(
            f"{label:<8} {m['gen_s']:>7.2f} {m['score_s']:>8.2f} {m['update_s']:>9.2f} {total:>7.2f} "
            f"{tokens / m['gen_s']:>10.0f} {tokens / m['score_s']:>12.0f} {m['peak_rss_mb']:>13.0f}"
        )


if __name__ == "__main__":
    main()
