"""alignlab against TRL on the same work: DPO vs ``DPOTrainer``, KTO vs ``KTOTrainer``, the reward
model vs ``RewardTrainer``, side by side in one process, alternating A/B.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/vs_trl.py \
        [--methods dpo kto rm] [--presets tiny-s tiny-m] [--steps 12] [--rounds 3] [--batch-size 32]

The work is identical on both sides: the same initial weights (tiny-S: the cached IMDb SFT policy
of ``experiments/imdb_frontier.yaml``; tiny-M: a fresh seeded init with the same tokenizer), the
same token ids (TRL tokenises the texts; alignlab's own encoding is checked to give the same ids),
the same batches in the same order, float32, AdamW at a constant learning rate, the same gradient
clipping, dropout off. TRL runs at its best settings for this work on this machine: reference
log-probs precomputed (``precompute_ref_log_probs=True``) and its fused LM head (what TRL 1.x always
uses); its padding-free mode is disabled in TRL 1.x (it warns and pads), so there is none to turn on.

Each round trains ``--steps`` steps with TRL and then with alignlab (the order flips every round);
a step's time is the wall-clock between consecutive step ends, so data collation, logging and the
optimiser are all counted; the first step of each block is dropped as warm-up. Prints the median
seconds per step, steps/s and tokens/s (non-padding tokens through the policy per step) of each,
the ratio alignlab/TRL, peak memory, and the per-step losses of both for the first steps with their
largest difference. Reference precomputation happens once per side and is timed apart.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alignlab.core.scoring import EncodedBatch  # noqa: E402
from alignlab.jobs.job import peak_rss_mb, reset_peak_rss  # noqa: E402
from alignlab.objectives import get_objective  # noqa: E402
from alignlab.train.config import TrainConfig  # noqa: E402
from alignlab.train.data import BatchOrder, PairData, UnpairedData, _sequence_sums  # noqa: E402
from alignlab.train.loop import make_accelerator  # noqa: E402
from alignlab.train.offline import objective_step, train_offline  # noqa: E402

LR = 1e-4
GRAD_CLIP = 10.0
BETA = 0.1


# ---------------------------------------------------------------------------------------------
# the shared inputs: weights, tokenizer, pairs in the order both sides will see them
# ---------------------------------------------------------------------------------------------


@dataclass
class Work:
    name: str
    model: Any  # the initial weights (a causal LM)
    tokenizer: Any
    pairs: list[Any]  # PreferencePair; alignlab's BatchOrder over them gives the steps' batches
    batch_size: int
    steps: int
    notes: list[str] = field(default_factory=list)


def imdb_inputs(n_pairs: int) -> tuple[Any, list[Any]]:
    """The tiny-S IMDb SFT policy and generated pairs of experiments/imdb_frontier.yaml (cached stages)."""
    from alignlab import stages
    from alignlab.data import cache_root
    from alignlab.experiment import load_experiment
    from alignlab.jobs.sources import read_rows
    from alignlab.sft import prepare_policy
    from alignlab.tasks import build_task

    exp = load_experiment(REPO / "experiments" / "imdb_frontier.yaml")
    cfg = next(run.cfg for run in exp.runs if run.method.name == "dpo")
    task = build_task(cfg.task, "experiments/imdb_frontier.yaml")
    root = cache_root()
    policy = prepare_policy(task, cfg.model, cfg.sft, cache=root, progress=False)
    judge = stages.gold_judge(task, cfg.sft.seed, root)
    train, _ = read_rows(cfg, task, policy, judge, root, unpaired=False)
    if len(train) < n_pairs:
        sys.exit(f"only {len(train)} training pairs; ask for fewer steps × batch")
    return policy, train[:n_pairs]


def in_step_order(pairs: list[Any], batch_size: int, steps: int, seed: int = 0) -> list[Any]:
    """The pairs rearranged so that taking them in sequence gives alignlab's batches (BatchOrder)."""
    order = BatchOrder(len(pairs), batch_size, seed)
    return [pairs[i] for s in range(steps) for i in order.rows(s)]


# ---------------------------------------------------------------------------------------------
# timing both sides the same way
# ---------------------------------------------------------------------------------------------


