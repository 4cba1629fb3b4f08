"""Kill and resume.

- A run interrupted twice resumes each time from its newest checkpoint and ends with the weights
  and metrics of an uninterrupted run (fast).
- ``scripts/kill_resume.py`` (slow: a few minutes on an idle 2-core machine, longer on a loaded
  one): a sweep of DPO and PPO-GT runs, shared stages built inside it, killed with SIGKILL at
  moments steered by phase until SFT, pair generation, reference caching, offline and PPO training
  steps and evaluations, checkpoint writing and result writing have each been hit (in further
  rounds from a fresh cache if one sweep ends first), resumed each time by the same command: no
  file is ever half-written, and in every round the frontier, metrics, summaries, final checkpoints
  and cached stages equal those of an uninterrupted run. Every failure is reported at once, the
  comparisons' before the phases'. ``KILL_RESUME_SEED`` (default 0) seeds the kill moments.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
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


def test_the_killer_takes_a_wanted_phase_it_let_pass_twice_and_not_the_last_one_again():
    script = _script()
    steer = script.Steering(script.Counter({"sft": 1, "checkpoint writing": 2}))
    rng = random.Random(0)
    assert not steer.take("startup", False, rng)  # not wanted
    assert steer.take("checkpoint writing", True, rng)  # a file being written marks it: at once
    steer.killed("checkpoint writing")
    assert not steer.take("checkpoint writing", True, rng)  # the last kill's phase, while sft is wanted
    for _ in range(50):
        tries = 1
        steer.passed.clear()
        while not steer.take("sft", False, rng):
            tries += 1
        assert tries <= script.PASSES + 1  # a short phase is not let pass for ever
    steer.killed("sft")
    assert steer.wanted == script.Counter({"checkpoint writing": 1})
    assert steer.take("checkpoint writing", True, rng)  # the last phase, but the only one still wanted


def test_a_report_fails_on_every_difference_and_problem_before_the_phases_missed():
    """A sweep that ended before every phase was hit still has its comparisons reported (the test
    once stopped at the number of kills)."""
    kill = {"number": 1, "round": 1, "phase": "sft", "problems": ["cache/sft/x/model.safetensors: cut"]}
    round_ = {
        "number": 1,
        "differences": ["frontier.csv: differs in columns ['kl']"],
        "final_problems": [],
        "final_temps": ["results/.frontier.csv.abc.tmp", "runs/dpo/.summary.json.x.tmp"],
    }
    report = {
        "rounds": [round_],
        "kills": [kill],
        "deaths": ["round 1: attempt 3 ended with status 1; problems: none"],
        "missing_phases": ["pair generation"],
        "missed_because": "the bound of 1 rounds was reached",
        "samples": {"sft": 9},
    }
    failed = _script().failures(report)
    assert [f.split(":")[0] for f in failed] == [
        "round 1",
        "round 1",
        "kill 1 (round 1, sft)",
        "phases never hit",
    ]
    assert "runs/dpo/.summary.json.x.tmp" in failed[1] and "results/" not in failed[1]


@pytest.mark.slow
def test_an_experiment_killed_at_every_phase_resumes_to_the_uninterrupted_result(tmp_path, data_dir):
    script = _script()
    seed = int(os.environ.get("KILL_RESUME_SEED", "0"))
    report = script.kill_and_resume(tmp_path, str(data_dir), seed=seed)
    # the results' equality (every round, whatever its number of kills), every file whole after every
    # kill, no other abrupt end, then the phases' coverage: all of them, so none hides another
    failed = script.failures(report)
    items = 2 + 4 + 2  # the CSVs, the four runs, the cached stages
    failed += [
        f"round {r['number']} compared {len(r['compared'])} items, not {items}: {r['compared']}"
        for r in report["rounds"]
        if len(r["compared"]) != items
    ]
    assert failed == [], "\n".join(failed)
