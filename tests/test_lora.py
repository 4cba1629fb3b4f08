"""LoRA adapters (``model.lora``): π_ref is the policy with its adapters off, only the adapters train,
checkpoints hold the adapter and resume exactly, ``alignlab export`` merges it, bad keys are one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import CORPUS, tiny_gpt2
from safetensors.torch import load_file

import alignlab.jobs.methods as methods  # registers the trainers before the registries' snapshot
import alignlab.train.offline as offline
from alignlab.adapters import AdaptersOff, LoraConfig, add_adapters
from alignlab.core import scoring
from alignlab.core.scoring import token_logps
from alignlab.errors import ConfigError
from alignlab.interrupts import Interrupted
from alignlab.jobs.job import run_training
from alignlab.objectives import list_objectives

SCORED = CORPUS / "data" / "pairs" / "scored.jsonl"
UNPAIRED = CORPUS / "data" / "pairs" / "unpaired.jsonl"
LORA = "model.lora={r: 4, alpha: 8}"


def _adapted(dropout: float = 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the tiny GPT-2, a copy of it with adapters whose B is no longer zero: a policy that moved)."""
    base = tiny_gpt2()
    policy = add_adapters(copy.deepcopy(base), LoraConfig(r=4, dropout=dropout), seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return base, policy


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three right-padded rows of 10 tokens, the last 4–6 real tokens of each scored."""
    torch.manual_seed(2)
    ids = torch.randint(0, 64, (3, 10))
    attention = torch.ones(3, 10, dtype=torch.long)
    attention[1, 8:] = 0
    attention[2, 9:] = 0
    completion = torch.zeros(3, 10, dtype=torch.long)
    completion[:, 4:] = 1
    return ids, attention, completion * attention


@pytest.mark.parametrize("completion_head", [True, False])
def test_the_reference_is_the_base_model_exactly_while_the_policy_trains(completion_head, monkeypatch):
    """π_ref (the adapted policy with adapters off) gives the base model's log-probs to the last bit, on
    the scoring core's completion-head path and on the full forward, with the policy in training mode
    (dropout 0.5 on the adapters, GPT-2's own dropout): the view runs in eval mode and restores the
    policy's mode after. Freezing or evaluating the view changes nothing of the policy's."""
    monkeypatch.setattr(scoring, "COMPLETION_HEAD", completion_head)
    base, policy = _adapted(dropout=0.5)
    reference = AdaptersOff(policy)
    reference.requires_grad_(False).eval()
    policy.train()
    ids, attention, completion = _batch()
    with torch.no_grad():
        expected = token_logps(base, ids, attention, completion)
        got = token_logps(reference, ids, attention, completion)
        moved = token_logps(policy.eval(), ids, attention, completion)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(moved, expected)  # the policy itself is not π_ref
    policy.train()
    with torch.no_grad():
        token_logps(reference, ids, attention, completion)
    assert policy.training  # the policy's mode, restored
    assert all(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)


def test_the_reference_generates_what_the_base_model_generates():
    base, policy = _adapted()
    reference = AdaptersOff(policy)
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    kwargs: dict[str, Any] = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    mask = torch.ones_like(ids)
    expected = base.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(reference.generate(input_ids=ids, attention_mask=mask, **kwargs), expected)
    assert not torch.equal(policy.generate(input_ids=ids, attention_mask=mask, **kwargs), expected)


def test_the_following_reference_is_a_copy_of_the_policy_as_it_was_at_follow():
    """``rollout.reference: last_iteration`` with LoRA: the snapshot of the adapters gives the log-probs of a
    deep copy of the policy taken at :meth:`follow`, exactly, after the policy moved on; the policy's own
    adapters, gradients' flags and training mode are as they were after each call."""
    from alignlab.adapters import FollowingAdapters

    _, policy = _adapted()
    following = FollowingAdapters(policy)
    then = copy.deepcopy(policy).eval()
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    now = {n: p.detach().clone() for n, p in policy.named_parameters()}
    policy.train()
    ids, attention, completion = _batch()
    with torch.no_grad():
        expected = token_logps(then, ids, attention, completion)
        got = token_logps(following, ids, attention, completion)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert policy.training and all(torch.equal(p, now[n]) for n, p in policy.named_parameters())
    following.follow()
    with torch.no_grad():
        moved = token_logps(policy.eval(), ids, attention, completion)
        torch.testing.assert_close(token_logps(following, ids, attention, completion), moved, rtol=0, atol=0)
    assert following.parameters_held() == sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n)


def test_the_default_targets_are_the_attention_projections():
    policy = add_adapters(tiny_gpt2(), LoraConfig(), seed=0)
    modules = {n.split(".lora_A")[0] for n, _ in policy.named_parameters() if "lora_A" in n}
    assert sorted({".".join(m.split(".")[-2:]) for m in modules}) == ["attn.c_attn", "attn.c_proj"]  # not mlp.c_proj
    assert len(modules) == 4  # two layers
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_disable_dropout_keeps_the_adapters_own():
    """``train.disable_dropout`` switches GPT-2's dropout off, not ``model.lora.dropout``, which was asked for."""
    from alignlab.train.config import disable_dropout

    policy = add_adapters(tiny_gpt2(), LoraConfig(dropout=0.3), seed=0)
    disable_dropout(policy)
    dropouts = {n: m.p for n, m in policy.named_modules() if isinstance(m, torch.nn.Dropout)}
    adapters = {n: p for n, p in dropouts.items() if ".lora_dropout." in n}
    assert len(adapters) == 4 and set(adapters.values()) == {0.3}
    assert len(dropouts) > 4 and all(p == 0.0 for n, p in dropouts.items() if n not in adapters)


@pytest.mark.parametrize(
    ("cfg", "says"),
    [
        (LoraConfig(r=8), "size mismatch"),
        (LoraConfig(r=4, target_modules=["c_attn", "attn.c_proj", "mlp.c_fc"]), "no weights for"),
        (LoraConfig(r=4, target_modules=["c_attn"]), "weights model.lora does not"),
    ],
)
def test_an_adapter_of_other_settings_is_refused_not_half_loaded(cfg, says, tmp_path):
    """Resuming from an adapter of another rank or other target modules is one line, never a partial load."""
    from alignlab.adapters import load_adapter_weights
    from alignlab.errors import AlignlabError

    add_adapters(tiny_gpt2(), LoraConfig(r=4), seed=0).save_pretrained(tmp_path)
    load_adapter_weights(add_adapters(tiny_gpt2(), LoraConfig(r=4), seed=1), tmp_path)  # the same settings: fine
    with pytest.raises(AlignlabError, match=says) as err:
        load_adapter_weights(add_adapters(tiny_gpt2(), cfg, seed=0), tmp_path)
    assert "\n" not in str(err.value) and "does not fit model.lora" in str(err.value)


def test_llama_and_smollm2_adapt_the_four_attention_projections():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    policy = add_adapters(LlamaForCausalLM(config), LoraConfig(), seed=0)
    modules = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in policy.named_parameters() if "lora_A" in n}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_without_lora_the_sft_stage_and_the_resolved_config_are_those_of_before():
    """``lora: null`` is not in a run's resolved config (a run directory of an earlier alignlab is still
    this run), and the SFT stage's settings never hold ``lora`` (runs with and without adapters share it)."""
    from alignlab.jobs.job import _resolved, resolve
    from alignlab.models import ModelConfig
    from alignlab.sft import sft_model_settings

    plain, method = resolve(CORPUS / "train" / "ok.yaml", [])
    adapted, _ = resolve(CORPUS / "train" / "ok.yaml", [LORA])
    task: Any = SimpleNamespace(cfg=SimpleNamespace(to_dict=dict))  # the task's part is not what is checked
    assert "lora" not in _resolved(plain, task, method)["model"]
    assert _resolved(adapted, task, method)["model"]["lora"]["r"] == 4
    assert sft_model_settings(plain.model) == sft_model_settings(adapted.model)
    assert "lora" not in sft_model_settings(ModelConfig(lora=LoraConfig()))


