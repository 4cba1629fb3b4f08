"""Reward models: a causal LM with a scalar head, trained on preference pairs by Bradley–Terry.

r_φ(x, y) is the head's output at the last token of prompt + completion. Training minimises
−log σ(r_φ(x, y_w) − r_φ(x, y_l)) (Bradley & Terry 1952; Stiennon et al. 2020, Eq. 1), chosen
and rejected scored in one forward pass through the scoring core's batching
(:func:`alignlab.core.scoring.concat_pairs`); every pair is tokenised once, up front
(:class:`alignlab.train.data.PairData`). Training runs through the offline trainer, so it has the
same optimiser handling, accumulation, checkpoints, resume and NaN guard as every objective.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.core.scoring import EncodedBatch, concat_pairs
from alignlab.encoding import encode_completions
from alignlab.errors import AlignlabError
from alignlab.io import atomic_dir
from alignlab.models import model_context
from alignlab.objectives.base import LossOutput
from alignlab.schema import Config, knob
from alignlab.tasks.base import PreferencePair
from alignlab.train.data import PairData
from alignlab.train.offline import evaluate_step


@dataclass(frozen=True)
class RewardModelConfig(Config):
    epochs: int = knob(1, "Passes over the training pairs.", gt=0)
    batch_size: int = knob(16, "Pairs per optimiser step.", gt=0)
    lr: float = knob(1e-4, "AdamW learning rate (linear warm-up over the first 10% of steps).", gt=0)
    weight_decay: float = knob(0.0, "AdamW weight decay.", ge=0)
    grad_clip: float = knob(1.0, "Clip the gradient norm to this value.", gt=0)
    max_length: int | None = knob(None, "Truncate prompt + completion to this many tokens (None: the context).", gt=1)
    seed: int = knob(0, "Seed of the head's initialisation and the pair order.")


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """−log σ(r_w − r_l) per pair, (B,) -> (B,): the negative log-likelihood of the preference."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


class RewardModel:
    """A scalar-head sequence classifier scoring ``prompt + completion``; satisfies the Reward protocol."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "reward_model", batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        self.model.config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_policy(cls, path: str | Path, tokenizer: Any, seed: int = 0, **kwargs: Any) -> RewardModel:
        """A reward model initialised from a (SFT) causal LM's weights, with a fresh scalar head."""
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype | None = None, **kwargs: Any) -> RewardModel:
        """A saved reward model, its weights in ``dtype`` (None: as saved; ``train.frozen_dtype`` for a run's)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype or "auto")  # auto: as saved
        return cls(model, AutoTokenizer.from_pretrained(path), **kwargs)

    def save(self, path: str | Path) -> None:
        """``save_pretrained`` of model and tokenizer, published atomically."""
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

    @property
    def context(self) -> int:
        return model_context(self.model)

    def encode(self, prompts: Sequence[str], completions: Sequence[str], max_length: int | None = None) -> EncodedBatch:
        return encode_completions(self.tokenizer, prompts, completions, max_length or self.context)

    def score(self, batch: EncodedBatch, model: Any = None) -> Tensor:
        """(B,) rewards of an encoded batch (the head reads the last non-padding token).

        ``model``: the same network wrapped for training (DDP), if not ``self.model``.
        """
        position_ids = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = (model if model is not None else self.model)(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids
        )
        return out.logits[:, 0].float()

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        batch = self.encode(prompts, completions)
        scores = [
            self.score(batch.select(list(range(i, min(i + self.batch_size, len(batch))))).trim())
            for i in range(0, len(batch), self.batch_size)
        ]
        self.model.train(was_training)
        return torch.cat(scores)


def pair_rewards(rm: RewardModel, data: PairData, rows: list[int], model: Any = None) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) rewards (B,) of ``rows`` of ``data``, both sides in one forward pass."""
    scorer = model if model is not None else rm.model
    device = next(scorer.parameters()).device
    both = concat_pairs(data.chosen.select(rows).trim(), data.rejected.select(rows).trim(), data.pad_token_id)
    scores = rm.score(both.to(device), scorer)
    return scores[: len(rows)], scores[len(rows) :]


def reward_model_step(rm: RewardModel, data: PairData) -> Any:
    """The offline trainer's step function for Bradley–Terry training on ``data``."""

    def step(model: Any, rows: list[int]) -> LossOutput:
        chosen, rejected = pair_rewards(rm, data, rows, model)
        return LossOutput(
            bradley_terry_loss(chosen, rejected),
            {"accuracy": (chosen > rejected).float().detach(), "margin": (chosen - rejected).detach()},
        )

    return step


@torch.no_grad()
def evaluate_reward_model(rm: RewardModel, data: PairData, batch_size: int = 64) -> dict[str, float]:
    """Pair accuracy (r_w > r_l), mean Bradley–Terry loss and mean margin over all pairs."""
    metrics = evaluate_step(reward_model_step(rm, data), rm.model, len(data), batch_size)
    return {"accuracy": metrics["accuracy"], "loss": metrics["loss"], "margin": metrics["margin"], "pairs": len(data)}


def train_reward_model(
    rm: RewardModel,
    train: Sequence[PreferencePair],
    held_out: Sequence[PreferencePair],
    cfg: RewardModelConfig,
    progress: bool = True,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Bradley–Terry training through the offline trainer; returns held-out accuracy before and after
    (``None`` when ``held_out`` is empty).

    ``out_dir`` holds the run's checkpoints and metrics (an interrupted run resumes from it); by
    default a temporary directory, removed afterwards.
    """
    import tempfile

    from alignlab.train.config import TrainConfig
    from alignlab.train.loop import make_accelerator
    from alignlab.train.offline import train_offline

    max_length = cfg.max_length or rm.context
    train_data = PairData.build(rm.tokenizer, train, max_length)
    # no held-out pair (a small generated set whose prompts all fell in the train split): trained, not measured
    eval_data = PairData.build(rm.tokenizer, held_out, max_length) if held_out else None
    before = evaluate_reward_model(rm, eval_data) if eval_data is not None else None
    steps = cfg.epochs * (len(train_data) // cfg.batch_size)
    if steps < 1:
        raise AlignlabError(
            f"the reward model has {len(train_data)} training pairs, fewer than its batch size of "
            f"{cfg.batch_size}: make more pairs or set a smaller batch_size"
        )
    tcfg = TrainConfig(
        steps=steps,
        batch_size=cfg.batch_size,
        optimizer="adamw",
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=max(1, steps // 10),
        schedule="linear",
        grad_clip=cfg.grad_clip,
        disable_dropout=False,
        eval_every=steps,
        save_every=steps,
        log_with=[],
        seed=cfg.seed,
        progress=progress,
    )
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = out_dir or Path(tmp)
        accelerator = make_accelerator(tcfg, run_dir)
        train_offline(
            rm.model,
            reward_model_step(rm, train_data),
            len(train_data),
            tcfg,
            run_dir,
            accelerator,
            name="reward model",
        )
    return {
        "held_out_before": before,
        "held_out": evaluate_reward_model(rm, eval_data) if eval_data is not None else None,
        "train_pairs": len(train_data),
        "steps": steps,
        "train_seconds": round(time.time() - t0, 2),
    }
