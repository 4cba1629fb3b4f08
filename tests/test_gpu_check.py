"""benchmarks/gpu_check.sh --dry-run: the GPU check's code paths (DPO and PPO through alignlab's
trainers, the MFU arithmetic) run on CPU at a tiny size, so the script is known to work before a
GPU is booked for it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


def test_the_dry_run_prints_both_phases(tmp_path):
    env = {**os.environ, "ALIGNLAB_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the python of this test run
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for phase in ("DPO", "PPO"):
        line = next(x for x in proc.stdout.splitlines() if x.startswith(f"{phase}: "))
        assert re.search(r"[\d.]+ s/step, [\d,]+ forward-equivalent tokens/s", line), line
        assert "MFU n/a" in line and "peak memory" in line, line
    assert "GPT-2 2 layers × 64" in proc.stdout


def test_the_dry_run_with_lora_trains_dpo_and_ppo():
    """--lora: the same paths with adapters on the policy and π_ref its adapters-off view."""
    results = gpu_check.main(["--dry-run", "--lora"])
    assert [r["phase"] for r in results] == ["DPO", "PPO"] and all(r["step_s"] > 0 for r in results)


def test_mfu_arithmetic():
    """2·N·step_tokens FLOPs: N = 1e8, 3e4 forward-equivalent tokens in 0.5 s = 12 TFLOP/s; on a card of
    989.4 TFLOP/s that is 1.21%."""
    rows = [{"split": "train", "step_s": 9.0, "step_tokens": 1.0}] + [
        {"split": "train", "step_s": 0.5, "step_tokens": 3e4} for _ in range(3)
    ]
    out = gpu_check.report("DPO", rows, 10**8, gpu_check.peak_tflops("NVIDIA H100 80GB HBM3"))
    assert out["tflops"] == pytest.approx(12.0)
    assert out["mfu"] == pytest.approx(12.0 / 989.4)
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert gpu_check.peak_tflops("NVIDIA GeForce RTX 4090") is None