# ---------------------------------------------------------------------------------------------
# End to end on the bad-input corpus's tiny data (its ok.yaml: 2 steps, batch 2)
# ---------------------------------------------------------------------------------------------


def _train(out: Path, *overrides: str) -> dict[str, Any]:
    return run_training("train/ok.yaml", [LORA, f"out_dir={out}", *overrides])


def test_a_dpo_run_with_lora_trains_the_adapters_only(corpus_cache, tmp_path, monkeypatch):
    """The optimiser gets the adapters' parameters only; after the steps every base weight is the SFT
    policy's to the last bit, the adapters moved; ``models_held`` counts one network whose trainable
    parameters are the adapters'."""
    seen: dict[str, Any] = {}
    build = offline.build_optimizer
    train = methods.train_offline

    def spy_build(params: Any, cfg: Any) -> torch.optim.Optimizer:
        optimizer = build(params, cfg)
        seen["optimized"] = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        return optimizer

    def spy_train(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["model"] = model
        return train(model, *args, **kwargs)

    monkeypatch.setattr(offline, "build_optimizer", spy_build)
    monkeypatch.setattr(methods, "train_offline", spy_train)
    summary = _train(tmp_path / "dpo", "objective={name: dpo, beta: 0.5}")
    after = dict(seen["model"].named_parameters())
    adapters = {n for n in after if "lora_" in n}
    assert adapters and seen["optimized"] == sum(after[n].numel() for n in adapters)
    for name, before in seen["before"].items():
        if name not in adapters:
            assert torch.equal(after[name], before), name
    assert any(not torch.equal(after[n], seen["before"][n]) for n in adapters if "lora_B" in n)
    (held,) = summary["models_held"]
    assert held["role"] == "policy + reference (adapters off)"
    assert held["trainable_parameters"] == seen["optimized"] < held["parameters"]
    final = tmp_path / "dpo" / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()


OFFLINE = [o.name for o in list_objectives() if o.needs.data in ("paired", "unpaired")]


@pytest.mark.parametrize("name", OFFLINE)
def test_every_offline_objective_trains_with_lora(name, corpus_cache, tmp_path):
    data = {  # the corpus's scored pairs; its unpaired rows, two held-out prompts for KTO's reference point
        "madpo": [f"data={{source: file, path: {SCORED}}}"],
        "odpo": [f"data={{source: file, path: {SCORED}}}"],
        "kto": [f"data={{source: file, path: {UNPAIRED}}}", "task.eval_fraction=0.5"],
    }
    summary = _train(tmp_path / name, f"objective={{name: {name}}}", *data.get(name, []))
    assert summary["final"]["step"] == 2
    saved = load_file(str(tmp_path / name / "final" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)


@pytest.mark.parametrize("name", ["ppo", "rloo", "grpo", "iterative_dpo"])
def test_online_methods_train_with_lora(name, corpus_cache, tmp_path):
    """Two iterations with the sampling evaluation: π_ref is the policy's own network (KL 0 at step 0,
    not 0 once the adapters moved); PPO's critic stays a model of its own, saved aside."""
    out = tmp_path / name
    summary = _train(
        out,
        f"objective={{name: {name}}}",
        "reward.kind=gold",
        "rollout.max_new_tokens=4",
        f"train.batch_size={2 if name == 'ppo' else 4}",
        "eval.prompts=2",
        "eval.max_new_tokens=4",
        *(["rollout.reference=last_iteration"] if name == "iterative_dpo" else []),  # the copy that follows
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals[0]["sample_kl"] == 0 and evals[-1]["sample_kl"] != 0
    roles = [m["role"] for m in summary["models_held"]]
    assert roles[0] == "policy + reference (adapters off)" and "reference" not in roles
    assert ("critic" in roles) == (name == "ppo")
    # iterative DPO's reference that follows the policy: a snapshot of the adapters, not a copy of the network
    following = [m for m in summary["models_held"] if m["role"] == "reference (last iteration: adapters)"]
    assert len(following) == (name == "iterative_dpo")
    assert all(m["parameters"] == summary["models_held"][0]["trainable_parameters"] for m in following)
    last = out / "checkpoints" / "step-0000002"
    assert (last / "adapter_model.safetensors").is_file() and (last / "critic").is_dir() == (name == "ppo")


RESUMED = {
    "dpo": ["objective={name: dpo, beta: 0.5}"],
    "rloo": [  # with the adapters' own dropout: the RNG states resume too
        "objective={name: rloo}",
        "model.lora={r: 4, alpha: 8, dropout: 0.1}",
        "reward.kind=gold",
        "rollout.max_new_tokens=4",
        "train.batch_size=4",
        "eval.prompts=2",
        "eval.max_new_tokens=4",
    ],
    "iterative_dpo": [  # its reference follows the policy: a snapshot of the adapters, taken again on resume
        "objective={name: iterative_dpo}",
        "reward.kind=gold",
        "rollout.reference=last_iteration",
        "rollout.max_new_tokens=4",
        "train.batch_size=4",
        "eval.prompts=2",
        "eval.max_new_tokens=4",
    ],
}


@pytest.mark.parametrize("name", list(RESUMED))
def test_a_lora_run_resumes_exactly(name, corpus_cache, tmp_path, stop_after):
    """4 steps straight, against 2 steps, SIGTERM, and a resume from the checkpoint of step 2: the same
    metric rows (clocks aside) and the same adapter, bit for bit."""

    def run(out: Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        _train(out, *RESUMED[name], "train.steps=4", "train.save_every=2", "train.eval_every=1")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows], adapter

    whole_rows, whole = run(tmp_path / "whole")
    stop_after[2] = "SIGTERM"
    with pytest.raises(Interrupted):
        run(tmp_path / "cut")
    stop_after.clear()
    rows, adapter = run(tmp_path / "cut")
    assert rows == whole_rows
    assert whole.keys() == adapter.keys() and all(torch.equal(whole[k], adapter[k]) for k in whole)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft asks transformers
def test_export_writes_a_plain_model_with_the_merged_policys_logits(corpus_cache, tmp_path, capsys):
    """``alignlab export``: AutoModelForCausalLM loads the result, its logits are the merged PeftModel's
    exactly (and the unmerged one's up to rounding); exporting again replaces alignlab's own export,
    a directory of the user's is refused with one line."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignlab.cli import main

    out = tmp_path / "run"
    _train(out, "objective={name: dpo, beta: 0.5}")
    assert main(["export", str(out)]) == 0
    merged_dir = out / "merged"
    exported = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base_path = json.loads((out / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), out / "final").eval()
    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits
        merged = peft_model.merge_and_unload()(input_ids=ids).logits
        got = exported(input_ids=ids).logits
    torch.testing.assert_close(got, merged, rtol=0, atol=0)
    torch.testing.assert_close(got, unmerged, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # transformers' own peft integration loads final/ too, while the SFT policy is cached
        direct = AutoModelForCausalLM.from_pretrained(out / "final").eval()(input_ids=ids).logits
    torch.testing.assert_close(direct, unmerged, rtol=0, atol=0)
    assert not torch.equal(got, AutoModelForCausalLM.from_pretrained(base_path)(input_ids=ids).logits)
    assert main(["export", str(out)]) == 0  # its own export: replaced
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".merged")) == []  # no temporaries left
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(out), "--out", str(users)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "did not write" in err
    assert (users / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("model.lora={rank: 8}", "model.lora.rank", "unknown key; known keys: r, alpha"),
        ("model.lora={lora_alpha: 32}", "model.lora.lora_alpha", "did you mean 'alpha'"),
        ("model.lora.r=0", "model.lora.r", "must be >= 1"),
        ("model.lora.dropout=1.0", "model.lora.dropout", "must be < 1"),
        ("model.lora.alpha=0", "model.lora.alpha", "must be >= 1"),
        ("model.lora.target_modules=attention", "model.lora.target_modules", "auto or a list"),
        ("model.lora=8", "model.lora", "a mapping of keys"),
    ],
)
def test_a_bad_lora_key_is_one_line_naming_it(override, key, says, corpus_cache, tmp_path, capsys):
    from alignlab.cli import main

    with pytest.raises(ConfigError) as err:
        run_training("train/ok.yaml", [override, f"out_dir={tmp_path / 'x'}"])
    assert key in str(err.value) and says in str(err.value)
    assert main(["train", "train/ok.yaml", override, f"out_dir={tmp_path / 'x'}"]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and key in line


def test_target_modules_that_match_nothing_name_the_key(corpus_cache, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: 'q_proj' matches no module .*c_attn"):
        _train(tmp_path / "x", "model.lora.target_modules=[q_proj]")


def test_export_of_a_full_fine_tuning_run_copies_its_model(corpus_cache, tmp_path):
    from transformers import AutoModelForCausalLM

    from alignlab.cli import main

    out = tmp_path / "full"
    run_training("train/ok.yaml", [f"out_dir={out}"])
    assert main(["export", str(out), "--out", str(tmp_path / "exported")]) == 0
    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")(input_ids=ids).logits
        expected = AutoModelForCausalLM.from_pretrained(out / "final")(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
