"""IMDb controlled sentiment generation (DPO paper §6.1).

The policy continues a prefix of a movie review; the gold reward is a sentiment classifier's
log-odds that the whole review (prefix + continuation) is positive. Data: the Large Movie Review
Dataset (Maas et al. 2011) — Hub ``stanfordnlp/imdb`` (splits train / test / unsupervised), or
the same schema locally as ``imdb/{train,test,unsup}.jsonl.gz`` under the data directory.

- SFT text: train + unsup reviews (``use_unsup``), ``<br />`` cleaned;
- prompts: prefixes of 2–8 policy tokens of train reviews (eval: of test reviews), the length
  drawn per review from the task's seed; the test prompts of the frontier are the eval prompts; the
  train-review prefixes are split by a hash of their text into train prompts (pairs, rollouts; in a
  seeded order) and the validation prompts of tuning (:meth:`IMDbTask.held_out_prompts`);
- labelled texts: train and test reviews with their 0/1 labels (review pairs, ``data.source: reviews``);
- the gold judge (:attr:`IMDbTask.gold_judge`): the sentiment classifier of :mod:`alignlab.rewards.gold`
  trained on the train labels, its reward the log-odds of positive.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.data import DataError
from alignlab.schema import knob
from alignlab.tasks.base import (
    HeldOut,
    Split,
    Task,
    TaskConfig,
    hub_rows,
    in_eval_split,
    iter_local,
    local_files,
    require_text,
)
from alignlab.tasks.capabilities import GoldJudge

if TYPE_CHECKING:
    from alignlab.rewards.base import Reward

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def clean_review(text: str) -> str:
    """Replace the ``<br />`` tags left in the raw reviews by spaces and collapse whitespace."""
    return _SPACES.sub(" ", _BR.sub(" ", text)).strip()


@dataclass(frozen=True)
class IMDbConfig(TaskConfig):
    name: str = knob("imdb", "The task: imdb.")
    prompt_tokens_min: int = knob(2, "Shortest review prefix used as a prompt, in policy tokens.", ge=1)
    prompt_tokens_max: int = knob(8, "Longest review prefix used as a prompt, in policy tokens.", ge=1)
    use_unsup: bool = knob(True, "Add the 50k unlabelled reviews to the SFT text.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_tokens_max < self.prompt_tokens_min:
            from alignlab.errors import ConfigError

            raise ConfigError("prompt_tokens_max", f"must be >= prompt_tokens_min ({self.prompt_tokens_min})")


# local file stem and Hub split of each of our splits
_SPLITS = {"train": ("imdb/train", "train"), "test": ("imdb/test", "test"), "unsup": ("imdb/unsup", "unsupervised")}


def _train_gold(task: Task, out_dir: Path, seed: int) -> None:
    from alignlab.rewards import gold  # here: declaring the judge imports no torch

    gold.train_gold_sentiment(task.cfg.data_dir, out_dir, seed=seed)


def _load_gold(path: Path) -> Reward:
    from alignlab.rewards import gold

    return gold.GoldSentiment.load(path)


class IMDbTask(Task):
    """IMDb reviews: SFT text, review-prefix prompts, and sentiment labels."""

    name = "imdb"
    config_cls = IMDbConfig
    hub_id = "stanfordnlp/imdb"
    gold_judge = GoldJudge(
        train=_train_gold,
        load=_load_gold,
        doing="training the sentiment classifier on the IMDb train labels",
        code=("alignlab.rewards.gold",),  # the classifier and the reading of its labels (the cache key)
        reward_scale="log_odds",
    )
    cfg: IMDbConfig

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self._cache: dict[str, list[tuple[str, int]]] = {}
        # each split's prefixes by tokenizer: every run of an experiment asks again (with its own copy
        # of one tokenizer), and tokenising 25,000 reviews costs seconds a time
        self._prefix_cache: dict[tuple[str, str], list[str]] = {}

    def reviews(self, split: str) -> list[tuple[str, int]]:
        """(cleaned text, label) of one split — train, test or unsup (label −1) — bad rows skipped."""
        if split in self._cache:
            return self._cache[split]
        stem, hub_split = _SPLITS[split]
        if self.data_dir is not None:
            paths = local_files(self.data_dir, stem)
            if not paths:
                raise DataError(
                    f"IMDb {split} split not found: looked for {self.data_dir / stem}.jsonl.gz, .jsonl or .parquet"
                )
            rows: Any = iter_local(paths, self.data_dir, self.report)
            names = [str(path.relative_to(self.data_dir)) for path in paths]
        else:
            hub = self.cfg.hub_id or self.hub_id
            rows = hub_rows(hub, hub_split, self.report)
            names = [f"hub:{hub}[{hub_split}]"]
        out: list[tuple[str, int]] = []
        for name, number, row in rows:
            text = require_text(row, "text", name, number, self.report)
            if text is None:
                continue
            label = row.get("label")
            allowed = (-1,) if split == "unsup" else (0, 1)
            if label not in allowed:
                self.report.bad(name, number, f"bad label: {label!r} (expected one of {allowed})")
                continue
            cleaned = clean_review(text)
            if not cleaned:
                self.report.bad(name, number, "empty text: 'text' holds only markup")
                continue
            self.report.file(name).kept += 1
            out.append((cleaned, int(label)))
            if self.cfg.max_rows is not None and len(out) >= self.cfg.max_rows:
                break
        if not out:
            raise self.report.no_usable_rows(f"reviews in the IMDb {split} split", names)
        self._cache[split] = out
        return out

    def sft_texts(self) -> list[str]:
        texts = [t for t, _ in self.reviews("train")]
        if self.cfg.use_unsup:
            texts += [t for t, _ in self.reviews("unsup")]
        return texts

    def sft_eval_texts(self) -> list[str]:
        """Test reviews: their movies are disjoint from the train reviews'."""
        return [t for t, _ in self.reviews("test")]

    def labelled(self, split: Split) -> list[tuple[str, int]]:
        return self.reviews("train" if split == "train" else "test")

    def prompts(self, split: Split, tokenizer: Any = None) -> list[str]:
        """Review prefixes of ``prompt_tokens_min``–``prompt_tokens_max`` tokens of ``tokenizer``.

        eval: a prefix of every test review, in the file's order. train: the train-review prefixes in an
        order seeded by the task's seed (the local files and the Hub list reviews sorted by label, so the
        first ``data.generate.max_prompts`` prompts would otherwise all open reviews of one label), less
        the validation part (:meth:`held_out_prompts`): pairs and rollouts never use a validation prompt.
        The prefix length of review i is drawn from ``Random(seed)``, so the prompts are the same on
        every run with the same seed and tokenizer.
        """
        if split == "eval":
            return self._prefixes("test", tokenizer)
        return [p for p in self._shuffled_train(tokenizer) if not self._is_validation(p)]

    def _prefixes(self, split: str, tokenizer: Any) -> list[str]:
        """The prefix of each review of ``split`` (train or test), in the file's order."""
        from alignlab.cache_keys import tokenizer_key  # here: reading a task's data needs no torch

        if tokenizer is None:
            raise DataError("IMDb prompts are prefixes measured in policy tokens: pass the policy's tokenizer")
        key = (split, tokenizer_key(tokenizer))
        if key not in self._prefix_cache:
            self._prefix_cache[key] = self._cut_prefixes(split, tokenizer)
        return list(self._prefix_cache[key])

    def _cut_prefixes(self, split: str, tokenizer: Any) -> list[str]:
        from alignlab.encoding import encode_text

        texts = [t for t, _ in self.reviews(split)]
        # the seed string names the split as the task's splits are named (train / eval)
        rng = random.Random(f"{self.cfg.seed}:{'eval' if split == 'test' else 'train'}")
        lengths = [rng.randint(self.cfg.prompt_tokens_min, self.cfg.prompt_tokens_max) for _ in texts]
        # only the opening of a review matters; 8 tokens never need more than a few hundred characters
        ids = encode_text(tokenizer, [t[:400] for t in texts])
        prompts = []
        for row_ids, k in zip(ids, lengths, strict=True):
            prefix = tokenizer.decode(row_ids[:k])
            if prefix.strip():
                prompts.append(prefix)
        return prompts

    def _shuffled_train(self, tokenizer: Any) -> list[str]:
        """Every train-review prefix, in an order fixed by the task's seed (a hash of each position)."""
        train = self._prefixes("train", tokenizer)
        order = sorted(range(len(train)), key=lambda i: hashlib.sha256(f"order:{self.cfg.seed}:{i}".encode()).digest())
        return [train[i] for i in order]

    def _is_validation(self, prompt: str) -> bool:
        """Whether a train-review prefix is a validation prompt: a hash of its text (``validation_fraction``),
        so that one text is on one side only."""
        return in_eval_split(prompt, self.cfg.validation_fraction, f"validation:{self.cfg.seed}")

    def held_out_prompts(self, part: HeldOut, tokenizer: Any = None) -> list[str]:
        """Test: the eval prompts (test-review prefixes). Validation: train-review prefixes.

        The validation prompts are the train-review prefixes whose text a hash puts in the validation part
        (``validation_fraction`` of them), in the train prompts' seeded order, without any prefix whose text
        is also a test prompt (short prefixes such as "This movie" open reviews in both splits), and each
        text once. So validation shares no prompt text with the test prompts, nor with the train prompts
        that pairs are generated from and PPO samples.
        """
        if part == "test":
            return self.prompts("eval", tokenizer)
        test = set(self.prompts("eval", tokenizer))
        validation = (p for p in self._shuffled_train(tokenizer) if self._is_validation(p) and p not in test)
        return list(dict.fromkeys(validation))
