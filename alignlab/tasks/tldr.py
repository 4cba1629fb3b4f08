"""Summarisation from human comparisons (Stiennon et al. 2020): Reddit TL;DR and CNN/DailyMail.

Both read OpenAI's comparison records (Hub ``openai/summarize_from_feedback``, config
``comparisons``): ``info`` (the post or article), two ``summaries`` ({text, policy, note}) and
``choice``, the index of the one the labeller preferred. TL;DR is the DPO paper's summarisation
task; CNN/DM is its out-of-distribution test (DPO paper, Sec. 6.3: TL;DR policies summarising news
articles), so it is a task of its own, :class:`CNNDMTask`, with an eval split only.

Prompt formats are those of the original code, openai/summarize-from-feedback,
``summarize_from_feedback/utils/experiment_helpers.py``: ``tldr_task`` for TL;DR (also used by
TRL / vwxyzjn's ``summarize_from_feedback_tldr_3_filtered_oai_preprocessing``), and
``tldr_zero_shot_cnndm_task`` — a TL;DR policy applied to CNN/DM, the setting these comparisons
and the DPO paper's test come from — for CNN/DM. (Models *trained* on CNN/DM used
``"Article:\\n{article}\\n\\nTL;DR:\\n"`` instead, ``cnndm_task`` there.) Completions get a leading
space, as ``ref_format_str=" {reference}"`` gives the references there, so that the summary
begins as a new word after ``TL;DR:``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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
from alignlab.tasks.capabilities import SUMMARY_TEMPLATE

TLDR_FORMAT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM_FORMAT = "{article}\n\nTL;DR:"
HUB_CONFIG = "comparisons"
# OpenAI's label for the human-written summary: the author's own TL;DR, or the CNN/DM highlights.
REFERENCE_POLICY = "ref"


@dataclass(frozen=True)
class Comparison:
    """One usable comparison: the pair, and the human-written summary if one of the two is it."""

    pair: PreferencePair
    reference: str | None
    record_split: str | None  # the record's own split: train, valid1 or valid2


def as_completion(text: str) -> str:
    """The summary as a completion of a prompt ending in ``TL;DR:``: with a leading space."""
    return text if text[:1].isspace() else " " + text


class ComparisonsTask(Task):
    """What TL;DR and CNN/DM share: reading, checking and de-duplicating comparison records."""

    hub_id = "openai/summarize_from_feedback"
    judge_template = SUMMARY_TEMPLATE
    hub_splits: ClassVar[dict[Split, str]]
    local_pattern: ClassVar[str]  # glob under the data directory, without suffix
    prompt_format: ClassVar[str]
    info_fields: ClassVar[tuple[str, ...]]  # the info fields the prompt needs
    other_domain: ClassVar[tuple[str, str]]  # (info field only the other task fills, its name)

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self._found: dict[Split, list[Comparison]] | None = None

    def pairs(self, split: Split) -> list[PreferencePair]:
        """The usable preference pairs of ``split``: chosen = ``summaries[choice]``, in file order."""
        return [c.pair for c in self._comparisons(split)]

    def prompts(self, split: Split, tokenizer: Any = None) -> list[str]:
        """Distinct prompts of ``split``'s pairs, in order, posts whole (``tokenizer`` is unused)."""
        return list(dict.fromkeys(pair.prompt for pair in self.pairs(split)))

    def sft_texts(self) -> list[str]:
        """Distinct prompt + chosen summary of the train pairs."""
        return list(dict.fromkeys(pair.prompt + pair.chosen for pair in self.pairs("train")))

    def references(self, split: Split) -> list[tuple[str, str]]:
        """(prompt, human-written summary): the policy ``ref`` summary, one per prompt that has one.

        Only prompts compared against a ``ref`` summary have one (TL;DR here: 112 of about 1k posts,
        all in batch18 and edit_b2_eval_test), so this is a subset of :meth:`prompts`, in its order.
        """
        first: dict[str, str] = {}
        for c in self._comparisons(split):
            if c.reference is not None:
                first.setdefault(c.pair.prompt, c.reference)
        return [(prompt, first[prompt]) for prompt in self.prompts(split) if prompt in first]

    # -----------------------------------------------------------------------------------------

    def _comparisons(self, split: Split) -> list[Comparison]:
        if self._found is None:  # read once: the report's counts describe this one reading
            found = self._read_hub() if self.data_dir is None else self._read_local(self.data_dir)
            if not any(found.values()):
                raise self.report.no_usable_rows(f"{self.name} comparisons", list(self.report.files))
            self._found = found
        return self._found.get(split, [])

    def _read_hub(self) -> dict[Split, list[Comparison]]:
        hub_id = self.cfg.hub_id or self.hub_id
        found: dict[Split, list[Comparison]] = {}
        for split, hub_split in self.hub_splits.items():
            rows = hub_rows(hub_id, hub_split, self.report, HUB_CONFIG)
            items = ((name, split, c) for name, c in self._usable(rows))
            found.update(keep_per_split(items, (split,), self.cfg.max_rows, self.report))
        return found

    def _read_local(self, data_dir: Path) -> dict[Split, list[Comparison]]:
        files = local_files(data_dir, self.local_pattern)
        if not files:
            tried = [str(data_dir / f"{self.local_pattern}{suffix}") for suffix in LOCAL_SUFFIXES]
            raise DataError(
                f"no {self.name} comparisons in data directory {data_dir}: looked for {', '.join(tried)}. "
                f"Copy OpenAI's comparison files there, or unset the data directory to read {self.hub_id}"
            )
        found = list(self._usable(iter_local(files, data_dir, self.report)))
        items = self._assign_splits(found)
        return keep_per_split(items, tuple(self.hub_splits), self.cfg.max_rows, self.report)

    def _assign_splits(self, found: list[tuple[str, Comparison]]) -> Iterator[tuple[str, Split, Comparison]]:
        """Train/eval for each local comparison.

        The records keep their own split (train, valid1, valid2), which is how the Hub's splits are
        made, so local files with train records are split the same way. The shared files hold
        validation records only (batch13, batch18, edit_b2_eval_test); then the prompts are divided
        by hash (:func:`in_eval_split` with ``eval_fraction`` and ``seed``): the same on every run,
        and no post on both sides.
        """
        has_train = any(c.record_split == "train" for _, c in found)
        for name, c in found:
            if has_train:
                split: Split = "train" if c.record_split == "train" else "eval"
            else:
                split = "eval" if in_eval_split(c.pair.prompt, self.cfg.eval_fraction, self.cfg.seed) else "train"
            yield name, split, c

    def _usable(self, rows: Iterable[Row]) -> Iterator[tuple[str, Comparison]]:
        """(file name, comparison) for each usable row that is new; bad rows are reported."""
        first_seen: dict[bytes, str] = {}
        other_field, other_name = self.other_domain
        for name, number, row in rows:
            info = row.get("info")
            # The Hub's validation split mixes both domains; the other task reads those rows.
            if isinstance(info, dict) and info.get(other_field) is not None:
                self.report.set_aside(name, number, f"not {self.name}: a {other_name} comparison")
                continue
            comparison = self._parse(row, name, number)
            if comparison is None:
                continue
            # The same judgement can sit in two batch files (cnndm0 repeats batch0_cnndm): count it once.
            key = hashlib.sha1(
                json.dumps({k: v for k, v in row.items() if k != "batch"}, sort_keys=True, default=str).encode()
            ).digest()
            if key in first_seen:
                self.report.set_aside(name, number, f"duplicate comparison: same as {first_seen[key]}")
                continue
            first_seen[key] = f"{name} row {number}"
            yield name, comparison

    def _parse(self, row: dict[str, Any], name: str, number: int) -> Comparison | None:
        """The comparison in ``row``, or None after reporting why it is unusable."""
        info = row.get("info")
        if not isinstance(info, dict):
            kind = "missing field: 'info'" if info is None else f"wrong type: 'info' is {type(info).__name__}"
            self.report.bad(name, number, kind)
            return None
        fields: dict[str, str] = {}
        for key in self.info_fields:
            value = require_text(info, key, name, number, self.report)
            if value is None:
                return None
            fields[key] = value
        texts = self._texts(row.get("summaries"), name, number)
        if texts is None:
            return None
        choice = row.get("choice")
        if choice is None:
            self.report.bad(name, number, "missing field: 'choice'")
            return None
        if type(choice) is not int or choice not in (0, 1):  # type(): a bool is not a choice
            self.report.bad(name, number, f"bad choice: expected 0 or 1, got {choice!r}")
            return None
        prompt = self.prompt_format.format(**self._prompt_fields(fields))
        pair = PreferencePair(
            prompt, as_completion(texts[choice]), as_completion(texts[1 - choice]), origin=(name, number)
        )
        if not check_pair(pair, name, number, self.report):
            return None
        policies = [s.get("policy") for s in row["summaries"]]
        reference = next(
            (as_completion(t) for t, p in zip(texts, policies, strict=True) if p == REFERENCE_POLICY), None
        )
        split = row.get("split")
        return Comparison(pair, reference, split if isinstance(split, str) else None)

    def _texts(self, summaries: Any, name: str, number: int) -> list[str] | None:
        """The two summary texts, or None after reporting why there are not two."""
        if not isinstance(summaries, list):
            kind = "missing field: 'summaries'" if summaries is None else "wrong type: 'summaries' is not a list"
            self.report.bad(name, number, kind)
            return None
        if len(summaries) != 2:
            self.report.bad(name, number, f"not a pair: {len(summaries)} summaries, need 2")
            return None
        texts = []
        for i, summary in enumerate(summaries):
            if not isinstance(summary, dict):
                self.report.bad(name, number, f"wrong type: summaries[{i}] is {type(summary).__name__}")
                return None
            text = summary.get("text")
            if not isinstance(text, str):
                where = f"summaries[{i}].text"
                why = f"missing field: {where}" if text is None else f"wrong type: {where} is {type(text).__name__}"
                self.report.bad(name, number, why)
                return None
            texts.append(text)
        return texts

    def _prompt_fields(self, fields: dict[str, str]) -> dict[str, str]:
        return fields


