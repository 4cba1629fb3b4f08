"""An experiment YAML: the shared settings of a run, plus a list of methods, each with a sweep.

```yaml
name: imdb_smoke                      # default: the file's stem
task: {name: imdb}                    # ... every section of a run YAML (RunConfig) except objective
train: {steps: 60, batch_size: 16}    #     and out_dir: the defaults of every run
methods:
  - name: dpo                         # a registered objective (best_of_n among them)
    beta: 0.1                         # its knobs
    sweep: {beta: [0.1, 1.0], seed: [0, 1]}   # the runs: the product of these lists
  - name: ppo
    label: PPO-GT                     # its name on the plot and in the tables (default: DPO, PPO, ...)
    reward: {kind: gold}              # any run section, merged over the experiment's
    train: {batch_size: 64}
    sweep: {target_kl: [3, 6]}
```

``tune:`` (at the top for every trained method, or in a method, whose keys then override the
experiment's) tunes each method on validation prompts before its runs: a grid over sweep-style keys
(``train.lr``, objective knobs), each grid point run with the first ``tune.seeds`` seeds on
``eval.split: validation`` as runs ``tune-<label>-...``; the point the criterion scores best is then
run with every seed and sweep setting on the test prompts (:mod:`alignlab.experiment.tuning`).

``seeds: 3`` (or ``seeds: [0, 1, 2]``) at the top runs every method with each seed, as if ``seed``
were in its sweep (a method's own ``sweep.seed`` or ``train.seed`` then conflicts: an error). A sweep
key is one of the objective's knobs, ``seed`` (``train.seed``), or a dotted run key
(``train.lr``). Each run is a :class:`~alignlab.run_config.RunConfig`, validated before anything
runs, with its id built from the label as written (else the objective's name) and the swept values
(``dpo-beta0.1-seed1``); a method's label defaults to its objective's display name (``DPO``). On
the command line a method's keys are named by index or by label: ``methods[0].sweep.beta=[0.2]``,
``methods.DPO.sweep.beta=[0.2]`` (:func:`method_overrides`). An
experiment may start from another with ``extends: other.yaml`` (paths relative to this file):
the other's mapping is read first and this one's keys are merged over it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignlab.config import Override, apply_overrides, blaming, load_yaml, parse_override
from alignlab.errors import ConfigError
from alignlab.jobs.job import resolve_dict
from alignlab.jobs.trainers import Method
from alignlab.objectives import display_name
from alignlab.objectives.registry import samples_only
from alignlab.plugins import load_plugins
from alignlab.run_config import RunConfig
from alignlab.schema import Config, knob
from alignlab.tasks import task_config

# the keys of a methods[] entry that are not objective knobs (and `tune`, a method's TuneConfig)
METHOD_KEYS = ("name", "label", "sweep")
RUN_SECTIONS = ("data", "reward", "train", "rollout", "eval", "sft", "model", "task")


@dataclass(frozen=True)
class TuneConfig(Config):
    """Per-method tuning on validation prompts (DESIGN.md, the comparison protocol)."""

    grid: Any = knob(
        default_factory=dict,
        help="The candidates: the product of {<key>: [values]}, keys as in sweep (train.lr, an objective knob); "
        "each grid point is run with the method's sweep on validation prompts.",
    )
    criterion: Literal["reward_at_kl", "area"] = knob(
        "reward_at_kl",
        "How a candidate is scored, per tuning seed from its Pareto front over its runs and steps, then "
        "averaged: reward_at_kl: the front's reward at KL tune.kl (linear between points; a front that ends "
        "below tune.kl keeps its last reward); area: the area under that front from the candidates' common "
        "first KL to tune.kl. The highest score wins; ties go to the first in grid order.",
    )
    kl: float = knob(5.0, "The KL budget (reward_at_kl) or cap (area) of the criterion, in nats.", gt=0)
    seeds: int = knob(1, "Candidates run with the first this many of the method's seeds.", ge=1)
    sweep: Any = knob(
        default_factory=dict,
        help="Tune at these settings of the method's sweep only, e.g. {beta: [0.1]}: the candidates' runs use "
        "them, and the selected grid point then runs with every setting of the sweep (empty: the whole sweep).",
    )
    reuse: bool = knob(
        True,
        "The tuning runs evaluate the test prompts too (eval.also_test), and the selected candidate's tuning "
        "runs are its final runs at the same settings and seeds, not trained again; false: every final run "
        "trains anew. Not for runs with win rates (eval.winrate), which tuning runs do not judge.",
    )


@dataclass(frozen=True)
class ExperimentConfig(RunConfig):
    """Every key of a run YAML (the defaults of each run) plus the experiment's own."""

    name: str = knob("", "The experiment's name (default: the YAML file's stem).")
    description: str = knob("", "One line on what the experiment shows.")
    methods: list[Any] = knob(
        default_factory=list,
        help="The methods: {name: <objective>, label, <knob>: <value>, sweep: {<knob>: [...]}, <run section>: {...}}.",
    )
    extends: str | None = knob(None, "Another experiment YAML (relative to this one) whose keys this one overrides.")
    out_dir: str = knob(
        "",
        "Results: frontier.csv, plots, tables, run configs (default: <runs_dir>/results, beside the runs and, "
        "like them, outside the repository's tracked results/; out_dir=results/<name> rewrites the committed ones).",
    )
    runs_dir: str = knob("", "Run directories: checkpoints, metrics, summaries (default: runs/<name>).")
    seeds: int | list[int] | None = knob(
        None,
        "Run every method with each seed (train.seed), as if seed were in its sweep: N (seeds 0 .. N-1) or a "
        "list. The tables and plots then show means over seeds with 95% t-intervals over seeds.",
        ge=0,
        lt=2**32,
    )
    kl_budgets: list[float] = knob(
        default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 20.0],
        help="KL budgets (nats) at which frontier.md and summary.csv give each method's reward along its front.",
        gt=0,
    )
    kl_cap: float = knob(20.0, "The KL up to which frontier.md and summary.csv give the area under each front.", gt=0)
    tune: TuneConfig | None = knob(
        None,
        "Tune every trained method on validation prompts first: {grid: {train.lr: [...], <knob>: [...]}, "
        "criterion: reward_at_kl | area, kl: 5.0 (the budget or the cap), seeds: 1 (the first seeds the "
        "candidates run with), reuse: true (they also evaluate the test prompts, and the chosen one's are its "
        "final runs at the same seeds)}. The best grid point then runs with every seed on the test prompts; "
        "tuning.csv|md in out_dir. A method's own tune: overrides these keys (tune: null opts it out).",
    )
    plot_panels: list[list[str]] = knob(
        default_factory=list,
        help="Methods (labels) drawn together in one panel of frontier.png, e.g. [[DPO, PPO], [IPO, KTO]]; "
        "methods left out get a panel of their own (default: one panel).",
    )


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep, resolved and validated."""

    run_id: str
    label: str
    setting: dict[str, Any]  # the swept values, e.g. {"beta": 0.1, "seed": 1}
    cfg: RunConfig
    method: Method
    data: dict[str, Any]  # the run's YAML mapping (out_dir included)
    method_index: int = -1  # its entry in methods
    trained_by: PlannedRun | None = None  # the tuning run that is this final run (tune.reuse): its test_ rows

    @property
    def run_dir(self) -> Path:
        """The directory its training wrote: its own, or its tuning run's."""
        return Path((self.trained_by or self).cfg.out_dir)


