"""A run's configuration: the YAML of ``alignlab train`` (and of each run an experiment expands), one
frozen dataclass per section, every key documented and range-checked (docs/yaml_reference.md is
generated from these).

The sections of the code below the orchestration live beside that code (``model``:
:mod:`alignlab.models`, ``sft``: :mod:`alignlab.sft`, ``train``: :mod:`alignlab.train.config`,
``rollout``: :mod:`alignlab.train.online_batches`, ``reward.model``: :mod:`alignlab.train.reward_model`)
and are gathered here; the sections of the orchestration itself (``data``, read by
:mod:`alignlab.jobs.sources`; ``reward``; ``eval``, read by :mod:`alignlab.jobs.methods`) are defined
here. So this module sits below :mod:`alignlab.jobs`, whose every part types ``cfg: RunConfig``, and
imports nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from alignlab.models import ModelConfig
from alignlab.pairs import PairGenConfig
from alignlab.schema import Config, knob
from alignlab.sft import SFTConfig
from alignlab.tasks import DEFAULT_TASK
from alignlab.train.config import TrainConfig
from alignlab.train.online_batches import RolloutConfig
from alignlab.train.reward_model import RewardModelConfig


@dataclass(frozen=True)
class DataConfig(Config):
    source: Literal["generated", "task", "reviews", "file"] = knob(
        "generated",
        "generated: pairs sampled from the SFT policy and ranked by the task's gold judge (DPO paper §6.1; "
        "imdb); task: the task's human pairs (hh, tldr, cnndm); reviews: continuations of the task's labelled "
        "texts, positive chosen over negative (labels known, no sampling; imdb); file: the rows of data.path.",
    )
    path: str | None = knob(
        None,
        "source: file - a local .jsonl, .jsonl.gz or .parquet file (relative to the working directory) or a Hub "
        "dataset id (owner/name). Pairs: prompt, chosen, rejected and optionally chosen_score, rejected_score "
        "(both on every row or on none); unpaired rows for KTO: prompt, completion, label (true: desirable). "
        "Held-out rows: a hash split of the prompts (task.eval_fraction, task.seed).",
    )
    hub_split: str = knob("train", "The split of the Hub dataset that data.path names.")
    pairs: int | None = knob(None, "Use at most this many training pairs (null: all).", gt=0)
    eval_pairs: int = knob(128, "Held-out pairs for the evaluation loss and metrics.", gt=0)
    generate: PairGenConfig = knob(default_factory=PairGenConfig, help="Pair generation (source: generated).")
    prompt_words: int = knob(4, "Words of a review opening used as the prompt (source: reviews).", gt=0)
    completion_words: int = knob(16, "Words of each continuation (source: reviews).", gt=0)
    kto_pairs_as_unpaired: bool = knob(
        True, "KTO from pairs: chosen completions are desirable, rejected ones undesirable (KTO §4)."
    )
    scores: Literal["data", "reward_model", "none"] = knob(
        "data",
        "Scores of the chosen and rejected completions, for objectives that need them (madpo, odpo): data: "
        "the pairs' own (generated: the gold judge's rewards; file: its chosen_score/rejected_score); "
        "reward_model: a Bradley-Terry reward model (reward.model) trained on the training pairs only scores "
        "every pair (cached); none: no scores.",
    )
    label_noise: float = knob(
        0.0,
        "ε: flip the label of round(ε·n) of the n training pairs, chosen by label_noise_seed (chosen and "
        "rejected swapped, each keeping its own score); held-out pairs are never flipped.",
        ge=0,
        lt=0.5,
    )
    label_noise_seed: int = knob(0, "Seed of the choice of flipped pairs.")


@dataclass(frozen=True)
class RewardConfig(Config):
    kind: Literal["gold", "model"] = knob(
        "gold", "PPO's reward and best-of-N's ranker: the gold judge (PPO-GT) or a learned reward model (PPO)."
    )
    model: RewardModelConfig = knob(default_factory=RewardModelConfig, help="Training of the reward model.")
    max_pairs: int | None = knob(None, "Train the reward model on at most this many pairs.", gt=0)


@dataclass(frozen=True)
class WinRateConfig(Config):
    temperatures: list[float] = knob(
        default_factory=list,
        help="Sampling temperatures of the final win-rate evaluation, 0 = greedy (empty: no win rates). "
        "The DPO paper: 0, 0.25, 0.5, 0.75, 1.0.",
        ge=0,
    )
    prompts: int = knob(0, "Held-out prompts with a reference completion to judge (0: all of them).", ge=0)
    judge: Literal["reward_model", "gold", "llm"] = knob(
        "reward_model",
        "reward_model: the trained reward model ranks sample against reference; gold: the gold judge; "
        "llm: a causal LM (judge_model) asked which is better, positions randomised.",
    )
    judge_model: str | None = knob(None, "The LLM judge's model (a Hub id, a directory, or 'smollm2-135m').")
    judge_orders: Literal["random", "both"] = knob(
        "random",
        "The llm judge's slots: random (each pair in one order, by a seeded coin: the DPO paper's) or both "
        "(each pair both ways, P averaged: a constant slot preference cancels in every pair; twice the cost).",
    )
    max_new_tokens: int | None = knob(None, "Length limit of the samples (null: eval.max_new_tokens).", gt=0)


@dataclass(frozen=True)
class EvalConfig(Config):
    prompts: int = knob(64, "Held-out prompts sampled at every evaluation (0: no sampling evaluation).", ge=0)
    samples_per_prompt: int = knob(1, "Samples per held-out prompt (the CI resamples prompts).", ge=1)
    max_new_tokens: int = knob(48, "Length limit of the evaluation samples.", gt=0)
    temperature: float = knob(1.0, "Temperature of the evaluation samples.", ge=0.01)
    seed: int = knob(0, "Seed of the evaluation samples (the same at every evaluation).")
    split: Literal["test", "validation"] = knob(
        "test",
        "Which part of the held-out prompts the sampling evaluation uses: test (the frontier's) or validation "
        "(disjoint from test; what tune: candidates are scored on). IMDb: test-review prefixes / train-review "
        "prefixes; the other tasks: a hash split of their eval prompts (task.validation_fraction).",
    )
    also_test: bool = knob(
        False,
        "With split: validation, evaluate the test prompts too at every evaluation, logged as test_sample_* "
        "(tune.reuse sets it on tuning runs: the chosen candidate's are then its final runs at their settings "
        "and seeds).",
    )
    winrate: WinRateConfig = knob(
        default_factory=WinRateConfig, help="Win rate against the task's reference completions, after training."
    )


@dataclass(frozen=True)
class RunConfig(Config):
    task: Any = knob(
        default_factory=lambda: {"name": DEFAULT_TASK},
        help="The task: {name: imdb | hh | tldr | cnndm | one a plugin registers, ...}.",
    )
    model: ModelConfig = knob(default_factory=ModelConfig, help="The policy's model.")
    sft: SFTConfig = knob(default_factory=SFTConfig, help="Supervised fine-tuning before preference training.")
    data: DataConfig = knob(default_factory=DataConfig, help="Where the preference data comes from.")
    reward: RewardConfig = knob(default_factory=RewardConfig, help="The reward of PPO and best-of-N.")
    objective: Any = knob(
        default_factory=lambda: {"name": "dpo"},
        help="{name: <registered objective>, <knob>: <value>, ...}; see `alignlab objectives` (best_of_n included).",
    )
    train: TrainConfig = knob(default_factory=TrainConfig, help="Optimiser, batch, schedule, checkpoints, logging.")
    rollout: RolloutConfig = knob(
        default_factory=RolloutConfig,
        help="The online methods' rollouts: sampling, k per prompt, epochs, minibatches, the KL term, the estimator.",
    )
    eval: EvalConfig = knob(default_factory=EvalConfig, help="Sampling evaluation: mean reward and KL.")
    plugins: list[str] = knob(
        default_factory=list,
        help="Modules or .py files (relative to the YAML) that register objectives, trainers or tasks.",
    )
    out_dir: str = knob("runs/run", "The run directory: config, metrics, checkpoints, summary.")


# PPO's rollout settings that were objective knobs before the online methods shared one trainer
MOVED_TO_ROLLOUT = {
    "kl_coef": "kl_coef",
    "target_kl": "target_kl",
    "kl_horizon": "kl_horizon",
    "kl_estimator": "kl_estimator",
    "gamma": "gamma",
    "lam": "lam",
    "whiten_advantages": "whiten_advantages",
    "ppo_epochs": "epochs",
    "num_minibatches": "minibatches",
}