@dataclass
class Block:
    step_s: list[float]  # per step, warm-up dropped
    losses: list[float]
    tokens_per_step: float
    peak_mb: float


def per_step(ends: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(ends)]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _trl_clock() -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return Clock()


def trl_args(config_cls: Any, work: Work, out: str, **kwargs: Any) -> Any:
    return config_cls(
        output_dir=out,
        per_device_train_batch_size=work.batch_size,
        max_steps=work.steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch_fused",  # the Trainer's default with torch >= 2.8, and its fastest here
        max_grad_norm=GRAD_CLIP,
        train_sampling_strategy="sequential",  # the pairs are already in alignlab's step order
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_steps=1,
        disable_dropout=True,
        dataloader_num_workers=0,
        seed=0,
        max_length=None,
        **kwargs,
    )


def run_trl(make_trainer: Callable[[str, Any], Any], tokens: float, loss_key: str = "loss") -> tuple[Block, float]:
    """Build (outside the clock: tokenisation and the reference precompute) and train a TRL trainer."""
    reset_peak_rss()
    with tempfile.TemporaryDirectory() as out, quiet():
        clock = _trl_clock()
        t0 = time.perf_counter()
        trainer = make_trainer(out, clock)
        setup = time.perf_counter() - t0
        trainer.train()
    losses = [h[loss_key] for h in trainer.state.log_history if loss_key in h and "train_runtime" not in h]
    return Block(per_step(clock.ends)[1:], losses, tokens, peak_rss_mb()), setup


def run_alignlab(model: Any, step_fn: Callable[[Any], Any], work: Work, n_rows: int, tokens: float) -> Block:
    cfg = TrainConfig(
        steps=work.steps,
        batch_size=work.batch_size,
        optimizer="adamw",
        lr=LR,
        warmup_steps=0,
        grad_clip=GRAD_CLIP,
        eval_every=10**9,
        save_every=10**9,
        log_every=10**9,
        log_with=[],
        progress=False,
        seed=0,
        mixed_precision="no",
    )
    reset_peak_rss()
    with tempfile.TemporaryDirectory() as out:
        accelerator = make_accelerator(cfg, Path(out))
        rows = train_offline(model, step_fn(accelerator), n_rows, cfg, Path(out), accelerator)
    train = [r for r in rows if r["split"] == "train"]
    ends = [0.0] + [r["wall_s"] for r in train]
    return Block(per_step(ends)[1:], [r["loss"] for r in train], tokens, peak_rss_mb())


def real_tokens(batch: EncodedBatch) -> int:
    return int(batch.attention_mask.sum())


def ids_of(batch: EncodedBatch, row: int) -> list[int]:
    return batch.input_ids[row][batch.attention_mask[row].bool()].tolist()


def encoded(prompts: list[list[int]], completions: list[list[int]], pad: int) -> EncodedBatch:
    """Right-padded prompt + completion ids with the completion mask (the scoring core's input)."""
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    T = max(len(r) for r in rows)
    return EncodedBatch(
        torch.tensor([r + [pad] * (T - len(r)) for r in rows]),
        torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows]),
        torch.tensor(
            [
                [0] * len(p) + [1] * len(c) + [0] * (T - len(p) - len(c))
                for p, c in zip(prompts, completions, strict=True)
            ]
        ),
    )


def alignlab_rows(batch_size: int, steps: int) -> list[int]:
    """``at[k]``: the step-ordered row that alignlab's row k must hold for BatchOrder to give TRL's batches."""
    perm = [i for s in range(steps) for i in BatchOrder(batch_size * steps, batch_size, 0).rows(s)]
    at = [0] * len(perm)
    for j, k in enumerate(perm):
        at[k] = j
    return at


def tokenisation_note(name: str, ours: list[list[int]], theirs: list[list[int]]) -> str:
    differ = sum(a != b for a, b in zip(ours, theirs, strict=True))
    return (
        f"{name}: both sides train on TRL's token ids; alignlab's own encoding (prompt and completion "
        f"tokenised apart, so the boundary is exact) differs on {differ}/{len(ours)} sequences, where TRL "
        "tokenises prompt + completion together and a BPE merge crosses the boundary"
    )


