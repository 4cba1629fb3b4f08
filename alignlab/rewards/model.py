"""Reward models as scorers: a causal LM with a scalar head, r_φ(x, y) its output at the last token of
prompt + completion; it satisfies the Reward protocol (:mod:`alignlab.rewards.base`).

Their Bradley–Terry training on preference pairs is :mod:`alignlab.train.reward_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignlab.core.scoring import EncodedBatch
from alignlab.encoding import encode_completions
from alignlab.io import atomic_dir
from alignlab.models import model_context


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
