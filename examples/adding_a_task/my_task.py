"""A task of my own: questions, each with a preferred and a dispreferred answer, registered as "qa_pairs"
without touching alignlab. It reads JSON Lines files under its data directory, qa_pairs/train.jsonl and
qa_pairs/test.jsonl, one {"prompt", "chosen", "rejected"} object a line: human preference pairs, so every
offline objective trains on them (data.source: task), and the chosen answers are its references."""

from typing import Any

from alignlab.data import DataError
from alignlab.tasks import PreferencePair, Task, TaskConfig, register_task
from alignlab.tasks.base import Split, check_pair, iter_local, local_files, require_text

FILES = {"train": "qa_pairs/train", "eval": "qa_pairs/test"}  # under the data directory, .jsonl


@register_task
class QATask(Task):
    """Questions with a preferred and a dispreferred answer, from local JSON Lines files."""

    name = "qa_pairs"  # the YAML's task.name

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self._pairs: dict[Split, list[PreferencePair]] = {}  # each file read once: its counts stay true

    def pairs(self, split: Split) -> list[PreferencePair]:
        """The usable pairs of ``split``; a bad row is skipped and counted, or stops the run (task.on_bad_row)."""
        if split not in self._pairs:
            if self.data_dir is None:
                raise DataError(f"task {self.name!r} reads local files: set task.data_dir")
            paths = local_files(self.data_dir, FILES[split])
            if not paths:
                raise DataError(f"task {self.name!r}: no {FILES[split]}.jsonl in data directory {self.data_dir}")
            rows = iter_local(paths, self.data_dir, self.report)
            self._pairs[split] = [pair for pair in (self._pair(*row) for row in rows) if pair is not None]
        return self._pairs[split]

    def _pair(self, file: str, number: int, row: dict[str, Any]) -> PreferencePair | None:
        texts = []
        for key in ("prompt", "chosen", "rejected"):
            text = require_text(row, key, file, number, self.report)
            if text is None:
                return None  # counted once, as its first missing or empty field
            texts.append(text)
        pair = PreferencePair(texts[0], texts[1], texts[2], origin=(file, number))
        if not check_pair(pair, file, number, self.report):
            return None
        self.report.file(file).kept += 1
        return pair

    def prompts(self, split: Split, tokenizer: Any = None) -> list[str]:
        """The distinct questions of ``split``."""
        return list(dict.fromkeys(pair.prompt for pair in self.pairs(split)))

    def sft_texts(self) -> list[str]:
        """Question + preferred answer, as the DPO paper fine-tunes on preferred completions."""
        return [pair.prompt + pair.chosen for pair in self.pairs("train")]

    def references(self, split: Split) -> list[tuple[str, str]]:
        """(question, its first preferred answer): win rates compare samples with these."""
        first: dict[str, str] = {}
        for pair in self.pairs(split):
            first.setdefault(pair.prompt, pair.chosen)
        return list(first.items())
