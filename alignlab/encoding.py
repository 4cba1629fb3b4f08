"""Prompt + completion texts -> token ids with a completion mask, the scoring core's input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from alignlab.core.scoring import EncodedBatch
from alignlab.errors import AlignlabError


class EncodingError(AlignlabError):
    """A row cannot be encoded (e.g. its prompt does not fit the model's context)."""


def encode_completions(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
    add_eos: bool = True,
) -> EncodedBatch:
    """Tokenise prompt + completion pairs into a right-padded batch.

    Each row is ``[bos] prompt completion [eos]``; the completion mask covers the completion
    and its EOS. The prompt and completion are tokenised separately, so the boundary is exact.
    A completion that does not fit is truncated (keeping at least one token); a prompt that
    leaves no room for one is an error naming the row.

    Args:
        tokenizer: a tokenizer with ``pad_token_id`` (and ``bos_token_id``/``eos_token_id`` if set).
        prompts, completions: the texts, same length.
        max_length: the model's context length.
        add_eos: end each completion with EOS.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    rows, masks = [], []
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        p = bos + p
        room = max_length - len(p)
        if room < 1:
            raise EncodingError(
                f"row {i}: the prompt is {len(p)} tokens, which leaves no room for a completion in the "
                f"model's context of {max_length} tokens"
            )
        c = (c + eos)[:room]
        rows.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    completion_mask = torch.tensor([m + [0] * (T - len(m)) for m in masks])
    return EncodedBatch(input_ids, attention_mask, completion_mask)
