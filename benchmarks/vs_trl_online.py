"""alignlab's online methods against TRL on the same work: RLOO vs ``RLOOTrainer``, GRPO vs ``GRPOTrainer``,
online DPO vs TRL's experimental ``OnlineDPOTrainer``, side by side in one process, alternating A/B.

    ALIGNLAB_DATA_DIR=../shared/data python benchmarks/vs_trl_online.py \
        [--methods rloo grpo online_dpo] [--steps 5] [--rounds 3] [--batch-size 32] [--agreement-steps 3]

The work is identical on both sides: the same initial weights (the cached tiny-S IMDb SFT policy of
``experiments/imdb_frontier.yaml``, as ``vs_trl.py`` uses), the same prompts in the same order (IMDb train
prefixes, ``batch / k`` of them per step), the same sampling (k samples per prompt, ≤ 48 new tokens,
temperature 1, no top-k/top-p, Hugging Face ``generate`` on both sides), the same batch (32 rollouts per
step), the same reward (alignlab's gold sentiment judge, wrapped as a TRL reward function), the same KL
coefficient and placement (RLOO: k1 summed over the completion in the reward; GRPO: β·k3 per token in the
loss; online DPO: DPO's β), one update per batch of rollouts (``num_iterations=1``; alignlab ``epochs: 1,
minibatches: 1``), AdamW at a constant learning rate with the same gradient clipping, dropout off, no gradient
checkpointing (TRL's default turns it on), float32.

Timing: each round trains ``--steps`` steps with TRL and then with alignlab (the order flips every round),
each from a fresh copy of the initial weights; a step's time is the wall clock between consecutive step ends
(generation, reward, reference and old log-probs, the update, logging: everything), the first step of each
block dropped as warm-up. Prints the median s/step, steps/s and rollout tokens/s (prompt + completion tokens
of the step's rollouts, each side's own) of each, the ratio, and the peak RSS. A third side, timed in the
same rounds, is alignlab with ``rollout.draw: inverse_cdf``: the same sampling distribution drawn by one
uniform per row and token instead of ``torch.multinomial`` (not the tokens ``generate`` would draw, so it is
reported beside the identical-stream comparison, not instead of it).

The two sides sample different completions (different random streams), so their training losses are not
comparable step by step. The loss functions are compared instead on identical rollouts (``agreement``): for
the first ``--agreement-steps`` steps alignlab collects a batch of rollouts with its current policy (rewards,
old and reference log-probs), computes its objective and gradient, and TRL's trainer, holding the same
weights, is fed the same rollouts through its own code (its ``generate`` call returns alignlab's tokens; its
tokenisation, reward call, log-probs, advantages and ``_compute_loss`` / ``training_step`` run unchanged).
Loss, advantages and every parameter's gradient are compared; then alignlab's optimiser takes the step and
TRL's model is given the new weights.

Machine load: OpenMP's default active wait collapses when the 2 cores are oversubscribed by other jobs (a
48-token rollout took 24 s instead of 1.7 s at load ~12), so this script sets ``OMP_WAIT_POLICY=PASSIVE``
(both sides run in this process, under the same setting) and prints the load average at start and end.
"""

from __future__ import annotations

import os

# before torch loads OpenMP: see the module docstring
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import contextlib
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from vs_trl import Block, _trl_clock, per_step, quiet  # noqa: E402

from alignlab.core.rollout import Draw  # noqa: E402
from alignlab.core.scoring import position_ids  # noqa: E402
from alignlab.jobs.job import peak_rss_mb, reset_peak_rss  # noqa: E402
from alignlab.objectives import get_objective  # noqa: E402
from alignlab.train.config import TrainConfig, build_optimizer, disable_dropout  # noqa: E402
from alignlab.train.data import BatchOrder  # noqa: E402
from alignlab.train.loop import make_accelerator  # noqa: E402
from alignlab.train.online import collect, train_online  # noqa: E402
from alignlab.train.online_batches import Costs, PolicyAndValue, RolloutConfig, Settings, minibatch_loss, units  # noqa: E402