def with_bos(tokenizer: Any, prompts: list[str]) -> list[str]:
    # alignlab's rows start with BOS (encode_completions); TRL's tokeniser adds none, so say it in text
    return [tokenizer.bos_token + p for p in prompts]


def objective_sides(
    name: str, work: Work, data: PairData | UnpairedData, batches: dict[str, EncodedBatch], make: Any
) -> tuple[Callable[[], Block], Callable[[], Block]]:
    """TRL's trainer (``make(out, clock)``) and alignlab's offline trainer on ``data``, whose
    reference log-probs (one per sequence of each of ``batches``) are computed once, untimed."""
    t0 = time.perf_counter()
    data.ref = {k: _sequence_sums(work.model, b, 64) for k, b in batches.items()}
    work.notes.append(f"{name} reference log-probs: alignlab {time.perf_counter() - t0:.1f} s (once; cached on disk)")
    tokens = sum(real_tokens(b) for b in batches.values()) / work.steps
    objective = get_objective(name)

    def trl_side() -> Block:
        block, setup = run_trl(make, tokens)
        work.notes.append(f"{name} reference log-probs: TRL {setup:.1f} s with its tokenisation (every trainer)")
        return block

    def ours() -> Block:
        step = lambda acc: objective_step(objective, objective.config(beta=BETA), data, acc)  # noqa: E731
        return run_alignlab(copy.deepcopy(work.model), step, work, len(data), tokens)

    return trl_side, ours


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------


def dpo_sides(work: Work, ordered: list[Any]) -> tuple[Callable[[], Block], Callable[[], Block]]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from alignlab.models import model_context

    B, S, tok = work.batch_size, work.steps, work.tokenizer
    dataset = Dataset.from_dict(
        {
            "prompt": with_bos(tok, [p.prompt for p in ordered]),
            "chosen": [p.chosen for p in ordered],
            "rejected": [p.rejected for p in ordered],
        }
    )

    def trainer(out: str, callbacks: list[Any], precompute: bool) -> Any:
        args = trl_args(
            DPOConfig,
            work,
            out,
            beta=BETA,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=64,
        )
        return DPOTrainer(
            model=copy.deepcopy(work.model),
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            callbacks=callbacks,
        )

    with tempfile.TemporaryDirectory() as out, quiet():
        ds = trainer(out, [], precompute=False).train_dataset  # TRL's tokenisation, in step order
    at = alignlab_rows(B, S)
    prompts = [ds["prompt_ids"][j] for j in at]
    data = PairData(
        [work.pairs[0]] * len(at),  # (texts unused: the batches are built from the ids)
        encoded(prompts, [ds["chosen_ids"][j] for j in at], tok.pad_token_id),
        encoded(prompts, [ds["rejected_ids"][j] for j in at], tok.pad_token_id),
        tok.pad_token_id,
    )
    own = PairData.build(tok, [ordered[j] for j in at], model_context(work.model))
    work.notes.append(
        tokenisation_note(
            "DPO",
            [ids_of(own.chosen, k) for k in range(len(at))] + [ids_of(own.rejected, k) for k in range(len(at))],
            [ids_of(data.chosen, k) for k in range(len(at))] + [ids_of(data.rejected, k) for k in range(len(at))],
        )
    )
    batches = {"chosen": data.chosen, "rejected": data.rejected}
    return objective_sides("dpo", work, data, batches, lambda out, clock: trainer(out, [clock], precompute=True))


# ---------------------------------------------------------------------------------------------
# KTO: each pair split in two (chosen desirable, rejected undesirable), a batch of rows per step
# ---------------------------------------------------------------------------------------------


