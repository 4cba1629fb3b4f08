"""The rollout core's plain KV-cached sampling loop draws exactly what Hugging Face ``generate`` draws.

``sample_with_cache`` replaces ``model.generate`` in :func:`alignlab.core.rollout.sample` for GPT-2 and
Llama, so its tokens must equal ``generate``'s bit for bit for the same seed, and it must leave the
random stream where ``generate`` leaves it (the next draw is the same). Checked on left-padded prompts of
different lengths and on unpadded ones (``generate`` then drops the all-ones mask), with EOS reached
mid-sequence by some rows and not others, and runs that stop early because every row has finished;
temperature 1 and 0.7, top-p 0.9 and 1.0, greedy; several seeds.

The models are random but not near-uniform (initialiser range 0.5, so logits spread over several
nats): with near-uniform next-token distributions a wrong position id or mask would rarely change
which token the multinomial draw picks, and the comparison would prove little.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from alignlab.core.rollout import (
    draw_tokens,
    next_token_probs,
    sample,
    sample_with_cache,
    samples_like_generate,
)
from alignlab.core.scoring import EncodedBatch

VOCAB, PAD = 12, 1


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=0.5,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        initializer_range=0.5,
    )
    return LlamaForCausalLM(config).eval()


MODELS = {"gpt2": (gpt2, 9), "llama": (llama, 5)}  # builder, EOS id (one the model samples now and then)


def prompts(lengths: list[int], width: int, seed: int) -> EncodedBatch:
    """Left-padded random prompts of the given lengths (pad id 1, never sampled as a prompt token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None] >= width - torch.tensor(lengths)[:, None]).long()
    return EncodedBatch(ids.masked_fill(mask == 0, PAD), mask, torch.zeros_like(mask))


RAGGED = [7, 1, 4, 7, 2, 5]  # left padding of different widths
FULL = [6, 6, 6]  # no padding: generate drops the all-ones mask


def generate(model, batch: EncodedBatch, max_new_tokens: int, temperature: float, top_p: float, eos: int):
    greedy = temperature == 0
    out = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=PAD,
    )
    return out[:, batch.input_ids.shape[1] :]


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9), (0.7, 0.9), (0.0, 1.0)])
def test_the_loop_draws_generates_tokens_bit_for_bit(arch, temperature, top_p):
    build, eos = MODELS[arch]
    model = build()
    assert samples_like_generate(model)
    seen = {"eos mid-sequence": 0, "row never ended": 0, "stopped early": 0}
    for seed, (lengths, max_new_tokens) in enumerate([(RAGGED, 10), (RAGGED, 24), (FULL, 24), (RAGGED, 24)]):
        batch = prompts(lengths, max(lengths), seed)
        torch.manual_seed(seed)
        expected = generate(model, batch, max_new_tokens, temperature, top_p, eos)
        next_draw = torch.rand(4)
        torch.manual_seed(seed)
        ours = sample_with_cache(
            model, batch, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            eos_token_id=eos, pad_token_id=PAD,
        )  # fmt: skip
        assert torch.equal(ours, expected), f"seed {seed}: {ours.tolist()} != {expected.tolist()}"
        assert torch.equal(torch.rand(4), next_draw), f"seed {seed}: the random stream was consumed differently"
        ended = (ours == eos).any(-1)
        seen["eos mid-sequence"] += int(((ours[:, :-1] == eos).any(-1)).sum())
        seen["row never ended"] += int((~ended).sum())
        seen["stopped early"] += int(ours.shape[1] < max_new_tokens)
    if temperature > 0:  # the seeds above are chosen so that every case is exercised
        assert all(seen.values()), seen


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("lengths", [RAGGED, FULL], ids=["ragged", "unpadded"])
def test_the_loop_runs_the_forward_on_generates_inputs(arch, lengths):
    """Equal tokens could hide a last-bit difference in the logits that a rare near-tie would expose,
    so the forward calls themselves are compared: step by step, the same input ids, position ids,
    attention mask (or none), cache length, ``logits_to_keep`` and ``use_cache``."""
    model = MODELS[arch][0]()
    calls: list[dict] = []
    forward = model.forward

    @functools.wraps(forward)  # generate inspects the forward's signature
    def recorded(**kwargs):
        # what the forward sees: a None argument is its default; an absent or empty cache, a cache of length 0
        seen = {k: v for k, v in kwargs.items() if v is not None}
        calls.append({**seen, "cache": seen["cache"].get_seq_length() if "cache" in seen else 0})
        return forward(**kwargs)

    model.forward = recorded
    batch = prompts(lengths, max(lengths), 1)
    torch.manual_seed(0)
    generate(model, batch, 6, 1.0, 1.0, VOCAB)  # an EOS never drawn: six steps
    theirs, calls = calls, []
    torch.manual_seed(0)
    sample_with_cache(model, batch, max_new_tokens=6, temperature=1.0, top_p=1.0, eos_token_id=VOCAB, pad_token_id=PAD)
    assert len(calls) == len(theirs) == 6
    for step, (ours, expected) in enumerate(zip(calls, theirs, strict=True)):
        assert ours.keys() == expected.keys(), step
        for key, value in expected.items():
            same = torch.equal(ours[key], value) if torch.is_tensor(value) else ours[key] == value
            assert same, f"step {step}, {key}: {ours[key]} != {value}"


