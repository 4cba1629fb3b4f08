"""Presets, the cached SFT stage, and DPO-protocol pair generation, on a small in-memory task."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.models import PRESETS, ModelConfig, build_preset, train_tokenizer
from alignlab.pairs import PairGenConfig, generate_pairs, load_pairs, pairs_from_samples
from alignlab.sft import SFTConfig, prepare_policy
from alignlab.tasks.base import Task, TaskConfig

WORDS = [
    "the",
    "film",
    "was",
    "great",
    "good",
    "bad",
    "awful",
    "plot",
    "acting",
    "story",
    "cast",
    "wonderful",
    "boring",
    "fine",
]


class ToyTask(Task):
    """Random sentences over a 15-word vocabulary: learnable in a few dozen steps."""

    name = "toy"
    hub_id = "none"

    def __init__(self, n: int = 400, seed: int = 0) -> None:
        super().__init__(TaskConfig(name="toy", data_dir=os.getcwd()))
        g = torch.Generator().manual_seed(seed)
        self.texts = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (12,), generator=g)) for _ in range(n)]

    def sft_texts(self):
        return self.texts[:300]

    def sft_eval_texts(self):
        return self.texts[300:]

    def prompts(self, split, tokenizer=None):
        return [" ".join(t.split()[:2]) for t in self.texts[:8]]


def test_presets_have_the_documented_sizes():
    tokenizer = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)
    sizes = {name: sum(p.numel() for p in build_preset(name, tokenizer).parameters()) for name in PRESETS}
    assert sizes["smoke"] < 1_000_000
    shapes = {name: (m.config.n_layer, m.config.n_embd) for name in PRESETS for m in [build_preset(name, tokenizer)]}
    assert shapes == {"smoke": (2, 64), "tiny-s": (2, 128), "tiny-m": (4, 256), "tiny-l": (6, 384)}


def test_model_config_validation():
    with pytest.raises(ConfigError, match="did you mean 'tiny-s'"):
        ModelConfig(preset="tiny_s")
    assert not ModelConfig(name_or_path="gpt2").from_scratch  # a model id replaces the preset


def test_a_dequantised_gguf_model_saves_and_reloads_as_a_plain_model(tmp_path):
    """The state transformers 5.25 left on SmolLM2 loaded from its GGUF (a GGUF quantizer with no weight
    packed: every weight a float tensor) made save_pretrained refuse the model, so its SFT stage could not
    be cached; forget_gguf makes it a plain model that saves and reloads with the same logits, and refuses
    one whose weights are still packed. (The GGUF load itself needs the gguf package: -m integration.)"""
    from transformers import AutoModelForCausalLM
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    from alignlab.errors import AlignlabError
    from alignlab.models import forget_gguf

    tokenizer = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)
    model = build_preset("smoke", tokenizer).eval()
    model.hf_quantizer, model.is_quantized, model.quantization_method = GgufHfQuantizer(GgufConfig()), True, "gguf"
    model.config.quantization_config = GgufConfig()
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "before")
    forget_gguf(model)
    model.save_pretrained(tmp_path / "after")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "after").eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)

    packed = build_preset("smoke", tokenizer)
    packed.hf_quantizer = GgufHfQuantizer(GgufConfig())
    packed.hf_quantizer.packed_modules = {"transformer.h.0.attn.c_attn.weight": object()}
    with pytest.raises(AlignlabError, match="stayed packed"):
        forget_gguf(packed)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_sft_lowers_held_out_perplexity_and_is_cached(cache):
    task = ToyTask()
    model_cfg = ModelConfig(preset="smoke", vocab_size=300)
    sft_cfg = SFTConfig(steps=40, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=5, eval_blocks=8)
    first = prepare_policy(task, model_cfg, sft_cfg, cache=cache, progress=False)
    assert first.metrics["cached"] is False
    # uniform over ~15 words plus structure: the untrained model is far worse than the trained one
    assert first.metrics["held_out_ppl"] < 0.5 * first.metrics["held_out_ppl_before"]
    assert (first.path / "model.safetensors").exists() and (first.path / "tokenizer.json").exists()
    leftovers = [p for p in first.path.parent.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]
    assert not leftovers  # no temp dirs left (the builders' lock files stay, empty)

    again = prepare_policy(task, model_cfg, sft_cfg, cache=cache, progress=False)
    assert again.metrics["cached"] is True and again.path == first.path
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    other = prepare_policy(task, model_cfg, SFTConfig(**{**sft_cfg.to_dict(), "seed": 1}), cache=cache, progress=False)
    assert other.path != first.path  # the seed is part of the key


def test_pairs_from_samples_is_the_dpo_protocol():
    """4 samples with rewards [0.1, 0.9, 0.5, 0.5]: 6 pairs, the tie (0.5, 0.5) dropped -> 5."""
    rows, ties = pairs_from_samples("p", ["a", "b", "c", "d"], [0.1, 0.9, 0.5, 0.5], 0.0)
    assert ties == 1 and len(rows) == 5
    assert {(r["chosen"], r["rejected"]) for r in rows} == {("b", "a"), ("c", "a"), ("d", "a"), ("b", "c"), ("b", "d")}
    # gap 0.45: only |0.1 − 0.9| = 0.8 exceeds it; the gaps of 0.4 and the tie are dropped
    rows, ties = pairs_from_samples("p", ["a", "b", "c", "d"], [0.1, 0.9, 0.5, 0.5], 0.45)
    assert ties == 5 and [(r["chosen"], r["rejected"]) for r in rows] == [("b", "a")]


def test_generated_pairs_are_reproducible_and_ranked(tmp_path, cache):
    task = ToyTask()
    policy = prepare_policy(
        task,
        ModelConfig(preset="smoke", vocab_size=300),
        SFTConfig(steps=10, batch_size=8, seq_len=32, eval_blocks=4),
        cache=cache,
        progress=False,
    )

    def reward(prompts, completions):  # a transparent stand-in for the gold judge
        return torch.tensor(
            [float(c.count("great") + c.count("good") - c.count("bad")) + 0.01 * len(c) for c in completions]
        )

    cfg = PairGenConfig(samples_per_prompt=4, max_new_tokens=12, batch_size=16, seed=3)
    prompts = task.prompts("train")
    info = generate_pairs(policy.model, policy.tokenizer, prompts, reward, cfg, tmp_path / "a", progress=False)
    generate_pairs(policy.model, policy.tokenizer, prompts, reward, cfg, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "pairs.jsonl.gz").read_bytes() == (tmp_path / "b" / "pairs.jsonl.gz").read_bytes()
    assert info["prompts"] == 8 and info["samples"] == 32
    assert info["pairs"] + info["ties_dropped"] == 8 * 6
    meta = json.loads((tmp_path / "a" / "pairs.json").read_text())
    assert meta["seed"] == 3 and meta["config"]["samples_per_prompt"] == 4
    with gzip.open(tmp_path / "a" / "pairs.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    assert all(r["chosen_reward"] > r["rejected_reward"] for r in rows)
    assert all(r["prompt"] in prompts for r in rows)
    for r in rows[:5]:  # the stored reward is the reward of the stored completion
        assert reward([r["prompt"]], [r["chosen"]]).item() == pytest.approx(r["chosen_reward"], abs=1e-6)
    assert len(load_pairs(tmp_path / "a")) == info["pairs"]
    different = generate_pairs(
        policy.model,
        policy.tokenizer,
        prompts,
        reward,
        PairGenConfig(**{**cfg.to_dict(), "seed": 4}),
        tmp_path / "c",
        progress=False,
    )
    assert (tmp_path / "c" / "pairs.jsonl.gz").read_bytes() != (tmp_path / "a" / "pairs.jsonl.gz").read_bytes()
    assert different["samples"] == 32


def _edited_source(monkeypatch, module, tmp_path):
    """``module``'s source as code_version reads it, with one line added (a code change, on disk elsewhere)."""
    edited = tmp_path / f"edited_{module.__name__.replace('.', '_')}.py"
    edited.write_text(Path(module.__file__).read_text() + "\n# edited\n")
    monkeypatch.setattr(module, "__file__", str(edited))