@dataclass(frozen=True)
class Candidate:
    """One grid point of a tuned method: its tuning runs (validation) and the runs it would select."""

    values: dict[str, Any]  # e.g. {"train.lr": 0.001}
    tune_runs: list[PlannedRun]
    final_runs: list[PlannedRun]


@dataclass(frozen=True)
class TunedMethod:
    index: int  # in methods
    label: str
    tune: TuneConfig
    candidates: list[Candidate]


@dataclass(frozen=True)
class Experiment:
    name: str
    cfg: ExperimentConfig
    runs: list[PlannedRun]
    source: str
    out_dir: Path
    runs_dir: Path
    data: dict[str, Any]  # the resolved experiment mapping, overrides applied
    tuned: list[TunedMethod] = field(default_factory=list)  # their runs join `runs` once selected

    @property
    def planned(self) -> list[PlannedRun]:
        """Every run of the experiment's frontier, a tuned method's at the first point of its grid (the
        point the tuning selects is not known before it runs; with ``tune.reuse`` its seed-0 runs are
        tuning runs, ``trained_by``): for tools that need a run's stages or settings before tuning
        (benchmarks, checks), never for results."""
        return [*self.runs, *(r for t in self.tuned for r in t.candidates[0].final_runs)]


def read_experiment(path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping at ``path``, with ``extends`` followed (the chain merged, outermost last)."""
    path = Path(path)
    data = load_yaml(path)
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError("extends", f"expected a file name, got {parent!r}", str(path))
    base_path = (path.parent / parent).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError("extends", f"{parent} extends itself (a cycle)", str(path))
    if not base_path.is_file():
        raise ConfigError("extends", f"{parent}: no such file (relative to {path.parent})", str(path))
    base = read_experiment(base_path, (*seen, path.resolve()))
    base.pop("extends", None)
    merged = deep_merge(base, {k: v for k, v in data.items() if k != "extends"})
    merged["extends"] = parent
    return merged


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override, validate and expand an experiment YAML into its runs; nothing runs yet.

    Raises:
        ConfigError: naming the file and the dotted key (``methods[2].sweep.beta``) of any problem,
            before any work.
    """
    source = str(path)
    raw = read_experiment(path)
    _load_named_plugins(raw, Path(path).parent, source)  # their objectives' display names are method labels
    parsed = method_overrides(raw, overrides or [])
    data = apply_overrides(raw, parsed)
    with blaming(parsed):  # a key an override set is the argument's mistake, not the file's
        return _plan(path, source, data)


def _plan(path: str | Path, source: str, data: dict[str, Any]) -> Experiment:
    """:func:`load_experiment` once its overrides are applied."""
    if "objective" in data:
        raise ConfigError("objective", "an experiment lists its objectives under methods:", source)
    cfg: ExperimentConfig = ExperimentConfig.from_dict(data, source)
    name = cfg.name or Path(path).stem
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError("name", f"{name!r}: use letters, digits, '_', '-' and '.' only", source)
    if not cfg.methods:
        raise ConfigError("methods", "list at least one method", source)
    run_keys = set(RunConfig.__dataclass_fields__) - {"objective", "out_dir"}
    shared = {k: v for k, v in data.items() if k in run_keys}
    runs_dir = Path(cfg.runs_dir or f"runs/{name}").expanduser()
    seeds = _seeds(cfg, data, source)
    runs: list[PlannedRun] = []
    tuned: list[TunedMethod] = []
    for i, entry in enumerate(cfg.methods):
        tune = _tune(cfg, data, entry, i, source)
        if tune is None:
            runs.extend(_expand(entry, i, shared, runs_dir, source, Path(path).parent, seeds))
        else:
            tuned.append(_plan_tuning(entry, i, tune, shared, runs_dir, source, Path(path).parent, seeds))
    every = runs + [r for t in tuned for c in t.candidates for r in (*c.tune_runs, *c.final_runs)]
    seen: dict[str, int] = {}
    for run in every:
        if run.run_id in seen:
            raise ConfigError(
                "methods",
                f"two runs are both named {run.run_id!r}: give the methods different labels",
                source,
            )
        seen[run.run_id] = 1
    resolved = {**data, "name": name}
    # a user's run writes beside its runs, never over the committed results/<name>/ (whose numbers another
    # machine does not reproduce bit for bit: PPO samples its training data; results/imdb_smoke/README.md)
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else runs_dir / "results"
    return Experiment(name, cfg, runs, source, out_dir, runs_dir, resolved, tuned)


def method_label(entry: Any) -> str:
    """A ``methods[]`` entry's label: its own ``label``, else its objective's display name (``DPO``)."""
    if not isinstance(entry, dict):
        return ""
    return str(entry.get("label") or display_name(str(entry.get("name", ""))))


def method_overrides(data: dict[str, Any], items: list[str]) -> list[Override]:
    """The command line's overrides, a method named by label made an index: ``methods.DPO.sweep.beta=[0.2]``
    sets ``methods[i].sweep.beta`` of the method labelled ``DPO`` (:func:`method_label`);
    ``methods[0].sweep.beta=[0.2]`` names it by index.

    Raises:
        ConfigError: naming the argument, for a label no method has (with the labels there are).
    """
    parsed = []
    for item in items:
        override = parse_override(item)
        head, _, rest = override.key.partition(".")
        methods = data.get("methods")
        if head == "methods" and rest and isinstance(methods, list):
            label, _, below = rest.partition(".")
            labels = [method_label(entry) for entry in methods]
            if label in labels:
                if labels.count(label) > 1:
                    raise override.error(f"{labels.count(label)} methods are labelled {label!r}: name one by index")
                where = f"methods[{labels.index(label)}]"
                override = dataclasses.replace(override, key=f"{where}.{below}" if below else where)
            else:
                lower = {known.lower(): known for known in labels}  # methods.dpo for DPO: a matter of case
                close = difflib.get_close_matches(label.lower(), list(lower), n=1)
                hint = f"; did you mean {lower[close[0]]!r}?" if close else ""
                raise override.error(
                    f"no method is labelled {label!r}{hint} (labels: {', '.join(labels)}; or by index: methods[0])"
                )
        parsed.append(override)
    return parsed


def _load_named_plugins(data: dict[str, Any], base_dir: Path, source: str) -> None:
    """The experiment's ``plugins:``, loaded before its methods are named (well-formed lists only:
    anything else is refused, naming the key, when the experiment is validated)."""
    plugins = data.get("plugins")
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        load_plugins(plugins, base_dir, source)


def _tune(cfg: ExperimentConfig, data: dict[str, Any], entry: Any, i: int, source: str) -> TuneConfig | None:
    """The method's tuning: its own ``tune:`` keys over the experiment's; None when it is not tuned."""
    if not isinstance(entry, dict):
        return None  # _expand names the problem
    own = entry.get("tune", {})
    if own is None or (cfg.tune is None and "tune" not in entry):
        return None
    if "tune" not in entry and samples_only(entry.get("name")):
        return None  # nothing trains (best-of-N): an experiment-wide grid (train.lr) means nothing to it
    if not isinstance(own, dict):
        raise ConfigError(f"methods[{i}].tune", f"expected a mapping (or null), got {own!r}", source)
    shared: dict[str, Any] = data["tune"] if isinstance(data.get("tune"), dict) else {}
    prefix = f"methods[{i}].tune." if "tune" in entry else "tune."
    tune: TuneConfig = TuneConfig.from_dict({**shared, **own}, source, prefix)
    grid = tune.grid
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{prefix}grid", f"expected a mapping of key: [values], got {grid!r}", source)
    sweep = entry.get("sweep") or {}
    if not isinstance(tune.sweep, dict):
        raise ConfigError(f"{prefix}sweep", f"expected a mapping of key: [values], got {tune.sweep!r}", source)
    for key, values in tune.sweep.items():
        if key in ("seed", "train.seed"):
            raise ConfigError(f"{prefix}sweep.{key}", "the tuning seeds are tune.seeds", source)
        own = sweep.get(key) if isinstance(sweep, dict) else None
        if not isinstance(values, list) or not values or own is None or any(v not in own for v in values):
            raise ConfigError(
                f"{prefix}sweep.{key}",
                f"{values!r}: list some of the values of methods[{i}].sweep.{key} ({own!r})",
                source,
            )
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{prefix}grid.{key}", f"expected a non-empty list of values, got {values!r}", source)
        if key in ("seed", "train.seed"):
            raise ConfigError(f"{prefix}grid.{key}", "seeds are not tuned: use seeds (or tune.seeds)", source)
        if isinstance(sweep, dict) and key in sweep:
            raise ConfigError(f"{prefix}grid.{key}", f"{key} is also in methods[{i}].sweep: keep one", source)
    return tune


def _plan_tuning(
    entry: dict[str, Any],
    i: int,
    tune: TuneConfig,
    shared: dict[str, Any],
    runs_dir: Path,
    source: str,
    base_dir: Path,
    seeds: list[int] | None,
) -> TunedMethod:
    """The candidates of a tuned method: per grid point, its tuning runs and its final runs.

    Tuning runs are the method's sweep (narrowed to ``tune.sweep``) at the grid point with the first
    ``tune.seeds`` seeds, labelled ``tune-<label>``, evaluated on validation prompts and without win rates;
    final runs are the whole sweep at the grid point with every seed, on test prompts, their ids naming
    the tuned values.
    """
    where = f"methods[{i}]"
    label = method_label(entry)
    sweep = dict(entry.get("sweep") or {})
    seed_key = next((k for k in ("seed", "train.seed") if k in sweep), None)
    available = len(seeds) if seeds is not None else len(sweep[seed_key]) if seed_key else 1
    if tune.seeds > available:
        raise ConfigError(
            f"{where}.tune.seeds" if "tune" in entry else "tune.seeds",
            f"{tune.seeds} tuning seeds, but {label} runs {available} seed(s)",
            source,
        )
    tune_sweep = {**sweep, **tune.sweep}  # the settings tuned at (every one unless tune.sweep narrows them)
    if seed_key is not None:
        tune_sweep[seed_key] = sweep[seed_key][: tune.seeds]
    tune_seeds = seeds[: tune.seeds] if seeds is not None else None
    base = {k: v for k, v in entry.items() if k != "tune"}
    candidates = []
    for combo in itertools.product(*tune.grid.values()):
        values = dict(zip(tune.grid, combo, strict=True))
        fixed = {k: [v] for k, v in values.items()}
        evaluation: dict[str, Any] = {"split": "validation", "winrate": {"temperatures": []}}
        trial = deep_merge(base, {"eval": evaluation | ({"also_test": True} if tune.reuse else {})})
        trial |= {"label": f"tune-{entry.get('label') or entry.get('name')}", "sweep": {**fixed, **tune_sweep}}
        final = deep_merge(base, {"eval": {"split": "test"}}) | {"sweep": {**fixed, **sweep}}
        tune_runs = _expand(trial, i, shared, runs_dir, source, base_dir, tune_seeds)
        final_runs = _expand(final, i, shared, runs_dir, source, base_dir, seeds)
        if tune.reuse:
            final_runs = [_reused(run, tune_runs) for run in final_runs]
        candidates.append(Candidate(values, tune_runs, final_runs))
    return TunedMethod(i, label, tune, candidates)


def _reused(final: PlannedRun, tune_runs: list[PlannedRun]) -> PlannedRun:
    """``final``, trained by the tuning run with its settings and seed if there is one (``tune.reuse``):
    one whose config is the final run's but for the evaluation's split and its run directory."""
    if final.method.objective.needs.data == "sampling" or final.cfg.eval.winrate.temperatures:
        return final  # nothing trained to reuse; or win rates, which tuning runs do not judge

    def training(run: PlannedRun) -> dict[str, Any]:
        cfg = run.cfg.to_dict()
        cfg["eval"] = {k: v for k, v in cfg["eval"].items() if k not in ("split", "also_test", "winrate")}
        return {k: v for k, v in cfg.items() if k != "out_dir"} | {"objective": run.method.cfg.to_dict()}

    same = [t for t in tune_runs if t.setting == final.setting and training(t) == training(final)]
    return dataclasses.replace(final, trained_by=same[0]) if same else final


def _seeds(cfg: ExperimentConfig, data: dict[str, Any], source: str) -> list[int] | None:
    """The experiment's ``seeds`` as a list (``N`` → 0 .. N-1), or None; a shared ``train.seed`` conflicts."""
    if cfg.seeds is None:
        return None
    if isinstance(cfg.seeds, int):
        if not 1 <= cfg.seeds <= MAX_SEEDS:
            raise ConfigError(
                "seeds", f"expected a number of seeds in 1 .. {MAX_SEEDS} or a list, got {cfg.seeds}", source
            )
        seeds = list(range(cfg.seeds))
    else:
        seeds = list(cfg.seeds)
        if not seeds:
            raise ConfigError("seeds", "expected at least one seed", source)
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ConfigError("seeds", f"seed {repeated[0]} is listed twice", source)
    if isinstance(data.get("train"), dict) and "seed" in data["train"]:
        raise ConfigError("train.seed", "conflicts with seeds (both set the runs' seed): keep one", source)
    return seeds


MAX_SEEDS = 1000  # seeds: N beyond this is a typo, not an experiment (and would expand into as many runs)


def _expand(
    entry: Any,
    i: int,
    shared: dict[str, Any],
    runs_dir: Path,
    source: str,
    base_dir: Path,
    seeds: list[int] | None = None,
) -> list[PlannedRun]:
    """The runs of ``methods[i]``: the product of its sweep (with ``seed: seeds`` added when given)."""
    where = f"methods[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(where, f"expected a mapping with a name, got {entry!r}", source)
    if "name" not in entry:
        raise ConfigError(f"{where}.name", "required key is missing", source)
    label = method_label(entry)
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", label):
        raise ConfigError(f"{where}.label", f"{label!r}: use letters, digits, '_', '-', '+' and '.' only", source)
    # run ids (directory names) start with the label as written, else the objective's name: a run
    # directory keeps its name when display names change
    prefix = str(entry.get("label") or entry["name"])
    sections = {k: v for k, v in entry.items() if k in RUN_SECTIONS}
    knobs = {k: v for k, v in entry.items() if k not in (*METHOD_KEYS, "tune") and k not in RUN_SECTIONS}
    sweep = entry.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"{where}.sweep", f"expected a mapping of key: [values], got {sweep!r}", source)
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.sweep.{key}", f"expected a non-empty list of values, got {values!r}", source)
    if seeds is not None:  # every method with each seed, as if `seed: [...]` were in its sweep
        for key in ("seed", "train.seed"):
            if key in sweep:
                raise ConfigError(
                    f"{where}.sweep.{key}", "conflicts with seeds (the experiment's): sweep it in one place", source
                )
        if isinstance(entry.get("train"), dict) and "seed" in entry["train"]:
            raise ConfigError(f"{where}.train.seed", "conflicts with seeds (the experiment's): keep one", source)
        sweep = {**sweep, "seed": seeds}
    base = deep_merge(shared, sections)
    runs = []
    for combo in itertools.product(*sweep.values()) if sweep else [()]:
        setting = dict(zip(sweep, combo, strict=True))
        data = deep_merge(base, {"objective": {"name": entry["name"], **knobs}})
        overrides = []
        for key, value in setting.items():
            if key == "seed":
                overrides.append(("train.seed", value))
            elif "." in key:
                overrides.append((key, value))
            else:
                overrides.append((f"objective.{key}", value))
        for key, value in overrides:
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{where}.sweep.{key}", f"{part} is not a mapping", source)
            node[last] = value
        run_id = "-".join([prefix, *(f"{_short(k)}{_value(v)}" for k, v in setting.items())])
        data["out_dir"] = str(runs_dir / run_id)
        _check_task(data, entry, where, source)
        try:
            cfg, method = resolve_dict(data, source, base_dir, prefix=f"{where}.")
        except ConfigError as err:  # name the key as the user wrote it: methods[i].beta, methods[i].sweep.beta
            key = err.key
            if key.startswith(f"{where}.objective."):
                knob_name = key.removeprefix(f"{where}.objective.")
                key = f"{where}.sweep.{knob_name}" if knob_name in sweep else f"{where}.{knob_name}"
            elif key == f"{where}.objective.name":
                key = f"{where}.name"
            raise ConfigError(key, err.message, source) from err
        runs.append(PlannedRun(run_id, label, setting, cfg, method, data, i))
    return runs


