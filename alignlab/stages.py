"""The shared stages a run builds before preference training, each cached under ``$ALIGNLAB_CACHE_DIR``.

Every stage is keyed by a fingerprint of everything that determines it (inputs, settings, code
version) and published atomically, so a second run — or a second process — with the same key
loads it instead of building it. What it loads is verified first (:func:`alignlab.io.load_intact`):
a damaged entry is moved aside and built again under the stage's lock, with one warning line.

- :func:`gold_judge`: the task's gold reward, as the task declares it (IMDb: the hashed n-gram sentiment
  classifier);
- :func:`generated_pairs`: preference pairs by the DPO protocol from the SFT policy and a judge;
- :func:`reward_model`: a Bradley–Terry reward model initialised from the SFT policy.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.cache_keys import code_version, fingerprint, stage_code, texts_fingerprint
from alignlab.errors import AlignlabError
from alignlab.io import atomic_dir, atomic_write_json, clear_temps, file_lock, load_intact
from alignlab.models import model_context
from alignlab.pairs import PairGenConfig, generate_pairs, load_pairs
from alignlab.progress import cached, stage
from alignlab.rewards.model import RewardModel
from alignlab.sft import Policy
from alignlab.tasks import Task, task_names
from alignlab.tasks.base import PreferencePair, in_eval_split
from alignlab.train.reward_model import RewardModelConfig, train_reward_model


def gold_judge(task: Task, seed: int, root: Path) -> Any:
    """The task's gold judge (:attr:`Task.gold_judge`), trained once per (data, seed, code) and cached."""
    spec = task.gold_judge
    if spec is None:
        have = ", ".join(task_names(lambda t: t.has_gold_judge())) or "none"
        raise AlignlabError(f"task {task.name!r} has no gold judge (tasks with one: {have})")
    code = code_version(*(importlib.import_module(module) for module in spec.modules()))
    path = root / "gold" / fingerprint(task.name, task.source, seed, code)
    with file_lock(path.parent / f".{path.name}.lock"):
        judge = load_intact(path, spec.load, "the cached gold judge")
        if judge is not None:
            cached("gold judge", path)
        else:  # not built yet, or damaged (moved aside)
            clear_temps(path.parent, path.name)  # a build killed half-way
            with stage("gold judge", spec.doing), atomic_dir(path) as tmp:
                spec.train(task, tmp, seed)
            judge = spec.load(path)
    with contextlib.suppress(AttributeError):  # a judge class with __slots__ keeps its name as its identity
        judge.cache_key = f"{judge.name}:{path.name}"  # type: ignore[attr-defined]  # keys the pairs it ranks
    return judge


def generated_pairs(
    task: Task, policy: Policy, judge: Any, cfg: PairGenConfig, root: Path, progress: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Pairs by the DPO protocol (k samples per train prompt, ranked by ``judge``); (directory, info)."""
    prompts = task.prompts("train", policy.tokenizer)
    used = prompts[: cfg.max_prompts or len(prompts)]
    judge_key = getattr(judge, "cache_key", judge.name)  # the gold judge's own cache key, code included
    key = fingerprint(str(policy.path), used, judge_key, cfg.to_dict(), stage_code("pairs"))
    path = root / "pairs" / key
    with file_lock(path.parent / f".{key}.lock"):
        found = load_intact(path, _pairs_info, "the cached preference pairs")
        if found is not None:
            cached("preference pairs", path, f"{found.get('pairs', '?')} pairs")
            return path, {**found, "cached": True}
        clear_temps(path.parent, key)  # a generation killed half-way
        doing = f"{cfg.samples_per_prompt} samples for each of {len(used):,} train prompts, ranked by {judge.name}"
        with stage("preference pairs", doing):
            info = generate_pairs(
                policy.model,
                policy.tokenizer,
                prompts,
                judge,
                cfg,
                path,
                meta={"policy": str(policy.path), "reward": judge.name},
                progress=progress,
            )
    return path, info


def _pairs_info(path: Path) -> dict[str, Any]:
    """``pairs.json`` of a generated dataset, once its pairs have been read whole."""
    load_pairs(path)
    return dict(json.loads((path / "pairs.json").read_text()))


def split_by_prompt(
    pairs: Sequence[PreferencePair], fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held out) by a hash of the prompt, as the human-pair tasks split: no prompt on both sides."""
    is_eval = [in_eval_split(p.prompt, fraction, seed) for p in pairs]
    return [p for p, e in zip(pairs, is_eval, strict=True) if not e], [
        p for p, e in zip(pairs, is_eval, strict=True) if e
    ]


def load_generated(path: Path, task: Task) -> tuple[list[PreferencePair], list[PreferencePair]]:
    return split_by_prompt(load_pairs(path), task.cfg.eval_fraction, task.cfg.seed)


def reward_model(
    policy: Policy,
    train: Sequence[PreferencePair],
    held_out: Sequence[PreferencePair],
    cfg: RewardModelConfig,
    root: Path,
    progress: bool = True,
    dtype: Any = None,
) -> tuple[RewardModel, dict[str, Any]]:
    """A Bradley–Terry reward model from the SFT policy on ``train``, cached; (model, metrics).

    Training checkpoints go to a sibling ``.run`` directory, so an interrupted training resumes. The
    model returned is loaded in ``dtype`` (a ``torch.dtype``; None: float32, as trained and saved).
    """
    texts = [t for p in train for t in (p.prompt, p.chosen, p.rejected)]
    key = fingerprint(str(policy.path), texts_fingerprint(texts), cfg.to_dict(), stage_code("reward_model"))
    path = root / "reward_model" / key
    with file_lock(path.parent / f".{key}.lock"):  # one builder; the others wait, then load
        found = load_intact(path, lambda at: _reward_model_and_metrics(at, dtype), "the cached reward model")
        if found is not None:
            cached("reward model", path)
            return found[0], {**found[1], "cached": True}
        clear_temps(path.parent, key)  # a build killed half-way (its .run directory resumes)
        context = cfg.max_length or model_context(policy.model)
        rm = RewardModel.from_policy(str(policy.path), policy.tokenizer, seed=cfg.seed)
        run_dir = root / "reward_model" / f".{key}.run"
        with stage("reward model", f"Bradley-Terry on {len(train):,} pairs, {cfg.epochs} epochs"):
            metrics = train_reward_model(rm, list(train), list(held_out), cfg, progress=progress, out_dir=run_dir)
        metrics["context"] = context
        with atomic_dir(path) as tmp:
            rm.model.save_pretrained(tmp)
            rm.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "metrics.json", metrics)
        shutil.rmtree(run_dir, ignore_errors=True)
        # the model as saved, as a later run loads it (not the trained object, in training mode)
        return RewardModel.load(path, dtype), {**metrics, "cached": False}


def _reward_model_and_metrics(path: Path, dtype: Any = None) -> tuple[RewardModel, dict[str, Any]]:
    return RewardModel.load(path, dtype), dict(json.loads((path / "metrics.json").read_text()))
