"""The task interface, and reading a task's rows with every bad row counted and named.

A task turns a dataset — a Hugging Face Hub id, or the same schema in local ``.jsonl``,
``.jsonl.gz`` or ``.parquet`` files under a data directory — into what a run needs: SFT texts,
train/eval prompts, preference pairs, labelled texts, references. Rows that cannot be used
(missing fields, empty or identical completions, undecodable text, malformed JSON) are
*skipped and counted* per file, or *rejected* with the file and row named, by the task's
``on_bad_row`` setting. The counts live in :class:`DataReport`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from alignlab.data import DATA_DIR_ENV, DataError, check_hub, quiet_datasets, resolve_data_dir
from alignlab.errors import one_line
from alignlab.schema import Config, knob
from alignlab.tasks.capabilities import DATA_SOURCES, DIALOGUE_TEMPLATE, GoldJudge

Split = Literal["train", "eval"]
HeldOut = Literal["validation", "test"]
"""The two parts of the held-out prompts: validation (tuning) and test (the reported frontier)."""
Row = tuple[str, int, dict[str, Any]]
"""(report name of the file, 1-based row number, the row)."""
T = TypeVar("T")


@dataclass(frozen=True)
class PreferencePair:
    """One human or generated preference: ``prompt + chosen`` is preferred to ``prompt + rejected``."""

    prompt: str
    chosen: str
    rejected: str
    origin: tuple[str, int] | None = field(default=None, compare=False)
    """(file, row) the pair was read from, named in errors; None for generated pairs."""
    chosen_score: float | None = None
    """A score of ``chosen`` (higher is better): the gold judge's reward of a generated pair, a reward
    model's (``data.scores: reward_model``) or a pairs file's ``chosen_score``; None when unscored."""
    rejected_score: float | None = None
    """The same score of ``rejected``."""

    def flipped(self) -> PreferencePair:
        """The pair with its label flipped: chosen and rejected swapped, each keeping its own score."""
        p = self
        return PreferencePair(p.prompt, p.rejected, p.chosen, p.origin, p.rejected_score, p.chosen_score)

    def scored(self, chosen_score: float | None, rejected_score: float | None) -> PreferencePair:
        """The same pair with these scores (None, None: unscored)."""
        return PreferencePair(self.prompt, self.chosen, self.rejected, self.origin, chosen_score, rejected_score)


@dataclass(frozen=True)
class TaskConfig(Config):
    """Settings every task shares; a task may subclass this to add its own."""

    name: str = knob(help="The task: imdb, hh, tldr or cnndm, or one a plugin registers (register_task).")
    data_dir: str | None = knob(
        None, f"Directory with the task's files in the Hub schema; unset: ${DATA_DIR_ENV}, else the Hub."
    )
    hub_id: str | None = knob(None, "Hub dataset id to use when there is no data directory (task default if unset).")
    on_bad_row: Literal["skip", "error"] = knob(
        "skip", "skip: count and report unusable rows; error: stop at the first one, naming file and row."
    )
    eval_fraction: float = knob(
        0.1, "Share of prompts held out when the local data has a single split (HH, TL;DR here).", gt=0, lt=1
    )
    max_rows: int | None = knob(None, "Read at most this many usable rows per split (null: all).", gt=0)
    seed: int = knob(0, "Seed of every random choice the task makes (prefix lengths, subsampling).")
    validation_fraction: float = knob(
        0.5,
        "Share of the held-out (eval) prompts set aside, by a hash of the prompt, as validation prompts for "
        "tuning; the rest are the test prompts of the frontier (HH, TL;DR, CNN/DM). IMDb: the share of the "
        "train-review prefixes set aside as validation prompts (never a pair's or a rollout's prompt).",
        gt=0,
        lt=1,
    )


# ---------------------------------------------------------------------------------------------
# Bad-row accounting
# ---------------------------------------------------------------------------------------------

MAX_EXAMPLES = 5


@dataclass
class FileReport:
    """Rows read from one file and why any were skipped."""

    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


class BadRowError(DataError):
    """A row is unusable and ``on_bad_row`` is ``error``."""


class DataReport:
    """Per-file counts of rows read, kept and skipped (by reason), with the first bad rows named.

    Args:
        on_bad_row: ``skip`` counts a bad row; ``error`` raises :class:`BadRowError` at the first.
        root: the data directory the file names are relative to, named in errors.
    """

    def __init__(self, on_bad_row: Literal["skip", "error"] = "skip", root: Path | None = None) -> None:
        self.on_bad_row = on_bad_row
        self.root = root
        self.files: dict[str, FileReport] = {}

    def file(self, name: str) -> FileReport:
        return self.files.setdefault(name, FileReport())

    def bad(self, name: str, row: int, reason: str) -> None:
        """Record that row ``row`` (1-based) of ``name`` is unusable; raise if the policy is ``error``."""
        if self.on_bad_row == "error":
            local = self.root is not None and not name.startswith(("hub:", "("))  # not a Hub split or generated
            where = f"in data directory {self.root}; " if local else ""
            raise BadRowError(f"{name}: row {row}: {reason} ({where}on_bad_row: skip would skip and count it)")
        self.set_aside(name, row, reason)

    def set_aside(self, name: str, row: int, reason: str) -> None:
        """Count a row that is not used (e.g. a duplicate); unlike :meth:`bad` it never raises."""
        report = self.file(name)
        kind = reason.split(":")[0]
        report.skipped[kind] = report.skipped.get(kind, 0) + 1
        if len(report.examples) < MAX_EXAMPLES:
            report.examples.append(f"row {row}: {reason}")

    def skipped(self) -> int:
        return sum(sum(r.skipped.values()) for r in self.files.values())

    def describe(self, name: str) -> str:
        """One line on one file: rows read and why they were skipped, with the first bad row named."""
        r = self.file(name)
        if not r.rows:
            return f"{name}: no rows"
        line = f"{name}: {r.rows} rows"
        if r.skipped:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.skipped.items()))
            line += f", {sum(r.skipped.values())} skipped ({reasons}; first: {r.examples[0]})"
        return line

    def no_usable_rows(self, what: str, names: list[str]) -> DataError:
        """The error for a read that left nothing to use: which files, and what happened to their rows."""
        where = f" in data directory {self.root}" if self.root is not None else ""
        files = "; ".join(self.describe(name) for name in names) or "no files"
        return DataError(f"no usable {what}{where}: {files}")

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {"rows": r.rows, "kept": r.kept, "skipped": dict(r.skipped), "examples": list(r.examples)}
            for name, r in self.files.items()
        }

    def summary(self) -> str:
        """One line per file, e.g. ``imdb/train.jsonl.gz: 25000 rows, 24998 kept, skipped 2 (empty text: 2)``."""
        lines = []
        for name, r in self.files.items():
            line = f"{name}: {r.rows} rows, {r.kept} kept"
            if r.skipped:
                reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.skipped.items()))
                line += f", skipped {sum(r.skipped.values())} ({reasons})"
            lines.append(line)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading rows: local files row by row, or a Hub split
# ---------------------------------------------------------------------------------------------


def iter_jsonl(path: Path, report: DataReport, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, object) for each line of a ``.jsonl`` / ``.jsonl.gz`` file.

    Undecodable bytes, malformed JSON and non-object lines are bad rows; blank lines are ignored.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    file_report = report.file(name)
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                file_report.rows += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    report.bad(name, number, f"undecodable text: invalid UTF-8 at byte {err.start}")
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as err:
                    report.bad(name, number, f"malformed JSON: {err.msg} (column {err.colno})")
                    continue
                if not isinstance(obj, dict):
                    report.bad(name, number, f"malformed JSON: expected an object, got {type(obj).__name__}")
                    continue
                yield number, obj
    except (OSError, EOFError) as err:  # a truncated or corrupt gzip file
        kind = "a gzip-compressed JSON Lines file" if path.suffix == ".gz" else "a JSON Lines file"
        raise DataError(f"{path}: cannot be read as {kind}: {one_line(err)} (is the file complete?)") from err


def iter_parquet(path: Path, report: DataReport, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) for each row of a parquet file, read through ``datasets``."""
    import datasets

    try:
        with quiet_datasets():
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as err:
        raise DataError(f"{path}: cannot be read as parquet: {one_line(err)}") from err
    file_report = report.file(name)
    for number, row in enumerate(ds, start=1):
        file_report.rows += 1
        yield number, row


