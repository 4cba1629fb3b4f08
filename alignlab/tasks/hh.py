"""Anthropic HH-RLHF dialogue preferences (Bai et al. 2022), read as the DPO paper reads them.

Each record holds two whole transcripts, ``chosen`` and ``rejected``, in the form
``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; they share every turn but the final Assistant reply. The
DPO prompt is that shared transcript up to and including its last ``"\\n\\nAssistant:"``, and the
two completions are the final replies.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from alignlab.data import LOCAL_SUFFIXES, DataError
from alignlab.tasks.base import (
    PreferencePair,
    Row,
    Split,
    Task,
    TaskConfig,
    check_pair,
    hub_rows,
    in_eval_split,
    iter_local,
    keep_per_split,
    local_files,
    require_text,
)

ASSISTANT = "\n\nAssistant:"
HUB_SPLITS: dict[Split, str] = {"train": "train", "eval": "test"}


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen reply, rejected reply), or None when the transcripts share no Assistant turn.

    The prompt ends at the last ``"\\n\\nAssistant:"`` of the *common prefix* of the two
    transcripts. The DPO code (eric-mitchell/direct-preference-optimization,
    ``extract_anthropic_prompt``) instead cuts at the last marker of ``chosen`` alone; that differs
    when a final reply itself contains the marker (4 rows of harmless-base test do, e.g. row 1255),
    where it would put part of the chosen reply into the prompt and garble the rejected one.
    """
    shared = os.path.commonprefix([chosen, rejected])  # noqa: RUF071 (a character-wise prefix is the point)
    end = shared.rfind(ASSISTANT)
    if end < 0:
        return None
    cut = end + len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


class HHTask(Task):
    """Anthropic HH-RLHF: human preference pairs over the final Assistant reply of a dialogue.

    Data: the Hub's ``train`` and ``test`` splits (every subset) as train and eval; or local files
    laid out as the Hub repo, ``<data_dir>/hh-rlhf/<subset>/{train,test}.jsonl.gz`` (or ``.jsonl``,
    ``.parquet``), all subsets found being read. When the local files hold only one of the two splits
    — the shared data has only ``harmless-base/test`` — its pairs are divided into train and eval by a
    hash of the prompt (:func:`in_eval_split` with ``eval_fraction`` and ``seed``): the same split on
    every run and machine, and no prompt on both sides.

    Win rates (DPO paper, Sec. 6.2) compare samples with the *chosen* reply, so :meth:`references`
    returns those; SFT uses prompt + chosen, as the DPO paper fine-tunes on preferred completions.
    """

    name = "hh"
    hub_id = "Anthropic/hh-rlhf"

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self._pairs: dict[Split, list[PreferencePair]] | None = None

    def pairs(self, split: Split) -> list[PreferencePair]:
        """The usable preference pairs of ``split``, in file order."""
        return list(self._load()[split])

    def prompts(self, split: Split, tokenizer: Any = None) -> list[str]:
        """Distinct prompts of ``split``'s pairs, in order; whole dialogues (``tokenizer`` is unused)."""
        return list(dict.fromkeys(pair.prompt for pair in self.pairs(split)))

    def sft_texts(self) -> list[str]:
        """Distinct prompt + chosen reply of the train pairs."""
        return list(dict.fromkeys(pair.prompt + pair.chosen for pair in self.pairs("train")))

    def references(self, split: Split) -> list[tuple[str, str]]:
        """(prompt, chosen reply), one per distinct prompt (its first pair), in :meth:`prompts` order."""
        first: dict[str, str] = {}
        for pair in self.pairs(split):
            first.setdefault(pair.prompt, pair.chosen)
        return list(first.items())

    # -----------------------------------------------------------------------------------------

    def _load(self) -> dict[Split, list[PreferencePair]]:
        if self._pairs is None:  # read once: the report's counts describe this one reading
            found = self._read_hub() if self.data_dir is None else self._read_local(self.data_dir)
            if not any(found.values()):
                raise self.report.no_usable_rows("HH-RLHF pairs", list(self.report.files))
            self._pairs = found
        return self._pairs

    def _read_hub(self) -> dict[Split, list[PreferencePair]]:
        hub_id = self.cfg.hub_id or self.hub_id
        return self._read_each(
            {split: hub_rows(hub_id, hub_split, self.report) for split, hub_split in HUB_SPLITS.items()}
        )

    def _read_local(self, data_dir: Path) -> dict[Split, list[PreferencePair]]:
        train_files = local_files(data_dir, "hh-rlhf/*/train")
        test_files = local_files(data_dir, "hh-rlhf/*/test")
        if train_files and test_files:
            return self._read_each(
                {
                    "train": iter_local(train_files, data_dir, self.report),
                    "eval": iter_local(test_files, data_dir, self.report),
                }
            )
        if not train_files and not test_files:
            tried = [
                str(data_dir / f"hh-rlhf/*/{stem}{suffix}") for stem in HUB_SPLITS.values() for suffix in LOCAL_SUFFIXES
            ]
            raise DataError(
                f"no HH-RLHF files in data directory {data_dir}: looked for {', '.join(tried)}. "
                f"Copy the {self.hub_id} files there, or unset the data directory to read the Hub"
            )
        # One split on disk: hold out a share of the prompts, by hash so that it is stable.
        rows = iter_local(train_files or test_files, data_dir, self.report)
        items = ((name, self._side(pair.prompt), pair) for name, pair in self._pairs_of(rows))
        return keep_per_split(items, ("train", "eval"), self.cfg.max_rows, self.report)

    def _read_each(self, sources: dict[Split, Iterator[Row]]) -> dict[Split, list[PreferencePair]]:
        """The pairs of each split, from that split's own rows."""
        found: dict[Split, list[PreferencePair]] = {}
        for split, rows in sources.items():
            items = ((name, split, pair) for name, pair in self._pairs_of(rows))
            found.update(keep_per_split(items, (split,), self.cfg.max_rows, self.report))
        return found

    def _side(self, prompt: str) -> Split:
        return "eval" if in_eval_split(prompt, self.cfg.eval_fraction, self.cfg.seed) else "train"

    def _pairs_of(self, rows: Iterable[Row]) -> Iterator[tuple[str, PreferencePair]]:
        """(file name, pair) for each usable row; every other row is reported as bad."""
        for name, number, row in rows:
            chosen = require_text(row, "chosen", name, number, self.report)
            if chosen is None:
                continue
            rejected = require_text(row, "rejected", name, number, self.report)
            if rejected is None:
                continue
            parts = split_dialogue(chosen, rejected)
            if parts is None:
                self.report.bad(name, number, f"no shared prompt: chosen and rejected share no {ASSISTANT!r} turn")
                continue
            pair = PreferencePair(*parts, origin=(name, number))
            if check_pair(pair, name, number, self.report):
                yield name, pair
