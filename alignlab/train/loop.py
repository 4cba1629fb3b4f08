"""What every trainer's loop shares: the accelerator, resume, checkpoints, metrics, the NaN guard,
and the count of training compute.

Compute is counted in **policy forward-equivalent tokens**: one token through one forward pass of
the policy is 1. A pass of another network costs its parameter count relative to the policy's
(a forward is ≈ 2·N FLOPs per token, Kaplan et al. 2020, §2.1), and a backward pass twice its
forward, so a token trained on costs 3 × N_net / N_policy. Tokens are the real (non-padding) tokens
of prompt + completion; generating counts each prompt and generated token once (one forward with
the KV cache). Attention's share, padding and the LM head's skipped prompt positions are not
modelled. Evaluation is not counted, nor the stages every method shares or that come before it
(tokenizer, SFT, the reward model's training) or the gold judge (a linear n-gram classifier that
stands in for the environment's reward). Each trainer says what it adds (``compute_tokens`` of
:mod:`alignlab.train.offline` and :mod:`alignlab.train.online`); :class:`RunLoop` keeps the running
total, writes it into every train and eval row as ``compute_tokens`` and carries it across resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignlab import interrupts
from alignlab.errors import AlignlabError
from alignlab.interrupts import Interrupted
from alignlab.io import warn
from alignlab.objectives import ObjectiveError
from alignlab.progress import say
from alignlab.train.checkpoint import load_checkpoint, save_checkpoint
from alignlab.train.config import TrainConfig, eval_steps, resolve_mixed_precision
from alignlab.train.state import MetricsLog, clear_checkpoint_temps, latest_checkpoint, read_state


class TrainingDiverged(AlignlabError):
    """A loss or gradient became NaN or infinite; the last good state was saved first."""


def make_accelerator(cfg: TrainConfig, out_dir: Path) -> Any:
    """An ``accelerate.Accelerator`` for this run: the device, mixed precision, trackers under ``out_dir``.

    Without CUDA the accelerator runs on CPU, and under ``accelerate launch``/``torchrun`` its
    processes talk over gloo. An FSDP launch config then runs as plain DDP (accelerate 1.16 selects
    FSDP only on an accelerator; tests/test_fsdp.py): the main process says so in one warning line.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        log_with=list(cfg.log_with) or None,
        project_dir=str(out_dir),
    )
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_asked and accelerator.is_main_process and "FSDP" not in str(accelerator.distributed_type):
        warn(
            f"the launch config asks for FSDP, but accelerate runs it as {accelerator.distributed_type.value} "
            "without CUDA: nothing is sharded (every process holds the whole model and optimiser)"
        )
    return accelerator


