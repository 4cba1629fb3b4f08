"""``alignlab prepare``: build the shared stages of a task, each cached, and report them.

Everything a run needs before any preference training, in numbered steps:

1. the task's data, with bad rows counted per file;
2. the policy: tokenizer, model, SFT (cached; held-out perplexity before and after);
3. sample completions from the SFT policy, to read;
4. the gold judge, if the task declares one (IMDb: the hashed n-gram sentiment classifier), cached;
5. preference pairs by the DPO protocol from the SFT policy and the gold judge (cached);
6. a Bradley–Terry reward model on the task's pairs (human pairs, or the generated ones),
   initialised from the SFT policy, with held-out pair accuracy.

The report — wall time and metrics of every stage, the samples, the data report — goes to
``out_dir/stages.json`` with the resolved config beside it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab import stages as shared
from alignlab.config import apply_overrides, blaming, load_yaml, parse_override
from alignlab.core.rollout import rollout
from alignlab.data import check_cache_writable
from alignlab.encoding import encode_text
from alignlab.errors import AlignlabError, ConfigError
from alignlab.io import atomic_write_text, atomic_write_yaml
from alignlab.models import ModelConfig, model_context
from alignlab.pairs import PairGenConfig
from alignlab.plugins import load_plugins
from alignlab.schema import Config, knob
from alignlab.sft import SFTConfig, prepare_policy
from alignlab.tasks import build_task, task_names
from alignlab.train.reward_model import RewardModelConfig


@dataclass(frozen=True)
class SampleConfig(Config):
    n: int = knob(3, "Completions sampled from the SFT policy for the report (0: none).", ge=0)
    max_new_tokens: int = knob(48, "Their length limit in tokens.", gt=0)
    temperature: float = knob(1.0, "Their sampling temperature.", ge=0)
    seed: int = knob(0, "Their sampling seed.")


@dataclass(frozen=True)
class PrepareConfig(Config):
    task: Any = knob(help="The task: {name: imdb | hh | tldr | cnndm | one a plugin registers, <task settings>}.")
    model: ModelConfig = knob(default_factory=ModelConfig, help="The policy's model.")
    sft: SFTConfig = knob(default_factory=SFTConfig, help="Supervised fine-tuning of the policy.")
    samples: SampleConfig = knob(default_factory=SampleConfig, help="Samples from the SFT policy for the report.")
    gold: bool = knob(True, "Train (or load) the task's gold judge, when the task has one.")
    pairs: PairGenConfig | None = knob(None, "Generate preference pairs by the DPO protocol (needs the gold judge).")
    reward_model: RewardModelConfig | None = knob(None, "Train a Bradley–Terry reward model on the task's pairs.")
    reward_model_pairs: int | None = knob(None, "Train the reward model on at most this many pairs.", gt=0)
    plugins: list[str] = knob(
        default_factory=list, help="Modules or .py files (relative to the YAML) that register tasks (or objectives)."
    )
    out_dir: str = knob("results/prepare", "Where stages.json and the resolved config are written.")


def fits(tokenizer: Any, prompt: str, limit: int) -> bool:
    """Whether ``prompt`` (with BOS) is at most ``limit`` tokens."""
    return len(encode_text(tokenizer, [prompt])[0]) + 1 <= limit


def run_prepare(path: str | Path, overrides: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the stages of the YAML at ``path``; returns the report also written to ``out_dir/stages.json``."""
    source = str(path)
    parsed = [parse_override(item) for item in overrides or []]
    data = apply_overrides(load_yaml(path), parsed)
    with blaming(parsed):  # a key an override set is the argument's mistake, not the file's
        cfg: PrepareConfig = PrepareConfig.from_dict(data, source)
        load_plugins(cfg.plugins, Path(path).parent, source)  # a plugin's task, before it is named
        task = build_task(cfg.task, source)
    if cfg.pairs is not None and not task.has_gold_judge():
        have = ", ".join(task_names(lambda t: t.has_gold_judge()))
        raise ConfigError(
            "pairs", f"pair generation needs a task with a gold judge (tasks with one: {have}): leave pairs out", source
        )
    if cfg.pairs is not None and not cfg.gold:
        raise ConfigError("pairs", "pair generation needs the task's gold judge: set gold: true", source)
    root = check_cache_writable()  # before any work
    out = Path(cfg.out_dir)
    report: dict[str, Any] = {"task": task.name, "source": task.source, "stages": {}}
    stages = report["stages"]

    def timed(stage: str, t0: float, **metrics: Any) -> None:
        stages[stage] = {"seconds": round(time.time() - t0, 2), **metrics}
        write()

    def write() -> None:
        # results are shared: name the cache and data directories by their settings, not this machine's paths
        text = json.dumps(report, indent=2).replace(str(root), "$ALIGNLAB_CACHE_DIR")
        if task.data_dir is not None:
            text = text.replace(json.dumps(str(task.data_dir))[1:-1], "$ALIGNLAB_DATA_DIR")
        atomic_write_text(out / "stages.json", text + "\n")

    atomic_write_yaml(out / "config.yaml", {**cfg.to_dict(), "task": task.cfg.to_dict()})
    # 1. data
    t0 = time.time()
    texts = task.sft_texts()
    timed("data", t0, sft_texts=len(texts))
    # 2. policy
    t0 = time.time()
    policy = prepare_policy(task, cfg.model, cfg.sft, cache=root, progress=progress)
    timed("sft", t0, path=str(policy.path), **policy.metrics)
    # 3. samples to read
    if cfg.samples.n:
        t0 = time.time()
        limit = model_context(policy.model) - cfg.samples.max_new_tokens
        prompts = [p for p in task.prompts("eval", policy.tokenizer) if fits(policy.tokenizer, p, limit)]
        if not prompts:
            raise AlignlabError(
                f"samples: no eval prompt of {task.name} fits {limit} tokens (the context of "
                f"{model_context(policy.model)} minus max_new_tokens); use a model with a longer context"
            )
        r = rollout(
            policy.model,
            policy.tokenizer,
            prompts[: cfg.samples.n],
            max_new_tokens=cfg.samples.max_new_tokens,
            temperature=cfg.samples.temperature,
            seed=cfg.samples.seed,
            max_prompt_tokens=limit,
        )
        timed(
            "samples",
            t0,
            samples=[{"prompt": p, "completion": c} for p, c in zip(r.prompts, r.completions, strict=True)],
        )
    # 4. gold judge
    judge = None
    if cfg.gold and task.has_gold_judge():
        t0 = time.time()
        judge = shared.gold_judge(task, cfg.sft.seed, root)
        timed("gold", t0, judge=judge.name)
        if cfg.samples.n:
            scores = judge(
                [s["prompt"] for s in stages["samples"]["samples"]],
                [s["completion"] for s in stages["samples"]["samples"]],
            )
            for s, score in zip(stages["samples"]["samples"], scores.tolist(), strict=True):
                s["gold_reward"] = round(score, 4)
            write()
    # 5. preference pairs
    pairs_dir = None
    if cfg.pairs is not None and judge is not None:
        t0 = time.time()
        pairs_dir, info = shared.generated_pairs(task, policy, judge, cfg.pairs, root, progress)
        timed("pairs", t0, path=str(pairs_dir), **{k: v for k, v in info.items() if k != "config"})
    # 6. reward model
    if cfg.reward_model is not None:
        t0 = time.time()
        if pairs_dir is not None:
            train, held_out = shared.load_generated(pairs_dir, task)
        else:
            train, held_out = task.pairs("train"), task.pairs("eval")
        context = cfg.reward_model.max_length or model_context(policy.model)
        train = task.fit_to_context(train, policy.tokenizer, context)[: cfg.reward_model_pairs]
        held_out = task.fit_to_context(held_out, policy.tokenizer, context)
        _, metrics = shared.reward_model(policy, train, held_out, cfg.reward_model, root, progress)
        timed("reward_model", t0, **metrics)
    report["data_report"] = task.report.to_dict()
    write()
    return report
