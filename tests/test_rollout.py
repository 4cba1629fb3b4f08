"""The rollout core: EOS masks, reproducible sampling, and log-probs that match generate's own."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from alignlab.core.rollout import completion_mask_until_eos, encode_prompts, rollout, sample
from alignlab.core.scoring import token_logps
from alignlab.models import build_preset, train_tokenizer

TEXTS = [
    "the film was great and the acting was wonderful",
    "the film was awful and the plot was boring",
    "a great story with a wonderful cast",
    "a boring plot and awful acting",
] * 20


@pytest.fixture(scope="module")
def tok_and_model():
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    model = build_preset("smoke", tokenizer, seed=0).eval()
    return tokenizer, model


def test_completion_mask_stops_after_the_first_eos():
    """EOS = 9: [5, 9, 7, 9] -> [1, 1, 0, 0]; [5, 6, 7, 8] (no EOS) -> all 1; [9, 9] -> [1, 0]."""
    ids = torch.tensor([[5, 9, 7, 9], [5, 6, 7, 8], [9, 9, 1, 1]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.equal(completion_mask_until_eos(ids, 9), expected)


def test_prompts_are_left_padded_with_bos(tok_and_model):
    tokenizer, _ = tok_and_model
    enc = encode_prompts(tokenizer, ["the film", "a great story with a"])
    assert enc.input_ids[0, -1] != tokenizer.pad_token_id and enc.attention_mask[0, 0] == 0
    assert (enc.input_ids[enc.attention_mask.bool()][:1] == tokenizer.bos_token_id).all()
    with pytest.raises(ValueError, match="over the limit"):
        encode_prompts(tokenizer, ["a great story with a wonderful cast"], max_prompt_tokens=3)


def test_sampled_masks_and_padding_are_consistent(tok_and_model):
    tokenizer, model = tok_and_model
    prompts = encode_prompts(tokenizer, ["the film", "a", "a boring plot and"])
    out = sample(
        model,
        prompts,
        max_new_tokens=12,
        temperature=1.0,
        top_p=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        seed=0,
    )
    P = prompts.input_ids.shape[1]
    comp = out.completion_mask[:, P:]
    assert (comp.sum(-1) >= 1).all()
    for row in range(3):
        n = int(comp[row].sum())
        assert comp[row, :n].all() and not comp[row, n:].any()  # one contiguous run from P
        tokens = out.input_ids[row, P : P + n].tolist()
        assert tokenizer.eos_token_id not in tokens[:-1]  # nothing after the first EOS is kept
        assert (out.input_ids[row, P + n :] == tokenizer.pad_token_id).all()
    assert torch.equal(out.attention_mask[:, P:], comp)


def test_sampling_is_reproducible_from_the_seed(tok_and_model):
    tokenizer, model = tok_and_model
    kw = dict(samples_per_prompt=3, max_new_tokens=10, temperature=1.0, seed=7)
    a = rollout(model, tokenizer, ["the film", "a great"], **kw)
    b = rollout(model, tokenizer, ["the film", "a great"], **kw)
    c = rollout(model, tokenizer, ["the film", "a great"], **{**kw, "seed": 8})
    assert a.completions == b.completions and torch.equal(a.sequences.input_ids, b.sequences.input_ids)
    assert a.completions != c.completions
    assert a.prompts == ["the film"] * 3 + ["a great"] * 3


def test_scored_logps_match_generate_scores(tok_and_model):
    """The scoring core's log-probs of the sampled tokens equal log_softmax of generate's own
    (temperature-processed) scores: masks, left padding and position ids line up."""
    tokenizer, model = tok_and_model
    prompts = encode_prompts(tokenizer, ["the film was", "a"])
    torch.manual_seed(3)
    gen = model.generate(
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        max_new_tokens=8,
        do_sample=True,
        temperature=0.7,
        top_p=None,
        top_k=None,
        output_scores=True,
        return_dict_in_generate=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(3)
    out = sample(
        model,
        prompts,
        max_new_tokens=8,
        temperature=0.7,
        top_p=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    P = prompts.input_ids.shape[1]
    ours = token_logps(model, out.input_ids, out.attention_mask, out.completion_mask, temperature=0.7)
    steps = torch.stack(gen.scores, dim=1)  # (B, N, V), already divided by the temperature
    theirs = torch.log_softmax(steps, -1).gather(-1, gen.sequences[:, P:, None]).squeeze(-1)
    mask = out.completion_mask[:, P:].bool()
    assert_close(ours[:, P:][mask], theirs[:, : mask.shape[1]][mask], rtol=1e-5, atol=1e-5)


def test_greedy_is_the_argmax_continuation(tok_and_model):
    tokenizer, model = tok_and_model
    out = rollout(model, tokenizer, ["the film"], max_new_tokens=5, temperature=0.0, score_policy=True)
    ids = out.sequences.input_ids[0][out.sequences.attention_mask[0].bool()]
    P = int((out.sequences.completion_mask[0] == 0).sum() - (out.sequences.attention_mask[0] == 0).sum())
    for t in range(P, len(ids)):
        logits = model(ids[None, :t]).logits[0, -1]
        assert int(logits.argmax()) == int(ids[t])
    assert out.policy_logps is not None and (out.policy_logps[out.sequences.completion_mask == 0] == 0).all()


def test_rollout_scores_reference_and_rewards(tok_and_model):
    tokenizer, model = tok_and_model
    reward = lambda prompts, completions: torch.tensor([float(len(c)) for c in completions])  # noqa: E731
    out = rollout(
        model,
        tokenizer,
        ["the film", "a"],
        samples_per_prompt=2,
        max_new_tokens=6,
        seed=1,
        reference=model,
        reward=reward,
        score_policy=True,
        batch_size=3,
    )  # 2 generation chunks
    assert out.rewards.tolist() == [float(len(c)) for c in out.completions]
    assert_close(out.policy_logps, out.ref_logps)  # policy == reference: KL exactly 0
    assert out.sequences.input_ids.shape[0] == 4
