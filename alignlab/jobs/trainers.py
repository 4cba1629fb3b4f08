"""The trainer registry: a method is an objective plus the trainer its declared needs select.

A trainer is a function ``run(ctx: RunContext) -> dict`` (the last evaluation row) plus a check of the
run's batch settings, registered for the kinds of data it trains on (``Needs.data``):

- ``offline`` (:mod:`alignlab.jobs.methods`): paired and unpaired objectives (DPO, IPO, KTO, ...);
- ``online``: rollouts from the current policy (PPO, RLOO, GRPO, online and iterative DPO);
- ``sampling``: nothing trained, samples ranked (best-of-N).

An objective may name its own trainer (``Needs.trainer``), e.g. a plugin's; otherwise the trainer
registered for its data kind runs it. Trainers are looked up, never chosen by the method's name::

    @register_trainer("my_trainer", data=("online",), check=my_check)
    def my_trainer(ctx: RunContext) -> dict[str, Any]: ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from alignlab.errors import AlignlabError
from alignlab.objectives import Needs, Objective, ObjectiveConfig
from alignlab.run_config import RunConfig
from alignlab.tasks import Task


@dataclass(frozen=True)
class Method:
    """A resolved method: its registered objective, the objective's config, and its name in the run."""

    name: str
    objective: Objective
    cfg: ObjectiveConfig


@dataclass
class RunContext:
    """Everything a trainer gets: the run's config and method, the task, π_ref's policy, rewards and data.

    ``reference`` is the frozen π_ref (None when neither the method nor the evaluation needs it);
    ``sampler(model)`` is the sampling evaluation every method shares (None without a reward);
    ``held`` lists the networks kept in memory, to which a trainer adds its own (e.g. a critic).
    """

    cfg: RunConfig
    method: Method
    task: Task
    policy: Any  # alignlab.sft.Policy
    judge: Any
    data: dict[str, Any]
    accelerator: Any
    out: Path
    reference: nn.Module | None
    sampler: Callable[[Any], dict[str, float]] | None
    held: list[dict[str, Any]]

    @property
    def ranking_reward(self) -> Any:
        """The reward that trains or ranks: the gold judge (``reward.kind: gold``) or the reward model."""
        return self.judge if self.cfg.reward.kind == "gold" else self.data.get("reward_model")


Check = Callable[[Any, Method, int, "str | None"], None]


@dataclass(frozen=True)
class Trainer:
    name: str
    run: Callable[[RunContext], dict[str, Any]]
    check: Check
    data: tuple[str, ...]
    """The ``Needs.data`` kinds this trainer runs (the default trainer for each)."""
    needs_reference: bool
    """Whether the trainer needs π_ref in memory whatever the objective says (online: the KL)."""


TRAINERS: dict[str, Trainer] = {}


def _no_check(cfg: RunConfig, method: Method, num_processes: int, source: str | None) -> None:
    return None


def register_trainer(
    name: str, *, data: tuple[str, ...] = (), check: Check = _no_check, needs_reference: bool = False
) -> Callable[[Callable[[RunContext], dict[str, Any]]], Callable[[RunContext], dict[str, Any]]]:
    """Decorator: register ``run(ctx) -> last evaluation row`` as the trainer ``name``, the default for
    the ``data`` kinds it lists (a later registration for the same kind takes over: a plugin's)."""

    def decorator(run: Callable[[RunContext], dict[str, Any]]) -> Callable[[RunContext], dict[str, Any]]:
        TRAINERS[name] = Trainer(name, run, check, tuple(data), needs_reference)
        return run

    return decorator


def trainer_for(needs: Needs) -> Trainer:
    """The trainer an objective's needs select: the one it names, else the latest registered for its data.

    Raises:
        AlignlabError: no such trainer (with a "did you mean").
    """
    import alignlab.jobs.methods  # noqa: F401  (registers the built-in trainers)

    if needs.trainer is not None:
        if needs.trainer not in TRAINERS:
            close = difflib.get_close_matches(needs.trainer, list(TRAINERS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise AlignlabError(
                f"no trainer {needs.trainer!r}{hint} (registered: {', '.join(sorted(TRAINERS))}); "
                "is the plugin that registers it listed under plugins:?"
            )
        return TRAINERS[needs.trainer]
    for trainer in reversed(list(TRAINERS.values())):
        if needs.data in trainer.data:
            return trainer
    raise AlignlabError(f"no trainer runs {needs.data} objectives (registered: {', '.join(sorted(TRAINERS))})")
