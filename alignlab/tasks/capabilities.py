"""What a task can do, declared on its class and looked up by the rest of alignlab, never told by its name.

- :class:`GoldJudge`: how a task with labelled data trains and loads its gold reward (IMDb: the hashed
  n-gram sentiment classifier of :mod:`alignlab.rewards.gold`); ``Task.gold_judge`` is None for a task
  without one.
- :data:`DATA_SOURCES`: what each ``data.source`` of a run needs of its task; :meth:`Task.data_sources`
  reads the table, so the sources a task offers follow from what it declares.
- The pairwise LLM judge's prompts (``Task.judge_template``): the DPO paper's prompt for dialogue, the
  default, and its prompt for summaries (TL;DR, CNN/DM).

Nothing here imports torch: a task declares its judge by functions that import what they need when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from alignlab.rewards.base import Reward
    from alignlab.tasks.base import Task


@dataclass(frozen=True)
class GoldJudge:
    """A task's gold reward: a judge trained on the task's own labelled data, built once per (task data,
    seed, code) and cached (:func:`alignlab.stages.gold_judge`). Generated pairs (``data.source:
    generated``), ``reward.kind: gold`` (PPO-GT), the reward of the sampling evaluation and
    ``eval.winrate.judge: gold`` use it.
    """

    train: Callable[[Task, Path, int], object]
    """``train(task, out_dir, seed)``: train the judge on the task's data and save it under ``out_dir``."""
    load: Callable[[Path], Reward]
    """``load(path)``: the judge ``train`` saved there, a reward ``(prompts, completions) -> (B,)`` with a
    ``name``."""
    doing: str
    """What building it does, for the progress line: ``training the sentiment classifier on ...``."""
    code: tuple[str, ...] = ()
    """The modules, by name, whose source determines the judge: a change to one trains it again (its cache
    key). Default: the modules that define ``train`` and ``load``."""
    reward_scale: str = "gold"
    """What its reward is, as the results' ``reward_scale`` column names it: ``log_odds`` (a classifier's
    log-odds of positive, which the plots can show as P(positive) = σ(·)) or ``gold`` (another scale)."""

    def modules(self) -> tuple[str, ...]:
        """The module names of the cache key: ``code``, else those of ``train`` and ``load``."""
        return self.code or tuple(dict.fromkeys([self.train.__module__, self.load.__module__]))


class SourceNeed(NamedTuple):
    """What one ``data.source`` needs of the task, and how a task class says it has it."""

    what: str
    """The capability, as an error names it: ``a gold judge``."""
    short: str
    """The same, short, after "tasks with": ``one``, ``them``."""
    offered: Callable[[type[Task]], bool]


DATA_SOURCES: dict[str, SourceNeed] = {
    "generated": SourceNeed("a gold judge", "one", lambda task: task.has_gold_judge()),
    "task": SourceNeed("human preference pairs", "them", lambda task: task.has_pairs()),
    "reviews": SourceNeed("labelled texts", "them", lambda task: task.has_labels()),
    "file": SourceNeed("nothing", "", lambda task: True),  # the rows are the file's, for any task
}
"""``data.source`` -> what it needs of the task (:meth:`Task.data_sources` reads this table)."""


# The DPO paper's GPT-4 prompt for single-turn dialogue (Appendix C.2), "A"/"B" in place of "1"/"2".
DIALOGUE_TEMPLATE = (
    "For the following query to a chatbot, which response is more helpful?\n\n"
    "Query: {prompt}\n\nResponse A:\n{first}\n\nResponse B:\n{second}\n\n"
    'Which response is more helpful? Answer with one letter, "A" or "B".\nMore helpful:'
)
# ... and its prompt for summarisation (Appendix C.2).
SUMMARY_TEMPLATE = (
    "Which of the following summaries does a better job of summarizing the most important points in the "
    "given forum post, without including unimportant or irrelevant details?\n\n"
    "Post:\n{prompt}\n\nSummary A:\n{first}\n\nSummary B:\n{second}\n\n"
    'Which summary is better? Answer with one letter, "A" or "B".\nPreferred:'
)
JUDGE_FIELDS = ("prompt", "first", "second")
"""The fields a judge template formats: the prompt and the two responses in the order shown."""