LR = 1e-4
GRAD_CLIP = 1.0
MAX_NEW_TOKENS = 48
TEMPERATURE = 1.0
CLIP_RATIO = 0.2
PHASES = {"gen_s": "rollout", "score_s": "reward + old/reference log-probs", "update_s": "update"}


@dataclass(frozen=True)
class Spec:
    """One comparison: alignlab's objective and its knobs, k samples per prompt, the KL coefficient."""

    k: int
    kl_coef: float  # rollout.kl_coef (RLOO: in the reward, GRPO: in the loss); TRL's beta
    knobs: dict[str, Any] = field(default_factory=dict)  # the objective's config
    dpo_beta: float = 0.0  # online DPO's β (its KL is the DPO loss's own)


METHODS = {
    "rloo": Spec(k=4, kl_coef=0.05, knobs={"clip_ratio": CLIP_RATIO}),
    "grpo": Spec(k=4, kl_coef=0.04, knobs={"clip_ratio": CLIP_RATIO, "aggregation": "sequence-mean"}),
    "online_dpo": Spec(k=2, kl_coef=0.0, knobs={"beta": 0.1}, dpo_beta=0.1),
}


# ---------------------------------------------------------------------------------------------
# the shared inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class Work:
    method: str
    model: Any  # the initial weights (GPT2LMHeadModel, saved at model.name_or_path: TRL reloads its reference)
    tokenizer: Any
    judge: Any  # alignlab's gold judge: (prompts, completions) -> (B,) log-odds of positive
    prompts: list[str]  # alignlab's train prompts: BatchOrder over them gives ``steps``' prompts
    steps: list[list[str]]  # the prompts of each step, in order (TRL reads them sequentially)
    batch_size: int  # rollouts per step
    phases: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {"TRL": [], "alignlab": []})

    @property
    def spec(self) -> Spec:
        return METHODS[self.method]

    def prompt_tokens(self, step: int) -> int:
        """Prompt tokens (BOS included) of a step's rollouts: each prompt k times."""
        ids = self.tokenizer([self.tokenizer.bos_token + p for p in self.steps[step]])["input_ids"]
        return sum(len(i) for i in ids) * self.spec.k


def imdb_inputs(n_prompts: int) -> tuple[Any, Any, list[str]]:
    """The tiny-S IMDb SFT policy, the gold judge and train prompts of experiments/imdb_frontier.yaml."""
    from alignlab import stages
    from alignlab.data import cache_root
    from alignlab.experiment import load_experiment
    from alignlab.jobs.evaluation import eval_prompts
    from alignlab.models import model_context
    from alignlab.sft import prepare_policy
    from alignlab.tasks import build_task

    exp = load_experiment(REPO / "experiments" / "imdb_frontier.yaml")
    cfg = next(run.cfg for run in exp.planned if run.method.name == "dpo")
    task = build_task(cfg.task, "experiments/imdb_frontier.yaml")
    root = cache_root()
    policy = prepare_policy(task, cfg.model, cfg.sft, cache=root, progress=False)
    judge = stages.gold_judge(task, cfg.sft.seed, root)
    prompts = eval_prompts(task, policy.tokenizer, model_context(policy.model), MAX_NEW_TOKENS, 0, split="train")
    return policy, judge, prompts[:n_prompts]


def work_for(method: str, policy: Any, judge: Any, pool: list[str], batch_size: int, steps: int) -> Work:
    from transformers import AutoModelForCausalLM

    per_step = batch_size // METHODS[method].k
    prompts = pool[: per_step * steps]
    order = BatchOrder(len(prompts), per_step, 0)  # train_online's order (train.seed 0)
    ordered = [[prompts[i] for i in order.rows(s)] for s in range(steps)]
    model = AutoModelForCausalLM.from_pretrained(policy.path)
    return Work(method, model, policy.tokenizer, judge, prompts, ordered, batch_size)