def mean_over_processes(accelerator: Any, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all processes (itself on one)."""
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value.detach().clone(), reduction="mean")


class RunLoop:
    """Checkpointing, resume and logging around a trainer's step function.

    In order: ``RunLoop(...)`` finds the newest intact checkpoint and reads its ``state.json`` (the
    step and the trainer's own state, :attr:`state`, which the trainer reads before it prepares
    anything); :meth:`prepare` hands the trained modules, the optimiser and the scheduler to
    accelerate and then restores them from the checkpoint (``accelerator.load_state`` after
    ``accelerator.prepare``, as accelerate requires); :meth:`periodic` and :meth:`guard` save, on
    every process (:func:`~alignlab.train.checkpoint.save_checkpoint`).

    Args:
        out_dir: the run directory (``checkpoints/``, ``metrics.jsonl``, trackers).
        model: the unwrapped trained policy: a checkpoint is this model, with ``tokenizer``
            (:func:`~alignlab.train.checkpoint.save_checkpoint`).
        optimizer, scheduler: restored on resume; the trainer steps them.
        accelerator: the run's accelerator.
        cfg: the training settings.
        tokenizer: saved with the model, so a checkpoint loads with ``from_pretrained`` alone.
        aside: name -> the other trained modules a checkpoint holds, each in its own subdirectory
            (PPO's ``critic`` or ``value_head``).
    """

    def __init__(
        self,
        out_dir: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        accelerator: Any,
        cfg: TrainConfig,
        *,
        tokenizer: Any = None,
        aside: dict[str, torch.nn.Module] | None = None,
    ) -> None:
        self.out_dir, self.model, self.optimizer, self.scheduler = out_dir, model, optimizer, scheduler
        self.accelerator, self.cfg, self.tokenizer, self.aside = accelerator, cfg, tokenizer, aside or {}
        self.prepared: torch.nn.Module | None = None  # what accelerator.prepare returned (prepare())
        self.state: dict[str, Any] = {}
        self.start_step = 0
        self.eval_at = frozenset(eval_steps(cfg))  # the steps after which evaluate() runs
        if accelerator.is_main_process:  # the one writer of this run's checkpoints
            clear_checkpoint_temps(out_dir)
        self.checkpoint = latest_checkpoint(out_dir)
        if self.checkpoint is not None:
            # the trainer's state (e.g. PPO's KL coefficient); the step is each checkpoint's own
            self.state = read_state(self.checkpoint)
            self.start_step = int(self.state.pop("step"))
            if accelerator.is_main_process:
                say(f"resuming {out_dir} from step {self.start_step} of {cfg.steps}")
        if cfg.log_with and not accelerator.trackers:  # TensorBoard events under out_dir/alignlab/, etc.
            accelerator.init_trackers("alignlab")
        self.resumed = self.checkpoint is not None
        self.log = MetricsLog(out_dir, accelerator, self.start_step if self.resumed else None)
        self.t0 = time.time()
        # the cumulative forward-equivalent tokens; unknown (None) when resuming a checkpoint without it
        self.compute_tokens: float | None = self.state.get("compute_tokens", None if self.resumed else 0.0)

    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """``accelerator.prepare(module, optimizer)``, then the checkpoint restored into them (every process).

        Args:
            module: the trained modules in one: the policy, or PPO's policy and critic
                (:class:`~alignlab.train.online_batches.PolicyAndValue`).
            optimizer: the optimiser given to the constructor.

        Returns:
            The prepared module and optimiser, for the training steps. The scheduler is registered
            for ``save_state``/``load_state`` only; the trainer steps the one it built.
        """
        wrapped, prepared_optimizer = self.accelerator.prepare(module, optimizer)
        self.accelerator.prepare_scheduler(self.scheduler)
        self.prepared, self.optimizer = wrapped, prepared_optimizer
        if self.checkpoint is not None:
            load_checkpoint(self.checkpoint, self.accelerator, self.model, self.optimizer, self.scheduler, self.aside)
        return wrapped, prepared_optimizer

    def add_compute(self, tokens: float) -> None:
        """Add ``tokens`` policy forward-equivalent tokens (the module docstring) to the run's total."""
        if self.compute_tokens is not None:
            self.compute_tokens += float(tokens)

    def compute(self) -> dict[str, float]:
        """``{"compute_tokens": total}`` for a metrics row (empty when the total is unknown)."""
        return {} if self.compute_tokens is None else {"compute_tokens": self.compute_tokens}

    def save(self, step: int, state: dict[str, Any] | None = None) -> None:
        """Checkpoint after ``step`` completed steps, on every process
        (:func:`~alignlab.train.checkpoint.save_checkpoint`).

        Raises:
            TrainingDiverged: the weights are no longer finite: nothing is saved over the last good state.
        """
        if not self._weights_finite():
            self.log.flush()
            raise TrainingDiverged(
                f"after step {step}: the weights are no longer finite (is the learning rate too high?); not "
                f"saved, so the newest checkpoint in {self.out_dir / 'checkpoints'} is the last good state"
            )
        self.log.flush()
        self.state = {**self.state, **(state or {}), **self.compute()}
        if self.prepared is None:
            raise RuntimeError("RunLoop.save before RunLoop.prepare: there is no training state to save yet")
        save_checkpoint(
            self.out_dir,
            step,
            self.accelerator,
            self.prepared,
            self.model,
            self.state,
            self.cfg.keep_checkpoints,
            tokenizer=self.tokenizer,
            aside=self.aside,
        )
        self.accelerator.wait_for_everyone()

    def guard(self, step: int, what: str, value: torch.Tensor, state: dict[str, Any] | None = None) -> None:
        """Stop the run, after saving the last good state, if ``value`` is NaN or infinite on any process."""
        bad = torch.tensor(0.0 if torch.isfinite(value).all() else 1.0, device=value.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            said = f"step {step + 1}: the {what} is {value.item() if value.numel() == 1 else 'not finite'}; stopped"
            if not self._weights_finite():  # an earlier step already broke them: they are not a good state
                raise TrainingDiverged(
                    f"{said}; the weights are no longer finite (is the learning rate too high?), so nothing is "
                    f"saved after the newest checkpoint in {self.out_dir / 'checkpoints'}"
                )
            self.save(step, state)
            raise TrainingDiverged(
                f"{said}, and the last good state (after step {step}) is saved in {self.out_dir / 'checkpoints'}"
            )

    def _weights_finite(self) -> bool:
        """Whether every parameter of every module is finite (checked only once a run diverged)."""
        bad = torch.tensor(0.0)
        for module in (self.model, *self.aside.values()):
            for p in module.parameters():
                if not torch.isfinite(p).all():
                    bad = torch.tensor(1.0)
                    break
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad.to(self.accelerator.device), reduction="sum")
        return bool(bad.item() == 0)

    def periodic(
        self, step: int, evaluate: Callable[[], dict[str, float]] | None, state: dict[str, Any] | None = None
    ) -> None:
        """After ``step`` completed steps: evaluate (at :func:`~alignlab.train.config.eval_steps`), flush
        and checkpoint when they are due."""
        last = step == self.cfg.steps
        if evaluate is not None and step in self.eval_at:
            try:
                row = evaluate()
            except ObjectiveError as err:
                raise err.at(f"the evaluation after step {step}") from err.__cause__
            timing = {"wall_s": round(time.time() - self.t0, 2)}
            self.log.log({"step": step, "split": "eval", **row, **self.compute(), **timing})
        if step % self.cfg.log_every == 0 or last:
            self.log.flush()
        stop = self._stop_requested()
        if step % self.cfg.save_every == 0 or last or stop:
            self.save(step, state)
        if stop:
            raise Interrupted(
                stop,
                f"stopped by {stop} after step {step} of {self.cfg.steps}; its checkpoint is in "
                f"{self.out_dir / 'checkpoints'}: run the same command again to resume",
            )

    def _stop_requested(self) -> str | None:
        """The signal asking this run to stop (on any process: they stop at the same step), if any."""
        name = interrupts.pending()
        if self.accelerator.num_processes == 1:
            return name
        flag = torch.tensor(0.0 if name is None else 1.0, device=self.accelerator.device)
        return (name or "SIGTERM") if self.accelerator.reduce(flag, reduction="sum").item() > 0 else None
