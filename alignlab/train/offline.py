"""The offline trainer: one loop for every offline objective, and for reward models.

It is driven by what the objective declares (:class:`~alignlab.objectives.base.Needs`), never by
its name: paired objectives get :class:`~alignlab.objectives.base.PairedLogps` (token-level if
they ask), unpaired ones (KTO) get :class:`~alignlab.objectives.base.UnpairedLogps`; reference
log-probs are cached once, and not computed at all for reference-free objectives.

The loop itself (:func:`train_offline`) only knows a step function ``rows -> LossOutput``, so the
reward model's Bradley–Terry training runs through the same optimiser, schedule, accumulation,
clipping, checkpoints, resume, logging and NaN guard. One optimiser step, in numbered parts:

1. the step's global rows (a pure function of seed and step), this process's slice of them, cut
   into ``grad_accum`` micro-batches;
2. per micro-batch: the loss (one forward for chosen + rejected), ``backward`` of its share —
   gradients synchronised across processes on the last micro-batch only;
3. the NaN guard, gradient clipping, the optimiser and scheduler steps;
4. metrics averaged over micro-batches and processes; evaluation, flush and checkpoint when due.

Compute (policy forward-equivalent tokens, :mod:`alignlab.train.loop`), from the step function's
:meth:`ObjectiveStep.compute_tokens`, with |s| the real tokens of prompt + completion:

- paired objectives: 3 (|x y_w| + |x y_l|) per pair of a step (forward + backward of both);
- KTO: 3 |x y| + |x' y| per row (its mismatched twin: a policy forward without gradient);
- once before step 1, when the objective needs π_ref: one forward of π_ref (the SFT policy: the
  same network, ratio 1) over every training row, for the cache of reference log-probs — counted
  even when the cache is read from disk, since the run on its own would compute it.

A step function without ``compute_tokens`` (the reward model's) leaves the rows without it.

A stateful objective (``Needs.state``, :class:`~alignlab.objectives.base.ObjectiveState`; β-DPO)
has its state kept here, in :class:`RunningState`: moved by every training micro-batch before its
loss (averaged over processes), read but never moved by held-out evaluations, saved in every
checkpoint under ``objective_state`` and restored on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from alignlab import interrupts
from alignlab.objectives import Objective, ObjectiveConfig, ObjectiveError
from alignlab.objectives.base import LossOutput, ObjectiveState, PairedLogps
from alignlab.train.config import (
    TrainConfig,
    build_optimizer,
    build_scheduler,
    check_batch,
    disable_dropout,
    enable_gradient_checkpointing,
)
from alignlab.train.data import BatchOrder, PairData, UnpairedData, shard
from alignlab.train.loop import RunLoop, mean_over_processes

StepFn = Callable[[torch.nn.Module, list[int]], LossOutput]


class RunningState:
    """The running state of a stateful objective, held by the trainer (see the module docstring).

    Args:
        spec: the objective's declared :class:`ObjectiveState`.
        cfg: the objective's config.
        reduce_mean: averages a tensor over processes (the identity on one).
    """

    def __init__(self, spec: ObjectiveState, cfg: ObjectiveConfig, reduce_mean: Callable[[Tensor], Tensor]) -> None:
        self.spec, self.cfg, self.reduce_mean = spec, cfg, reduce_mean
        self.tensors: dict[str, Tensor] = spec.init(cfg)

    def advance(self, batch: PairedLogps) -> dict[str, Tensor]:
        """The state moved by a training batch (the one its loss sees); kept as the current state."""
        with torch.no_grad():
            moved = self.spec.update(self.tensors, batch, self.cfg)
        self.tensors = {name: self.reduce_mean(value.detach()) for name, value in moved.items()}
        return self.tensors

    def saved(self) -> dict[str, Any]:
        """The state as ``state.json`` holds it: each tensor's dtype and values (JSON floats round-trip exactly)."""
        return {
            name: {"dtype": str(value.dtype).removeprefix("torch."), "values": value.tolist()}
            for name, value in self.tensors.items()
        }

    def load(self, saved: dict[str, Any]) -> None:
        """Restore what :meth:`saved` wrote."""
        self.tensors = {
            name: torch.tensor(entry["values"], dtype=getattr(torch, entry["dtype"])) for name, entry in saved.items()
        }


