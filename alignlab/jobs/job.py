"""``alignlab train FILE``: one training run from a YAML — any registered objective, PPO, or best-of-N.

In numbered steps:

1. pre-flight: read and validate the YAML (every key, the objective's knobs, the batch split over
   processes) before any work; refuse an ``out_dir`` that holds a different run;
2. the shared stages, cached: task data, tokenizer + model + SFT, the gold judge, generated
   pairs, a reward model — whichever the method and the evaluation need;
3. the method's data, chosen by the objective's needs: pairs, unpaired rows (KTO), or prompts;
   reference log-probs cached once when needed;
4. training: the offline trainer or PPO, checkpointed and resumable, evaluated every
   ``train.eval_every`` steps (held-out loss and metrics; mean reward and KL of samples);
5. ``final/``, the trained policy alone (model, tokenizer, generation config: ``from_pretrained``
   loads it), then ``summary.json`` (written last: its presence marks the run finished) beside
   ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from alignlab import stages
from alignlab.adapters import with_adapters
from alignlab.cache_keys import code_version
from alignlab.config import apply_overrides, blaming, load_yaml, parse_override, parse_yaml
from alignlab.data import cache_root, check_cache_writable
from alignlab.errors import AlignlabError, ConfigError
from alignlab.io import atomic_write_json, atomic_write_yaml, clear_temps
from alignlab.jobs.sources import check_data, flip_labels, offline_rows, read_rows
from alignlab.jobs.trainers import Method, trainer_for
from alignlab.models import model_context
from alignlab.objectives import get_objective
from alignlab.ownership import check_claimable, mark, remove_owned, training_lock
from alignlab.plugins import load_plugins
from alignlab.progress import say
from alignlab.run_config import MOVED_TO_ROLLOUT, RunConfig
from alignlab.sft import prepare_policy
from alignlab.tasks import Task, build_task, get_task, task_config, task_names
from alignlab.tasks.base import PreferencePair
from alignlab.train.config import frozen_dtype
from alignlab.train.state import publish_final, read_summary


def check_split(cfg: RunConfig, method: Method, num_processes: int, source: str | None = None) -> None:
    """The run's batch settings fit its trainer and processes (the trainer's own check)."""
    try:
        trainer = trainer_for(method.objective.needs)
    except AlignlabError as err:
        raise ConfigError("objective.name", f"{method.name!r} ({method.objective.defined_in}): {err}", source) from None
    trainer.check(cfg, method, num_processes, source)


def resolve(path: str | Path, overrides: list[str]) -> tuple[RunConfig, Method]:
    """Step 1: read, override and validate a run YAML; load its plugins; check its knobs and the
    batch split for one process (:func:`check_split` again once the process count is known)."""
    parsed = [parse_override(item) for item in overrides]
    data = apply_overrides(load_yaml(path), parsed)
    with blaming(parsed):  # a key an override set is the argument's mistake, not the file's
        return resolve_dict(data, str(path), Path(path).parent)


def resolve_dict(data: dict[str, Any], source: str, base_dir: Path, prefix: str = "") -> tuple[RunConfig, Method]:
    """:func:`resolve` for a run already read as a dict; ``prefix`` is its dotted place in ``source``."""
    cfg: RunConfig = RunConfig.from_dict(data, source, prefix)
    if not cfg.out_dir.strip():
        raise ConfigError(f"{prefix}out_dir", "is empty: name the run directory, e.g. runs/my_run", source)
    if cfg.out_dir.startswith("~"):  # as data_dir, the cache and plugins are: never a directory named '~'
        cfg = dataclasses.replace(cfg, out_dir=os.path.expanduser(cfg.out_dir))
    load_plugins(cfg.plugins, base_dir, source)
    spec = cfg.objective if isinstance(cfg.objective, dict) else {"name": cfg.objective}
    if "name" not in spec:
        raise ConfigError(f"{prefix}objective.name", "required key is missing", source)
    knobs = {k: v for k, v in spec.items() if k != "name"}
    try:
        objective = get_objective(str(spec["name"]))
    except AlignlabError as err:
        raise ConfigError(f"{prefix}objective.name", str(err), source) from err
    own = {f.name for f in dataclasses.fields(objective.config_cls)}
    for key in knobs:
        if key in MOVED_TO_ROLLOUT and key not in own:
            raise ConfigError(
                f"{prefix}objective.{key}",
                f"moved to rollout.{MOVED_TO_ROLLOUT[key]} (a setting of the online trainer, for every online method)",
                source,
            )
    method = Method(objective.name, objective, objective.config_cls.from_dict(knobs, source, f"{prefix}objective."))
    try:
        check_split(cfg, method, 1, source)
    except ConfigError as err:
        raise ConfigError(prefix + err.key, err.message, source) from None
    # an unknown or malformed task first: it explains the rest; then what the task can do, as it declares it
    task = get_task(task_config(cfg.task, source, prefix + "task.").name)
    check_data(cfg.data, method.objective.needs, method.name, task, source, prefix)
    have = ", ".join(task_names(lambda t: t.has_gold_judge()))
    online = method.objective.needs.data in ("online", "sampling")  # rewarded or ranked by reward.kind
    if online and cfg.reward.kind == "gold" and not task.has_gold_judge():
        raise ConfigError(
            f"{prefix}reward.kind", f"task {task.name!r} has no gold judge (tasks with one: {have}): use model", source
        )
    if cfg.eval.winrate.judge == "gold" and cfg.eval.winrate.temperatures and not task.has_gold_judge():
        raise ConfigError(
            f"{prefix}eval.winrate.judge",
            f"task {task.name!r} has no gold judge (tasks with one: {have}): use reward_model or llm",
            source,
        )
    tiny = [t for t in cfg.eval.winrate.temperatures if 0 < t < 0.01]
    if tiny:
        raise ConfigError(
            f"{prefix}eval.winrate.temperatures", f"{tiny[0]!r}: use 0 (greedy) or a temperature >= 0.01", source
        )
    if cfg.eval.winrate.temperatures and not task.has_references():
        raise ConfigError(
            f"{prefix}eval.winrate.temperatures",
            f"task {task.name!r} has no reference completions to win against: leave the list empty",
            source,
        )
    if cfg.eval.winrate.judge == "llm" and cfg.eval.winrate.judge_model is None:
        raise ConfigError(f"{prefix}eval.winrate.judge_model", "the llm judge needs a model", source)
    return cfg, method


def _resolved(cfg: RunConfig, task: Task, method: Method) -> dict[str, Any]:
    resolved = cfg.to_dict()
    if cfg.model.lora is None:  # without adapters, the config of a run from before model.lora existed
        del resolved["model"]["lora"]
    return {**resolved, "task": task.cfg.to_dict(), "objective": {"name": method.name, **method.cfg.to_dict()}}


def holds_other_run(out: Path, resolved: dict[str, Any]) -> bool:
    """Whether ``out`` holds a run whose resolved config is not ``resolved`` (an unreadable one counts)."""
    config = out / "config.yaml"
    if not config.is_file():
        return False
    import yaml

    try:
        held = parse_yaml(config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return True
    if not isinstance(held, dict):
        return True
    # the same directory spelt another way (relative, absolute, a trailing slash) is the same run
    mine = {k: v for k, v in json.loads(json.dumps(resolved)).items() if k != "out_dir"}
    held = _with_new_defaults({k: v for k, v in held.items() if k != "out_dir"}, mine, _defaults(mine))
    return bool(held != mine)


def _defaults(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of a run with every knob at its default (the task's aside), for ``resolved``'s objective."""
    defaults: dict[str, Any] = json.loads(json.dumps(RunConfig().to_dict()))
    defaults.pop("task", None)
    name = resolved.get("objective", {}).get("name") if isinstance(resolved.get("objective"), dict) else None
    try:
        knobs = get_objective(str(name)).config_cls().to_dict()
        defaults["objective"] = {"name": name, **json.loads(json.dumps(knobs))}
    except (AlignlabError, TypeError, ValueError):  # an unknown objective, or knobs without defaults
        defaults.pop("objective", None)
    return defaults


