"""A checkpoint, written and read through accelerate: it resumes exactly, and it is a model.

A checkpoint is a directory ``out_dir/checkpoints/step-NNNNNNN/`` published atomically (it
exists whole or not at all) that is itself a model: the trained policy's ``save_pretrained`` files
(``config.json``, ``model.safetensors``, ``generation_config.json``) and its tokenizer's at the top,
so ``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` load it
alone (with LoRA adapters, ``model.lora``, the top holds the adapter instead: ``adapter_config.json``
and ``adapter_model.safetensors``, which ``PeftModel.from_pretrained(base, dir)`` loads and
``alignlab export`` merges into a plain model). Beside them::

    critic/ or value_head/    each other trained module (PPO), save_pretrained or module.safetensors
    accelerate/               accelerator.save_state: the training state, written by every process
        optimizer.bin             the optimiser (one process, DDP: the whole state)
        scheduler.bin             the learning-rate schedule
        random_states_<i>.pkl     process i's RNGs: Python's, numpy's, torch's (CPU and CUDA)
        scaler.pt                 fp16's gradient scaler, when there is one
        pytorch_model_fsdp_0/, optimizer_0/   FSDP, SHARDED_STATE_DICT: model and optimiser shards
                                  (torch.distributed.checkpoint); FULL_STATE_DICT: pytorch_model_fsdp.bin,
                                  optimizer.bin, gathered on process 0
        pytorch_model/            DeepSpeed: its engine's checkpoint (model and optimiser partitions)
    state.json                the step, the data position, the trainer's own state
    metrics.jsonl             the log as it stood
    MANIFEST.json             size and sha256 of every file above (:func:`alignlab.io.publish_dir`)

Who writes what: ``save_state`` and ``load_state`` are collective under FSDP and DeepSpeed (each
process saves or loads its own shard), so :func:`save_checkpoint` and :func:`load_checkpoint` run on
every process; every process writes into one temporary sibling, and the main process publishes it
once all have written. Without sharding (one process, DDP) the model's weights are the
``save_pretrained`` files at the top and ``accelerate/`` holds no second copy of them (a save-state
hook leaves them out, and a load-state hook lets :func:`load_checkpoint` load them from the top);
under FSDP and DeepSpeed accelerate saves and loads the model's shards itself, and the top holds
the full model gathered by ``accelerator.get_state_dict`` (DeepSpeed ZeRO-3 needs
``stage3_gather_16bit_weights_on_model_save``). The scheduler is registered with
``accelerator.prepare_scheduler`` only to be saved and restored: the trainers step the schedule
they built, once per optimiser step (the wrapper would step it once per process).

The trainer's own state (the step, ``compute_tokens``, PPO's KL coefficient and advantage
estimator state, KTO's and β-DPO's running statistics: :attr:`alignlab.train.loop.RunLoop.state`)
is ``state.json``, not an accelerate custom object: it is read before ``accelerator.prepare`` (the
trainers build their KL controller and running state from it), it is a few numbers a person can
read, JSON floats round-trip exactly, and custom objects are pickles that accelerate loads with
``weights_only=False``. What alignlab loads itself, and accelerate's ``load`` of the optimiser, scheduler
and RNG files, loads with ``weights_only=True`` or from safetensors; a checkpoint of a sharded run is
read by ``torch.distributed.checkpoint`` (FSDP's ``SHARDED_STATE_DICT``: its ``.metadata`` is a pickle)
or by DeepSpeed's engine, which unpickle: the manifest proves such a checkpoint whole, not who wrote
it, so resume sharded runs only from checkpoints of your own. A checkpoint resumes only under the
layout it was saved in (:func:`check_layout`).

Finding the newest intact checkpoint, moving damaged ones aside, pruning and ``final/``:
:mod:`alignlab.train.state`.

A checkpoint of an older alignlab (``trainer_state.pt`` instead of ``accelerate/``: the optimiser's
``state_dict()``, the scheduler's and the main process's RNGs) still resumes on one process or
under DDP, where that state was whole; under FSDP or DeepSpeed it held one process's shard of the
optimiser, and resuming from it is refused with one line naming the checkpoint.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignlab.adapters import is_adapted, load_adapter_weights
from alignlab.errors import AlignlabError
from alignlab.io import atomic_write_json, publish_dir, warn
from alignlab.train.state import (
    ACCELERATE,
    LEGACY_MODEL_DIRS,
    LEGACY_STATE,
    METRICS,
    checkpoint_dir,
    list_checkpoints,
    remove_checkpoint,
)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNGs of a :data:`LEGACY_STATE` file (``rng``: torch, CUDA, Python's, numpy's)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _save_module(module: torch.nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None) -> None:
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(path, state_dict=state_dict, safe_serialization=True)  # type: ignore[operator]
    else:
        path.mkdir(parents=True, exist_ok=True)
        tensors = state_dict if state_dict is not None else module.state_dict()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "module.safetensors"))


def _load_module(module: torch.nn.Module, path: Path) -> None:
    if is_adapted(module):  # a LoRA policy: its checkpoint is the adapter, the base is the SFT policy
        load_adapter_weights(module, path)
        return
    if not (path / "config.json").is_file() and not (path / "module.safetensors").is_file():
        # a checkpoint of an alignlab from before checkpoints were models: the model in a subdirectory
        path = next((path / d for d in LEGACY_MODEL_DIRS if (path / d / "config.json").is_file()), path)
    if (path / "module.safetensors").exists():
        module.load_state_dict(load_file(str(path / "module.safetensors")))
        return
    # from_pretrained knows the model's tied and renamed weights; copy its tensors into ours
    loaded = type(module).from_pretrained(path)  # type: ignore[attr-defined]
    module.load_state_dict(loaded.state_dict())


def read_training_state(path: Path) -> dict[str, Any]:
    """The training state of a checkpoint as plain state dicts, for comparing two of them: ``optimizer``,
    ``scheduler`` and ``rng`` (process i's RNG states at index i). Loaded with ``weights_only=True``.

    Reads what ``save_state`` writes on one process or under DDP (``optimizer.bin``, ``scheduler.bin``,
    ``random_states_<i>.pkl``), or an older alignlab's ``trainer_state.pt``.
    """
    from accelerate.utils import load

    if not (path / ACCELERATE).is_dir():
        saved = torch.load(path / LEGACY_STATE, weights_only=True)
        return {"optimizer": saved["optimizer"], "scheduler": saved["scheduler"], "rng": [saved["rng"]]}
    root = path / ACCELERATE
    n = len(list(root.glob("random_states_*.pkl")))
    return {
        "optimizer": load(root / "optimizer.bin"),
        "scheduler": load(root / "scheduler.bin"),
        "rng": [load(root / f"random_states_{i}.pkl") for i in range(n)],
    }


def accelerate_holds_weights(accelerator: Any) -> bool:
    """Whether ``save_state``/``load_state`` must save and load the model's weights themselves: under FSDP
    and DeepSpeed, where each process holds a shard; else the checkpoint's top holds them once."""
    return str(accelerator.distributed_type).split(".")[-1] in ("FSDP", "DEEPSPEED")


@contextlib.contextmanager
def _weights_kept_out(accelerator: Any) -> Iterator[None]:
    """Within the block, ``save_state`` writes and ``load_state`` reads no model weights, unless
    :func:`accelerate_holds_weights`: the checkpoint's top holds them (``save_pretrained``), once."""
    if accelerate_holds_weights(accelerator):
        yield
        return
    saving = accelerator.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
    loading = accelerator.register_load_state_pre_hook(lambda models, out: models.clear())
    try:
        yield
    finally:
        saving.remove()
        loading.remove()


def _full_state_dicts(
    accelerator: Any, prepared: torch.nn.Module, modules: dict[str, torch.nn.Module]
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> the full state dict of each of ``modules`` (parts of ``prepared``), gathered from every
    process by ``accelerator.get_state_dict`` (collective; the main process gets the tensors); {} when
    the processes hold whole models, which then save their own state dicts."""
    if not accelerate_holds_weights(accelerator):
        return {}
    full = accelerator.get_state_dict(prepared)
    if not accelerator.is_main_process:
        return {}
    names = {id(m): name for name, m in accelerator.unwrap_model(prepared).named_modules()}
    gathered = {}
    for key, module in modules.items():
        prefix = re.sub(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module)\.?", "", names[id(module)])
        start = f"{prefix}." if prefix else ""
        gathered[key] = {k[len(start) :]: v for k, v in full.items() if k.startswith(start)}
    return gathered


def save_checkpoint(
    out_dir: Path,
    step: int,
    accelerator: Any,
    prepared: torch.nn.Module,
    model: torch.nn.Module,
    state: dict[str, Any],
    keep: int,
    *,
    tokenizer: Any = None,
    aside: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then drop all but the newest ``keep``. Called on every
    process (``accelerator.save_state`` is collective under FSDP and DeepSpeed); the main process writes
    the model and publishes the directory.

    Args:
        accelerator: the run's accelerator, which prepared ``prepared``, the optimiser and the scheduler.
        prepared: what ``accelerator.prepare`` returned for the trained modules (the policy, or PPO's
            policy and critic in one module).
        model: the trained policy (unwrapped): ``save_pretrained`` at the checkpoint's top, beside
            ``tokenizer``'s files, so the directory loads with ``from_pretrained`` alone.
        state: the trainer's state, ``state.json`` with the step.
        aside: name -> another trained module (PPO's critic or value head), in the subdirectory ``name``.
    """
    path = checkpoint_dir(out_dir, step)
    if path.exists():  # every process sees the same: the last publish was followed by a barrier
        return path
    main = accelerator.is_main_process
    gathered = _full_state_dicts(accelerator, prepared, {"model": model, **(aside or {})})
    tmp = path.with_name(f".{path.name}.tmp-save")  # one name that every process writes into
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    failure: BaseException | None = None
    try:
        with _weights_kept_out(accelerator):
            accelerator.save_state(str(tmp / ACCELERATE))
        if main:
            _save_module(model, tmp, gathered.get("model"))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for name, module in (aside or {}).items():
                _save_module(module, tmp / name, gathered.get(name))
            atomic_write_json(tmp / "state.json", {**state, "step": step})  # the step of this checkpoint, always
            if (out_dir / METRICS).is_file():  # the log as flushed before this checkpoint: restores a damaged one
                shutil.copyfile(out_dir / METRICS, tmp / METRICS)
    except BaseException as error:  # an interrupt too: the temporary directory goes, the others hear of it
        failure = error
    # every process's files are in, or some process failed: all of them learn which, none waits on the others
    if _failed_anywhere(accelerator, failure is not None):
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure
        raise AlignlabError(f"{path}: another process failed to write its part of this checkpoint; none was published")
    try:
        if main:
            publish_dir(tmp, path)
    except BaseException as error:  # an interrupt too: the temporary directory goes, the others hear of it
        failure = error
        shutil.rmtree(tmp, ignore_errors=True)
    if _failed_anywhere(accelerator, failure is not None):
        if failure is not None:
            raise failure
        raise AlignlabError(f"{path}: the main process failed to publish this checkpoint")
    if main:
        older = [p for p in list_checkpoints(out_dir) if int(p.name[5:]) < step]
        for stale in older[: max(0, len(older) - (keep - 1))]:
            remove_checkpoint(stale)
    return path


def _failed_anywhere(accelerator: Any, failed: bool) -> bool:
    """Whether ``failed`` holds on any process (a collective: every process calls it). A process that
    failed to write its part of a checkpoint tells the others, so that they stop too rather than wait
    for it at the next collective until its timeout."""
    if accelerator.num_processes == 1:
        return failed
    flag = torch.tensor([1.0 if failed else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def load_checkpoint(
    path: Path,
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    aside: dict[str, torch.nn.Module] | None = None,
) -> None:
    """Restore the model, the modules ``aside``, optimiser, scheduler and RNGs from ``path``, after
    ``accelerator.prepare`` (which accelerate requires). Called on every process; ``state.json`` is
    :func:`read_state`'s.

    Raises:
        AlignlabError: ``path`` is an older alignlab's checkpoint (``trainer_state.pt``) and the run is
            sharded (FSDP, DeepSpeed): that file holds one process's part of the optimiser; or ``path``
            was saved by a run laid out otherwise (:func:`check_layout`).
    """
    if not (path / ACCELERATE).is_dir():
        _load_legacy(path, accelerator, model, optimizer, scheduler, aside)
        return
    check_layout(path, accelerator)
    if not accelerate_holds_weights(accelerator):
        _load_module(model, path)
        for name, module in (aside or {}).items():
            _load_module(module, path / name)
    with _weights_kept_out(accelerator):
        accelerator.load_state(str(path / ACCELERATE))
    saved = len(list((path / ACCELERATE).glob("random_states_*.pkl")))
    if saved != accelerator.num_processes and accelerator.is_main_process:
        warn(
            f"{path}: saved by {saved} processes, resumed on {accelerator.num_processes}: the data order is "
            "the same, but the random draws (sampling, dropout) are not those of an uninterrupted run"
        )


def state_layout(accelerator: Any) -> str:
    """How ``save_state`` lays out the training state under ``accelerator``: whole (one process, DDP),
    FSDP's by its state-dict type, or DeepSpeed's; a checkpoint resumes only under the layout it was
    written in."""
    kind = str(accelerator.distributed_type).split(".")[-1]
    if kind == "FSDP":
        return f"FSDP, {str(accelerator.state.fsdp_plugin.state_dict_type).split('.')[-1]}"
    return "DeepSpeed" if kind == "DEEPSPEED" else "whole (one process or DDP)"


def saved_layout(path: Path) -> str:
    """:func:`state_layout` of the run that wrote checkpoint ``path``, read from the files in its
    ``accelerate/`` (accelerate's names: ``pytorch_model_fsdp_0/`` shards, ``pytorch_model_fsdp.bin``
    gathered, ``pytorch_model_fsdp_rank<i>.bin`` per process, ``pytorch_model/`` DeepSpeed's engine)."""
    names = [p.name for p in (path / ACCELERATE).iterdir()]
    fsdp = [n for n in names if n.startswith("pytorch_model_fsdp")]
    if any((path / ACCELERATE / n).is_dir() for n in fsdp):
        return "FSDP, SHARDED_STATE_DICT"
    if any("_rank" in n for n in fsdp):
        return "FSDP, LOCAL_STATE_DICT"
    if fsdp:
        return "FSDP, FULL_STATE_DICT"
    return "DeepSpeed" if (path / ACCELERATE / "pytorch_model").is_dir() else "whole (one process or DDP)"


def check_layout(path: Path, accelerator: Any) -> None:
    """Refuse, in one line, a checkpoint whose training state was laid out for another kind of run (an
    FSDP run resumed on one process, DDP under FSDP, sharded under full state dicts): accelerate's
    ``load_state`` would stop on a missing file.

    Raises:
        AlignlabError: the layouts differ.
    """
    saved, now = saved_layout(path), state_layout(accelerator)
    if saved != now:
        raise AlignlabError(
            f"{path}: its training state was saved by a run laid out as {saved}, and this run is {now}: "
            "resume it under the launch configuration that wrote it, or start over in another out_dir"
        )


def _load_legacy(
    path: Path,
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    aside: dict[str, torch.nn.Module] | None,
) -> None:
    """Resume from an older alignlab's checkpoint (:data:`LEGACY_STATE`) where what it holds is whole."""
    if accelerate_holds_weights(accelerator):
        raise AlignlabError(
            f"{path}: a checkpoint of an older alignlab ({LEGACY_STATE}, no {ACCELERATE}/) cannot resume a "
            f"{accelerator.distributed_type.value} run: it holds one process's part of the optimiser; resume it "
            "on one process or under DDP, or start over in another out_dir"
        )
    _load_module(model, path)
    for name, module in (aside or {}).items():
        _load_module(module, path / name)
    saved = torch.load(path / LEGACY_STATE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
