"""Training data for the offline trainer: every row tokenised once, reference log-probs cached.

- :class:`PairData`: (prompt, chosen, rejected) pairs as two right-padded batches with the same
  row order; chosen and rejected of a step go through one forward pass (the scoring core's
  :func:`~alignlab.core.scoring.score_pairs`); the pairs' scores, when every pair has them, go to
  the objectives that declare ``Needs(scores=True)``.
- :class:`UnpairedData`: (prompt, completion, desirable) rows for KTO — given as such, or made
  from pairs (chosen desirable, rejected undesirable). Each row also has a *mismatched* twin, its
  completion after another row's prompt, from which KTO's reference point z0 is estimated.
- Reference log-probs are computed once, by the reference model, and cached on disk under
  ``$ALIGNLAB_CACHE_DIR/reference/<key>.safetensors``, the key a fingerprint of the reference
  model, the tokenizer, the data and the encoding; a reference-free objective computes none.
- :class:`BatchOrder`: which rows each step uses — a seeded permutation per epoch — so the data
  position of any step is a pure function of (seed, step), and a resumed run sees the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from alignlab import progress
from alignlab.cache_keys import fingerprint, texts_fingerprint
from alignlab.core.scoring import EncodedBatch, score_pairs, sequence_logps, token_logps
from alignlab.data import DataError, cache_root
from alignlab.encoding import encode_completions
from alignlab.io import atomic_file, checksum_path, clear_temps, file_lock, load_intact
from alignlab.objectives.base import Needs, PairedLogps, UnpairedLogps
from alignlab.tasks.base import PreferencePair


@dataclass(frozen=True)
class BatchOrder:
    """Rows of every step: epoch e is ``randperm(n, seed + e)``, cut into batches (the last partial one dropped)."""

    n: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.n < self.batch_size:
            raise ValueError(f"{self.n} training rows are fewer than one batch of {self.batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def rows(self, step: int) -> list[int]:
        """The global rows of optimiser step ``step`` (0-based)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        return perm[offset * self.batch_size : (offset + 1) * self.batch_size].tolist()

    def position(self, step: int) -> dict[str, int]:
        epoch, offset = divmod(step, self.steps_per_epoch)
        return {"epoch": epoch, "batch_in_epoch": offset}


def shard(rows: list[int], index: int, parts: int) -> list[int]:
    """The ``index``-th of ``parts`` equal contiguous slices of ``rows`` (its length must divide)."""
    size = len(rows) // parts
    return rows[index * size : (index + 1) * size]


def cached_reference(
    key_parts: Sequence[Any],
    compute: Callable[[], dict[str, Tensor]],
    cache: Path | None = None,
    kind: str = "reference",
    what: str = "the cached reference log-probs",
    dtype: torch.dtype = torch.float32,
    scoring: str = "",
) -> dict[str, Tensor]:
    """Tensors from the disk cache (``<cache>/<kind>/<key>.safetensors``), or computed once and
    written there atomically: reference log-probs, and the reward model's scores of pairs.

    The file's ``.sha256`` sidecar is checked on every load; a damaged file is moved aside and
    computed again (:func:`alignlab.io.load_intact`). ``what`` names the file in a warning;
    ``scoring`` says what is scored, for the progress line.
    """
    path = (cache or cache_root()) / kind / f"{fingerprint(*key_parts)}.safetensors"
    stage = {"reference": "reference log-probs", "scores": "pair scores"}.get(kind, kind)
    with file_lock(path.with_suffix(".lock")):
        found = load_intact(path, lambda p: load_file(str(p)), what, "recomputing them")
        if found is not None:
            progress.cached(stage, path, scoring)
            return found
        for name in (path.name, checksum_path(path).name):
            clear_temps(path.parent, name)  # what a killed pass left half-written
        with progress.stage(stage, f"scoring {scoring}" if scoring else "scoring"):
            tensors = compute()
        with atomic_file(path, checksum=True) as tmp:
            save_file({k: v.contiguous().to(dtype) for k, v in tensors.items()}, str(tmp))
    return tensors