def _with_new_defaults(held: dict[str, Any], mine: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """``held`` with each key it lacks filled in from ``mine`` where ``mine`` has it at its default: a knob
    added to alignlab after the run was written, at its default, does not make it another run."""
    out = dict(held)
    for key, value in mine.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if key not in out:
            if isinstance(defaults, dict) and key in defaults and default == value:
                out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _with_new_defaults(out[key], value, default)
    return out


def claim_out_dir(
    out: Path, resolved: dict[str, Any], force: bool, source: str, write: bool = True
) -> dict[str, Any] | None:
    """The finished run's summary if ``out`` holds this run finished; else claim ``out`` for this run.

    A directory holding a *different* run is refused; ``--force`` starts it over, deleting only what
    a run of alignlab wrote there (:func:`alignlab.ownership.remove_owned`; call
    :func:`alignlab.ownership.check_claimable` first).
    """
    if force:
        remove_owned(out)
    if holds_other_run(out, resolved):
        raise ConfigError(
            "out_dir",
            f"{out} holds a run with a different config; pick another out_dir, or pass --force to replace it",
            source,
        )
    if (out / "config.yaml").exists() and (summary := read_summary(out, repair=True)) is not None:
        return summary  # finished, and its results whole (damaged ones are moved aside: it resumes)
    if write:  # one writer: under accelerate the other processes only read
        mark(out, "run")
        atomic_write_yaml(out / "config.yaml", resolved)
    return None


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: ``clear_refs`` 5 resets VmHWM), so that each run of a
    process that trains several reports its own peak. Elsewhere a no-op: the peak is the process's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory in MiB since :func:`reset_peak_rss` (Linux VmHWM), else of the process
    (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_training(path: str | Path, overrides: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the YAML at ``path``; returns the summary (also ``out_dir/summary.json``)."""
    cfg, method = resolve(path, overrides or [])
    return execute(cfg, method, str(path), force)


class Shared:
    """What consecutive runs of one process can share: the tasks (read once) and gold judges."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.judges: dict[tuple[str, int], Any] = {}

    def task(self, spec: dict[str, Any], source: str) -> Task:
        key = json.dumps(spec, sort_keys=True)
        if key not in self.tasks:
            self.tasks[key] = build_task(spec, source)
        return self.tasks[key]

    def judge(self, task: Task, seed: int, root: Path) -> Any:
        key = (json.dumps(task.cfg.to_dict(), sort_keys=True), seed)
        if key not in self.judges:
            self.judges[key] = stages.gold_judge(task, seed, root)
        return self.judges[key]


def execute(
    cfg: RunConfig, method: Method, source: str, force: bool = False, shared: Shared | None = None
) -> dict[str, Any]:
    """Steps 1 (the process-dependent part) to 5 of a resolved run."""
    from alignlab.train.loop import make_accelerator

    t_start = time.time()
    reset_peak_rss()
    shared = shared or Shared()
    # 1. pre-flight: out_dir is alignlab's (or new) and the cache writable, before any work; then the
    #    accelerator (the batch split depends on the number of processes)
    out = Path(cfg.out_dir)
    check_claimable(out, "run", "out_dir", source)
    check_cache_writable()
    accelerator = make_accelerator(cfg.train, out)
    check_split(cfg, method, accelerator.num_processes, source)
    task = shared.task(cfg.task, source)
    resolved = _resolved(cfg, task, method)
    # one training process per run directory: a second one on the same out_dir is refused
    lock = training_lock(out, "out_dir", source) if accelerator.is_main_process else contextlib.nullcontext()
    with lock:
        with accelerator.main_process_first():
            main = accelerator.is_main_process
            finished = claim_out_dir(out, resolved, force and main, source, write=main)
        if finished is not None:
            if accelerator.is_main_process:
                print(f"{out} holds this run, finished; nothing to do (pass --force to run it again)", file=sys.stderr)
            return finished
        if accelerator.is_main_process:  # what an earlier attempt, killed mid-write, left
            clear_temps(out)
        # 2. shared stages (built once by the main process; the others load them from the cache)
        root = cache_root()
        # every process: under accelerate launch SFT, when it must be built, trains on all of them
        policy = prepare_policy(task, cfg.model, cfg.sft, cache=root, progress=cfg.train.progress)
        with accelerator.main_process_first():
            check_lengths(cfg, method, model_context(policy.model), source)
            judge = shared.judge(task, cfg.sft.seed, root) if task.has_gold_judge() else None
            data = _method_data(cfg, method, task, policy, judge, root)
        # 3-4. train
        from alignlab.jobs.evaluation import win_rate_rows
        from alignlab.jobs.methods import train_method

        # the policy that trains: the SFT policy, or fresh LoRA adapters on it (π_ref: the adapters off)
        policy = with_adapters(policy, cfg.model.lora, cfg.train.seed)
        final = train_method(cfg, method, task, policy, judge, data, accelerator, out)
        models_held = final.pop("models_held", [])
        if accelerator.is_main_process and method.objective.needs.data != "sampling":  # the trained policy, alone
            final_dir = publish_final(out)
            if final_dir is not None:
                loads = (
                    f"its LoRA adapter: PeftModel.from_pretrained loads it; alignlab export {out} merges it"
                    if cfg.model.lora is not None
                    else "AutoModelForCausalLM.from_pretrained loads it"
                )
                say(f"{out}: the trained policy is in {final_dir} ({loads})")
        winrate = None
        if cfg.eval.winrate.temperatures:
            winrate = win_rate_rows(cfg, task, policy, judge, data, out, accelerator)
        # 5. summary, last
        summary = {
            "method": method.name,
            "knobs": method.cfg.to_dict(),
            "citation": method.objective.citation,
            "task": task.name,
            "policy": str(policy.path),
            "sft": {k: policy.metrics.get(k) for k in ("held_out_ppl_before", "held_out_ppl", "parameters")},
            "final": final,
            "models_held": models_held,
            "winrate": winrate,
            "reward_model": data.get("reward_model_metrics"),
            "wall_time_s": round(time.time() - t_start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "processes": accelerator.num_processes,
            "code": code_version(sys.modules[__name__]),
        }
        if accelerator.is_main_process:
            text = json.dumps(summary, indent=2).replace(str(root), "$ALIGNLAB_CACHE_DIR")
            summary = json.loads(text)
            atomic_write_json(out / "summary.json", summary)
        accelerator.end_training()
        return summary


def check_lengths(cfg: RunConfig, method: Method, context: int, source: str) -> None:
    """Every sampling length leaves room for a prompt (a BOS and a token) in the model's context."""
    online = method.objective.needs.data == "online"
    sampling = method.objective.needs.data == "sampling"
    lengths = {"eval.max_new_tokens": cfg.eval.max_new_tokens if cfg.eval.prompts or sampling else 0}
    lengths["rollout.max_new_tokens"] = cfg.rollout.max_new_tokens if online else 0
    if cfg.eval.winrate.temperatures:
        lengths["eval.winrate.max_new_tokens"] = cfg.eval.winrate.max_new_tokens or 0
    if cfg.data.source == "generated" and not online:
        lengths["data.generate.max_new_tokens"] = cfg.data.generate.max_new_tokens
    for key, limit in (
        ("train.max_length", cfg.train.max_length),
        ("reward.model.max_length", cfg.reward.model.max_length),
    ):
        if limit is not None and limit > context:
            raise ConfigError(key, f"{limit} is longer than the model's context of {context} tokens", source)
    for key, n in lengths.items():
        if n + 2 > context:
            raise ConfigError(
                key, f"{n} new tokens leave no room for a prompt in the model's context of {context} tokens", source
            )


def _method_data(cfg: RunConfig, method: Method, task: Task, policy: Any, judge: Any, root: Path) -> dict[str, Any]:
    """Steps 2–3: whatever this method needs, built or loaded from the cache."""
    data: dict[str, Any] = {}
    online = method.objective.needs.data in ("online", "sampling")  # prompts, not a dataset of pairs
    if not online:
        data = offline_rows(cfg, task, policy, judge, root, method.objective)
    judged_by_rm = bool(cfg.eval.winrate.temperatures) and cfg.eval.winrate.judge == "reward_model"
    if ((online and cfg.reward.kind == "model") or judged_by_rm) and "reward_model" not in data:
        pairs = (data["train"], data["eval"]) if cfg.data.source != "generated" and "train" in data else None
        data["reward_model"], data["reward_model_metrics"] = run_reward_model(cfg, task, policy, judge, root, pairs)
    if online and cfg.reward.kind == "gold" and judge is None:
        raise ConfigError("reward.kind", f"task {task.name!r} has no gold judge: use reward.kind: model")
    return data


def run_reward_model(
    cfg: RunConfig,
    task: Task,
    policy: Any,
    judge: Any,
    root: Path,
    pairs: tuple[list[PreferencePair], list[PreferencePair]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The run's reward model — PPO's reward, best-of-N's ranker, the win-rate judge — and its metrics:
    Bradley–Terry from the SFT policy on the run's train pairs (at most ``reward.max_pairs``),
    built once and cached (:func:`alignlab.stages.reward_model`).

    ``pairs``: the run's (train, held-out) pairs when already read (an offline method's); they are
    read from a file (generated pairs are read again whole, before ``data.pairs``); label noise
    flips the training pairs as an offline method sees them.
    """
    if pairs is not None:  # an offline method already read the same (noisy) pairs
        rm_train, rm_eval = pairs
    else:
        if cfg.data.source == "generated":
            path, _ = stages.generated_pairs(task, policy, judge, cfg.data.generate, root, cfg.train.progress)
            rm_train, rm_eval = stages.load_generated(path, task)
        else:
            rm_train, rm_eval = read_rows(cfg, task, policy, judge, root, unpaired=False)  # type: ignore[assignment]
        if cfg.data.label_noise > 0:  # the noisy training pairs, as an offline method sees them
            rm_train = flip_labels(rm_train, cfg.data.label_noise, cfg.data.label_noise_seed)
    return stages.reward_model(
        policy,
        rm_train[: cfg.reward.max_pairs],
        rm_eval,
        cfg.reward.model,
        root,
        cfg.train.progress,
        dtype=frozen_dtype(cfg.train),  # held frozen beside the policy
    )
