"""Two CPU processes (gloo, ``accelerate launch``) follow the same loss trajectory as one process
with the same global batch: each process takes half of every batch, and DDP averages the gradients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_dpo.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], out: Path, cache: Path) -> dict:
    env = {**os.environ, "ALIGNLAB_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*command, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "losses.json").read_text())


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one = _run([sys.executable, str(SCRIPT)], tmp_path / "one", tmp_path / "cache")
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(SCRIPT),
    ]
    two = _run(launch, tmp_path / "two", tmp_path / "cache")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert len(one["loss"]) == len(two["loss"]) == 4
    assert one["loss"][-1] < one["loss"][0]  # it trains
    for key in ("loss", "margins", "grad_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
