# mypy: disable-error-code="operator,arg-type"
# (torch.distributed.checkpoint types state dicts as unions of tensors, lists and strings; this probe reads tensors)
"""What torch's FSDP does on CPU with gloo: run under ``torch.distributed.run`` with 2 processes.

    python -m torch.distributed.run --nproc_per_node 2 scripts/fsdp_cpu_probe.py WORK_DIR fsdp2
    python -m torch.distributed.run --nproc_per_node 2 scripts/fsdp_cpu_probe.py WORK_DIR fsdp1 STAGE

Each stage prints ``[OK] stage: result`` or ``[FAIL] stage: the error's first line`` from rank 0; a
crash of a process (SIGSEGV) ends the run, so ``fsdp1`` runs one state-dict STAGE per launch
(``full_offload_rank0``, ``full_offload``, ``full_rank0``, ``full``, ``sharded``, ``dcp_resume``).
A tiny GPT-2 (2 layers, d_model 32), AdamW, 2 steps, then the state dicts; a resume is 2 more steps
from the saved state on a fresh model, compared with 2 more steps of the original ("straight").

What it printed with torch 2.13.0+cpu (README.md, "Many GPUs"; tests/test_fsdp.py):

- fsdp2 (``fully_shard`` per block and at the root, ``init_device_mesh("cpu", (2,))``): every stage
  OK; resume from a sharded ``torch.distributed.checkpoint`` of model + optimiser: max |diff| 0.0;
  from full state dicts gathered on every rank: 0.0; from rank 0's full state dicts
  (``cpu_offload=True``) loaded with ``broadcast_from_rank0=True``: 0.0137 (not exact; not
  investigated further).
- fsdp1 (``FullyShardedDataParallel``, ``use_orig_params=True``, ``device_id=cpu``): wraps and
  trains; ``SHARDED_STATE_DICT`` (model + ``optim_state_dict``) OK; DCP sharded save/load then 2
  steps: the same loss as straight; ``FULL_STATE_DICT`` OK with ``rank0_only`` alone or without
  options, but ``FullStateDictConfig(offload_to_cpu=True)`` (with or without ``rank0_only``, what
  accelerate uses for FULL_STATE_DICT) kills rank 0 with SIGSEGV (exit code -11).
"""

from __future__ import annotations

import copy
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from transformers import GPT2Config, GPT2LMHeadModel

FULL = StateDictOptions(full_state_dict=True)
FULL_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 holds it, on CPU


def say(line: str) -> None:
    if dist.get_rank() == 0:
        print(line, flush=True)


