"""The keys of everything alignlab caches: one module, so every stage is keyed the same way.

A cached stage lives under a key that is a fingerprint of everything that determines it: its
inputs (texts, a model's weights or path, a tokenizer), its settings, and the code that computes it
(:func:`code_version`, a hash of the source of the modules named). Change any of them and the key
changes, so a stale entry is never read back.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

import alignlab


def code_version(*modules: Any) -> str:
    """alignlab's version plus a hash of the source of ``modules``: a code change invalidates the cache."""
    digest = hashlib.sha256(alignlab.__version__.encode())
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return f"{alignlab.__version__}-{digest.hexdigest()[:12]}"


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (strings are hashed in full)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def texts_fingerprint(texts: list[str]) -> str:
    """The count and a hash of ``texts`` in order (a text boundary is part of the hash)."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode())
        digest.update(b"\0")
    return f"{len(texts)}-{digest.hexdigest()[:16]}"


def tokenizer_key(tokenizer: Any) -> str:
    """A fingerprint of what a tokenizer does (its serialised vocabulary, merges and special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{type(tokenizer).__name__}:{id(tokenizer)}"
    return hashlib.sha1(text.encode()).hexdigest()


def weights_key(model: torch.nn.Module) -> str:
    """A fingerprint of a model's weights (milliseconds at CPU scale)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
