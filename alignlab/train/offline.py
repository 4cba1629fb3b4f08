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
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignlab import interrupts
from alignlab.objectives import Objective, ObjectiveConfig, ObjectiveError
from alignlab.objectives.base import LossOutput
from alignlab.train.config import TrainConfig, build_optimizer, build_scheduler, check_batch, disable_dropout
from alignlab.train.data import BatchOrder, PairData, UnpairedData, shard
from alignlab.train.loop import RunLoop, mean_over_processes

StepFn = Callable[[torch.nn.Module, list[int]], LossOutput]


def objective_step(
    objective: Objective, cfg: ObjectiveConfig, data: PairData | UnpairedData, accelerator: Any
) -> StepFn:
    """The step function of a registry objective over ``data``, chosen by its needs."""
    if objective.needs.data == "paired":
        assert isinstance(data, PairData)
        return lambda model, rows: objective(data.logps(model, rows, objective.needs), cfg)
    if objective.needs.data == "unpaired":
        assert isinstance(data, UnpairedData)
        return lambda model, rows: objective(
            data.logps(model, rows, lambda x: mean_over_processes(accelerator, x)), cfg
        )
    raise ValueError(
        f"{objective.name} needs {objective.needs.data} data: the offline trainer takes paired or unpaired"
    )


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
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``cfg.steps`` steps of ``step_fn`` over ``n_rows`` rows; resumes from ``out_dir``.

    Returns the metric rows (also in ``out_dir/metrics.jsonl``); the final model is the last
    checkpoint's. ``evaluate(unwrapped_model)`` runs after the steps of
    :func:`~alignlab.train.config.eval_steps` (step 0 and the last among them).
    """
    check_batch(cfg, accelerator.num_processes)
    order = BatchOrder(n_rows, cfg.batch_size, cfg.seed)
    if cfg.disable_dropout:
        disable_dropout(model)
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    loop = RunLoop(out_dir, {"model": model}, optimizer, scheduler, accelerator, cfg, extra)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    run_eval = None if evaluate is None else (lambda: evaluate(accelerator.unwrap_model(wrapped)))
    if not loop.resumed:
        loop.periodic(0, run_eval)
    wrapped.train()
    bar = tqdm(
        total=cfg.steps, initial=loop.start_step, desc=name, disable=not (cfg.progress and accelerator.is_main_process)
    )
    with interrupts.at_step_boundaries():  # SIGTERM / Ctrl-C: finish the step, checkpoint, stop
        for step in range(loop.start_step, cfg.steps):
            t0 = time.time()
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
            loop.guard(step, f"{name} loss", totals["loss"])
            grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip or float("inf"))
            loop.guard(step, "gradient norm", torch.as_tensor(grad_norm).detach())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # 4. metrics, evaluation, checkpoint
            row = {k: float(mean_over_processes(accelerator, v)) for k, v in totals.items()}
            row.update(grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0], step_s=round(time.time() - t0, 4))
            row["wall_s"] = round(time.time() - loop.t0, 4)  # since this process started the run
            loop.log.log({"step": step + 1, "split": "train", **order.position(step), **row})
            bar.update()
            shown = {"loss": row["loss"]} | {k: row[k] for k in ("reward_accuracy", "accuracy", "margins") if k in row}
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
            loop.periodic(step + 1, run_eval)
    bar.close()
    return loop.log.rows
