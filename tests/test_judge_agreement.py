"""The pairwise judges (alignlab.rewards.judges) and their agreement with human labels."""

from __future__ import annotations

import torch


def test_causal_lm_judge_does_not_depend_on_its_batch():
    """A row's P(first) is the same alone as beside longer rows that left-pad it (GPT-2 has absolute
    position embeddings: without position ids counted from the first real token, padding moves it)."""
    from alignlab.models import build_preset, train_tokenizer
    from alignlab.rewards.judges import CausalLMJudge

    tokenizer = train_tokenizer(["Response A or Response B: which is more helpful? " * 5] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = build_preset("tiny-s", tokenizer)
    prompts, first, second = ["hi", "how are you today, friend?", "?"], ["hello", "fine", "yes"], ["bye", "bad", "no"]
    together = CausalLMJudge(model, tokenizer, batch_size=3).prefer_first(prompts, first, second)
    alone = CausalLMJudge(model, tokenizer, batch_size=1).prefer_first(prompts, first, second)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
