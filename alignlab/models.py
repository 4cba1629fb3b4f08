"""Models trained from scratch at CPU scale: a byte-level BPE tokenizer and GPT-2 presets.

Any Hugging Face causal LM works in place of a preset; these exist so that a whole experiment
runs on 2 CPU cores. The tokenizer is trained with ``tokenizers`` and wrapped as a
``PreTrainedTokenizerFast``, so everything downstream uses the standard transformers API
(``save_pretrained`` / ``from_pretrained``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class Preset:
    """A GPT-2 architecture size."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 256


PRESETS: dict[str, Preset] = {
    "smoke": Preset(n_layer=2, n_embd=64, n_head=2, n_positions=128),
    "tiny-s": Preset(n_layer=2, n_embd=128, n_head=4),
    "tiny-m": Preset(n_layer=4, n_embd=256, n_head=4),
    "tiny-l": Preset(n_layer=6, n_embd=384, n_head=6),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with ``<|endoftext|>`` (EOS/BOS) and ``<|pad|>``."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN, PAD_TOKEN]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
    )


def build_preset(name: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of preset ``name`` sized for ``tokenizer``'s vocabulary."""
    import torch

    key = name.lower()
    if key not in PRESETS:
        import difflib

        close = difflib.get_close_matches(key, list(PRESETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        from alignlab.errors import ConfigError

        raise ConfigError("model.preset", f"unknown preset {name!r}{hint} (presets: {', '.join(PRESETS)})")
    p = PRESETS[key]
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=p.n_positions,
        n_embd=p.n_embd,
        n_layer=p.n_layer,
        n_head=p.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)
