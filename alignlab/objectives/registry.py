"""The objective registry: a name -> (loss function, config class, needs, citation).

Register a loss with the decorator and it is available everywhere by name — to the trainers,
to experiment YAMLs, and to ``alignlab objectives``::

    @register_objective("dpo", config=DPOConfig, needs=Needs(reference=True, data="paired"),
                        citation="Rafailov et al. 2023, Direct Preference Optimization, Eq. 7")
    def dpo_loss(batch: PairedLogps, cfg: DPOConfig) -> LossOutput: ...

Third-party packages can add objectives through the ``alignlab.objectives`` entry-point group;
experiment YAMLs through ``plugins:`` (see :mod:`alignlab.plugins`).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from alignlab.errors import AlignlabError, UnknownObjectiveError, one_line
from alignlab.objectives.base import LossOutput, Needs, ObjectiveConfig, PairedLogps, PPOBatch, UnpairedLogps

ENTRY_POINT_GROUP = "alignlab.objectives"
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
_DISPLAY = re.compile(r"^[A-Za-z0-9_.+-]+$")  # as a method label: it names runs and plot legends


@dataclass(frozen=True)
class Objective:
    """A registered objective."""

    name: str
    loss_fn: Callable[[Any, Any], LossOutput]
    config_cls: type[ObjectiveConfig]
    needs: Needs
    citation: str
    aliases: tuple[str, ...] = ()
    display_name: str = ""
    """How plots and tables name it (``DPO``, ``SimPO``, ``Preferred-FT``); the name when not given."""

    @property
    def summary(self) -> str:
        """The first line of the loss function's docstring."""
        return (inspect.getdoc(self.loss_fn) or "").splitlines()[0] if self.loss_fn.__doc__ else ""

    @property
    def origin(self) -> str:
        """Where the loss is defined: ``module.function``."""
        return f"{self.loss_fn.__module__}.{self.loss_fn.__qualname__}"

    @property
    def builtin(self) -> bool:
        """Whether alignlab defines the loss (else a plugin or another package does)."""
        return self.loss_fn.__module__.startswith("alignlab.")

    @property
    def defined_in(self) -> str:
        """The file that defines the loss (its module's name where it has no file)."""
        module = sys.modules.get(self.loss_fn.__module__)
        return str(getattr(module, "__file__", None) or self.loss_fn.__module__)

    def config(self, **knobs: Any) -> Any:
        """The objective's config with ``knobs`` set (validated) and defaults elsewhere."""
        return self.config_cls.from_dict(knobs)

    def __call__(self, batch: Any, cfg: ObjectiveConfig | None = None) -> LossOutput:
        """The loss of ``batch``, its output checked against the contract (:func:`check_output`).

        Raises:
            ObjectiveError: the output breaks the contract, or a plugin's loss raised.
        """
        cfg = cfg if cfg is not None else self.config_cls()
        if self.builtin:
            out = self.loss_fn(batch, cfg)
        else:
            try:
                out = self.loss_fn(batch, cfg)
            except Exception as err:
                raise ObjectiveError(self, f"the loss raised {one_line(err)}") from err
        check_output(self, out, batch)
        return out


class ObjectiveError(AlignlabError):
    """An objective broke its contract (or a plugin's loss raised): names the objective and its file.

    :meth:`at` adds where in training it happened (``step 3``).
    """

    def __init__(self, objective: Objective, problem: str, where: str | None = None) -> None:
        self.objective, self.problem, self.where = objective, problem, where
        at = f" at {where}" if where else ""
        super().__init__(f"{objective.defined_in}: objective {objective.name!r}{at}: {problem}")

    def at(self, where: str) -> ObjectiveError:
        """The same error, saying where it happened (kept if already said)."""
        return self if self.where else ObjectiveError(self.objective, self.problem, where)