def stage(name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; print OK with its result, or FAIL with the error's first line (and return None)."""
    try:
        out = fn()
    except Exception as err:
        say(f"[FAIL] {name}: {traceback.format_exception_only(type(err), err)[0].strip()[:400]}")
        return None
    say(f"[OK]   {name}" + ("" if out is None else f": {str(out)[:200]}"))
    return out


def fresh_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    config.bos_token_id = config.eos_token_id = 0
    return GPT2LMHeadModel(config)


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> float:
    """LM loss on seeded random tokens, different on each rank and step; the last loss."""
    loss = torch.tensor(0.0)
    for step in steps:
        x = torch.randint(0, 97, (4, 12), generator=torch.Generator().manual_seed(100 * step + dist.get_rank()))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return float(loss)


def max_diff(model: torch.nn.Module, want: dict[str, torch.Tensor]) -> float:
    got = get_model_state_dict(model, options=FULL)
    return max(float((got[k] - want[k]).abs().max()) for k in want)


def fsdp2(work: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))

    def wrapped() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = fresh_model()
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    model, opt = stage("fsdp2 fully_shard on a cpu mesh", wrapped)
    stage("fsdp2 train 2 steps", lambda: train(model, opt, range(2)))
    stage("fsdp2 full model state dict", lambda: len(get_model_state_dict(model, options=FULL)))
    stage("fsdp2 sharded model state dict", lambda: type(next(iter(get_model_state_dict(model).values()))).__name__)
    stage("fsdp2 full optimizer state dict", lambda: len(get_optimizer_state_dict(model, opt, options=FULL)["state"]))
    sharded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    stage("fsdp2 dcp.save sharded model + optimizer", lambda: dcp.save(sharded, checkpoint_id=f"{work}/fsdp2") and None)
    every = (get_model_state_dict(model, options=FULL), get_optimizer_state_dict(model, opt, options=FULL))
    every = copy.deepcopy(every)  # (the optimiser's full state dict may share its tensors with the live state)
    rank0 = (get_model_state_dict(model, options=FULL_RANK0), get_optimizer_state_dict(model, opt, options=FULL_RANK0))
    stage("fsdp2 train 2 more (straight)", lambda: train(model, opt, range(2, 4)))
    straight = get_model_state_dict(model, options=FULL)

    def from_dcp() -> float:
        m2, opt2 = wrapped()
        state = {"model": get_model_state_dict(m2), "optim": get_optimizer_state_dict(m2, opt2)}
        dcp.load(state, checkpoint_id=f"{work}/fsdp2")
        set_model_state_dict(m2, state["model"])
        set_optimizer_state_dict(m2, opt2, state["optim"])
        train(m2, opt2, range(2, 4))
        return max_diff(m2, straight)

    def from_full(saved: tuple[dict, dict], options: StateDictOptions) -> float:
        m2, opt2 = wrapped()
        set_model_state_dict(m2, saved[0], options=options)
        set_optimizer_state_dict(m2, opt2, saved[1], options=options)
        train(m2, opt2, range(2, 4))
        return max_diff(m2, straight)

    stage("fsdp2 resume from sharded DCP, max |diff| vs straight", from_dcp)
    stage("fsdp2 resume from full state dicts on every rank, max |diff|", lambda: from_full(every, FULL))
    broadcast = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    stage("fsdp2 resume from rank 0's full state dicts, broadcast, max |diff|", lambda: from_full(rank0, broadcast))


def fsdp1(work: str, which: str) -> None:
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    def wrapped() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        policy = ModuleWrapPolicy({GPT2Block})
        model = FSDP(fresh_model(), auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu"))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    model, opt = stage("fsdp1 FullyShardedDataParallel on cpu", wrapped)
    stage("fsdp1 train 2 steps", lambda: train(model, opt, range(2)))
    full = {
        "full_offload_rank0": FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
        "full_offload": FullStateDictConfig(offload_to_cpu=True),
        "full_rank0": FullStateDictConfig(rank0_only=True),
        "full": FullStateDictConfig(),
    }
    if which in full:

        def full_state_dict() -> int:
            with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, full[which]):
                return len(model.state_dict())

        stage(f"fsdp1 FULL_STATE_DICT model ({full[which]})", full_state_dict)
    elif which == "sharded":

        def sharded() -> str:
            with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
                state = model.state_dict()
                FSDP.optim_state_dict(model, opt)
            return type(next(iter(state.values()))).__name__

        stage("fsdp1 SHARDED_STATE_DICT model + optim_state_dict", sharded)
    elif which == "dcp_resume":

        def dcp_resume() -> str:
            state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
            dcp.save(state, checkpoint_id=f"{work}/fsdp1")
            m2, opt2 = wrapped()
            state = {"model": get_model_state_dict(m2), "optim": get_optimizer_state_dict(m2, opt2)}
            dcp.load(state, checkpoint_id=f"{work}/fsdp1")
            set_model_state_dict(m2, state["model"])
            set_optimizer_state_dict(m2, opt2, state["optim"])
            return f"last loss straight {train(model, opt, range(2, 4))}, resumed {train(m2, opt2, range(2, 4))}"

        stage("fsdp1 DCP sharded save/load of model + optimizer, then 2 steps each", dcp_resume)


def main() -> None:
    dist.init_process_group("gloo")
    say(f"torch {torch.__version__}, {dist.get_world_size()} processes, backend {dist.get_backend()}")
    work, which = sys.argv[1], sys.argv[2]
    if which == "fsdp2":
        fsdp2(work)
    else:
        fsdp1(work, sys.argv[3] if len(sys.argv) > 3 else "sharded")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