@pytest.mark.parametrize(
    "temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9), (0.7, 0.5), (1.0, 0.5), (1.0, 1e-9)]
)
def test_the_sampling_distribution_is_generates_bit_for_bit(temperature, top_p):
    """``next_token_probs`` against transformers' own warpers, in ``generate``'s order, then softmax.

    The last row's probabilities are exactly 1/4, 1/4, 1/2 (scores 0, 0, ln 2): at top-p 0.5 the
    cumulative 1/4, 1/2, 1 meets 1 − top_p exactly, and the second token is dropped (≤, not <). At
    top-p 1e-9 every cumulative probability is ≤ 1 − top_p in float32; only the top token is kept.
    """
    g = torch.Generator().manual_seed(0)
    scores = torch.cat([4 * torch.randn(16, 3, generator=g), torch.tensor([[0.0, 0.0, math.log(2)]])])
    expected = scores
    if temperature != 1.0:
        expected = TemperatureLogitsWarper(temperature)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    assert torch.equal(next_token_probs(scores, temperature, top_p), torch.softmax(expected, -1))


def test_sample_takes_the_loop_or_generate_and_both_agree(monkeypatch):
    """``sample`` on a GPT-2 runs the loop (``generate`` is never called); on a subclass it does not
    recognise it runs ``generate``; the sequences are the same."""
    model = gpt2()
    batch = prompts(RAGGED, 7, 0)
    kw = dict(max_new_tokens=12, temperature=0.7, top_p=0.9, eos_token_id=3, pad_token_id=PAD, seed=5)
    monkeypatch.setattr(GPT2LMHeadModel, "generate", lambda *a, **k: pytest.fail("generate called"))
    fast = sample(model, batch, **kw)
    monkeypatch.undo()

    class Custom(GPT2LMHeadModel):
        pass

    custom = Custom(model.config).eval()
    custom.load_state_dict(model.state_dict())
    assert not samples_like_generate(custom)
    slow = sample(custom, batch, **kw)
    assert torch.equal(fast.input_ids, slow.input_ids) and torch.equal(fast.completion_mask, slow.completion_mask)


def test_what_the_loop_does_not_reproduce_goes_through_generate():
    """A generation config that adds a processor or a cache of its own, a subclass, or a ``generate``
    patched onto the instance: not recognised, so ``sample`` calls ``generate``."""
    assert samples_like_generate(gpt2()) and samples_like_generate(llama())
    for setting in ({"repetition_penalty": 1.3}, {"min_new_tokens": 2}, {"cache_implementation": "static"}):
        model = gpt2()
        for key, value in setting.items():
            setattr(model.generation_config, key, value)
        assert not samples_like_generate(model), setting
    patched = gpt2()
    patched.generate = lambda *a, **k: None  # type: ignore[method-assign]
    assert not samples_like_generate(patched)


def test_the_inverse_cdf_draw_has_the_multinomial_law():
    """``draw_tokens(..., "inverse_cdf")`` against the probabilities themselves: 200,000 draws from three
    rows (one peaked, one flat, one with tokens of probability 0, as top-p leaves them) land on each token
    within 5 standard errors of its probability, and a token of probability 0 is never drawn."""
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.05, 0.03, 0.02, 0.0],
            [1 / 6] * 6,
            [0.0, 0.5, 0.0, 0.25, 0.25, 0.0],
        ]
    )
    n = 200_000
    torch.manual_seed(0)
    drawn = draw_tokens(probs.repeat(n, 1), "inverse_cdf").view(n, 3)
    for row in range(3):
        freq = torch.bincount(drawn[:, row], minlength=6).double() / n
        p = probs[row].double()
        assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12), (row, freq, p)
        assert torch.all(freq[p == 0] == 0)


def test_the_inverse_cdf_draw_at_the_ends_of_the_unit_interval(monkeypatch):
    """u = 0 draws the first token of nonzero probability; u rounding up to the row's total (torch.rand's
    largest value is 1 − 2⁻⁵³ in float64, times the total can round to it) draws the last one — never a
    token of probability 0 at either end, never an index past the vocabulary."""
    probs = torch.tensor([[0.0, 0.3, 0.7, 0.0], [0.0, 0.0, 1.0, 0.0]])
    for u, expected in ((0.0, [1, 2]), (1.0, [2, 2])):
        monkeypatch.setattr(torch, "rand", lambda *shape, u=u, **kw: torch.full(shape, u, dtype=torch.float64))
        assert draw_tokens(probs, "inverse_cdf").tolist() == expected
    monkeypatch.undo()


def test_the_loop_with_the_inverse_cdf_draw_follows_the_same_rules():
    """``draw="inverse_cdf"``: other tokens than generate's (another random stream) but the same rules —
    reproducible from a seed, pad after EOS, greedy unchanged (no draw)."""
    model = gpt2()
    batch = prompts(RAGGED, 7, 0)
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=1.0, eos_token_id=9, pad_token_id=PAD)
    torch.manual_seed(3)
    a = sample_with_cache(model, batch, draw="inverse_cdf", **kw)
    torch.manual_seed(3)
    b = sample_with_cache(model, batch, draw="inverse_cdf", **kw)
    torch.manual_seed(3)
    c = sample_with_cache(model, batch, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for row in a.tolist():
        if 9 in row:
            assert all(t == PAD for t in row[row.index(9) + 1 :])
    greedy = dict(kw, temperature=0.0)
    assert torch.equal(
        sample_with_cache(model, batch, draw="inverse_cdf", **greedy), sample_with_cache(model, batch, **greedy)
    )