def iter_hub(hub_id: str, split: str, report: DataReport, config: str | None = None) -> Iterator[tuple[int, dict]]:
    """(row number, row) of a Hub dataset split; a clear error when the Hub cannot be reached."""
    import datasets

    label = f"{hub_id}{':' + config if config else ''}[{split}]"
    instead = f"set data_dir in the YAML or ${DATA_DIR_ENV} to a directory with the task's files"
    check_hub(label, "no data directory is set", instead)
    try:
        with quiet_datasets():
            ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as err:
        raise DataError(
            f"could not load {label} from the Hugging Face Hub: {one_line(err)}. Without the Hub, "
            f"set data_dir in the YAML or ${DATA_DIR_ENV} to a directory with the task's files"
        ) from err
    file_report = report.file(f"hub:{label}")
    for number, row in enumerate(ds, start=1):
        file_report.rows += 1
        yield number, row


def hub_rows(hub_id: str, split: str, report: DataReport, config: str | None = None) -> Iterator[Row]:
    """(report name, row number, row) of a Hub split: the triples :func:`iter_local` gives for files."""
    # The name must be the one iter_hub files its row counts under, so bad rows land in the same entry.
    name = f"hub:{hub_id}{':' + config if config else ''}[{split}]"
    for number, row in iter_hub(hub_id, split, report, config):
        yield name, number, row


