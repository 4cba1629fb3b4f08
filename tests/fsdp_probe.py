"""What ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` gives alignlab on CPU.

Run by tests/test_fsdp.py under ``accelerate launch`` with 2 processes (gloo). It builds alignlab's
accelerator (:func:`alignlab.train.loop.make_accelerator`), prepares a smoke-preset model and its
optimiser, and writes what accelerate chose to OUT_DIR/probe.json from the main process.

Usage: python tests/fsdp_probe.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from alignlab.models import build_preset, train_tokenizer
from alignlab.train.config import TrainConfig
from alignlab.train.loop import make_accelerator


def main(out: Path) -> None:
    cfg = TrainConfig(steps=1, batch_size=2, log_with=[], progress=False)
    accelerator = make_accelerator(cfg, out)
    tokenizer = train_tokenizer(["the film was great", "the film was dull"] * 8, vocab_size=300)
    model = build_preset("smoke", tokenizer, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    weight = next(accelerator.unwrap_model(wrapped).parameters())
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(
            json.dumps(
                {
                    "processes": accelerator.num_processes,
                    "distributed_type": str(accelerator.distributed_type).split(".")[-1],
                    "wrapper": type(wrapped).__name__,
                    "parameter": type(weight).__name__,
                    "torch": torch.__version__,
                }
            )
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