class GoldReward:
    """alignlab's gold judge as a TRL reward function: texts in, floats out. TRL's prompts carry the BOS
    token as text (its tokenizer adds none; alignlab's rows start with BOS), which the judge never sees.
    Counts the rollout tokens (prompt + completion up to its first EOS) of each call."""

    __name__ = "gold"

    def __init__(self, judge: Any, tokenizer: Any) -> None:
        self.judge, self.tokenizer = judge, tokenizer
        self.tokens: list[int] = []

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_: Any) -> Any:
        bos, eos = self.tokenizer.bos_token, self.tokenizer.eos_token_id
        n_prompt = sum(len(i) for i in self.tokenizer(prompts)["input_ids"])
        n_completion = sum(ids.index(eos) + 1 if eos in ids else len(ids) for ids in completion_ids)
        self.tokens.append(n_prompt + n_completion)
        return self.judge([p.removeprefix(bos) for p in prompts], completions).tolist()


# ---------------------------------------------------------------------------------------------
# the two sides
# ---------------------------------------------------------------------------------------------


def trl_trainer(work: Work, out: str, callbacks: list[Any], reward: GoldReward) -> Any:
    """TRL's trainer for ``work.method`` at the shared settings, reading ``work.steps``' prompts in order."""
    from datasets import Dataset

    spec, tok = work.spec, work.tokenizer
    data = Dataset.from_dict({"prompt": [tok.bos_token + p for step in work.steps for p in step]})
    common: dict[str, Any] = dict(
        output_dir=out,
        max_steps=len(work.steps),
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch_fused",  # the Trainer's default with torch >= 2.8; alignlab's AdamW is fused too
        max_grad_norm=GRAD_CLIP,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_steps=1,
        disable_dropout=True,
        # TRL's configs default to gradient checkpointing (activations recomputed in the backward, to save
        # memory; OnlineDPOTrainer then also generates without the KV cache); alignlab does not checkpoint
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=0,
        temperature=TEMPERATURE,
    )
    model = copy.deepcopy(work.model)
    if work.method in ("rloo", "grpo"):
        grouped: dict[str, Any] = dict(
            per_device_train_batch_size=work.batch_size,  # rollouts per step; one generation batch per step
            num_generations=spec.k,
            max_completion_length=MAX_NEW_TOKENS,
            beta=spec.kl_coef,
            num_iterations=1,
            epsilon=CLIP_RATIO,
            shuffle_dataset=False,  # the prompts are already in alignlab's order
        )
        if work.method == "rloo":
            from trl import RLOOConfig, RLOOTrainer

            args: Any = RLOOConfig(normalize_advantages=False, **grouped, **common)
            return RLOOTrainer(
                model=model,
                reward_funcs=reward,
                args=args,
                train_dataset=data,
                processing_class=tok,
                callbacks=callbacks,
            )
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(
            loss_type="grpo",  # 1/|o_i| Σ_t, then the mean over samples: alignlab's sequence-mean
            scale_rewards="group",  # (r − mean_g) / (std_g + 1e-4): alignlab's grpo estimator
            use_bias_correction_kl=False,  # β k3 as in GRPO's Eq. 3 (TRL's default multiplies it by the ratio)
            **grouped,
            **common,
        )
        return GRPOTrainer(
            model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok, callbacks=callbacks
        )
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    args = OnlineDPOConfig(
        per_device_train_batch_size=work.batch_size // 2,  # prompts; two samples each
        max_new_tokens=MAX_NEW_TOKENS,
        beta=[spec.dpo_beta],
        loss_type="sigmoid",
        missing_eos_penalty=None,
        train_sampling_strategy="sequential",
        **common,
    )
    return OnlineDPOTrainer(
        model=model,
        ref_model=copy.deepcopy(work.model),
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=callbacks,
    )


