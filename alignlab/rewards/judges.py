"""Pairwise judges for win rates: which of two completions of a prompt is better?

A judge maps (prompts, a, b) to P(a beats b) per row, in [0, 1]. Two kinds:

- :class:`RewardJudge`: a reward (trained reward model, gold judge) scores both; a wins when its
  reward is higher, ties count one half. The default judge of the TL;DR and HH win-rate tables.
- :class:`LLMJudge`: a language model asked which response is better, with the two shown in a
  random order per row (position randomisation, as in the DPO paper's GPT-4 evaluation) so that
  a judge's preference for the first or second slot cancels out. :class:`CausalLMJudge` asks any
  Hugging Face causal LM (e.g. the SmolLM2 GGUF) and reads its next-token odds of "A" against "B";
  subclass :class:`LLMJudge` and implement :meth:`LLMJudge.prefer_first` for an API model.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from alignlab.encoding import encode_text, encode_with_template
from alignlab.rewards.base import Reward
from alignlab.tasks.capabilities import DIALOGUE_TEMPLATE, SUMMARY_TEMPLATE  # noqa: F401  (declared by the tasks)


class Judge(Protocol):
    name: str

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> Tensor:
        """(B,) P(a[i] is better than b[i] as a response to prompts[i])."""
        ...


class RewardJudge:
    """a beats b when ``reward(prompt, a) > reward(prompt, b)``; a tie counts 1/2."""

    def __init__(self, reward: Reward) -> None:
        self.reward = reward
        self.name = f"reward:{getattr(reward, 'name', type(reward).__name__)}"

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> Tensor:
        ra, rb = self.reward(prompts, a).float(), self.reward(prompts, b).float()
        return (ra > rb).float() + 0.5 * (ra == rb).float()


class LLMJudge(ABC):
    """A pairwise LLM judge whose slot preference cancels.

    ``orders="random"``: each row is shown as (a, b) or (b, a) by a seeded coin; :meth:`prefer_first`
    gives P(first shown is better), which is mapped back to P(a is better) — a slot preference
    cancels on average over rows. ``orders="both"``: each row is shown both ways and
    P(a is better) = ½ [P(a first) + 1 − P(b first)] — a constant slot preference cancels in every
    row (a small model that always answers "A" gives ½, a tie, not a coin's verdict); twice the
    forwards.
    """

    name = "llm"

    def __init__(self, seed: int = 0, orders: str = "random") -> None:
        if orders not in ("random", "both"):
            raise ValueError(f"orders must be 'random' or 'both', got {orders!r}")
        self.seed, self.orders = seed, orders

    @abstractmethod
    def prefer_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> Tensor:
        """(B,) P(first[i] is the better response), each pair shown in the given order."""

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> Tensor:
        if self.orders == "both":
            return 0.5 * (self.prefer_first(prompts, a, b).float() + 1 - self.prefer_first(prompts, b, a).float())
        rng = random.Random(self.seed)
        swap = [rng.random() < 0.5 for _ in prompts]
        first = [y if s else x for x, y, s in zip(a, b, swap, strict=True)]
        second = [x if s else y for x, y, s in zip(a, b, swap, strict=True)]
        p_first = self.prefer_first(prompts, first, second).float()
        swapped = torch.tensor(swap, dtype=torch.bool)
        return torch.where(swapped, 1 - p_first, p_first)


class CausalLMJudge(LLMJudge):
    """A causal LM as the judge: P(first) = softmax over the next-token logits of " A" and " B".

    Args:
        model: a Hugging Face causal LM.
        tokenizer: its tokenizer.
        template: a format string with ``{prompt}``, ``{first}`` and ``{second}``.
        batch_size: rows per forward pass.
        seed: the position-randomisation seed.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: str = DIALOGUE_TEMPLATE,
        batch_size: int = 8,
        seed: int = 0,
        orders: str = "random",
    ) -> None:
        super().__init__(seed, orders)
        self.model, self.tokenizer, self.template, self.batch_size = model.eval(), tokenizer, template, batch_size
        self.choices = [self._token(" A"), self._token(" B")]
        self.name = f"llm:{getattr(model.config, '_name_or_path', '') or type(model).__name__}"

    def _token(self, text: str) -> int:
        return int(encode_text(self.tokenizer, [text])[0][-1])

    def encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """(B, T) ``input_ids`` and ``attention_mask`` of judge prompts, left-padded (the next token
        follows the last column); the texts' special-token strings are text, framed by the
        tokenizer's own template (e.g. a BOS)."""
        rows = encode_with_template(self.tokenizer, texts)
        return dict(self.tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt"))

    @torch.no_grad()
    def prefer_first(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> Tensor:
        texts = [
            self.template.format(prompt=p.strip(), first=f.strip(), second=s.strip())
            for p, f, s in zip(prompts, first, second, strict=True)
        ]
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = {k: v.to(self.model.device) for k, v in self.encode(texts[start : start + self.batch_size]).items()}
            # positions count from each row's first real token, so the left padding a row gets from
            # its batch neighbours does not move it (absolute position embeddings, e.g. GPT-2); the
            # vocabulary projection runs on the last position only
            position_ids = (enc["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
            logits = self.model(**enc, position_ids=position_ids, logits_to_keep=1).logits[:, -1, self.choices]
            out.append(torch.softmax(logits.float(), dim=-1)[:, 0].cpu())
        return torch.cat(out)


def llm_judge(name: str, task_name: str, seed: int, batch_size: int = 8, orders: str = "random") -> CausalLMJudge:
    """The win-rate tables' LLM judge (``eval.winrate.judge: llm``): the pretrained model ``name``
    (a Hub id, a directory, or ``smollm2-135m``) asked with the prompt that the task ``task_name``
    declares (``Task.judge_template``: the DPO paper's summary prompt for TL;DR and CNN/DM, its
    dialogue prompt otherwise), positions randomised with ``seed`` or each pair shown both ways
    (``orders``, ``eval.winrate.judge_orders``)."""
    from alignlab.models import ModelConfig, load_pretrained
    from alignlab.tasks import get_task

    template = get_task(task_name).judge_template  # before loading: an unknown task is one clear error
    model, tokenizer = load_pretrained(ModelConfig(name_or_path=name))
    judge = CausalLMJudge(model, tokenizer, template, batch_size=batch_size, seed=seed, orders=orders)
    judge.name = f"llm:{name}"  # as the YAML names it, not a machine's path (the GGUF's package directory)
    return judge