def _policy_logps(batch: Any) -> torch.Tensor | None:
    """The policy's log-probs of a trainer's batch (B,) or (B, T); None for another type."""
    if isinstance(batch, PairedLogps):
        return batch.policy_chosen_logps
    if isinstance(batch, UnpairedLogps):
        return batch.policy_logps
    if isinstance(batch, PPOBatch):
        return batch.logprobs
    return None


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def check_output(objective: Objective, out: Any, batch: Any) -> None:
    """The contract of every objective: a :class:`LossOutput` whose ``losses`` hold one floating
    loss per example, shape (B,), differentiable whenever the batch is (training), and whose
    ``metrics`` are tensors of shape (B,) or (). A trainer minimises ``losses.mean()``, so a
    scalar or a (B, B) tensor would train on something else without a word: refused instead.

    Raises:
        ObjectiveError: naming the objective, its file and what it returned.
    """
    expected = "a LossOutput(losses=<one loss per example, shape (B,)>, metrics={...})"
    if not isinstance(out, LossOutput):
        raise ObjectiveError(objective, f"returned {_shape(out)}, not {expected}")
    losses, policy = out.losses, _policy_logps(batch)
    if not isinstance(losses, torch.Tensor) or not losses.is_floating_point():
        raise ObjectiveError(objective, f"LossOutput.losses is {_shape(losses)} of {getattr(losses, 'dtype', '?')}")
    if not isinstance(out.metrics, dict):
        raise ObjectiveError(objective, f"LossOutput.metrics is {_shape(out.metrics)}, not a dict of tensors")
    if policy is None:
        return
    n = int(policy.shape[0])
    if tuple(losses.shape) != (n,):
        raise ObjectiveError(
            objective, f"LossOutput.losses is {_shape(losses)}; it must hold one loss per example, shape ({n},)"
        )
    if policy.requires_grad and torch.is_grad_enabled() and losses.grad_fn is None:
        raise ObjectiveError(
            objective,
            "LossOutput.losses has no graph back to the policy's log-probs (detached, or built from "
            ".item()/numpy?): training would not change the model",
        )
    # from finite log-probs a loss's own arithmetic made a NaN or inf (a diverged model's log-probs
    # are not finite: that is the trainer's NaN guard's to report, for every objective alike)
    if not objective.builtin and not torch.isfinite(losses).all() and torch.isfinite(policy).all():
        bad = int((~torch.isfinite(losses)).sum())
        raise ObjectiveError(objective, f"LossOutput.losses has {bad} non-finite values of {n} from finite log-probs")
    for name, value in out.metrics.items():
        if not isinstance(value, torch.Tensor) or value.numel() not in (1, n):
            raise ObjectiveError(
                objective, f"metric {name!r} is {_shape(value)}; metrics are tensors of shape ({n},) or ()"
            )


_REGISTRY: dict[str, Objective] = {}
_ALIASES: dict[str, str] = {}
_entry_points_loaded = False


def register_objective(
    name: str,
    *,
    config: type[ObjectiveConfig],
    needs: Needs,
    citation: str,
    aliases: tuple[str, ...] = (),
    display_name: str | None = None,
) -> Callable[[Callable[[Any, Any], LossOutput]], Callable[[Any, Any], LossOutput]]:
    """Decorator: register ``loss_fn(batch, cfg) -> LossOutput`` under ``name``.

    Args:
        name: lower-case name used in YAMLs and on the command line.
        config: the frozen :class:`ObjectiveConfig` subclass holding the loss's knobs.
        needs: what the trainer must prepare (reference log-probs, data kind, token level).
        citation: the paper and equation the function implements.
        aliases: other names that resolve to this objective.
        display_name: how plots, tables and an experiment's default method label name it (``DPO``);
            default: ``name``. Letters, digits, ``_ - + .``.

    Registering a different function under a taken name is an error; registering the same
    function again (a plugin module imported twice) replaces the entry.
    """
    if not isinstance(config, type) or not issubclass(config, ObjectiveConfig):
        raise TypeError(f"objective {name!r}: config must be an ObjectiveConfig subclass, got {config!r}")
    if not isinstance(needs, Needs):
        raise TypeError(f"objective {name!r}: needs must be a Needs, got {needs!r}")

    if display_name is not None and not _DISPLAY.match(display_name):
        raise ValueError(f"objective {name!r}: display_name {display_name!r}: use letters, digits, '_', '-', '+', '.'")

    def decorator(loss_fn: Callable[[Any, Any], LossOutput]) -> Callable[[Any, Any], LossOutput]:
        for n in (name, *aliases):
            if not _NAME.match(n):
                raise ValueError(f"objective name {n!r} must be lower-case letters, digits, '_' or '-'")
            taken = _REGISTRY.get(_ALIASES.get(n, n))
            if taken is not None and _qualname(taken.loss_fn) != _qualname(loss_fn):
                raise ValueError(f"objective name {n!r} is already registered by {taken.origin}; pick another name")
        _REGISTRY[name] = Objective(name, loss_fn, config, needs, citation, tuple(aliases), display_name or name)
        for alias in aliases:
            _ALIASES[alias] = name
        return loss_fn

    return decorator


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__qualname__}"


def _load_entry_points() -> None:
    """Import the modules that installed packages declare under ``alignlab.objectives`` (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def get_objective(name: str) -> Objective:
    """The objective registered as ``name`` (or an alias of it).

    Raises:
        UnknownObjectiveError: with a "did you mean ...?" suggestion when a close name exists.
    """
    _load_entry_points()
    key = _ALIASES.get(name, name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    known = sorted([*_REGISTRY, *_ALIASES])
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownObjectiveError(f"unknown objective {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))})")


def samples_only(name: object) -> bool:
    """Whether ``name`` is a registered objective that trains nothing (``Needs.data: sampling``, best-of-N);
    False for a name not registered (in this process)."""
    try:
        return get_objective(str(name)).needs.data == "sampling"
    except UnknownObjectiveError:
        return False


def display_name(name: str) -> str:
    """How plots and tables name the objective (or method) ``name``: its registered ``display_name``
    (``dpo`` -> ``DPO``); ``name`` itself when nothing by that name is registered."""
    _load_entry_points()
    objective = _REGISTRY.get(_ALIASES.get(name, name))
    return objective.display_name if objective is not None else name


def list_objectives() -> list[Objective]:
    """Every registered objective, sorted by name."""
    _load_entry_points()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