class TLDRTask(ComparisonsTask):
    """Reddit TL;DR summarisation from OpenAI's human comparisons.

    Data: the Hub's ``comparisons`` splits ``train`` and ``validation`` as train and eval (its
    CNN/DM rows are left to :class:`CNNDMTask`); or local files
    ``<data_dir>/tldr/comparisons/*.jsonl.gz`` in the original schema. The shared data holds three
    validation batches and no train comparisons, so it is divided by prompt hash (see
    ``_assign_splits``). The TL;DR SFT set (``tldr_3_filtered``: posts with their own TL;DR) is not
    available locally, so :meth:`sft_texts` is prompt + preferred summary of the train comparisons.
    """

    name = "tldr"
    hub_splits: ClassVar[dict[Split, str]] = {"train": "train", "eval": "validation"}
    local_pattern = "tldr/comparisons/*"
    prompt_format = TLDR_FORMAT
    info_fields = ("subreddit", "title", "post")
    other_domain = ("article", "CNN/DM")

    def _prompt_fields(self, fields: dict[str, str]) -> dict[str, str]:
        # edit_b2_eval_test writes "r/relationships" where the other batches write "relationships".
        subreddit = fields["subreddit"]
        return {**fields, "subreddit": subreddit[2:] if subreddit.startswith("r/") else subreddit}


