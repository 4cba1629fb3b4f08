"""The reward interface shared by gold judges, HF classifiers and trained reward models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Reward(Protocol):
    """Maps B (prompt, completion) pairs to a (B,) float tensor; higher is better.

    Implementations decide what they read: a sentiment judge scores ``prompt + completion`` (the
    whole review so far), a reward model scores the completion in the context of the prompt.
    """

    name: str

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor: ...
