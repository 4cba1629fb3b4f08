"""A Hugging Face sequence classifier as a reward, e.g. the DPO paper's IMDb gold judge
``siebert/sentiment-roberta-large-english`` (for GPU users with the Hub).

reward = log-odds of the positive label, log p(pos) − log(1 − p(pos)), on ``prompt + completion``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from alignlab.encoding import encode_with_template
from alignlab.errors import AlignlabError
from alignlab.objectives.base import log1mexp


class HFClassifierReward:
    """Log-odds of one label of any ``AutoModelForSequenceClassification`` (Hub id or local directory)."""

    def __init__(
        self,
        model_id: str,
        positive_label: str | int = "POSITIVE",
        batch_size: int = 32,
        max_length: int = 512,
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        import os

        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from alignlab.data import check_hub

        if not os.path.isdir(model_id):
            why = f"reward model {model_id!r} is not a local directory"
            check_hub("it", why, "give a directory saved with save_pretrained, or use the CPU gold classifier")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model_id, trust_remote_code=trust_remote_code
            )
        except OSError as err:
            raise AlignlabError(f"cannot load reward model {model_id!r}: {err}") from err
        if self.tokenizer.pad_token is None:  # GPT-2-style classifiers have none
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.name = f"hf:{model_id}"
        self.batch_size, self.max_length = batch_size, max_length
        self.label_index = self._label_index(positive_label)

    def _label_index(self, label: str | int) -> int:
        labels: dict[int, str] = {int(k): v for k, v in self.model.config.id2label.items()}
        if isinstance(label, int):
            if label not in labels:
                raise AlignlabError(f"{self.name}: no label index {label}; labels are {labels}")
            return label
        for index, name in labels.items():
            if name.lower() == label.lower():
                return index
        raise AlignlabError(f"{self.name}: no label {label!r}; labels are {sorted(labels.values())}")

    def encode(self, texts: Sequence[str]) -> Any:
        """(B, T) right-padded ``input_ids`` and ``attention_mask`` of ``texts``: their special-token
        strings are text, framed by the classifier's own template (e.g. ``<s>`` … ``</s>``) within
        ``max_length``."""
        rows = encode_with_template(self.tokenizer, texts, self.max_length)
        return self.tokenizer.pad({"input_ids": rows}, return_tensors="pt")

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.encode(texts[start : start + self.batch_size]).to(self.device)
            logp = torch.log_softmax(self.model(**enc).logits.float(), dim=-1)[:, self.label_index]
            out.append((logp - log1mexp(logp)).cpu())
        return torch.cat(out)
