"""Sampling: the rollout core's plain KV-cached loop against Hugging Face ``generate``, side by side.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/sampler.py [--rounds 7] [--batch 64] [--new-tokens 48]

On the tiny-S IMDb SFT policy of ``experiments/imdb_frontier.yaml`` (GPT-2, 2 layers × 128, vocabulary
8,000; built into the cache on first use) and ``--batch`` IMDb train prompts (left-padded, BOS first),
for temperature 1 (what the online methods sample with), temperature 0.7 with top-p 0.9, and greedy, it
times ``model.generate`` and :func:`alignlab.core.rollout.sample_with_cache` on the same prompts and seed,
alternating (after a warm-up call of each), checks that the tokens are identical, and prints the median
seconds and the speed-up, in wall-clock time and in CPU time (``time.process_time``, all of the
process's threads: on a shared machine the steadier measure of the work each side does). A second
model of the same shape with random weights never emits EOS, so every row runs all ``--new-tokens``
steps.

Then where ``generate``'s time goes, at temperature 1 on the SFT policy: the model's forward and
``torch.multinomial`` timed inside it (the two things any sampler of the same tokens must do), the
remainder being its per-token machinery (logits processors, stopping criteria, bookkeeping), the
most the loop can save.

Both sides run in this process under ``OMP_WAIT_POLICY=PASSIVE`` (see ``vs_trl_online.py``); the load
average at start and end is printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import argparse
import contextlib
import functools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_trl_online import imdb_inputs, load

from alignlab.core.rollout import encode_prompts, sample_with_cache, samples_like_generate
from alignlab.core.scoring import EncodedBatch

SETTINGS = {"temperature 1": (1.0, 1.0), "temperature 0.7, top-p 0.9": (0.7, 0.9), "greedy": (0.0, 1.0)}


def sides(
    model: Any, prompts: EncodedBatch, tok: Any, new_tokens: int, temperature: float, top_p: float
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """``generate`` and the loop, each drawing from seed 0 and returning the completion tokens."""
    P = prompts.input_ids.shape[1]
    greedy = temperature == 0

    @torch.no_grad()
    def generate() -> torch.Tensor:
        torch.manual_seed(0)
        out = model.generate(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            max_new_tokens=new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return out[:, P:]

    def loop() -> torch.Tensor:
        torch.manual_seed(0)
        return sample_with_cache(
            model, prompts, max_new_tokens=new_tokens, temperature=temperature, top_p=top_p,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip

    return generate, loop


def ab(before: Callable[[], Any], after: Callable[[], Any], rounds: int) -> tuple[list[float], list[float]]:
    """Median wall-clock and CPU seconds (``time.process_time``: all of this process's threads) of
    ``before`` and ``after``, alternating after a warm-up call of each: ([wall, CPU], [wall, CPU])."""
    before(), after()
    times: tuple[list[list[float]], list[list[float]]] = ([[], []], [[], []])
    for r in range(rounds):
        for i, fn in [(0, before), (1, after)] if r % 2 == 0 else [(1, after), (0, before)]:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[i][0].append(time.perf_counter() - t0)
            times[i][1].append(time.process_time() - c0)
    return [statistics.median(t) for t in times[0]], [statistics.median(t) for t in times[1]]


@contextlib.contextmanager
def timed_parts(model: Any) -> Iterator[dict[str, float]]:
    """Seconds spent in ``model``'s forward and in ``torch.multinomial`` while the block runs."""
    spent = {"forward": 0.0, "multinomial": 0.0}
    forward, multinomial = model.forward, torch.multinomial

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # generate inspects the forward's signature
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - t0
            return out

        return run

    model.forward = timed("forward", forward)
    torch.multinomial = timed("multinomial", multinomial)
    try:
        yield spent
    finally:
        del model.forward
        torch.multinomial = multinomial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    print(f"load at start: {load()}")
    omp = os.environ["OMP_WAIT_POLICY"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={omp}")
    policy, _, pool = imdb_inputs(args.batch)
    tok = policy.tokenizer
    sft = policy.model.eval()
    torch.manual_seed(0)
    random = type(sft)(sft.config).eval()
    prompts = encode_prompts(tok, pool[: args.batch])
    assert samples_like_generate(sft) and samples_like_generate(random)
    print(
        f"{args.batch} prompts of {int(prompts.attention_mask.sum(-1).min())}-{prompts.input_ids.shape[1]} tokens, "
        f"≤ {args.new_tokens} new tokens, tiny-S ({sum(p.numel() for p in sft.parameters()) / 1e6:.2f}M parameters)"
    )
    print(
        f"{'model, sampling':<52} {'new tokens':>10} {'generate':>9} {'loop':>9} {'speed-up':>9}   "
        f"CPU: {'generate':>9} {'loop':>9} {'speed-up':>9}"
    )
    for name, model in (("SFT policy", sft), ("random weights (no EOS)", random)):
        for setting, (temperature, top_p) in SETTINGS.items():
            generate, loop = sides(model, prompts, tok, args.new_tokens, temperature, top_p)
            tokens = generate()
            if not torch.equal(tokens, loop()):
                sys.exit(f"{name}, {setting}: the loop's tokens differ from generate's")
            (slow, slow_cpu), (fast, fast_cpu) = ab(generate, loop, args.rounds)
            print(
                f"{name + ', ' + setting:<52} {tokens.shape[1]:>10} {slow:>8.3f}s {fast:>8.3f}s {slow / fast:>8.2f}x   "
                f"     {slow_cpu:>8.3f}s {fast_cpu:>8.3f}s {slow_cpu / fast_cpu:>8.2f}x"
            )

    generate, _ = sides(sft, prompts, tok, args.new_tokens, 1.0, 1.0)
    steps = generate().shape[1]
    parts = []
    for _ in range(args.rounds):
        with timed_parts(sft) as spent:
            t0 = time.perf_counter()
            generate()
            spent["total"] = time.perf_counter() - t0
        parts.append(spent)
    med = {k: statistics.median(p[k] for p in parts) for k in ("total", "forward", "multinomial")}
    rest = med["total"] - med["forward"] - med["multinomial"]
    print(
        f"where generate's time goes (SFT policy, temperature 1, {steps} steps, median of {args.rounds}): "
        f"{med['total']:.3f} s = model forward {med['forward']:.3f} s ({med['forward'] / med['total']:.0%}) + "
        f"torch.multinomial {med['multinomial']:.3f} s ({med['multinomial'] / med['total']:.0%}) + "
        f"the rest of the loop {rest:.3f} s ({rest / med['total']:.0%})"
    )
    print(f"load at end: {load()}")


if __name__ == "__main__":
    main()
