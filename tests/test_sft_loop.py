"""SFT on the trainers' machinery (issue 15): the same weights as before, and resume.

- On one process :func:`alignlab.sft.train_sft` (accelerate-prepared model and optimiser, :class:`RunLoop`)
  gives bit for bit the weights of the plain loop SFT was before it, kept below as
  :func:`plain_sft` (AdamW without the fused kernel, linear warm-up then cosine decay to 10%,
  the gradient norm clipped, one seeded permutation of the blocks read in batches, wrapping around;
  dropout on, so the global RNG's draws must match too).
- Stopped by SIGTERM (a checkpoint of that step) or killed between checkpoints, it resumes and ends
  with the weights of an uninterrupted run; through the cached stage, from its ``.<key>.run`` directory
  beside the cache entry, which is removed once the entry is published.
- Under ``accelerate launch`` (2 gloo processes, ``-m slow``) the stage trains on both processes (DDP),
  and an SFT stopped on both and resumed publishes the uninterrupted 2-process run's weights.
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
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from alignlab import sft
from alignlab.interrupts import Interrupted
from alignlab.io import read_jsonl
from alignlab.models import ModelConfig, build_preset, train_tokenizer
from alignlab.sft import SFTConfig, lm_nll, prepare_policy, train_sft
from alignlab.tasks import build_task

CFG = SFTConfig(steps=12, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=3, grad_clip=0.5, seed=3)
TEXTS = [f"the film was {w} and the cast was {v}" for w in ("great", "dull", "odd") for v in ("fine", "weak")] * 4


def plain_sft(model: torch.nn.Module, train: torch.Tensor, cfg: SFTConfig) -> list[float]:
    """SFT's loop before it moved onto RunLoop (alignlab 86bd5fd), written out plainly; the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(opt, cfg.warmup_steps, max(cfg.steps, 1), min_lr_rate=0.1)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    losses = []
    for step in range(cfg.steps):
        idx = order[(torch.arange(cfg.batch_size) + step * cfg.batch_size) % len(train)]
        loss = lm_nll(model, train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        schedule.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def blocks() -> tuple[object, torch.Tensor]:
    """A tokenizer and 10 packed blocks of 16 tokens (12 steps of 4 blocks wrap around them)."""
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    return tokenizer, sft.pack(tokenizer, TEXTS, 10 * 16, 16)[:10]


def _model(tokenizer: object) -> torch.nn.Module:
    """The smoke preset, freshly initialised from seed 3 (which also seeds the RNG dropout draws from)."""
    return build_preset("smoke", tokenizer, seed=3)  # type: ignore[arg-type]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sft_on_the_run_loop_gives_the_plain_loops_weights_bit_for_bit(blocks):
    tokenizer, train = blocks
    before = _weights(_model(tokenizer))
    plain = _model(tokenizer)
    assert plain.config.resid_pdrop > 0  # dropout on: the RNG draws are compared too
    losses = plain_sft(plain, train, CFG)
    ours = _model(tokenizer)
    metrics = train_sft(ours, train, CFG, progress=False)
    assert metrics["final_train_loss"] == losses[-1]
    moved = 0
    for name, tensor in _weights(plain).items():
        assert torch.equal(ours.state_dict()[name], tensor), name
        moved += not torch.equal(tensor, before[name])
    assert moved > 10  # the comparison is of trained weights


@pytest.mark.parametrize(("stop", "resumed_from"), [("SIGTERM", 5), (KeyboardInterrupt, 4)])
def test_an_interrupted_sft_resumes_to_the_weights_of_an_uninterrupted_one(
    blocks, tmp_path, stop_after, monkeypatch, stop, resumed_from
):
    """Stopped by SIGTERM after step 5 (its checkpoint written), or killed after step 6 (checkpoints every
    4 steps: it resumes from 4): the same command ends with the uninterrupted run's weights and losses."""
    tokenizer, train = blocks
    monkeypatch.setattr(sft, "SAVE_EVERY", 4)
    whole = _model(tokenizer)
    want = train_sft(whole, train, CFG, progress=False, out_dir=tmp_path / "whole")
    stop_after[5 if stop == "SIGTERM" else 6] = stop
    with pytest.raises(Interrupted if stop == "SIGTERM" else KeyboardInterrupt):
        train_sft(_model(tokenizer), train, CFG, progress=False, out_dir=tmp_path / "cut")
    stop_after.clear()
    steps = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("step-*"))
    assert steps[-1] == f"step-{resumed_from:07d}"
    torch.manual_seed(12345)  # another process's RNG: the checkpoint's is restored
    resumed = _model(tokenizer)
    got = train_sft(resumed, train, CFG, progress=False, out_dir=tmp_path / "cut")
    assert got["final_train_loss"] == want["final_train_loss"]
    for name, tensor in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    rows = [r["loss"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")]
    assert rows == [r["loss"] for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl")] and len(rows) == 12


def test_the_sft_stage_resumes_from_its_run_directory_beside_the_cache_entry(small_imdb, tmp_path, stop_after):
    """prepare_policy stopped mid-SFT leaves ``sft/.<key>.run`` (checkpoints); the same call resumes from it,
    publishes the entry with the weights of an uninterrupted build, and removes the run directory."""
    task = build_task({"name": "imdb", "data_dir": str(small_imdb), "use_unsup": False})
    model_cfg = ModelConfig(preset="smoke", vocab_size=500, tokenizer_texts=300)
    cfg = SFTConfig(steps=6, batch_size=8, seq_len=32, lr=2e-3, warmup_steps=1, eval_blocks=2)
    whole = prepare_policy(task, model_cfg, cfg, cache=tmp_path / "a", progress=False)
    stop_after[3] = "SIGTERM"
    with pytest.raises(Interrupted, match="after step 3 of 6"):
        prepare_policy(task, model_cfg, cfg, cache=tmp_path / "b", progress=False)
    stop_after.clear()
    [run_dir] = (tmp_path / "b" / "sft").glob(".*.run")
    assert (run_dir / "checkpoints" / "step-0000003" / "accelerate").is_dir()
    resumed = prepare_policy(task, model_cfg, cfg, cache=tmp_path / "b", progress=False)
    assert not run_dir.exists() and resumed.path is not None and resumed.path.name == whole.path.name
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert resumed.metrics["final_train_loss"] == whole.metrics["final_train_loss"]


def test_a_run_directory_left_beside_a_published_entry_is_removed(small_imdb, tmp_path):
    """Killed after publishing the entry, before removing ``.<key>.run``: the next call finds the entry
    cached and removes the leftover."""
    task = build_task({"name": "imdb", "data_dir": str(small_imdb), "use_unsup": False})
    model_cfg = ModelConfig(preset="smoke", vocab_size=500, tokenizer_texts=300)
    cfg = SFTConfig(steps=2, batch_size=8, seq_len=32, eval_blocks=2)
    policy = prepare_policy(task, model_cfg, cfg, cache=tmp_path, progress=False)
    assert policy.path is not None
    leftover = policy.path.with_name(f".{policy.path.name}.run")
    (leftover / "checkpoints").mkdir(parents=True)
    assert prepare_policy(task, model_cfg, cfg, cache=tmp_path, progress=False).metrics["cached"]
    assert not leftover.exists()


def test_sft_train_config_is_the_seam(monkeypatch):
    """What RunLoop reads of SFT's settings: its steps, batch, clipping and seed; no dropout switched off,
    no evaluation, no trackers, full precision on CPU."""
    tcfg = sft.sft_train_config(CFG, progress=False)
    assert (tcfg.steps, tcfg.batch_size, tcfg.grad_clip, tcfg.seed) == (12, 4, 0.5, 3)
    assert not tcfg.disable_dropout and tcfg.log_with == [] and not tcfg.progress
    assert tcfg.eval_every == CFG.steps and tcfg.mixed_precision == "no"


def _launch_sft(out: Path, cache: Path, data: Path, *stop_at: str) -> subprocess.CompletedProcess:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
    launch += ["--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no"]
    script = Path(__file__).with_name("distributed_sft.py")
    command = [*launch, "--main_process_port", str(port), str(script), str(out), str(cache), str(data), *stop_at]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_sft_stage_trains_on_every_process_and_resumes_under_accelerate_launch(small_imdb, tmp_path):
    from safetensors.torch import load_file

    whole = _launch_sft(tmp_path / "whole", tmp_path / "a", small_imdb)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = _launch_sft(tmp_path / "cut", tmp_path / "b", small_imdb, "3")
    assert cut.returncode != 0 and "stopped by SIGTERM after step 3 of 6" in cut.stderr, cut.stderr[-3000:]
    [run_dir] = (tmp_path / "b" / "sft").glob(".*.run")
    saved = run_dir / "checkpoints" / "step-0000003" / "accelerate"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in saved.iterdir()}
    resumed = _launch_sft(tmp_path / "cut", tmp_path / "b", small_imdb)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "sft.json").read_text()) for d in ("whole", "cut"))
    assert a["processes"] == b["processes"] == 2 and not run_dir.exists()
    assert a["metrics"]["final_train_loss"] == b["metrics"]["final_train_loss"]
    want, got = (load_file(str(Path(info["path"]) / "model.safetensors")) for info in (a, b))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
