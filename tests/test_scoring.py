"""The scoring core against a naive log_softmax().gather() and TRL's selective_log_softmax."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from trl.trainer.utils import selective_log_softmax

from alignlab.core import scoring
from alignlab.core.scoring import (
    EncodedBatch,
    backbone_and_head,
    concat_pairs,
    score_pairs,
    sequence_logps,
    token_logps,
)

PAD = 0


def right_padded_batch(seed: int = 0) -> tuple[EncodedBatch, list[tuple[int, int]]]:
    """Three rows of (prompt length, completion length) = (3, 4), (5, 2), (2, 6), right-padded to 8."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5, 2), (2, 6)]
    T = max(p + c for p, c in shapes)
    ids = torch.full((3, T), PAD)
    att = torch.zeros(3, T, dtype=torch.long)
    comp = torch.zeros(3, T, dtype=torch.long)
    for i, (p, c) in enumerate(shapes):
        ids[i, : p + c] = torch.randint(1, 64, (p + c,), generator=g)
        att[i, : p + c] = 1
        comp[i, p : p + c] = 1
    return EncodedBatch(ids, att, comp), shapes


def to_left_padding(batch: EncodedBatch) -> EncodedBatch:
    """The same rows with the padding moved to the left."""
    rows = []
    for x in (batch.input_ids, batch.attention_mask, batch.completion_mask):
        out = torch.zeros_like(x) + (PAD if x is batch.input_ids else 0)
        for i in range(x.shape[0]):
            n = int(batch.attention_mask[i].sum())
            out[i, x.shape[1] - n :] = x[i, :n]
        rows.append(out)
    return EncodedBatch(*rows)


def naive_token_logps(model, batch: EncodedBatch) -> torch.Tensor:
    """Full log_softmax over the vocabulary, gather, shift by one, mask: the textbook way."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    out = torch.zeros(batch.input_ids.shape, dtype=logp.dtype)
    out[:, 1:] = logp * batch.completion_mask[:, 1:]
    return out


def test_matches_naive_log_softmax_gather(model):
    batch, _ = right_padded_batch()
    ours = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    assert_close(ours, naive_token_logps(model, batch), rtol=0, atol=1e-12)


def test_matches_trl_selective_log_softmax(model):
    batch, _ = right_padded_batch(seed=1)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    trl = selective_log_softmax(logits[:, :-1], batch.input_ids[:, 1:]) * batch.completion_mask[:, 1:]
    ours = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    assert_close(ours[:, 1:], trl, rtol=0, atol=1e-12)


def test_left_and_right_padding_agree(model):
    right, shapes = right_padded_batch(seed=2)
    left = to_left_padding(right)
    r = token_logps(model, right.input_ids, right.attention_mask, right.completion_mask)
    lft = token_logps(model, left.input_ids, left.attention_mask, left.completion_mask)
    assert_close(
        sequence_logps(r, right.completion_mask, "sum"),
        sequence_logps(lft, left.completion_mask, "sum"),
        rtol=0,
        atol=1e-10,
    )
    # token by token: the same values, shifted by the padding
    for i, (p, c) in enumerate(shapes):
        T = right.input_ids.shape[1]
        assert_close(r[i, p : p + c], lft[i, T - c :], rtol=0, atol=1e-10)


def test_left_padding_matches_trl_on_unpadded_rows(model):
    """Each left-padded row equals TRL's selective_log_softmax on that row alone (no padding at all)."""
    right, shapes = right_padded_batch(seed=3)
    left = to_left_padding(right)
    ours = token_logps(model, left.input_ids, left.attention_mask, left.completion_mask)
    T = left.input_ids.shape[1]
    for i, (p, c) in enumerate(shapes):
        ids = right.input_ids[i : i + 1, : p + c]
        logits = model(input_ids=ids).logits
        trl = selective_log_softmax(logits[:, :-1], ids[:, 1:])[0, p - 1 :]
        assert_close(ours[i, T - c :], trl, rtol=0, atol=1e-10)


def test_prompt_and_padding_never_count(model):
    batch, _ = right_padded_batch(seed=4)
    out = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    assert (out[batch.completion_mask == 0] == 0).all()
    assert (out[batch.completion_mask == 1] < 0).all()
    # changing prompt-side padding tokens' ids changes nothing
    noisy = batch.input_ids.clone()
    noisy[batch.attention_mask == 0] = 7
    assert_close(token_logps(model, noisy, batch.attention_mask, batch.completion_mask), out, rtol=0, atol=1e-12)


