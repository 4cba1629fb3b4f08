"""The SFT stage under ``accelerate launch``: every process trains its share; run by tests/test_sft_loop.py.

Usage: python tests/distributed_sft.py OUT_DIR CACHE_DIR DATA_DIR [STOP_AT]

As ``alignlab train`` does: the run's accelerator first, then :func:`alignlab.sft.prepare_policy` on
every process. The main process writes OUT_DIR/sft.json (the processes, the policy's cache entry, its
metrics). With STOP_AT, every process is asked to stop (as by SIGTERM) after SFT step STOP_AT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from alignlab.models import ModelConfig
from alignlab.sft import SFTConfig, prepare_policy
from alignlab.tasks import build_task
from alignlab.train.config import TrainConfig
from alignlab.train.loop import RunLoop, make_accelerator

MODEL = ModelConfig(preset="smoke", vocab_size=500, tokenizer_texts=300)
SFT = SFTConfig(steps=6, batch_size=8, seq_len=32, lr=2e-3, warmup_steps=1, eval_blocks=2)


def main(out: Path, cache: Path, data_dir: str, stop_at: int | None = None) -> None:
    accelerator = make_accelerator(TrainConfig(log_with=[], progress=False), out)
    if stop_at is not None:  # every process, at the same step: what a SIGTERM to all of them does
        RunLoop._stop_requested = lambda self: "SIGTERM" if self.log.rows[-1]["step"] == stop_at else None  # type: ignore[method-assign]
    task = build_task({"name": "imdb", "data_dir": data_dir, "use_unsup": False})
    policy = prepare_policy(task, MODEL, SFT, cache=cache, progress=False)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        info = {"processes": accelerator.num_processes, "path": str(policy.path), "metrics": policy.metrics}
        (out / "sft.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], *(int(a) for a in sys.argv[4:5]))
