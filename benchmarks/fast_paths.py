"""Each fast path of alignlab measured before and after, side by side in one process, alternating.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/fast_paths.py [--reps 7]

On the tiny-S IMDb SFT policy and generated pairs of ``experiments/imdb_frontier.yaml`` (batch 32
pairs, completions of up to 48 tokens), each row times the same work done the slow way (before)
and the way alignlab does it (after), A/B alternating, and prints the medians and the speed-up:

- LM head on completion tokens only vs the full forward (a DPO step's forward + backward);
- AdamW's fused kernel vs the per-parameter loop (one optimiser step of the 1.5M-parameter policy);
- reference log-probs read from the disk cache vs computed (all training pairs, chosen + rejected);
- chosen and rejected in one forward vs two (forward + backward);
- the evaluation prompts from the per-process memo vs derived (IMDb test prefixes, tokenised);
- π_ref's step-0 evaluation reused vs sampled (64 prompts × 48 tokens, policy + reference scoring,
  gold reward);
- KV-cached generation vs without the cache (64 prompts × 48 new tokens, same seed and tokens).

It also prints the padding share of the training batches (what length grouping could still save).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_trl import REPO, imdb_inputs, quiet

from alignlab.core import scoring
from alignlab.core.rollout import encode_prompts
from alignlab.core.scoring import score_pairs, sequence_logps, token_logps
from alignlab.jobs import evaluation
from alignlab.train.data import BatchOrder, PairData, _sequence_sums, cached_reference


def ab(before: Callable[[], object], after: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median seconds of ``before`` and ``after``, alternating (after a warm-up call of each)."""
    before(), after()
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(reps):
        order = [(0, before), (1, after)] if r % 2 == 0 else [(1, after), (0, before)]
        for i, fn in order:
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def show(name: str, before: float, after: float, unit: str = "s") -> None:
    print(f"{name:<58} {before:>9.4f} {after:>9.4f} {unit:<3} {before / after:>7.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    B = 32
    policy, pairs = imdb_inputs(B * 20)
    tok = policy.tokenizer
    model = copy.deepcopy(policy.model).train()
    data = PairData.build(tok, pairs, 512)
    rows = BatchOrder(len(pairs), B, 0).rows(0)
    chosen, rejected = data.chosen.select(rows).trim(), data.rejected.select(rows).trim()
    print(f"{'fast path (tiny-S, 2 CPU threads)':<58} {'before':>9} {'after':>9}     {'speed-up':>8}")

    # 1. the completion-only LM head (a DPO step's forward + backward)
    def dpo_step(fast: bool) -> Callable[[], None]:
        def step() -> None:
            scoring.COMPLETION_HEAD = fast
            c, cm, r, rm = score_pairs(model, chosen, rejected, tok.pad_token_id)
            (sequence_logps(c, cm, "sum") - sequence_logps(r, rm, "sum")).sum().backward()
            model.zero_grad(set_to_none=True)

        return step

    show("LM head on completion tokens only (step fwd+bwd)", *ab(dpo_step(False), dpo_step(True), args.reps))
    scoring.COMPLETION_HEAD = True

    # 2. one forward for chosen and rejected against two
    def two_forwards() -> None:
        for b in (chosen, rejected):
            token_logps(model, b.input_ids, b.attention_mask, b.completion_mask).sum().backward()
        model.zero_grad(set_to_none=True)

    show("chosen + rejected in one forward (fwd+bwd)", *ab(two_forwards, dpo_step(True), args.reps))

    # 3. the optimiser step
    dpo_step(True)()
    c, cm, r, rm = score_pairs(model, chosen, rejected, tok.pad_token_id)
    (sequence_logps(c, cm, "sum") - sequence_logps(r, rm, "sum")).sum().backward()
    loop = torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=False)
    fused = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    show("AdamW fused kernel vs per-parameter loop (one step)", *ab(loop.step, fused.step, args.reps))
    model.zero_grad(set_to_none=True)

    # 4. reference log-probs from the disk cache
    reference = copy.deepcopy(policy.model).eval()

    def compute() -> dict[str, torch.Tensor]:
        return {k: _sequence_sums(reference, getattr(data, k), 64) for k in ("chosen", "rejected")}

    with tempfile.TemporaryDirectory() as cache:
        cached_reference(["fast_paths"], compute, Path(cache))
        show(
            f"reference log-probs cached vs computed ({len(data)} pairs)",
            *ab(compute, lambda: cached_reference(["fast_paths"], compute, Path(cache)), max(3, args.reps // 2)),
        )

    # 5-6. the per-process memos of a sweep: evaluation prompts, π_ref's evaluation
    from alignlab import stages
    from alignlab.data import cache_root
    from alignlab.experiment import load_experiment
    from alignlab.tasks import build_task

    run = next(r for r in load_experiment(REPO / "experiments" / "imdb_frontier.yaml").planned if r.label == "DPO")
    task = build_task(run.cfg.task, "experiments/imdb_frontier.yaml")
    judge = stages.gold_judge(task, run.cfg.sft.seed, cache_root())

    def derive() -> None:
        evaluation._PROMPTS.clear()
        evaluation.eval_prompts(task, tok, 512, 48, 64)

    show(
        "evaluation prompts: per-process memo vs derived",
        *ab(derive, lambda: evaluation.eval_prompts(task, tok, 512, 48, 64), 3),
    )

    def evaluate(memo: bool) -> Callable[[], None]:
        def go() -> None:
            if not memo:
                evaluation._EVALUATIONS.clear()
            evaluation.sampling_evaluation(run.cfg, task, policy, judge, reference)(policy.model)

        return go

    with quiet():  # the gold judge and generate log as they go
        timings = ab(evaluate(False), evaluate(True), 3)
    show("π_ref's evaluation (step 0): reused vs sampled", *timings)

    # 7. KV-cached generation
    prompts = encode_prompts(tok, evaluation.eval_prompts(task, tok, 512, 48, 64))

    def generate(cache: bool) -> Callable[[], None]:
        def go() -> None:
            torch.manual_seed(0)
            with torch.no_grad():
                policy.model.generate(
                    input_ids=prompts.input_ids,
                    attention_mask=prompts.attention_mask,
                    max_new_tokens=48,
                    do_sample=True,
                    top_k=None,
                    use_cache=cache,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )

        return go

    show("generation with the KV cache vs without (64 × 48 tokens)", *ab(generate(False), generate(True), 3))

    # padding left in the training batches
    real = padded = completion = 0
    order = BatchOrder(len(pairs), B, 0)
    for s in range(order.steps_per_epoch):
        both = [data.chosen.select(order.rows(s)).trim(), data.rejected.select(order.rows(s)).trim()]
        width = max(b.input_ids.shape[1] for b in both)
        padded += 2 * B * width
        real += sum(int(b.attention_mask.sum()) for b in both)
        completion += sum(int(b.completion_mask.sum()) for b in both)
    print(
        f"training batches: {real / padded:.1%} of the (2B, T) positions are real tokens, "
        f"{completion / padded:.1%} completion tokens (the only rows the LM head now sees)"
    )


if __name__ == "__main__":
    main()