def keep_per_split(
    items: Iterable[tuple[str, Split, T]], splits: tuple[Split, ...], cap: int | None, report: DataReport
) -> dict[Split, list[T]]:
    """Sort (file name, split, item) into ``splits``, keeping at most ``cap`` items in each.

    Every kept item counts as a kept row of its file. Reading stops once every split is full, so
    ``max_rows`` also bounds the time spent on a large Hub split.
    """
    kept: dict[Split, list[T]] = {split: [] for split in splits}
    for name, split, item in items:
        bucket = kept[split]
        if cap is None or len(bucket) < cap:
            bucket.append(item)
            report.file(name).kept += 1
        if cap is not None and all(len(b) >= cap for b in kept.values()):
            break
    return kept


def local_files(data_dir: Path, pattern: str) -> list[Path]:
    """Files under ``data_dir`` matching ``pattern`` (a glob without suffix), any supported suffix, sorted."""
    found = sorted(
        p for suffix in (".jsonl.gz", ".jsonl", ".parquet") for p in data_dir.glob(pattern + suffix) if p.is_file()
    )
    return found


def iter_local(paths: list[Path], data_dir: Path, report: DataReport) -> Iterator[tuple[str, int, dict]]:
    """(file name relative to the data directory, row number, row) over several local files."""
    for path in paths:
        name = str(path.relative_to(data_dir))
        rows = iter_parquet(path, report, name) if path.suffix == ".parquet" else iter_jsonl(path, report, name)
        for number, row in rows:
            yield name, number, row


def require_text(row: dict[str, Any], key: str, name: str, number: int, report: DataReport) -> str | None:
    """``row[key]`` if it is a non-empty string; otherwise record a bad row and return None."""
    value = row.get(key)
    if value is None:
        report.bad(name, number, f"missing field: {key!r}")
        return None
    if not isinstance(value, str):
        report.bad(name, number, f"wrong type: {key!r} is {type(value).__name__}, not text")
        return None
    if not value.strip():
        report.bad(name, number, f"empty text: {key!r}")
        return None
    return value


def check_pair(pair: PreferencePair, name: str, number: int, report: DataReport) -> bool:
    """A usable pair has a prompt and two different, non-empty completions."""
    if not pair.chosen.strip() or not pair.rejected.strip():
        report.bad(name, number, "empty text: chosen or rejected completion")
        return False
    if pair.chosen == pair.rejected:
        report.bad(name, number, "identical completions: chosen == rejected")
        return False
    return True