@dataclass(frozen=True)
class ObjectiveStep:
    """The step function of a registry objective over ``data``, and what its steps cost.

    ``running``: the objective's running state, if it declares one; ``advance``: whether calls move
    it (training) or only read it (a held-out evaluation, :meth:`on`).
    """

    objective: Objective
    cfg: ObjectiveConfig
    data: PairData | UnpairedData
    accelerator: Any
    running: RunningState | None = None
    advance: bool = True

    def __call__(self, model: torch.nn.Module, rows: list[int]) -> LossOutput:
        if isinstance(self.data, PairData):
            batch = self.data.logps(model, rows, self.objective.needs)
            if self.running is not None:
                state = self.running.advance(batch) if self.advance else self.running.tensors
                batch = dataclasses.replace(batch, state=state)
            return self.objective(batch, self.cfg)
        return self.objective(
            self.data.logps(model, rows, lambda x: mean_over_processes(self.accelerator, x)), self.cfg
        )

    def on(self, data: PairData | UnpairedData) -> ObjectiveStep:
        """The same objective on other rows (held-out pairs), reading this step's running state, never moving it."""
        return dataclasses.replace(self, data=data, advance=False)

    def _tokens(self) -> tuple[Tensor, Tensor]:
        """(trained, forward-only) real tokens per row: (|x y_w| + |x y_l|, 0) for pairs, (|x y|, |x' y|) for KTO."""
        if isinstance(self.data, PairData):
            trained = self.data.chosen.attention_mask.sum(-1) + self.data.rejected.attention_mask.sum(-1)
            return trained, torch.zeros_like(trained)
        return self.data.completions.attention_mask.sum(-1), self.data.mismatched.attention_mask.sum(-1)

    def compute_tokens(self, rows: list[int]) -> float:
        """Policy forward-equivalent tokens of one step over ``rows``: 3 per trained token, 1 per forward-only one."""
        trained, forward = self._tokens()
        return float(3 * trained[rows].sum() + forward[rows].sum())

    def reference_tokens(self) -> float:
        """The forward of π_ref over every row that fills the reference cache (0 for a reference-free objective)."""
        if not self.objective.needs.reference:
            return 0.0
        trained, forward = self._tokens()
        return float(trained.sum() + forward.sum())


def objective_step(
    objective: Objective, cfg: ObjectiveConfig, data: PairData | UnpairedData, accelerator: Any
) -> ObjectiveStep:
    """The step function of a registry objective over ``data``, chosen by its needs."""
    kind = {"paired": PairData, "unpaired": UnpairedData}.get(objective.needs.data)
    if kind is None:
        raise ValueError(
            f"{objective.name} needs {objective.needs.data} data: the offline trainer takes paired or unpaired"
        )
    assert isinstance(data, kind)
    if objective.needs.scores and isinstance(data, PairData) and data.scores is None:
        raise ValueError(f"objective {objective.name!r} needs scores of the chosen and rejected completions: none")
    spec = objective.needs.state
    running = None if spec is None else RunningState(spec, cfg, lambda x: mean_over_processes(accelerator, x))
    return ObjectiveStep(objective, cfg, data, accelerator, running)