class CNNDMTask(ComparisonsTask):
    """CNN/DailyMail comparisons: the out-of-distribution test of TL;DR policies (eval split only).

    Data: the CNN/DM rows of the Hub's ``comparisons`` ``validation`` split, or local files
    ``<data_dir>/cnndm/comparisons/*.jsonl.gz``. Every comparison is eval: the task exists to
    evaluate policies trained on TL;DR, so asking for its train split is an error. The DPO paper
    samples on the CNN/DM *test* articles, which are not available here; these are the 45 articles
    of OpenAI's transfer comparisons, with the CNN/DM highlights (policy ``ref``) as references.
    """

    name = "cnndm"
    hub_splits: ClassVar[dict[Split, str]] = {"eval": "validation"}
    local_pattern = "cnndm/comparisons/*"
    prompt_format = CNNDM_FORMAT
    info_fields = ("article",)
    other_domain = ("post", "TL;DR")

    def sft_texts(self) -> list[str]:
        raise DataError("task 'cnndm' is an evaluation-only set: fine-tune on the 'tldr' task's texts")

    def _comparisons(self, split: Split) -> list[Comparison]:
        if split != "eval":
            raise DataError("task 'cnndm' has an eval split only: it tests policies trained on 'tldr'")
        return super()._comparisons(split)

    def _assign_splits(self, found: list[tuple[str, Comparison]]) -> Iterator[tuple[str, Split, Comparison]]:
        return ((name, "eval", c) for name, c in found)