def kto_sides(work: Work, ordered: list[Any]) -> tuple[Callable[[], Block], Callable[[], Block]]:
    """TRL estimates KTO's reference point z0 from each batch's completions rotated by one against
    its prompts; alignlab's own data uses a fixed seeded partner per row. Here alignlab is given
    TRL's rotation as the partners, so both compute the same z0 and the same losses."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    from alignlab.train.data import unpaired_from_pairs

    B, S, tok = work.batch_size, work.steps, work.tokenizer
    rows = unpaired_from_pairs(ordered)[: B * S]  # in step order: step s is rows[s*B:(s+1)*B]
    dataset = Dataset.from_dict(
        {
            "prompt": with_bos(tok, [r.prompt for r in rows]),
            "completion": [r.completion for r in rows],
            "label": [r.desirable for r in rows],
        }
    )

    def trainer(out: str, callbacks: list[Any], precompute: bool) -> Any:
        args = trl_args(
            KTOConfig, work, out, beta=BETA, precompute_ref_log_probs=precompute, precompute_ref_batch_size=64
        )
        return KTOTrainer(
            model=copy.deepcopy(work.model),
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            callbacks=callbacks,
        )

    with tempfile.TemporaryDirectory() as out, quiet():
        ds = trainer(out, [], precompute=False).train_dataset
    at = alignlab_rows(B, S)
    # TRL's KL row j is (x_j, y_{j-1}) within its batch, i.e. row j-1's completion after the next prompt
    following = [s * B + (q + 1) % B for s in range(S) for q in range(B)]
    data = UnpairedData(
        [rows[j] for j in at],
        encoded([ds["prompt_ids"][j] for j in at], [ds["completion_ids"][j] for j in at], tok.pad_token_id),
        encoded([ds["prompt_ids"][following[j]] for j in at], [ds["completion_ids"][j] for j in at], tok.pad_token_id),
        torch.tensor([rows[j].desirable for j in at]),
    )
    assert all(ds["KL_completion_ids"][following[j]] == ds["completion_ids"][j] for j in range(len(rows))), (
        "TRL's KL completions are not the in-batch rotation this benchmark mirrors"
    )
    batches = {"matched": data.completions, "mismatched": data.mismatched}
    return objective_sides("kto", work, data, batches, lambda out, clock: trainer(out, [clock], precompute=True))


# ---------------------------------------------------------------------------------------------
# reward model: Bradley–Terry on the same pairs, a scalar head on the same initial weights
# ---------------------------------------------------------------------------------------------


def rm_sides(work: Work, ordered: list[Any]) -> tuple[Callable[[], Block], Callable[[], Block]]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from alignlab.rewards.model import RewardModel
    from alignlab.train.reward_model import reward_model_step

    B, S, tok = work.batch_size, work.steps, work.tokenizer
    with tempfile.TemporaryDirectory() as tmp, quiet():
        work.model.save_pretrained(tmp)
        torch.manual_seed(0)
        classifier = AutoModelForSequenceClassification.from_pretrained(tmp, num_labels=1)
    classifier.config.pad_token_id = tok.pad_token_id
    dataset = Dataset.from_dict(
        {
            "chosen": with_bos(tok, [p.prompt + p.chosen for p in ordered]),
            "rejected": with_bos(tok, [p.prompt + p.rejected for p in ordered]),
        }
    )

    def trainer(out: str, callbacks: list[Any]) -> Any:
        args = trl_args(RewardConfig, work, out, center_rewards_coefficient=None)
        return RewardTrainer(
            model=copy.deepcopy(classifier),
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            callbacks=callbacks,
        )

    with tempfile.TemporaryDirectory() as out, quiet():
        ds = trainer(out, []).train_dataset
    at = alignlab_rows(B, S)
    # the reward reads the last token: the whole sequence is the "completion" (position 0 excepted)
    data = PairData(
        [work.pairs[0]] * len(at),
        encoded([ds["chosen_ids"][j][:1] for j in at], [ds["chosen_ids"][j][1:] for j in at], tok.pad_token_id),
        encoded([ds["rejected_ids"][j][:1] for j in at], [ds["rejected_ids"][j][1:] for j in at], tok.pad_token_id),
        tok.pad_token_id,
    )
    tokens = (real_tokens(data.chosen) + real_tokens(data.rejected)) / S

    def trl_side() -> Block:
        return run_trl(lambda out, clock: trainer(out, [clock]), tokens)[0]

    def ours() -> Block:
        rm = RewardModel(copy.deepcopy(classifier), tok)
        return run_alignlab(rm.model, lambda acc: reward_model_step(rm, data), work, len(data), tokens)

    return trl_side, ours


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------

SIDES = {"dpo": dpo_sides, "kto": kto_sides, "rm": rm_sides}


def compare(method: str, work: Work, rounds: int, show_losses: int) -> dict[str, Any]:
    ordered = in_step_order(work.pairs, work.batch_size, work.steps)
    trl_side, ours = SIDES[method](work, ordered)
    blocks: dict[str, list[Block]] = {"TRL": [], "alignlab": []}
    for r in range(rounds):
        pair = [("TRL", trl_side), ("alignlab", ours)]
        for name, side in pair if r % 2 == 0 else pair[::-1]:
            blocks[name].append(side())
            print(
                f"  round {r + 1}/{rounds} {name}: median {statistics.median(blocks[name][-1].step_s):.3f} s/step",
                file=sys.stderr,
                flush=True,
            )
    med = {k: statistics.median(s for b in v for s in b.step_s) for k, v in blocks.items()}
    tokens = blocks["alignlab"][0].tokens_per_step
    first = {k: v[0].losses[:show_losses] for k, v in blocks.items()}
    diff = max(abs(a - b) for a, b in zip(first["TRL"], first["alignlab"], strict=False))
    return {
        "method": method,
        "work": work.name,
        "median_s": med,
        "tokens": tokens,
        "losses": first,
        "max_loss_diff": diff,
        "peak_mb": {k: max(b.peak_mb for b in v) for k, v in blocks.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--presets", nargs="+", default=["tiny-s", "tiny-m"])
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps per block")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (the order flips each round)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs (KTO: rows) per step")
    parser.add_argument("--show-losses", type=int, default=5)
    parser.add_argument(
        "--full-head",
        action="store_true",
        help="alignlab without its completion-only LM head (the full forward): the fast path's 'before'",
    )
    args = parser.parse_args()
    if args.full_head:
        from alignlab.core import scoring

        scoring.COMPLETION_HEAD = False
    torch.manual_seed(0)
    policy, pairs = imdb_inputs(args.steps * args.batch_size)
    from transformers import AutoModelForCausalLM

    from alignlab.models import build_preset

    for preset in args.presets:
        if preset == "tiny-s":
            model = AutoModelForCausalLM.from_pretrained(policy.path)
        else:  # a fresh seeded init, saved so that it has a path (TRL reloads models by their path)
            model_dir = Path(tempfile.mkdtemp(prefix=f"vs_trl_{preset}_"))
            build_preset(preset, policy.tokenizer, seed=0).save_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir)
        params = sum(p.numel() for p in model.parameters())
        for method in args.methods:
            work = Work(f"{preset} ({params / 1e6:.1f}M)", model, policy.tokenizer, pairs, args.batch_size, args.steps)
            print(f"{method} at {work.name}: {args.rounds} rounds × {args.steps} steps each side", file=sys.stderr)
            res = compare(method, work, args.rounds, args.show_losses)
            m = res["median_s"]
            print(
                f"{method:<4} {work.name:<16} TRL {m['TRL']:.3f} s/step ({1 / m['TRL']:.2f} steps/s, "
                f"{res['tokens'] / m['TRL']:.0f} tok/s) | alignlab {m['alignlab']:.3f} s/step "
                f"({1 / m['alignlab']:.2f} steps/s, {res['tokens'] / m['alignlab']:.0f} tok/s) | "
                f"ratio {m['TRL'] / m['alignlab']:.2f}x | peak RSS TRL {res['peak_mb']['TRL']:.0f} MiB, "
                f"alignlab {res['peak_mb']['alignlab']:.0f} MiB"
            )
            for k, v in res["losses"].items():
                print(f"     losses {k:<8} " + " ".join(f"{x:.6f}" for x in v))
            print(f"     max |loss diff| over the first {args.show_losses} steps: {res['max_loss_diff']:.2e}")
            for note in work.notes:
                print(f"     {note}")


if __name__ == "__main__":
    main()