def run_trl(work: Work) -> Block:
    reward = GoldReward(work.judge, work.tokenizer)
    reset_peak_rss()
    with tempfile.TemporaryDirectory() as out, quiet():
        clock = _trl_clock()
        trainer = trl_trainer(work, out, [clock], reward)  # (construction outside the clock)
        with timed_generate(trainer.model) as generating:
            trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    work.phases["TRL"].append({"generate": statistics.median(generating[1:])})
    return Block(per_step(clock.ends)[1:], losses, statistics.mean(reward.tokens[1:]), peak_rss_mb())


@contextlib.contextmanager
def timed_generate(model: Any) -> Iterator[list[float]]:
    """The seconds of each ``model.generate`` call (TRL's sampling), for the phase breakdown."""
    spent: list[float] = []
    generate = model.generate

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = generate(*args, **kwargs)
        spent.append(time.perf_counter() - t0)
        return out

    model.generate = timed
    try:
        yield spent
    finally:
        del model.generate


def alignlab_settings(work: Work, draw: Draw = "multinomial") -> tuple[Any, Any, Settings, TrainConfig]:
    objective = get_objective(work.method)
    ocfg = objective.config(**work.spec.knobs)
    rc = RolloutConfig(
        draw=draw,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        samples_per_prompt=work.spec.k,
        epochs=1,
        minibatches=1,
        kl_coef=work.spec.kl_coef,
        generation_batch_size=work.batch_size,
    )
    assert objective.needs.online is not None
    cfg = TrainConfig(
        steps=len(work.steps),
        batch_size=work.batch_size,
        optimizer="adamw",
        lr=LR,
        warmup_steps=0,
        schedule="constant",
        grad_clip=GRAD_CLIP,
        save_every=10**9,
        log_every=10**9,
        log_with=[],
        progress=False,
        seed=0,
        mixed_precision="no",
    )
    return objective, ocfg, Settings.resolve(rc, objective.needs.online), cfg


def run_alignlab(work: Work, side: str = "alignlab", draw: Draw = "multinomial") -> Block:
    objective, ocfg, s, cfg = alignlab_settings(work, draw)
    reset_peak_rss()
    with tempfile.TemporaryDirectory() as out:
        accelerator = make_accelerator(cfg, Path(out))
        core = PolicyAndValue(copy.deepcopy(work.model), temperature=TEMPERATURE)
        rows = train_online(
            core, copy.deepcopy(work.model), work.tokenizer, work.prompts, work.judge, objective, ocfg, s, cfg,
            Path(out), accelerator,
        )  # fmt: skip
    train = [r for r in rows if r["split"] == "train"]
    tokens = [work.prompt_tokens(i) + r["length"] * work.batch_size for i, r in enumerate(train)]
    ends = [0.0] + [r["wall_s"] for r in train]
    work.phases.setdefault(side, []).append({k: statistics.median(r[k] for r in train[1:]) for k in PHASES})
    return Block(per_step(ends)[1:], [r["loss"] for r in train], statistics.mean(tokens[1:]), peak_rss_mb())


# ---------------------------------------------------------------------------------------------
# the loss functions on identical rollouts
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def replayed(model: Any, completions: list[list[int]], prompts: list[list[int]], pad: int) -> Iterator[None]:
    """``model.generate`` returns the given completions after TRL's own prompt ids (checked to be
    alignlab's): TRL's code runs unchanged on alignlab's rollouts."""

    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        got = [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask, strict=True)]
        assert got == prompts, "TRL tokenised the prompts differently from alignlab"
        width = max(len(c) for c in completions)
        tail = torch.tensor([c + [pad] * (width - len(c)) for c in completions])
        return torch.cat([input_ids, tail], dim=1)

    model.generate = generate
    try:
        yield
    finally:
        del model.generate