def test_cached_stages_are_keyed_on_the_code_that_computes_them(tmp_path, cache, monkeypatch):
    """SFT weights come from the training loop and pairs from the rollout core's sampling: a change to
    either is a new cache entry, not a stale one reused."""
    from alignlab import stages
    from alignlab.core import rollout
    from alignlab.train import loop

    task = ToyTask()
    model_cfg = ModelConfig(preset="smoke", vocab_size=300)
    sft_cfg = SFTConfig(steps=4, batch_size=8, seq_len=32, eval_blocks=4)
    policy = prepare_policy(task, model_cfg, sft_cfg, cache=cache, progress=False)

    class Judge:
        name = "length"

        def __call__(self, prompts, completions):
            return torch.tensor([float(len(c)) for c in completions])

    cfg = PairGenConfig(samples_per_prompt=2, max_new_tokens=4, batch_size=16, max_prompts=2)
    pairs, _ = stages.generated_pairs(task, policy, Judge(), cfg, cache, progress=False)
    assert stages.generated_pairs(task, policy, Judge(), cfg, cache, progress=False)[0] == pairs

    retrained = Judge()
    retrained.cache_key = "length:another"  # the gold judge rebuilt (its code changed): other rankings
    assert stages.generated_pairs(task, policy, retrained, cfg, cache, progress=False)[0] != pairs
    _edited_source(monkeypatch, rollout, tmp_path)
    assert stages.generated_pairs(task, policy, Judge(), cfg, cache, progress=False)[0] != pairs
    _edited_source(monkeypatch, loop, tmp_path)
    again = prepare_policy(task, model_cfg, sft_cfg, cache=cache, progress=False)
    assert again.metrics["cached"] is False and again.path != policy.path


def test_every_module_a_stage_imports_is_in_its_key_or_said_not_to_change_its_numbers():
    """The class of the two gaps above: for each cached stage, every alignlab module its code imports is
    either hashed into its key (STAGE_CODE) or listed, with a reason, as not in the numbers."""
    from test_layering import graph  # every module's alignlab imports, by its source (lazy ones too)

    from alignlab.cache_keys import NOT_IN_THE_NUMBERS, STAGE_CODE

    imports = {module: {name for _, name in found} for module, found in graph().items()}
    for stage, modules in STAGE_CODE.items():
        unlisted = {
            (module, imported)
            for module in modules
            for imported in imports[module]
            if imported not in modules and imported not in NOT_IN_THE_NUMBERS
        }
        assert not unlisted, f"{stage}: imported by its code, neither keyed nor said not to matter: {unlisted}"
    assert all(reason for reason in NOT_IN_THE_NUMBERS.values())
    # the check can fail: SFT's code imports the loop it trains on, which would be unlisted without its entry
    assert "alignlab.train.loop" in imports["alignlab.sft"] and "alignlab.train.loop" not in NOT_IN_THE_NUMBERS