def fit_to_context(
    pairs: list[PreferencePair], tokenizer: Any, max_length: int, report: DataReport, min_completion: int = 1
) -> list[PreferencePair]:
    """The pairs whose prompt (with BOS) leaves room for ``min_completion`` tokens in ``max_length``.

    A longer prompt is a bad row, reported with the file and row it came from (or skipped and
    counted under ``on_bad_row: skip``). Completions that do not fit are truncated at encoding.
    """
    from alignlab.encoding import encode_text  # here: reading a task's data needs no torch

    if not pairs:
        return []
    bos = 1 if tokenizer.bos_token_id is not None else 0
    lengths = encode_text(tokenizer, [p.prompt for p in pairs])
    kept = []
    for pair, ids in zip(pairs, lengths, strict=True):
        if len(ids) + bos + min_completion > max_length:
            name, row = pair.origin or ("(generated pairs)", 0)
            report.bad(name, row, f"prompt too long: {len(ids) + bos} tokens for a context of {max_length}")
            report.file(name).kept -= 1 if pair.origin else 0
            continue
        kept.append(pair)
    if not kept:
        first = f"; the first is {pairs[0].origin[0]} row {pairs[0].origin[1]}" if pairs[0].origin else ""
        shortest = min(len(ids) for ids in lengths) + bos
        raise DataError(
            f"none of the {len(pairs)} pairs fits the context of {max_length} tokens: every prompt is too long "
            f"(the shortest is {shortest} tokens{first}). Raise train.max_length, use a model with a longer "
            "context, or shorten the prompts"
        )
    return kept