@contextlib.contextmanager
def counted_positions(*models: Any) -> Iterator[None]:
    """TRL's forwards given position ids counted over real tokens, as ``generate`` (and alignlab's scoring)
    count them. Without this TRL's training forwards number a left-padded row's positions from the padding:
    for a model with absolute position embeddings (GPT-2) its log-probs then differ from the sampler's."""
    saved = [m.forward for m in models]
    for m, forward in zip(models, saved, strict=True):

        def with_positions(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
            if kwargs.get("position_ids") is None and kwargs.get("attention_mask") is not None:
                kwargs["position_ids"] = position_ids(kwargs["attention_mask"])
            return _forward(*args, **kwargs)

        m.forward = with_positions
    try:
        yield
    finally:
        for m, forward in zip(models, saved, strict=True):
            m.forward = forward


def rollout_lists(exp: Any) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, completion ids) of each row of an alignlab rollout, padding removed."""
    seqs = exp.sequences
    real, comp = seqs.attention_mask.bool(), seqs.completion_mask.bool()
    prompts = [ids[r & ~c].tolist() for ids, r, c in zip(seqs.input_ids, real, comp, strict=True)]
    return prompts, [ids[c].tolist() for ids, c in zip(seqs.input_ids, comp, strict=True)]


def trl_loss(work: Work, trainer: Any, exp: Any, step_prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
    """TRL's loss (and gradient, left on ``trainer.model``) on alignlab's rollouts ``exp``."""
    tok, k = work.tokenizer, work.spec.k
    prompt_ids, completion_ids = rollout_lists(exp)
    texts = [tok.bos_token + p for p in step_prompts]
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    if work.method == "online_dpo":
        # TRL's rows: every prompt's first sample, then every prompt's second (``prompt_ids.repeat(2, 1)``)
        n = len(step_prompts)
        rows = [2 * (j % n) + j // n for j in range(2 * n)]
        with replayed(
            trainer.model, [completion_ids[r] for r in rows], [prompt_ids[r] for r in rows], tok.pad_token_id
        ):
            loss = trainer.training_step(trainer.model, {"prompt": texts})
        return loss, {}
    trainer.current_gradient_accumulation_steps = 1
    with replayed(trainer.model, completion_ids, prompt_ids, tok.pad_token_id):
        batch = trainer._generate_and_score_completions([{"prompt": t} for t in texts for _ in range(k)])
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {"advantages": batch["advantages"]}


def grad_gap(ours: Any, theirs: Any) -> tuple[float, float]:
    """(max |∇ours − ∇TRL|, max |∇ours|) over every parameter."""
    gap = scale = 0.0
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        ga = a.grad if a.grad is not None else torch.zeros_like(a)
        gb = b.grad if b.grad is not None else torch.zeros_like(b)
        gap, scale = max(gap, float((ga - gb).abs().max())), max(scale, float(ga.abs().max()))
    return gap, scale


def agreement(work: Work, steps: int) -> dict[str, Any]:
    """The first ``steps`` steps of alignlab's online iteration, with TRL's loss on the same rollouts and
    weights at each (see the module docstring)."""
    objective, ocfg, s, cfg = alignlab_settings(work)
    policy, reference = copy.deepcopy(work.model), copy.deepcopy(work.model)
    disable_dropout(policy)
    disable_dropout(reference)
    reference.requires_grad_(False).eval()
    core = PolicyAndValue(policy, temperature=TEMPERATURE)
    optimizer = build_optimizer(policy.parameters(), cfg)
    costs = Costs.of(core, reference, work.judge)
    with tempfile.TemporaryDirectory() as out, quiet():
        trainer = trl_trainer(work, out, [], GoldReward(work.judge, work.tokenizer))
    theirs = trainer.model
    trl_models = [theirs] + ([trainer.ref_model] if trainer.ref_model is not None else [])
    res: dict[str, Any] = {"ours": [], "trl": [], "loss": 0.0, "grad": 0.0, "grad_scale": 0.0, "adv": 0.0, "ties": 0}
    for step in range(steps):
        prompts = work.steps[step]
        exp = collect(policy, core, reference, work.tokenizer, prompts, work.judge, work.spec.kl_coef, s,
                      step * 1000, costs, {})  # fmt: skip
        res["ties"] += int(exp.stats.get("ties", 0))
        optimizer.zero_grad(set_to_none=True)
        mine, _, _ = minibatch_loss(policy, core, exp, list(range(units(exp))), objective, ocfg, s, work.spec.kl_coef)
        loss_ours = mine.losses.mean()
        loss_ours.backward()
        ours = float(loss_ours.detach())
        theirs.load_state_dict(policy.state_dict())
        if step == 0:  # TRL's own position ids, once: the size of that convention
            with quiet():
                own, _ = trl_loss(work, trainer, exp, prompts)
            res["own_positions"] = (abs(ours - float(own)), *grad_gap(policy, theirs))
        with counted_positions(*trl_models), quiet():
            loss, extra = trl_loss(work, trainer, exp, prompts)
        res["ours"].append(ours)
        res["trl"].append(float(loss))
        res["loss"] = max(res["loss"], abs(ours - float(loss)))
        gap, scale = grad_gap(policy, theirs)
        res["grad"], res["grad_scale"] = max(res["grad"], gap), max(res["grad_scale"], scale)
        if "advantages" in extra:
            assert exp.advantages is not None
            mask = exp.sequences.completion_mask.float()
            per_row = (exp.advantages * mask).sum(-1) / mask.sum(-1)
            res["adv"] = max(res["adv"], float((per_row - extra["advantages"]).abs().max()))
        torch.nn.utils.clip_grad_norm_(policy.parameters(), GRAD_CLIP)
        optimizer.step()
    return res


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def old_logps_forward() -> Iterator[None]:
    """alignlab as it was before ``Settings.old_logps_from_update``: the rollouts' old log-probs from a
    forward of their own, whatever the update does."""
    fast = Settings.old_logps_from_update
    Settings.old_logps_from_update = property(lambda self: False)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        Settings.old_logps_from_update = fast  # type: ignore[method-assign]


def run_alignlab_before(work: Work) -> Block:
    with old_logps_forward():
        return run_alignlab(work, side=BEFORE)


def run_alignlab_inverse_cdf(work: Work) -> Block:
    return run_alignlab(work, side=INVERSE_CDF, draw="inverse_cdf")


BEFORE = "alignlab, old log-probs forward"
INVERSE_CDF = "alignlab, rollout.draw inverse_cdf"


def compare(work: Work, rounds: int, before_after: bool) -> dict[str, Any]:
    sides: list[tuple[str, Callable[[Work], Block]]] = [
        ("TRL", run_trl),
        ("alignlab", run_alignlab),
        (INVERSE_CDF, run_alignlab_inverse_cdf),
    ]
    if before_after:
        sides.append((BEFORE, run_alignlab_before))
    blocks: dict[str, list[Block]] = {name: [] for name, _ in sides}
    for r in range(rounds):
        for name, side in sides if r % 2 == 0 else sides[::-1]:
            blocks[name].append(side(work))
            print(
                f"  round {r + 1}/{rounds} {name}: median {statistics.median(blocks[name][-1].step_s):.3f} s/step",
                file=sys.stderr,
                flush=True,
            )
    return {
        "median_s": {k: statistics.median(s for b in v for s in b.step_s) for k, v in blocks.items()},
        "tokens": {k: statistics.mean(b.tokens_per_step for b in v) for k, v in blocks.items()},
        "peak_mb": {k: max(b.peak_mb for b in v) for k, v in blocks.items()},
        "block_medians": {k: [statistics.median(b.step_s) for b in v] for k, v in blocks.items()},
    }


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=5, help="steps per block (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (the order flips each round)")
    parser.add_argument("--batch-size", type=int, default=32, help="rollouts per step")
    parser.add_argument("--agreement-steps", type=int, default=3, help="steps of the loss comparison")
    parser.add_argument(
        "--before-after",
        action="store_true",
        help="GRPO: also time alignlab with the rollouts' own old log-probs forward (before old_logps_from_update)",
    )
    args = parser.parse_args()
    t0 = time.time()
    print(f"load at start: {load()}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    torch.manual_seed(0)
    most = max(args.batch_size // METHODS[m].k for m in args.methods) * args.steps
    policy, judge, pool = imdb_inputs(most)
    for method in args.methods:
        work = work_for(method, policy, judge, pool, args.batch_size, args.steps)
        spec = work.spec
        print(f"{method}: {args.rounds} rounds × {args.steps} steps each side", file=sys.stderr, flush=True)
        agree = agreement(work, args.agreement_steps)
        res = compare(work, args.rounds, args.before_after and method == "grpo")
        m, tok = res["median_s"], res["tokens"]
        print(
            f"{method:<10} k={spec.k} batch={args.batch_size} | TRL {m['TRL']:.3f} s/step ({1 / m['TRL']:.3f} steps/s, "
            f"{tok['TRL'] / m['TRL']:.0f} tok/s) | alignlab {m['alignlab']:.3f} s/step ({1 / m['alignlab']:.3f} "
            f"steps/s, {tok['alignlab'] / m['alignlab']:.0f} tok/s) | ratio {m['TRL'] / m['alignlab']:.2f}x | "
            f"peak RSS TRL {res['peak_mb']['TRL']:.0f} MiB, alignlab {res['peak_mb']['alignlab']:.0f} MiB"
        )
        print(
            "     block medians s/step: "
            + "; ".join(f"{k} " + " ".join(f"{x:.3f}" for x in v) for k, v in res["block_medians"].items())
        )
        print(f"     rollout tokens/step: TRL {tok['TRL']:.0f}, alignlab {tok['alignlab']:.0f}")
        ph = {side: {k: statistics.median(p[k] for p in v) for k in v[0]} for side, v in work.phases.items()}
        print(
            f"     phases, median s/step: TRL generate {ph['TRL']['generate']:.3f} (the rest "
            f"{m['TRL'] - ph['TRL']['generate']:.3f}); alignlab "
            + ", ".join(f"{name} {ph['alignlab'][k]:.3f}" for k, name in PHASES.items())
        )
        print(
            f"     {INVERSE_CDF} (the same law, another random stream): {m[INVERSE_CDF]:.3f} s/step, ratio "
            f"{m['TRL'] / m[INVERSE_CDF]:.2f}x TRL; phases "
            + ", ".join(f"{name} {ph[INVERSE_CDF][k]:.3f}" for k, name in PHASES.items())
        )
        if BEFORE in m:
            print(
                f"     before/after (alignlab alone): {BEFORE} {m[BEFORE]:.3f} s/step -> alignlab "
                f"{m['alignlab']:.3f} s/step ({m[BEFORE] / m['alignlab']:.2f}x; TRL/before "
                f"{m['TRL'] / m[BEFORE]:.2f}x); phases before "
                + ", ".join(f"{name} {ph[BEFORE][k]:.3f}" for k, name in PHASES.items())
            )
        print(
            f"     same rollouts, losses over {args.agreement_steps} steps: alignlab "
            + " ".join(f"{x:.7f}" for x in agree["ours"])
        )
        print("                                           TRL      " + " ".join(f"{x:.7f}" for x in agree["trl"]))
        print(
            f"     max |loss diff| {agree['loss']:.2e}, max |grad diff| {agree['grad']:.2e} (max |grad| "
            f"{agree['grad_scale']:.2e})"
            + (f", max |advantage diff| {agree['adv']:.2e}" if agree["adv"] else "")
            + f", ties dropped by alignlab {agree['ties']}"
        )
        own = agree["own_positions"]
        print(
            f"     with TRL's own position ids (left-padded rows numbered from the padding), step 1: |loss diff| "
            f"{own[0]:.2e}, max |grad diff| {own[1]:.2e}"
        )
    print(f"load at end: {load()}")
    print(f"wall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