def test_one_forward_for_chosen_and_rejected_equals_two(model):
    chosen, _ = right_padded_batch(seed=5)
    rejected, _ = right_padded_batch(seed=6)
    rejected = EncodedBatch(rejected.input_ids[:, :7], rejected.attention_mask[:, :7], rejected.completion_mask[:, :7])
    calls = []  # forwards through the transformer body (the LM head may run on completion tokens apart)
    handle = model.base_model.register_forward_hook(lambda *_: calls.append(1))
    c, cm, r, rm = score_pairs(model, chosen, rejected, PAD)
    handle.remove()
    assert len(calls) == 1
    sep_c = token_logps(model, chosen.input_ids, chosen.attention_mask, chosen.completion_mask)
    sep_r = token_logps(model, rejected.input_ids, rejected.attention_mask, rejected.completion_mask)
    assert_close(sequence_logps(c, cm, "sum"), sequence_logps(sep_c, chosen.completion_mask, "sum"), rtol=0, atol=1e-10)
    assert_close(
        sequence_logps(r, rm, "sum"),
        sequence_logps(sep_r, rejected.completion_mask, "sum"),
        rtol=0,
        atol=1e-10,
    )


def test_concat_pairs_left_padding(model):
    chosen, _ = right_padded_batch(seed=7)
    rejected = EncodedBatch(chosen.input_ids[:, :6], chosen.attention_mask[:, :6], chosen.completion_mask[:, :6])
    both = concat_pairs(to_left_padding(chosen), to_left_padding(rejected), PAD, "left")
    assert both.input_ids.shape == (6, 8)
    assert (both.attention_mask[3:, :2] == 0).all()  # rejected rows padded on the left


def test_sequence_reductions():
    logps = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -4.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    assert_close(sequence_logps(logps, mask, "sum"), torch.tensor([-3.0, -4.0], dtype=torch.float64))
    assert_close(sequence_logps(logps, mask, "mean"), torch.tensor([-1.5, -4.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="reduction"):
        sequence_logps(logps, mask, "max")  # type: ignore[arg-type]


def test_temperature_scales_logits(model):
    batch, _ = right_padded_batch(seed=8)
    hot = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask, temperature=2.0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits / 2.0
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    assert_close(hot[:, 1:], ref * batch.completion_mask[:, 1:], rtol=0, atol=1e-12)


def test_refuses_a_completion_at_position_zero_or_on_padding(model):
    batch, _ = right_padded_batch()
    bad = batch.completion_mask.clone()
    bad[0, 0] = 1
    with pytest.raises(ValueError, match="position 0"):
        token_logps(model, batch.input_ids, batch.attention_mask, bad)
    bad = batch.completion_mask.clone()
    bad[0, -1] = 1  # row 0 is padding there
    with pytest.raises(ValueError, match="padding"):
        token_logps(model, batch.input_ids, batch.attention_mask, bad)


def test_gradients_flow_only_through_completion_tokens(model):
    batch, _ = right_padded_batch(seed=9)
    model.zero_grad()
    out = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    out.sum().backward()
    grad = model.transformer.wte.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bfloat16_model_is_scored_in_float32():
    from conftest import tiny_gpt2

    model = tiny_gpt2(dtype=torch.bfloat16)
    batch, _ = right_padded_batch()
    out = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    assert out.dtype == torch.float32


def tiny_llama():
    """A Llama-architecture model (RMSNorm, rotary positions, untied head: SmolLM2's family), float64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to(torch.float64).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_completion_only_head_equals_the_full_forward(arch, padding, monkeypatch):
    """The fast path (LM head on completion tokens only) against the model's own full forward:
    the same log-probs and the same gradients, in float64."""
    from conftest import tiny_gpt2

    model = tiny_gpt2() if arch == "gpt2" else tiny_llama()
    assert backbone_and_head(model) is not None
    batch, _ = right_padded_batch(seed=11)
    batch = batch if padding == "right" else to_left_padding(batch)
    results = []
    for fast in (True, False):
        monkeypatch.setattr(scoring, "COMPLETION_HEAD", fast)
        model.zero_grad()
        out = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask, temperature=0.7)
        (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (fast_out, fast_grads), (full_out, full_grads) = results
    assert_close(fast_out, full_out, rtol=0, atol=1e-12)
    assert (fast_out[batch.completion_mask == 0] == 0).all()
    for a, b in zip(fast_grads, full_grads, strict=True):
        assert_close(a, b, rtol=0, atol=1e-12)


def test_only_plain_linear_heads_are_split(model):
    """A wrapper (as DDP is) or a model that transforms its logits after the head keeps the full forward."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    assert backbone_and_head(model) == (model.transformer, model.lm_head)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, **kwargs):
            return self.module(**kwargs)

    assert backbone_and_head(Wrapper(model)) is None
    capped = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            final_logit_softcapping=30.0,
        )
    )
    assert backbone_and_head(capped) is None
    batch, _ = right_padded_batch(seed=12)
    wrapped = token_logps(Wrapper(model), batch.input_ids, batch.attention_mask, batch.completion_mask)
    assert_close(
        wrapped, token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask), rtol=0, atol=1e-12
    )