def _check_task(data: dict[str, Any], entry: dict[str, Any], where: str, source: str) -> None:
    """The run's task settings, checked before anything runs (a run reads its task only when it starts).

    An error names the key where it was written: the method's own ``task`` section, else the shared one.
    """
    if "task" not in data:  # the run's default task
        return
    try:
        task_config(data["task"], source)
    except ConfigError as err:
        own = entry.get("task")
        leaf = err.key.removeprefix("task.").split(".")[0]
        if "task" in entry and (not isinstance(own, dict) or leaf in own):
            raise ConfigError(f"{where}.{err.key}", err.message, source) from None
        raise


def preflight(exp: Experiment, force: bool = False) -> None:
    """What ``alignlab run`` checks before it writes anything: the results, runs and cache directories
    are writable and the results directory is alignlab's (:mod:`alignlab.ownership`); every run's
    data directory exists, and no run directory holds files alignlab did not write, or a run with a
    different config (unless ``force``: then they are replaced).

    A run checks both only when it starts (``build_task``, ``claim_out_dir``); checking every run
    first means an experiment that cannot go ahead neither rewrites its results directory nor
    trains the runs before the one that fails.

    Raises:
        AlignlabError: naming the experiment file and the key (``task.data_dir``, ``runs_dir``).
    """
    from alignlab.data import check_cache_writable
    from alignlab.experiment.tuning import every_run
    from alignlab.jobs.job import _resolved, holds_other_run
    from alignlab.ownership import check_claimable, check_writable, real_path
    from alignlab.tasks import build_task

    runs = every_run(exp)  # the tuning runs and the final runs of every candidate too
    check_claimable(exp.out_dir, "results", "out_dir", exp.source)
    results = real_path(exp.out_dir)
    for run in runs:
        run_dir = real_path(run.cfg.out_dir)
        if run_dir == results or results in run_dir.parents or run_dir in results.parents:
            raise ConfigError(
                "out_dir",
                f"{exp.out_dir} and the run directory {run.cfg.out_dir} of run {run.run_id!r} overlap: put the "
                "results and the runs (runs_dir) in separate directories",
                exp.source,
            )
    check_writable(exp.runs_dir, "runs_dir", exp.source)
    check_cache_writable()
    for run in runs:
        task = build_task(run.cfg.task, exp.source)  # its data directory exists
        out = Path(run.cfg.out_dir)
        check_claimable(out, "run", f"runs_dir ({run.run_id})", exp.source)
        if not force and holds_other_run(out, _resolved(run.cfg, task, run.method)):
            flipped = dataclasses.replace(run.cfg.eval, also_test=not run.cfg.eval.also_test)
            if not holds_other_run(out, _resolved(dataclasses.replace(run.cfg, eval=flipped), task, run.method)):
                raise ConfigError(
                    "tune.reuse",
                    f"{out} holds tuning run {run.run_id!r} trained "
                    f"{'without' if run.cfg.eval.also_test else 'with'} eval.also_test (tune.reuse "
                    f"{'off' if run.cfg.eval.also_test else 'on'}): set tune: {{reuse: "
                    f"{'false' if run.cfg.eval.also_test else 'true'}}} to go on with these runs as they were, "
                    "or pass --force to replace the experiment's runs",
                    exp.source,
                )
            raise ConfigError(
                "runs_dir",
                f"{out} holds a run with a different config than run {run.run_id!r} of this experiment; "
                "pick another runs_dir (or name), or pass --force to replace the experiment's runs",
                exp.source,
            )


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _value(v: Any) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)
