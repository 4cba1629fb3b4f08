"""Kill and resume.

- A run interrupted twice resumes each time from its newest checkpoint and ends with the weights
  and metrics of an uninterrupted run (fast).
- ``scripts/kill_resume.py`` (slow, 10–20 minutes on 2 CPU cores): a sweep of DPO and PPO-GT runs,
  shared stages built inside it, killed with SIGKILL at 12 moments covering SFT, pair generation,
  reference caching, training steps, checkpoint writing, evaluation and result writing, resumed
  each time by the same command: no file is ever half-written, and the frontier, metrics,
  summaries, final checkpoints and cached stages equal those of an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt2

from alignlab.io import atomic_dir, atomic_file, clear_temps
from alignlab.objectives.base import LossOutput
from alignlab.sft import lm_nll
from alignlab.train.config import TrainConfig
from alignlab.train.loop import make_accelerator
from alignlab.train.offline import train_offline

REPO = Path(__file__).resolve().parents[1]


def _train(out: Path, stop_after: int | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """8 steps of 4 rows of random tokens (LM loss) on a tiny GPT-2, checkpoints every 2 steps;
    ``stop_after`` steps of this process, then an interruption."""
    data = torch.randint(0, 64, (32, 12), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(
        steps=8, batch_size=4, lr=1e-2, warmup_steps=0, eval_every=100, save_every=2, log_with=[], progress=False
    )
    model = tiny_gpt2()
    calls = {"n": 0}

    def step(m: torch.nn.Module, rows: list[int]) -> LossOutput:
        calls["n"] += 1
        if stop_after is not None and calls["n"] > stop_after:
            raise KeyboardInterrupt
        return LossOutput(torch.stack([lm_nll(m, data[[r]]) for r in rows]), {})

    rows = train_offline(model, step, len(data), cfg, out, make_accelerator(cfg, out), name="lm")
    return model, rows


def _checkpoint_steps(out: Path) -> dict[str, int]:
    return {p.name: json.loads((p / "state.json").read_text())["step"] for p in (out / "checkpoints").glob("step-*")}


def test_a_run_interrupted_twice_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path):
    """Stopped after step 3 (resumes from 2), then after step 5 (resumes from 4, past the leftover of
    a checkpoint killed mid-write): every checkpoint's state.json names its own step, and weights and
    metrics end as an uninterrupted run's. (A resumed run once wrote the step it had resumed from
    into every later checkpoint, so the second resume went back to step 2 with the weights of step 4.)"""
    whole, whole_rows = _train(tmp_path / "whole")
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _train(cut, stop_after=3)
    assert _checkpoint_steps(cut) == {"step-0000000": 0, "step-0000002": 2}
    with pytest.raises(KeyboardInterrupt):
        _train(cut, stop_after=3)  # steps 3, 4, 5
    assert _checkpoint_steps(cut) == {"step-0000002": 2, "step-0000004": 4}
    # what a process killed while writing the checkpoint of step 6 would leave: never read, removed
    dead = cut / "checkpoints" / ".step-0000006.tmp-k1ll3d"
    (dead / "model").mkdir(parents=True)
    (dead / "state.json").write_text('{"step": 6}')
    (dead / "model" / "model.safetensors").write_bytes(b"\x00" * 10)
    resumed, resumed_rows = _train(cut)
    assert not dead.exists()
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    timing = {"step_s", "wall_s"}
    assert [r["step"] for r in resumed_rows] == list(range(1, 9))
    assert [{k: v for k, v in r.items() if k not in timing} for r in whole_rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in resumed_rows
    ]


def test_clear_temps_removes_only_the_temporaries_of_the_name_it_is_given(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "a") as tmp:  # cleaned on an exception
        (tmp / "f").write_text("x")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "b.json") as tmp:
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # what SIGKILL leaves instead: the temporaries themselves
    for name in (".a.tmp-x1_y2", ".a.q8w7e6r5.tmp", ".ab.tmp-x1", ".a.lock", "a", ".a.run", ".b.json.k2j3h4g5.tmp"):
        (tmp_path / name).mkdir()
    assert sorted(p.name for p in clear_temps(tmp_path, "a")) == [".a.q8w7e6r5.tmp", ".a.tmp-x1_y2"]
    assert sorted(p.name for p in clear_temps(tmp_path)) == [".ab.tmp-x1", ".b.json.k2j3h4g5.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.lock", ".a.run", "a"]


def _script():
    spec = importlib.util.spec_from_file_location("kill_resume", REPO / "scripts" / "kill_resume.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_an_experiment_killed_at_every_phase_resumes_to_the_uninterrupted_result(tmp_path, data_dir):
    report = _script().kill_and_resume(tmp_path, str(data_dir), kills=12, seed=0)
    kills = report["kills"]
    assert len(kills) >= 12
    assert [k["problems"] for k in kills if k["problems"]] == []  # no half-written file after any kill
    assert report["survived"] == len(kills)
    assert [d for d in report["deaths"] if not d.endswith("problems: none")] == []  # any other abrupt end
    assert report["missing_phases"] == []  # SFT, pairs, reference, training, eval, checkpoint, results
    assert report["differences"] == [], report["compared"]
    assert len(report["compared"]) == 2 + 4 + 2  # the CSVs, the four runs, the cached stages
    assert report["final_problems"] == []
    # a run's and a stage's leftovers are removed on resume; only the results directory (written by
    # any process of the experiment) and the reference-log-prob cache may keep a dead writer's temp
    assert [t for t in report["final_temps"] if not t.startswith(("results/", "cache/reference/"))] == []
