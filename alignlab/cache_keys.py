"""The keys of everything alignlab caches: one module, so every stage is keyed the same way.

A cached stage lives under a key that is a fingerprint of everything that determines it: its
inputs (texts, a model's weights or path, a tokenizer), its settings, and the code that computes it
(:func:`code_version`, a hash of the source of the modules named). Change any of them and the key
changes, so a stale entry is never read back.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import torch

import alignlab

STAGE_CODE: dict[str, tuple[str, ...]] = {
    # the presets, SFT itself, the loop it trains on (optimiser, schedule, packing), its loss
    "sft": (
        "alignlab.models",
        "alignlab.sft",
        "alignlab.train.loop",
        "alignlab.train.config",
        "alignlab.train.data",
        "alignlab.core.scoring",
        "alignlab.encoding",
    ),
    # the DPO protocol's pairs: the rollout core samples, pairs.py ranks and pairs them
    "pairs": ("alignlab.pairs", "alignlab.core.rollout", "alignlab.core.scoring", "alignlab.encoding"),
    # the scorer, its Bradley-Terry training on the offline trainer's loop and batches
    "reward_model": (
        "alignlab.models",
        "alignlab.rewards.model",
        "alignlab.train.reward_model",
        "alignlab.train.offline",
        "alignlab.train.loop",
        "alignlab.train.config",
        "alignlab.train.data",
        "alignlab.core.scoring",
        "alignlab.encoding",
    ),
    # π_ref's log-probs of the pairs: the scoring core over the trainer's encoded batches
    "reference": ("alignlab.core.scoring", "alignlab.train.data", "alignlab.encoding"),
}
"""The modules whose source is part of each cached stage's key (:func:`stage_code`): the code that
computes the stage's numbers. ``tests/test_sft_and_pairs.py`` follows their imports and fails on one
that is neither listed here nor in :data:`NOT_IN_THE_NUMBERS`. (The gold judge's modules are its
task's: ``Task.gold_judge.modules()``.)"""

NOT_IN_THE_NUMBERS: dict[str, str] = {
    "alignlab": "the package: its version is in every key already",
    "alignlab.cache_keys": "the keys themselves",
    "alignlab.errors": "error types",
    "alignlab.io": "atomic files, locks, manifests",
    "alignlab.progress": "progress lines",
    "alignlab.interrupts": "stopping at a step boundary on a signal",
    "alignlab.schema": "the config base class: the settings themselves are in the key",
    "alignlab.data": "where the data directory and the cache are",
    "alignlab.train.state": "checkpoint and log file names, finding the newest checkpoint",
    "alignlab.train.checkpoint": "writing and reading checkpoints: a resumed build equals an uninterrupted one "
    "(tests/test_sft_loop.py, tests/test_kill_resume.py), so it changes no number",
    "alignlab.tasks.base": "the task's texts and prompts, which the key hashes themselves",
    "alignlab.adapters": "LoRA adapters, which no stage trains",
    "alignlab.objectives": "the methods' losses: the stages train with their own (SFT's, Bradley-Terry)",
    "alignlab.objectives.base": "the objectives' types (Needs, the log-prob containers)",
}
"""Modules that the stages' code imports without their numbers depending on them, each with why."""


def stage_code(stage: str) -> str:
    """:func:`code_version` of the modules that compute ``stage`` (:data:`STAGE_CODE`)."""
    return code_version(*(importlib.import_module(name) for name in STAGE_CODE[stage]))


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