@torch.no_grad()
def evaluate_step(step_fn: StepFn, model: torch.nn.Module, n: int, batch_size: int) -> dict[str, float]:
    """Mean loss and mean of every metric over rows 0..n−1 (e.g. the held-out pairs)."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, n, batch_size):
        rows = list(range(start, min(start + batch_size, n)))
        out = step_fn(model, rows)
        for name, value in {"loss": out.losses, **out.metrics}.items():
            totals[name] = totals.get(name, 0.0) + float(value.float().mean()) * len(rows)
    model.train(was_training)
    return {name: total / n for name, total in totals.items()}


def _micro_batches(cfg: TrainConfig, order: BatchOrder, step: int, accelerator: Any) -> list[list[int]]:
    rows = shard(order.rows(step), accelerator.process_index, accelerator.num_processes)
    return [shard(rows, i, cfg.grad_accum) for i in range(cfg.grad_accum)]


def train_offline(
    model: torch.nn.Module,
    step_fn: StepFn,
    n_rows: int,
    cfg: TrainConfig,
    out_dir: Path,
    accelerator: Any,
    *,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    name: str = "train",
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``cfg.steps`` steps of ``step_fn`` over ``n_rows`` rows; resumes from ``out_dir``.

    Returns the metric rows (also in ``out_dir/metrics.jsonl``); the final model is the last
    checkpoint's (each checkpoint is ``model`` with ``tokenizer``, loadable by ``from_pretrained``).
    ``evaluate(unwrapped_model)`` runs after the steps of :func:`~alignlab.train.config.eval_steps`
    (step 0 and the last among them).
    """
    check_batch(cfg, accelerator.num_processes)
    order = BatchOrder(n_rows, cfg.batch_size, cfg.seed)
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    loop = RunLoop(out_dir, model, optimizer, scheduler, accelerator, cfg, tokenizer=tokenizer)
    wrapped, optimizer = loop.prepare(model, optimizer)  # and restored from the checkpoint, if any
    run_eval = None if evaluate is None else (lambda: evaluate(accelerator.unwrap_model(wrapped)))
    cost = step_fn if isinstance(step_fn, ObjectiveStep) else None
    running = cost.running if cost is not None else None
    if running is not None and loop.resumed:
        running.load(loop.state["objective_state"])

    def state() -> dict[str, Any] | None:
        return None if running is None else {"objective_state": running.saved()}

    if cost is None:
        loop.compute_tokens = None  # a step function that does not say its cost (the reward model's)
    # SIGTERM / Ctrl-C: finish the step (or step 0's evaluation), checkpoint, stop
    with interrupts.at_step_boundaries():
        if not loop.resumed:
            loop.add_compute(cost.reference_tokens() if cost is not None else 0.0)  # the reference cache, once
            loop.periodic(0, run_eval, state())
        wrapped.train()
        bar = tqdm(
            total=cfg.steps,
            initial=loop.start_step,
            desc=name,
            disable=not (cfg.progress and accelerator.is_main_process),
        )
        for step in range(loop.start_step, cfg.steps):
            t0 = time.time()
            before = state()  # the objective's state after the last good step (what the NaN guard saves)
            # 1. the rows of this step on this process, in micro-batches
            micro = _micro_batches(cfg, order, step, accelerator)
            totals: dict[str, torch.Tensor] = {}
            for i, rows in enumerate(micro):
                # 2. loss and backward; gradients are all-reduced on the last micro-batch only
                sync = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(wrapped)
                with sync, accelerator.autocast():
                    try:
                        out = step_fn(wrapped, rows)
                    except ObjectiveError as err:  # a plugin's loss: say at which step
                        raise err.at(f"step {step + 1}") from err.__cause__
                    loss = out.losses.mean()
                    accelerator.backward(loss / len(micro))
                for key, value in {"loss": loss, **out.metrics}.items():
                    totals[key] = totals.get(key, 0) + value.detach().float().mean() / len(micro)
            # 3. guard (one check per step: the weights are still the last good ones), clip, step
            loop.guard(step, f"{name} loss", totals["loss"], before)
            grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip or float("inf"))
            loop.guard(step, "gradient norm", torch.as_tensor(grad_norm).detach(), before)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # 4. metrics, evaluation, checkpoint
            row = {k: float(mean_over_processes(accelerator, v)) for k, v in totals.items()}
            row.update(grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0], step_s=round(time.time() - t0, 4))
            row["wall_s"] = round(time.time() - loop.t0, 4)  # since this process started the run
            if cost is not None:  # the step's global rows (every process's), counted after the step completed
                row["step_tokens"] = cost.compute_tokens(order.rows(step))
                loop.add_compute(row["step_tokens"])
            row.update(loop.compute())
            loop.log.log({"step": step + 1, "split": "train", **order.position(step), **row})
            bar.update()
            shown = {"loss": row["loss"]} | {k: row[k] for k in ("reward_accuracy", "accuracy", "margins") if k in row}
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
            loop.periodic(step + 1, run_eval, state())
    bar.close()
    return loop.log.rows
