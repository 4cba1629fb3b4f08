"""Reward models: a causal LM with a scalar head, trained on preference pairs by Bradley–Terry.

r_φ(x, y) is the head's output at the last token of prompt + completion. Training minimises
−log σ(r_φ(x, y_w) − r_φ(x, y_l)) (Bradley & Terry 1952; Stiennon et al. 2020, Eq. 1), chosen
and rejected scored in one forward pass through the scoring core's batching
(:func:`alignlab.core.scoring.concat_pairs`); every pair is tokenised once, up front.
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
from tqdm.auto import tqdm

from alignlab.core.scoring import EncodedBatch, concat_pairs
from alignlab.encoding import encode_completions
from alignlab.io import atomic_dir
from alignlab.models import model_context
from alignlab.schema import Config, knob
from alignlab.tasks.base import PreferencePair


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
    def load(cls, path: str | Path, **kwargs: Any) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        return cls(
            AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path), **kwargs
        )

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

    def score(self, batch: EncodedBatch) -> Tensor:
        """(B,) rewards of an encoded batch (the head reads the last non-padding token)."""
        position_ids = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids)
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


@dataclass(frozen=True)
class EncodedPairs:
    """Every pair tokenised once: chosen and rejected batches with the same row order."""

    chosen: EncodedBatch
    rejected: EncodedBatch

    @classmethod
    def build(cls, rm: RewardModel, pairs: Sequence[PreferencePair], max_length: int | None) -> EncodedPairs:
        prompts = [p.prompt for p in pairs]
        return cls(
            rm.encode(prompts, [p.chosen for p in pairs], max_length),
            rm.encode(prompts, [p.rejected for p in pairs], max_length),
        )

    def __len__(self) -> int:
        return len(self.chosen)

    def rewards(self, rm: RewardModel, rows: list[int]) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) rewards of ``rows``, both sides in one forward pass."""
        both = concat_pairs(
            self.chosen.select(rows).trim(), self.rejected.select(rows).trim(), rm.tokenizer.pad_token_id
        )
        scores = rm.score(both)
        return scores[: len(rows)], scores[len(rows) :]


@torch.no_grad()
def evaluate_reward_model(rm: RewardModel, data: EncodedPairs, batch_size: int = 64) -> dict[str, float]:
    """Pair accuracy (r_w > r_l), mean Bradley–Terry loss and mean margin over all pairs."""
    rm.model.eval()
    correct, loss, margin = 0.0, 0.0, 0.0
    for start in range(0, len(data), batch_size):
        rows = list(range(start, min(start + batch_size, len(data))))
        chosen, rejected = data.rewards(rm, rows)
        correct += float((chosen > rejected).sum())
        loss += float(bradley_terry_loss(chosen, rejected).sum())
        margin += float((chosen - rejected).sum())
    rm.model.train()
    n = max(len(data), 1)
    return {"accuracy": correct / n, "loss": loss / n, "margin": margin / n, "pairs": len(data)}


def train_reward_model(
    rm: RewardModel,
    train: Sequence[PreferencePair],
    held_out: Sequence[PreferencePair],
    cfg: RewardModelConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """Bradley–Terry training; returns held-out accuracy before and after, and the speed."""
    from transformers import get_linear_schedule_with_warmup

    train_data = EncodedPairs.build(rm, train, cfg.max_length)
    eval_data = EncodedPairs.build(rm, held_out, cfg.max_length)
    before = evaluate_reward_model(rm, eval_data)
    steps = cfg.epochs * ((len(train_data) + cfg.batch_size - 1) // cfg.batch_size)
    opt = torch.optim.AdamW(rm.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_linear_schedule_with_warmup(opt, max(1, steps // 10), steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    rm.model.train()
    t0 = time.time()
    bar = tqdm(total=steps, desc="reward model", disable=not progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train_data), generator=gen).tolist()
        for start in range(0, len(order), cfg.batch_size):
            chosen, rejected = train_data.rewards(rm, order[start : start + cfg.batch_size])
            loss = bradley_terry_loss(chosen, rejected).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"reward-model loss is {loss.item()} at step {bar.n + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.model.parameters(), cfg.grad_clip)
            opt.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{(chosen > rejected).float().mean().item():.2f}")
    bar.close()
    seconds = time.time() - t0
    return {
        "held_out_before": before,
        "held_out": evaluate_reward_model(rm, eval_data),
        "train_pairs": len(train_data),
        "steps": steps,
        "train_seconds": round(seconds, 2),
    }