@torch.no_grad()
def _sequence_sums(model: torch.nn.Module, batch: EncodedBatch, batch_size: int) -> Tensor:
    out = []
    for start in range(0, len(batch), batch_size):
        b = batch.select(list(range(start, min(start + batch_size, len(batch))))).trim().to(_device(model))
        out.append(
            sequence_logps(
                token_logps(model, b.input_ids, b.attention_mask, b.completion_mask), b.completion_mask, "sum"
            )
        )
    return torch.cat(out) if out else torch.zeros(0)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class PairData:
    """Preference pairs, tokenised once: chosen and rejected batches with the same row order."""

    pairs: list[PreferencePair]
    chosen: EncodedBatch
    rejected: EncodedBatch
    pad_token_id: int
    ref: dict[str, Tensor] | None = field(default=None, repr=False)
    scores: Tensor | None = field(default=None, repr=False)
    """(N, 2) float64 (chosen score, rejected score) of every pair, or None unless every pair has both."""

    @classmethod
    def build(cls, tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int) -> PairData:
        prompts = [p.prompt for p in pairs]
        scored = bool(pairs) and all(p.chosen_score is not None and p.rejected_score is not None for p in pairs)
        return cls(
            list(pairs),
            encode_completions(tokenizer, prompts, [p.chosen for p in pairs], max_length),
            encode_completions(tokenizer, prompts, [p.rejected for p in pairs], max_length),
            tokenizer.pad_token_id,
            scores=torch.tensor([[p.chosen_score, p.rejected_score] for p in pairs], dtype=torch.float64)
            if scored
            else None,
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def key(self) -> str:
        return texts_fingerprint([t for p in self.pairs for t in (p.prompt, p.chosen, p.rejected)])

    def attach_reference(
        self, reference_key: Sequence[Any], load_reference: Callable[[], Any], batch_size: int
    ) -> None:
        """Cache Σ log π_ref of every chosen and rejected completion (computed once, on disk)."""

        def compute() -> dict[str, Tensor]:
            model = load_reference()
            return {
                "chosen": _sequence_sums(model, self.chosen, batch_size),
                "rejected": _sequence_sums(model, self.rejected, batch_size),
            }

        key = [
            *reference_key,
            "pairs",
            self.key(),
            tuple(self.chosen.input_ids.shape),
            tuple(self.rejected.input_ids.shape),
        ]
        self.ref = cached_reference(key, compute, scoring=f"{len(self):,} pairs (chosen and rejected) with π_ref")

    def logps(self, model: torch.nn.Module, rows: list[int], needs: Needs) -> PairedLogps:
        """The objective's input for ``rows``: chosen and rejected scored in one forward pass."""
        device = _device(model)
        c, cm, r, rm = score_pairs(
            model,
            self.chosen.select(rows).trim().to(device),
            self.rejected.select(rows).trim().to(device),
            self.pad_token_id,
        )
        token_level = needs.token_level
        ref = self.ref if needs.reference else None
        if needs.reference and ref is None:
            raise RuntimeError("the objective needs reference log-probs: call attach_reference first")
        scores = None if not needs.scores or self.scores is None else self.scores[rows].to(device, c.dtype)
        if needs.scores and scores is None:
            raise RuntimeError("the objective needs scores of chosen and rejected completions: these pairs have none")
        return PairedLogps(
            policy_chosen_logps=sequence_logps(c, cm, "sum"),
            policy_rejected_logps=sequence_logps(r, rm, "sum"),
            chosen_lengths=cm.sum(-1),
            rejected_lengths=rm.sum(-1),
            ref_chosen_logps=ref["chosen"][rows].to(device) if ref is not None else None,
            ref_rejected_logps=ref["rejected"][rows].to(device) if ref is not None else None,
            chosen_token_logps=c if token_level else None,
            chosen_mask=cm if token_level else None,
            rejected_token_logps=r if token_level else None,
            rejected_mask=rm if token_level else None,
            chosen_scores=scores[:, 0] if scores is not None else None,
            rejected_scores=scores[:, 1] if scores is not None else None,
        )


@dataclass(frozen=True)
class UnpairedExample:
    prompt: str
    completion: str
    desirable: bool


def unpaired_from_pairs(pairs: Sequence[PreferencePair]) -> list[UnpairedExample]:
    """Each pair split in two: its chosen completion desirable, its rejected one undesirable (KTO §4)."""
    return [
        row
        for p in pairs
        for row in (UnpairedExample(p.prompt, p.chosen, True), UnpairedExample(p.prompt, p.rejected, False))
    ]


def mismatch(prompts: Sequence[str], seed: int) -> list[int]:
    """For each row i, another row j whose prompt differs: row i's completion goes after prompt j.

    A seeded permutation, fixed for the run, so the mismatched twins (and their reference
    log-probs) are computed once; a batch's twins are its own completions under other prompts,
    as in the KTO paper's in-batch shift, which only redraws the partner prompts each batch.
    """
    n = len(prompts)
    if len(set(prompts)) < 2:
        raise DataError(
            f"KTO's reference point needs at least two distinct prompts among its {n} rows (training or held-out); "
            "these share one: add rows, or raise task.eval_fraction for more held-out prompts"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = [0] * n
    for k, i in enumerate(order):
        step = 1
        while prompts[order[(k + step) % n]] == prompts[i]:
            step += 1
        partner[i] = order[(k + step) % n]
    return partner


@dataclass
class UnpairedData:
    """KTO rows tokenised once, each with its mismatched twin."""

    examples: list[UnpairedExample]
    completions: EncodedBatch
    mismatched: EncodedBatch
    desirable: Tensor
    ref: dict[str, Tensor] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, tokenizer: Any, examples: Sequence[UnpairedExample], max_length: int, seed: int) -> UnpairedData:
        prompts = [e.prompt for e in examples]
        completions = [e.completion for e in examples]
        partner = mismatch(prompts, seed)
        return cls(
            list(examples),
            encode_completions(tokenizer, prompts, completions, max_length),
            encode_completions(tokenizer, [prompts[j] for j in partner], completions, max_length),
            torch.tensor([e.desirable for e in examples]),
        )

    def __len__(self) -> int:
        return len(self.examples)

    def key(self) -> str:
        return texts_fingerprint([f"{e.prompt}\0{e.completion}\0{int(e.desirable)}" for e in self.examples])

    def attach_reference(
        self, reference_key: Sequence[Any], load_reference: Callable[[], Any], batch_size: int
    ) -> None:
        def compute() -> dict[str, Tensor]:
            model = load_reference()
            return {
                "matched": _sequence_sums(model, self.completions, batch_size),
                "mismatched": _sequence_sums(model, self.mismatched, batch_size),
            }

        key = [*reference_key, "unpaired", self.key(), tuple(self.mismatched.input_ids.shape)]
        self.ref = cached_reference(
            key, compute, scoring=f"{len(self):,} completions and their mismatched twins with π_ref"
        )

    def logps(self, model: torch.nn.Module, rows: list[int], reduce_mean: Callable[[Tensor], Tensor]) -> UnpairedLogps:
        """KTO's input for ``rows``; ``reduce_mean`` averages z0's estimate over processes before the clamp."""
        if self.ref is None:
            raise RuntimeError("KTO needs reference log-probs: call attach_reference first")
        device = _device(model)
        b = self.completions.select(rows).trim().to(device)
        policy = sequence_logps(
            token_logps(model, b.input_ids, b.attention_mask, b.completion_mask), b.completion_mask, "sum"
        )
        with torch.no_grad():
            # z0 = max(0, E[log π(y'|x) − log π_ref(y'|x)]) over mismatched pairs, detached (KTO §4.2)
            m = self.mismatched.select(rows).trim().to(device)
            mismatched = sequence_logps(
                token_logps(model, m.input_ids, m.attention_mask, m.completion_mask), m.completion_mask, "sum"
            )
            z0 = reduce_mean((mismatched - self.ref["mismatched"][rows].to(device)).mean()).clamp(min=0)
        return UnpairedLogps(policy, self.ref["matched"][rows].to(device), self.desirable[rows].to(device), z0)
