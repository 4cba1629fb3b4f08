"""FSDP under ``accelerate launch``: what it does on CPU (pinned), and exact resume (forced on CPU; on GPUs).

The finding (torch 2.13.0+cpu, accelerate 1.16, gloo, 2 processes; README.md, "Many GPUs"):

- torch itself shards on CPU (``scripts/fsdp_cpu_probe.py``): FSDP2 (``fully_shard`` on a ``cpu``
  device mesh) trains, and a run resumed from a sharded ``torch.distributed.checkpoint`` of model
  and optimiser ends with the weights of an uninterrupted one (max |diff| 0.0). FSDP1
  (``FullyShardedDataParallel``) trains and resumes from a sharded checkpoint, but a full state
  dict with ``offload_to_cpu=True`` (accelerate's FULL_STATE_DICT setting) kills rank 0 with SIGSEGV.
- accelerate does not: ``Accelerator(cpu=True)`` (what :func:`alignlab.train.loop.make_accelerator`
  builds without CUDA) picks ``MULTI_CPU`` and wraps the model in DDP whatever FSDP settings it is
  given (``configs/accelerate/fsdp.yaml``, or an explicit ``FullyShardedDataParallelPlugin``); with
  ``cpu=False`` and no CUDA each process runs alone (``DistributedType.NO``). So alignlab's FSDP
  path cannot run on CPU, and its exact-resume test needs 2 GPUs.

``test_an_fsdp_config_runs_as_ddp_on_cpu`` pins the accelerate half: when it fails, accelerate
(or torch) changed, and the FSDP resume test below may run on CPU: try it there.

Since the accelerate half is a choice of accelerate's, not a limit of torch's, the FSDP2 resume runs
on CPU anyway with accelerate's FSDP path forced (:func:`distributed_dpo.force_fsdp2`: the
distributed type and plugin set by hand on the 2 gloo processes): ``prepare`` shards the model with
``fully_shard``, and alignlab's checkpoints go through ``save_state``/``load_state`` on shards
(``SHARDED_STATE_DICT``, torch.distributed.checkpoint) or full state dicts on process 0
(``FULL_STATE_DICT``), with the policy at the checkpoint's top gathered by ``get_state_dict``. Both
resume exactly (``-m slow``). It found that the scoring core's completion-only LM head called the
backbone of an FSDP2 model alone, which FSDP2 refuses (the root unit owns the embeddings and the
head): such a model now takes the full forward.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
FSDP_CONFIG = HERE.parent / "configs" / "accelerate" / "fsdp.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FSDP = ("--config_file", str(FSDP_CONFIG))
DDP = ("--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no")


def _launch(
    script: str,
    *args: str,
    cache: Path,
    how: tuple[str, ...] = FSDP,
    mixed_precision: str = "no",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``tests/<script>`` on 2 processes, with the shipped FSDP config by default."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *how,
        "--num_processes",
        "2",
        "--mixed_precision",
        mixed_precision,
        "--main_process_port",
        str(_free_port()),
        str(HERE / script),
        *args,
    ]
    env = {**os.environ, "ALIGNLAB_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="pins what accelerate does without CUDA")
def test_an_fsdp_config_runs_as_ddp_on_cpu(tmp_path):
    """On CPU, the FSDP config gives alignlab's accelerator 2 gloo processes of plain DDP: no shards;
    the main process says so in one warning line."""
    proc = _launch("fsdp_probe.py", str(tmp_path / "out"), cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert probe["processes"] == 2
    assert (probe["distributed_type"], probe["wrapper"], probe["parameter"]) == (
        "MULTI_CPU",
        "DistributedDataParallel",
        "Parameter",
    ), f"accelerate now does something else with an FSDP config on CPU ({probe}): try test_fsdp_dpo_resumes_exactly"
    warned = [line for line in proc.stderr.splitlines() if line.startswith("alignlab: warning:")]
    assert warned == [
        "alignlab: warning: the launch config asks for FSDP, but accelerate runs it as MULTI_CPU without CUDA: "
        "nothing is sharded (every process holds the whole model and optimiser)"
    ]


def _final_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))


def _resume_is_exact(tmp_path: Path, how: tuple[str, ...], mixed_precision: str, *forced: str) -> dict:
    """8 DPO steps straight, and 4 steps then an interruption then a resume to 8 (the same command
    again), end with the same losses, margins and gradient norms and the same final weights.
    ``forced``: the FSDP state-dict type of :func:`distributed_dpo.force_fsdp2`, if any. Returns the losses."""
    straight, cut, cache = tmp_path / "straight", tmp_path / "cut", tmp_path / "cache"
    run = {"cache": cache, "how": how, "mixed_precision": mixed_precision}
    whole = _launch("distributed_dpo.py", str(straight), "8", "8", *forced, **run)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # a checkpoint every 4 steps; the first process stops (KeyboardInterrupt) when asked for step 5
    first = _launch("distributed_dpo.py", str(cut), "8", "4", *forced, **run)
    assert first.returncode != 0 and "KeyboardInterrupt" in first.stderr, first.stderr[-3000:]
    assert sorted(p.name for p in (cut / "checkpoints").glob("step-*")) == ["step-0000000", "step-0000004"]
    # the same command resumes from step 4 and runs steps 5 to 8 (4 calls: no interruption)
    resumed = _launch("distributed_dpo.py", str(cut), "8", "4", *forced, **run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((d / "losses.json").read_text()) for d in (straight, cut))
    assert len(a["loss"]) == len(b["loss"]) == 8
    assert b == a
    want, got = _final_weights(straight, 8), _final_weights(cut, 8)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    return a


@pytest.mark.slow
def test_a_process_that_cannot_write_its_checkpoint_stops_every_process(tmp_path):
    """Process 1's part of the first checkpoint (step 0) fails (a full disk): both processes stop, each
    saying why (process 0: that another process failed, not a broken connection at its next collective,
    or, where the launcher does not stop it, a wait there until the collective's timeout), nothing is
    published and no temporary directory is left."""
    out = tmp_path / "out"
    proc = _launch(
        "distributed_dpo.py", str(out), "4", "2", cache=tmp_path / "cache", how=DDP, env={"FAIL_SAVE_ON_PROCESS": "1"}
    )
    assert proc.returncode != 0
    assert "No space left on device (process 1" in proc.stderr, proc.stderr[-3000:]
    assert "another process failed to write its part of this checkpoint" in proc.stderr, proc.stderr[-3000:]
    assert not list((out / "checkpoints").iterdir())


@pytest.mark.slow
def test_ddp_dpo_resumes_exactly_on_cpu(tmp_path):
    """The check below, run with 2 gloo processes of DDP (about 30 s): it passes, so the harness works.
    Each process's RNG states are in the checkpoint (accelerate's ``random_states_<i>.pkl``)."""
    losses = _resume_is_exact(tmp_path, DDP, "no")
    assert losses["distributed_type"] == "MULTI_CPU"
    saved = tmp_path / "cut" / "checkpoints" / "step-0000008" / "accelerate"
    assert sorted(p.name for p in saved.iterdir()) == [
        "optimizer.bin",
        "random_states_0.pkl",
        "random_states_1.pkl",
        "scheduler.bin",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("state_dict_type", "files"),
    [
        ("SHARDED_STATE_DICT", {"optimizer_0", "pytorch_model_fsdp_0"}),  # torch.distributed.checkpoint directories
        ("FULL_STATE_DICT", {"optimizer.bin", "pytorch_model_fsdp.bin"}),  # gathered on process 0
    ],
)
def test_fsdp2_dpo_resumes_exactly_on_cpu_with_accelerates_fsdp_path_forced(tmp_path, state_dict_type, files):
    """The same check with accelerate's FSDP2 path forced on the 2 gloo processes (the module docstring):
    the model sharded, the checkpoint's model and optimiser saved by ``save_state`` as FSDP writes them, the
    policy at its top gathered whole, and a resume through ``load_state`` exact (about 1 min each)."""
    from transformers import AutoModelForCausalLM

    losses = _resume_is_exact(tmp_path, DDP, "no", state_dict_type)
    assert losses["distributed_type"] == "FSDP"
    checkpoint = tmp_path / "cut" / "checkpoints" / "step-0000008"
    saved = {p.name for p in (checkpoint / "accelerate").iterdir()}
    assert saved == files | {"random_states_0.pkl", "random_states_1.pkl", "scheduler.bin"}
    # the policy at the top: the whole model, which from_pretrained loads alone, the weights trained
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    for name, tensor in _final_weights(tmp_path / "straight", 8).items():
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP runs on CPU as DDP (see above): needs 2 GPUs")
def test_fsdp_dpo_resumes_exactly(tmp_path):
    """DPO (tests/distributed_dpo.py, the offline trainer of ``alignlab train``) under
    configs/accelerate/fsdp.yaml on 2 GPUs in bf16: 8 steps straight == 4 + interruption + resume.

    Not run yet: written on a CPU-only machine. What it checks runs on CPU with accelerate's FSDP2
    path forced (above, in float32); here accelerate selects FSDP itself, with NCCL and bf16.
    """
    _resume_is_exact(tmp_path, FSDP, "bf16")
