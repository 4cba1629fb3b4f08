"""A checkpoint is a model (issue 18, part 1): every ``checkpoints/step-N/`` of a run and its
published ``final/`` load with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` alone, and give the trained model's logits exactly; PPO's critic
is saved beside the policy in ``critic/`` and loads as the sequence classifier it is.

The runs are the small ``alignlab train`` runs of ``conftest.SMALL_RUNS`` (every 50th IMDb review),
DPO and PPO-GT with the critic from the SFT model, 3 steps, checkpoints at 0, 2 and 3; the model
that trained is caught on its way into the trainer, so the comparison is with the object that was
trained, not with another load of the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SMALL_RUNS, train_small
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GenerationConfig

from alignlab.jobs import methods

TEXT = "This movie was a wonderful surprise, and the"


def _train(small_imdb: Path, out: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Train the small ``method`` run into ``out``; returns the trained objects as the trainer had them:
    ``policy``, ``tokenizer`` and (PPO) ``critic``."""
    caught: dict[str, Any] = {}
    offline, online = methods.train_offline, methods.train_online

    def train_offline(model: Any, *args: Any, **kwargs: Any) -> Any:
        caught.update(policy=model, tokenizer=kwargs["tokenizer"])
        return offline(model, *args, **kwargs)

    def train_online(core: Any, reference: Any, tokenizer: Any, *args: Any, **kwargs: Any) -> Any:
        caught.update(policy=core.policy, critic=core.critic, tokenizer=tokenizer)
        return online(core, reference, tokenizer, *args, **kwargs)

    monkeypatch.setattr(methods, "train_offline", train_offline)
    monkeypatch.setattr(methods, "train_online", train_online)
    train_small(small_imdb, out, method)
    return caught


@torch.no_grad()
def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("method", sorted(SMALL_RUNS))
def test_every_checkpoint_and_the_final_policy_load_with_the_auto_classes_alone(
    method, small_imdb, cache, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    trained = _train(small_imdb, out, method, monkeypatch)
    ids = trained["tokenizer"](TEXT, return_tensors="pt").input_ids
    expected = _logits(trained["policy"], ids)
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in checkpoints] == ["step-0000002", "step-0000003"]  # the newest two
    for directory in [*checkpoints, out / "final"]:
        model = AutoModelForCausalLM.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        # the tokenizer is the run's: the same vocabulary, the same ids, the same special tokens
        assert tokenizer.get_vocab() == trained["tokenizer"].get_vocab()
        assert tokenizer(TEXT).input_ids == ids[0].tolist()
        specials = (trained["tokenizer"].eos_token, trained["tokenizer"].pad_token)
        assert (tokenizer.eos_token, tokenizer.pad_token) == specials
        assert GenerationConfig.from_pretrained(directory).eos_token_id == tokenizer.eos_token_id
        logits = _logits(model, ids)
        assert logits.shape == (1, ids.shape[1], len(tokenizer))
        if directory in (checkpoints[-1], out / "final"):  # the last step's weights: the model as trained
            assert torch.equal(logits, expected), directory.name
    first = _logits(AutoModelForCausalLM.from_pretrained(checkpoints[0]), ids)
    assert not torch.equal(first, expected)  # an earlier step is another model: the comparison can fail
    # final/ is the policy alone: no optimiser, no run state, no critic
    files = {p.name for p in (out / "final").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "MANIFEST.json"} <= files
    assert not files & {"trainer_state.pt", "state.json", "metrics.jsonl", "critic", "value_head"}
    assert all((out / "final" / name).is_file() for name in files)
    if method == "ppo":  # the critic beside the policy, in its own directory, as the classifier it is
        critic = AutoModelForSequenceClassification.from_pretrained(checkpoints[-1] / "critic")
        with torch.no_grad():
            assert torch.equal(critic.eval()(input_ids=ids).logits, trained["critic"].eval()(input_ids=ids).logits)


def _accelerator(kind: str, state_dict_type: str | None = None) -> Any:
    from types import SimpleNamespace

    plugin = SimpleNamespace(state_dict_type=f"StateDictType.{state_dict_type}")
    return SimpleNamespace(distributed_type=f"DistributedType.{kind}", state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize(
    ("files", "layout"),
    [
        (["optimizer.bin", "random_states_0.pkl"], "whole (one process or DDP)"),
        (["pytorch_model_fsdp_0/", "optimizer_0/"], "FSDP, SHARDED_STATE_DICT"),
        (["pytorch_model_fsdp.bin", "optimizer.bin"], "FSDP, FULL_STATE_DICT"),
        (["pytorch_model_fsdp_rank0.bin", "pytorch_model_fsdp_rank1.bin"], "FSDP, LOCAL_STATE_DICT"),
        (["pytorch_model/"], "DeepSpeed"),
    ],
)
def test_a_checkpoint_resumes_only_under_the_layout_that_saved_it(files, layout, tmp_path):
    """accelerate's ``load_state`` expects the files of the run's own layout (an FSDP checkpoint resumed on
    one process stopped on a missing ``optimizer.bin``): the layout is read from the files and a mismatch
    is one line naming the checkpoint and both layouts."""
    from alignlab.errors import AlignlabError
    from alignlab.train.checkpoint import check_layout, saved_layout

    state = tmp_path / "step-0000004" / "accelerate"
    state.mkdir(parents=True)
    for name in files:
        (state / name.rstrip("/")).mkdir() if name.endswith("/") else (state / name).write_bytes(b"")
    assert saved_layout(state.parent) == layout
    runs = {
        "whole (one process or DDP)": _accelerator("MULTI_CPU"),
        "FSDP, SHARDED_STATE_DICT": _accelerator("FSDP", "SHARDED_STATE_DICT"),
        "FSDP, FULL_STATE_DICT": _accelerator("FSDP", "FULL_STATE_DICT"),
        "FSDP, LOCAL_STATE_DICT": _accelerator("FSDP", "LOCAL_STATE_DICT"),
        "DeepSpeed": _accelerator("DEEPSPEED"),
    }
    for name, accelerator in runs.items():
        if name == layout:
            check_layout(state.parent, accelerator)
            continue
        with pytest.raises(AlignlabError) as refused:
            check_layout(state.parent, accelerator)
        message = str(refused.value)
        assert "\n" not in message and str(state.parent) in message and layout in message and name in message


def test_a_real_checkpoint_of_one_process_is_laid_out_whole(small_imdb, tmp_path):
    from alignlab.train.checkpoint import saved_layout

    train_small(small_imdb, tmp_path / "run", "dpo")
    newest = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    assert saved_layout(newest) == "whole (one process or DDP)"
