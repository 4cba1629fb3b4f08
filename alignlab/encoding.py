"""Text -> token ids: user text as plain text, and prompt + completion pairs with a completion mask.

Text is text: a special-token string inside data (``<|endoftext|>`` occurs in 21 rows of the
CNN/DM comparisons) is tokenised as the characters it is, never as the EOS/BOS/pad id. Every
alignlab path from text to ids goes through :func:`encode_text`; only alignlab itself adds
BOS, EOS and padding, at the positions it chooses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from alignlab.core.scoring import EncodedBatch
from alignlab.errors import AlignlabError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class EncodingError(AlignlabError):
    """A row cannot be encoded (e.g. its prompt does not fit the model's context)."""


def special_ids(tokenizer: Any) -> frozenset[int]:
    """The ids of every special token of ``tokenizer``: named and extra special tokens
    (``all_special_ids``) and every added token marked special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special)
    return frozenset(ids)


def encode_text(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, special-token strings in it tokenised as plain text; no BOS/EOS added.

    The tokenizer is called with ``split_special_tokens=True``. That flag silently does nothing on
    some tokenizers (e.g. one built in memory around a ``tokenizers`` implementation such as
    ``ByteLevelBPETokenizer``, whose Rust object the flag never reaches) and covers only the added
    tokens that the backend itself marks special, so the result is checked: a row that holds a
    special id is encoded again through the backend's normalizer, pre-tokenizer and model, bypassing
    its added-token vocabulary (as transformers' own ``_encode_without_added_tokens`` does).

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: N user texts.

    Returns:
        N lists of token ids, none of them in :func:`special_ids` — except the unknown token where
        the vocabulary lacks a character (it is text, not control), unless it doubles as BOS, EOS
        or pad.

    Raises:
        EncodingError: naming the row, when no way of encoding it avoids a special id (a tokenizer
            without a ``tokenizers`` backend whose ``split_special_tokens`` does not split, or a
            vocabulary whose merges spell a special token).
    """
    texts = list(texts)
    if not texts:
        return []
    rows: list[list[int]] = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    forbidden = special_ids(tokenizer)
    unk = tokenizer.unk_token_id
    text_unk = {unk} - {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, None}
    for i, row in enumerate(rows):
        if forbidden.isdisjoint(row):
            continue
        rows[i] = _encode_without_added_tokens(tokenizer, texts[i])
        leaked = sorted(forbidden.intersection(rows[i]) - text_unk)
        if leaked:
            raise EncodingError(
                f"row {i}: its text encodes to the special token id(s) {leaked} "
                f"({tokenizer.convert_ids_to_tokens(leaked)}) even with special tokens split as text"
            )
    return rows


def _encode_without_added_tokens(tokenizer: Any, text: str) -> list[int]:
    """``text`` through the Rust backend's normalizer, pre-tokenizer and model only (no added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    backend = getattr(backend, "_tokenizer", backend)  # a tokenizers implementation wraps the Rust Tokenizer
    if backend is None:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
    return [token.id for piece in pieces for token in backend.model.tokenize(piece)]


def template_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the ids the tokenizer's own template puts around one text.

    E.g. ``<s>`` … ``</s>`` for RoBERTa, ``[CLS]`` … ``[SEP]`` for BERT, BOS … for Llama, nothing
    for GPT-2; found by encoding a one-letter probe with and without special tokens.
    """
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    raise EncodingError(f"cannot find the text inside the tokenizer's template: {bare} within {full}")


def encode_with_template(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """:func:`encode_text` inside the tokenizer's own template (:func:`template_tokens`): a classifier's input.

    Args:
        tokenizer: the model's tokenizer.
        texts: N user texts.
        max_length: truncate each text (on the tokenizer's ``truncation_side``) so that it and its
            template fit this many tokens.

    Returns:
        N lists of ids; special ids only where the template puts them.
    """
    prefix, suffix = template_tokens(tokenizer)
    rows = encode_text(tokenizer, texts)
    if max_length is not None:
        room = max_length - len(prefix) - len(suffix)
        if room < 1:
            raise EncodingError(f"max_length {max_length} leaves no room for text inside the template")
        left = getattr(tokenizer, "truncation_side", "right") == "left"
        rows = [row[-room:] if left else row[:room] for row in rows]
    return [prefix + row + suffix for row in rows]


def encode_completions(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
    add_eos: bool = True,
) -> EncodedBatch:
    """Tokenise prompt + completion pairs into a right-padded batch.

    Each row is ``[bos] prompt completion [eos]``; the completion mask covers the completion
    and its EOS. The prompt and completion are tokenised separately (by :func:`encode_text`), so the
    boundary is exact and the only special ids are these BOS, EOS and padding.
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
    prompt_ids = encode_text(tokenizer, prompts)
    completion_ids = encode_text(tokenizer, completions)
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