def in_eval_split(key: str, fraction: float, seed: int | str) -> bool:
    """Deterministic held-out membership by a hash of ``key`` (e.g. the prompt): stable across runs
    and machines, and the same prompt never lands on both sides."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# ---------------------------------------------------------------------------------------------
# The task interface
# ---------------------------------------------------------------------------------------------


class Task(ABC):
    """A task: where its data lives and what a run can ask of it.

    Subclasses set ``name``, ``config_cls`` and ``hub_id`` and implement the methods their data
    supports; the others raise a clear error. What a task can do is read from what it declares —
    :meth:`data_sources`, :meth:`has_gold_judge`, :meth:`has_references`, :attr:`judge_template` —
    never from its name.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[TaskConfig]] = TaskConfig
    hub_id: ClassVar[str] = ""
    """The Hub dataset read when there is no data directory; empty: the task reads local files only."""
    gold_judge: ClassVar[GoldJudge | None] = None
    """The task's gold reward, for a task with labelled data to train one (IMDb); None for the others."""
    judge_template: ClassVar[str] = DIALOGUE_TEMPLATE
    """The pairwise LLM judge's prompt for win rates (``eval.winrate.judge: llm``), a format string with
    ``{prompt}``, ``{first}`` and ``{second}``: the DPO paper's dialogue prompt unless the task sets another
    (TL;DR and CNN/DM: its summary prompt)."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.data_dir = resolve_data_dir(cfg.data_dir)
        self.report = DataReport(cfg.on_bad_row, self.data_dir)

    @property
    def source(self) -> str:
        """Where the data comes from, for logs and resolved configs."""
        hub = self.cfg.hub_id or self.hub_id
        return str(self.data_dir) if self.data_dir is not None else f"hub:{hub}" if hub else "(no data directory)"

    @abstractmethod
    def sft_texts(self) -> list[str]:
        """Texts for supervised fine-tuning of the policy before preference training."""

    @abstractmethod
    def prompts(self, split: Split, tokenizer: Any = None) -> list[str]:
        """Prompts to sample from (train) or evaluate on (eval)."""

    def held_out_prompts(self, part: HeldOut, tokenizer: Any = None) -> list[str]:
        """The validation or the test part of the held-out prompts, disjoint by construction.

        By default the eval prompts are divided by a hash of the prompt text (:func:`in_eval_split`
        with ``validation_fraction`` and ``seed``, salted so that it is independent of the train/eval
        split): the same division on every run and machine, and no prompt text in both parts.
        """
        prompts = self.prompts("eval", tokenizer)
        salt = f"validation:{self.cfg.seed}"
        return [p for p in prompts if in_eval_split(p, self.cfg.validation_fraction, salt) == (part == "validation")]

    def sft_eval_texts(self) -> list[str]:
        """Held-out text for the perplexity of SFT: prompt + reference of the eval split by default."""
        texts = [prompt + reference for prompt, reference in self.references("eval")]
        if not texts:
            raise DataError(
                f"task {self.name!r} ({self.source}) has no held-out prompt with a reference completion, which "
                "SFT needs for its held-out perplexity: add rows, or raise task.eval_fraction where the data has "
                "a single split"
            )
        return texts

    def fit_to_context(self, pairs: list[PreferencePair], tokenizer: Any, max_length: int) -> list[PreferencePair]:
        """``pairs`` without those whose prompt does not fit ``max_length`` tokens (reported per file and row)."""
        return fit_to_context(pairs, tokenizer, max_length, self.report)

    def pairs(self, split: Split) -> list[PreferencePair]:
        """Human preference pairs, for tasks that have them."""
        raise DataError(f"task {self.name!r} has no human preference pairs; generate them from its prompts")

    def labelled(self, split: Split) -> list[tuple[str, int]]:
        """(text, label) of labelled texts, label 1 the preferred class (IMDb: positive) and 0 the other,
        for tasks that have labels: review pairs (``data.source: reviews``) are made of them."""
        raise DataError(f"task {self.name!r} has no labelled texts")

    def references(self, split: Split) -> list[tuple[str, str]]:
        """(prompt, reference completion) pairs, e.g. human-written summaries, for win rates."""
        raise DataError(f"task {self.name!r} has no reference completions")

    def review_pairs(self, n: int, prompt_words: int, completion_words: int, seed: int) -> list[PreferencePair]:
        """Pairs with known labels, no sampling needed (``data.source: reviews``, the quickstart's data).

        The prompt is the opening ``prompt_words`` words of a train text labelled 1 (IMDb: a positive
        review), the chosen completion its own next ``completion_words`` words, the rejected one the same
        span of a text labelled 0: a preference that the labels guarantee.
        """
        need = prompt_words + completion_words
        words = {
            label: [w for t, y in self.labelled("train") if y == label and len(w := t.split()) >= need]
            for label in (0, 1)
        }
        if min(len(words[0]), len(words[1])) < n:
            raise DataError(
                f"the train split of task {self.name!r} ({self.source}) has {len(words[1])} texts labelled 1 "
                f"(positive) and {len(words[0])} labelled 0 of at least {need} words (a run's data.prompt_words + "
                f"data.completion_words); {n} pairs (its data.pairs + data.eval_pairs) need {n} of each: lower "
                "those settings or add texts"
            )
        rng = random.Random(seed)
        pos, neg = rng.sample(words[1], n), rng.sample(words[0], n)
        k, m = prompt_words, completion_words
        return [
            PreferencePair(" ".join(p[:k]), " " + " ".join(p[k : k + m]), " " + " ".join(q[k : k + m]))
            for p, q in zip(pos, neg, strict=True)
        ]

    # -- capabilities: read from what the class declares, as the orchestration asks them -------------

    @classmethod
    def has_references(cls) -> bool:
        """Whether the task has reference completions (win rates need them): it defines :meth:`references`."""
        return cls.references is not Task.references

    @classmethod
    def has_pairs(cls) -> bool:
        """Whether the task has human preference pairs (``data.source: task``): it defines :meth:`pairs`."""
        return cls.pairs is not Task.pairs

    @classmethod
    def has_labels(cls) -> bool:
        """Whether the task has labelled texts (``data.source: reviews``): it defines :meth:`labelled`."""
        return cls.labelled is not Task.labelled

    @classmethod
    def has_gold_judge(cls) -> bool:
        """Whether the task has a gold reward (generated pairs, ``reward.kind: gold``): its :attr:`gold_judge`."""
        return cls.gold_judge is not None

    @classmethod
    def data_sources(cls) -> tuple[str, ...]:
        """The ``data.source`` values the task can feed, from what it declares (:data:`DATA_SOURCES`):
        ``generated`` with a gold judge, ``task`` with human pairs, ``reviews`` with labelled texts, and
        ``file`` always."""
        return tuple(source for source, need in DATA_SOURCES.items() if need.offered(cls))
