"""DPO for 4 steps on toy pairs through the offline trainer; run by tests/test_distributed.py both
as one process and under ``accelerate launch --num_processes 2`` (gloo on CPU).

Usage: python tests/distributed_dpo.py OUT_DIR [STEPS STOP_AFTER [FORCE_FSDP]]   (writes OUT_DIR/losses.json from
the main process). With STEPS and STOP_AFTER (tests/test_fsdp.py): STEPS steps, a checkpoint every STOP_AFTER steps,
and the run is interrupted after STOP_AFTER steps of this process when STOP_AFTER < STEPS (run it again to resume).
FAIL_SAVE_ON_PROCESS=i in the environment: process i cannot write its part of a checkpoint (tests/test_fsdp.py).
FORCE_FSDP (``SHARDED_STATE_DICT`` or ``FULL_STATE_DICT``; under a 2-process launch on CPU): accelerate's FSDP2
path forced onto the gloo processes (:func:`force_fsdp2`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from alignlab.models import build_preset, train_tokenizer
from alignlab.objectives import get_objective
from alignlab.tasks.base import PreferencePair
from alignlab.train.config import TrainConfig
from alignlab.train.data import PairData
from alignlab.train.loop import make_accelerator
from alignlab.train.offline import objective_step, train_offline

GOOD = ["great", "superb", "lovely", "moving", "brilliant", "charming"]
BAD = ["dull", "awful", "boring", "dreadful", "clumsy", "tedious"]


def force_fsdp2(accelerator: Any, state_dict_type: str) -> None:
    """Make ``accelerator`` (2 gloo processes, ``MULTI_CPU``) take accelerate's FSDP2 code paths: ``prepare``
    shards the model with ``fully_shard`` (one unit per GPT-2 block), ``save_state``/``load_state`` write and read
    shards (or, ``FULL_STATE_DICT``, full state dicts on process 0), ``get_state_dict`` gathers.

    accelerate 1.16 selects FSDP only on an accelerator (tests/test_fsdp.py pins it), but torch's FSDP2 runs on
    CPU with gloo (scripts/fsdp_cpu_probe.py); setting the distributed type and plugin by hand after the
    accelerator is built runs everything else unchanged (a test seam, not a way to train).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        state_dict_type=state_dict_type,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["GPT2Block"],
        reshard_after_forward=True,
        cpu_ram_efficient_loading=False,
    )
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # what accelerate's helpers read


def main(out: Path, steps: int = 4, stop_after: int | None = None, fsdp: str | None = None) -> None:
    pairs = [
        PreferencePair(f"the film was {GOOD[i % 6]}", f" and {GOOD[(i * 5) % 6]} too", f" but {BAD[(i * 7) % 6]} too")
        for i in range(48)
    ]
    tokenizer = train_tokenizer([p.prompt + p.chosen + p.rejected for p in pairs] * 4, vocab_size=300)
    model = build_preset("smoke", tokenizer, seed=0)
    cfg = TrainConfig(
        steps=steps,
        batch_size=8,
        optimizer="adamw",
        lr=1e-3,
        warmup_steps=0,
        eval_every=100,
        save_every=stop_after or 100,
        log_with=[],
        progress=False,
    )
    accelerator = make_accelerator(cfg, out)
    if fsdp is not None:
        force_fsdp2(accelerator, fsdp)
    failing = os.environ.get("FAIL_SAVE_ON_PROCESS")  # a test seam: this process cannot write its checkpoint part
    if failing is not None and int(failing) == accelerator.process_index:
        _fail_saving(accelerator)
    data = PairData.build(tokenizer, pairs, 64)
    reference = build_preset("smoke", tokenizer, seed=0)
    with accelerator.main_process_first():
        data.attach_reference(["toy-reference"], lambda: reference, 16)
    objective = get_objective("dpo")
    step_fn = objective_step(objective, objective.config_cls(beta=0.5), data, accelerator)
    if stop_after is not None:  # both runs of a resume test go through the wrapper (compute is not counted)
        step_fn = _interrupted_after(step_fn, stop_after)
    rows = train_offline(
        model,
        step_fn,
        len(data),
        cfg,
        out,
        accelerator,
    )
    if accelerator.is_main_process:
        train = [r for r in rows if r["split"] == "train"]
        (out / "losses.json").write_text(
            json.dumps(
                {
                    "processes": accelerator.num_processes,
                    "loss": [r["loss"] for r in train],
                    "margins": [r["margins"] for r in train],
                    "grad_norm": [r["grad_norm"] for r in train],
                    "distributed_type": str(accelerator.distributed_type).split(".")[-1],
                }
            )
        )


def _fail_saving(accelerator: Any) -> None:
    """``accelerator.save_state`` raises on this process, as on a full disk."""

    def save_state(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, f"No space left on device (process {accelerator.process_index}, a test)")

    accelerator.save_state = save_state


def _interrupted_after(step_fn: Any, steps: int) -> Any:
    """``step_fn``, raising KeyboardInterrupt (as Ctrl-C would) when asked for step ``steps + 1``."""
    calls = {"n": 0}

    def step(model: Any, rows: list[int]) -> Any:
        calls["n"] += 1
        if calls["n"] > steps:
            raise KeyboardInterrupt
        return step_fn(model, rows)

    return step


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:4]), *sys.argv[4:5])
