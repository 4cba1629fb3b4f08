"""Damaged state is detected and recovered, never a traceback.

Real files of real tiny runs, truncated or garbled afterwards:

- a checkpoint (weights, optimiser state, ``state.json``; one of an older alignlab, without a
  manifest): the run falls back to the previous checkpoint, with one warning line, and ends with
  the weights and metrics of an uninterrupted run; with no intact checkpoint it starts over;
- ``metrics.jsonl`` on resume: restored from the checkpoint's copy;
- a cache entry (tokenizer, SFT weights, gold judge, generated pairs, reward model, reference
  log-probs): moved aside and built again under its lock, with one warning line, to the same content;
- ``summary.json`` / ``metrics.jsonl`` of a finished run of a sweep: the run resumes, the sweep completes;
- ``frontier.csv`` / ``winrate.csv`` / ``compute.csv`` edited into garbage: one line from
  ``alignlab plot`` / ``alignlab table``, exit status 2.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_gpt2
from safetensors.torch import load_file

from alignlab import stages
from alignlab.cli import main
from alignlab.experiment import load_experiment
from alignlab.experiment.runner import run_experiment, status
from alignlab.io import MANIFEST
from alignlab.models import ModelConfig
from alignlab.objectives.base import LossOutput
from alignlab.pairs import PairGenConfig
from alignlab.sft import SFTConfig, lm_nll, prepare_policy
from alignlab.tasks import build_task
from alignlab.train.config import TrainConfig
from alignlab.train.data import PairData
from alignlab.train.loop import make_accelerator
from alignlab.train.offline import train_offline
from alignlab.train.reward_model import RewardModelConfig

TIMING = ("wall_s", "step_s", "wall_time_s", "peak_rss_mb")


def _rewrite(path: Path, data: bytes) -> None:
    """Replace the file's bytes by ``data`` under a new inode: this process still maps some of these
    files (safetensors), and changing them in place would pull the pages from under it."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    os.replace(new, path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    _rewrite(path, data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    """The same size, one byte of the tensor data changed: only a checksum can tell."""
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    _rewrite(path, bytes(data))


def _garble(path: Path) -> None:
    _rewrite(path, b'{"step": 8, "epo\x00\xff garbage')


def _warnings(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("alignlab: warning:")]


def _untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ------------------------------------------------------------------------------------ checkpoints


def _lm_run(out: Path) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """8 steps of 4 rows of random tokens (LM loss) on a tiny GPT-2; checkpoints every 2 steps, the
    newest two kept (steps 6 and 8 at the end). Resumes from ``out``."""
    data = torch.randint(0, 64, (32, 12), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(
        steps=8, batch_size=4, lr=1e-2, warmup_steps=0, eval_every=100, save_every=2, log_with=[], progress=False
    )
    model = tiny_gpt2()

    def step(m: torch.nn.Module, rows: list[int]) -> LossOutput:
        return LossOutput(torch.stack([lm_nll(m, data[[r]]) for r in rows]), {})

    rows = train_offline(model, step, len(data), cfg, out, make_accelerator(cfg, out), name="lm")
    return model, rows


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An uninterrupted run: its directory, final weights and metric rows."""
    out = tmp_path_factory.mktemp("whole") / "run"
    model, rows = _lm_run(out)
    return out, {k: v.clone() for k, v in model.state_dict().items()}, rows


def _resume_damaged(whole: Any, tmp_path: Path, damage: Callable[[Path], None]) -> tuple[Path, list[dict[str, Any]]]:
    """A copy of the finished run, ``damage(copy)`` done to it, trained again: (the copy, its rows);
    its final weights must be the uninterrupted run's."""
    out = tmp_path / "run"
    shutil.copytree(whole[0], out)
    damage(out)
    model, rows = _lm_run(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, whole[1][name]), name
    return out, rows


@pytest.mark.parametrize(
    ("file", "damage", "legacy"),
    [
        ("model.safetensors", _truncate, False),
        ("model.safetensors", _flip_a_byte, False),
        ("accelerate/optimizer.bin", _truncate, False),
        ("accelerate/random_states_0.pkl", _flip_a_byte, False),
        ("state.json", _garble, False),
        ("model.safetensors", _truncate, True),  # an older alignlab's checkpoint: no manifest
    ],
)
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(whole, tmp_path, capsys, file, damage, legacy):
    def break_newest(out: Path) -> None:
        newest = out / "checkpoints" / "step-0000008"
        if legacy:
            (newest / MANIFEST).unlink()
        damage(newest / file)

    out, rows = _resume_damaged(whole, tmp_path, break_newest)
    [warning] = _warnings(capsys)
    assert "step-0000008" in warning and "resuming from step-0000006" in warning
    assert "moved aside to damaged-step-0000008" in warning
    assert (file in warning) or legacy  # the manifest names the file; an older checkpoint, its reader's error
    # the damaged checkpoint is kept, out of the way; steps 7 and 8 were trained again
    assert (out / "checkpoints" / "damaged-step-0000008" / file).exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "damaged-step-0000008",
        "step-0000006",
        "step-0000008",
    ]
    assert _untimed(rows) == _untimed(whole[2])


def test_a_checkpoint_of_the_older_layout_resumes_exactly(whole, tmp_path, capsys):
    """Before checkpoints were models, the model was saved in ``model/`` and the tokenizer in
    ``tokenizer/``: such a checkpoint (its own manifest) still resumes to the uninterrupted run's weights."""
    from alignlab.io import write_manifest

    def to_older_layout(out: Path) -> None:
        newest = out / "checkpoints" / "step-0000008"
        (newest / "model").mkdir()
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            (newest / name).rename(newest / "model" / name)
        (newest / MANIFEST).unlink()
        write_manifest(newest)
        assert not (newest / "config.json").exists()
        for older in (out / "checkpoints").glob("step-000000[0-7]"):  # only the older one can be resumed from
            shutil.rmtree(older)

    out, rows = _resume_damaged(whole, tmp_path, to_older_layout)
    err = capsys.readouterr().err
    assert "alignlab: warning" not in err and f"alignlab: resuming {out} from step 8 of 8" in err
    assert _untimed(rows) == _untimed(whole[2])


def _to_trainer_state_pt(checkpoint: Path) -> None:
    """Rewrite ``checkpoint`` as the alignlab before ``accelerate/`` wrote it: ``trainer_state.pt`` with the
    optimiser's and scheduler's state dicts and the main process's RNGs (torch, CUDA, Python's, numpy's)."""
    from accelerate.utils import load

    from alignlab.io import write_manifest

    root = checkpoint / "accelerate"
    rng = load(root / "random_states_0.pkl")
    name, keys, *rest = rng["numpy_random_seed"]
    torch.save(
        {
            "optimizer": load(root / "optimizer.bin"),
            "scheduler": load(root / "scheduler.bin"),
            "rng": {
                "torch": rng["torch_manual_seed"],
                "cuda": [],
                "python": rng["random_state"],
                "numpy": [name, torch.from_numpy(keys.astype("int64")), *rest],
            },
        },
        checkpoint / "trainer_state.pt",
    )
    shutil.rmtree(root)
    (checkpoint / MANIFEST).unlink()
    write_manifest(checkpoint)


def test_a_checkpoint_with_trainer_state_pt_still_resumes_exactly(whole, tmp_path, capsys):
    """A checkpoint of the alignlab before accelerate's save_state (``trainer_state.pt``, no ``accelerate/``)
    resumes on one process: from step 6, steps 7 and 8 train to the uninterrupted run's weights and metrics
    (the optimiser's moments and the schedule restored: without them the weights would differ)."""

    def to_trainer_state_pt(out: Path) -> None:
        shutil.rmtree(out / "checkpoints" / "step-0000008")
        _to_trainer_state_pt(out / "checkpoints" / "step-0000006")

    out, rows = _resume_damaged(whole, tmp_path, to_trainer_state_pt)
    err = capsys.readouterr().err
    assert "alignlab: warning" not in err and f"alignlab: resuming {out} from step 6 of 8" in err
    assert _untimed(rows) == _untimed(whole[2])
    assert (out / "checkpoints" / "step-0000008" / "accelerate" / "optimizer.bin").is_file()  # saved the new way


def test_a_checkpoint_with_trainer_state_pt_is_refused_under_fsdp(whole, tmp_path):
    """Under FSDP (or DeepSpeed) ``trainer_state.pt`` held one process's part of the optimiser: one line
    naming the checkpoint, before anything is loaded."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from alignlab.errors import AlignlabError
    from alignlab.train.checkpoint import load_checkpoint

    checkpoint = tmp_path / "step-0000006"
    shutil.copytree(whole[0] / "checkpoints" / "step-0000006", checkpoint)
    _to_trainer_state_pt(checkpoint)
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(AlignlabError) as caught:
        load_checkpoint(checkpoint, fsdp, tiny_gpt2(), None, None)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{checkpoint}: ")
    assert "trainer_state.pt" in str(caught.value) and "FSDP" in str(caught.value)


def test_with_no_intact_checkpoint_the_run_starts_over(whole, tmp_path, capsys):
    def break_both(out: Path) -> None:
        _truncate(out / "checkpoints" / "step-0000006" / "accelerate" / "optimizer.bin")
        _garble(out / "checkpoints" / "step-0000008" / "state.json")

    out, rows = _resume_damaged(whole, tmp_path, break_both)
    [warning] = _warnings(capsys)
    assert "step-0000008 (" in warning and "step-0000006 (" in warning
    assert "starting over from step 0" in warning
    assert [r["step"] for r in rows] == list(range(1, 9)) and _untimed(rows) == _untimed(whole[2])
    assert {"damaged-step-0000006", "damaged-step-0000008"} <= {p.name for p in (out / "checkpoints").iterdir()}


def _cut_mid_line(path: Path) -> None:
    text = path.read_text()
    _rewrite(path, text[: len(text) // 2].encode())


def _drop_last_rows(path: Path) -> None:
    """Cut at a line boundary: every line still parses, rows are missing."""
    _rewrite(path, "".join(path.read_text().splitlines(keepends=True)[:-3]).encode())


@pytest.mark.parametrize("damage", [_cut_mid_line, _drop_last_rows])
def test_a_damaged_metrics_log_is_restored_from_the_checkpoint_on_resume(whole, tmp_path, capsys, damage):
    out, rows = _resume_damaged(whole, tmp_path, lambda out: damage(out / "metrics.jsonl"))
    [warning] = _warnings(capsys)
    assert "metrics.jsonl" in warning and "rewritten from the copy in step-0000008" in warning
    assert rows == whole[2]  # the rows as they were written, wall-clock times included
    assert (out / "metrics.jsonl").read_text() == (whole[0] / "metrics.jsonl").read_text()


# ------------------------------------------------------------------------------------ cache entries


TASK = {"name": "imdb", "use_unsup": False}
MODEL = {"preset": "smoke", "vocab_size": 500, "tokenizer_texts": 300}
SFT = {"steps": 4, "batch_size": 8, "seq_len": 32, "lr": 2.0e-3, "warmup_steps": 1, "eval_blocks": 2}


class Stages:
    """Every cached stage of a tiny IMDb run, built once in the module's cache."""

    def __init__(self, data: Path, root: Path) -> None:
        self.root = root
        self.task = build_task({**TASK, "data_dir": str(data)})
        self.policy = self.sft(SFTConfig(**SFT))
        self.judge = stages.gold_judge(self.task, 0, root)
        self.pairs = self.generated()
        every = self.task.review_pairs(24, 3, 6, 0)
        self.rm_pairs = every[:16], every[16:]
        self.rm = self.reward_model()
        self.reference = self.reference_logps()

    def sft(self, cfg: SFTConfig) -> Any:
        return prepare_policy(self.task, ModelConfig(**MODEL), cfg, cache=self.root, progress=False)

    def generated(self) -> tuple[Path, dict[str, Any]]:
        cfg = PairGenConfig(samples_per_prompt=2, max_prompts=6, max_new_tokens=6, batch_size=12)
        return stages.generated_pairs(self.task, self.policy, self.judge, cfg, self.root, progress=False)

    def reward_model(self) -> tuple[Any, dict[str, Any]]:
        cfg = RewardModelConfig(batch_size=8)
        return stages.reward_model(self.policy, *self.rm_pairs, cfg, self.root, progress=False)

    def reference_logps(self) -> dict[str, torch.Tensor]:
        data = PairData.build(self.policy.tokenizer, self.rm_pairs[0], 64)
        data.attach_reference(["test", str(self.policy.path)], lambda: self.policy.model, 8)
        assert data.ref is not None
        return data.ref

    def entry(self, stage: str) -> Path:
        [path] = [p for p in (self.root / stage).iterdir() if not p.name.startswith((".", "damaged-"))]
        return path


@pytest.fixture(scope="module")
def built(small_imdb: Path, cache: Path) -> Stages:
    return Stages(small_imdb, cache)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(str(path)).items()}


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rebuilt_warning(capsys: pytest.CaptureFixture[str], damaged: Path) -> str:
    """The one warning line of a damaged cache entry, which is kept beside the rebuilt one."""
    [warning] = _warnings(capsys)
    assert str(damaged) in warning and f"moved aside to damaged-{damaged.name}" in warning
    assert (damaged.parent / f"damaged-{damaged.name}").exists()
    return warning


def test_a_damaged_tokenizer_is_rebuilt(built, capsys):
    entry = built.entry("tokenizer")
    before = (entry / "tokenizer.json").read_bytes()
    _truncate(entry / "tokenizer.json")
    capsys.readouterr()
    other = built.sft(SFTConfig(**{**SFT, "steps": 2}))  # a new SFT stage: it reads the tokenizer cache
    warning = _rebuilt_warning(capsys, entry)
    assert "the cached tokenizer" in warning and "tokenizer.json has" in warning
    assert (entry / "tokenizer.json").read_bytes() == before
    assert other.tokenizer.get_vocab() == built.policy.tokenizer.get_vocab()


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte])
def test_damaged_sft_weights_are_rebuilt(built, capsys, damage):
    entry = built.policy.path
    before = _tensors(entry / "model.safetensors")
    damage(entry / "model.safetensors")
    capsys.readouterr()
    policy = built.sft(SFTConfig(**SFT))
    assert "the cached SFT policy" in _rebuilt_warning(capsys, entry)
    assert policy.metrics["cached"] is False and policy.path == entry
    assert _same_tensors(_tensors(entry / "model.safetensors"), before)
    shutil.rmtree(entry.parent / f"damaged-{entry.name}")  # the next case moves its own aside


def test_a_damaged_gold_judge_is_rebuilt(built, capsys):
    entry = built.entry("gold")
    before = _tensors(entry / "model.safetensors")
    _truncate(entry / "model.safetensors")
    capsys.readouterr()
    judge = stages.gold_judge(built.task, 0, built.root)
    assert "the cached gold judge" in _rebuilt_warning(capsys, entry)
    assert torch.equal(judge.weight, built.judge.weight) and judge.bias == built.judge.bias
    assert _same_tensors(_tensors(entry / "model.safetensors"), before)


def test_damaged_generated_pairs_are_rebuilt(built, capsys):
    entry, info = built.pairs
    before = (entry / "pairs.jsonl.gz").read_bytes()
    _truncate(entry / "pairs.jsonl.gz")
    capsys.readouterr()
    path, again = built.generated()
    assert "the cached preference pairs" in _rebuilt_warning(capsys, entry)
    assert path == entry and again["pairs"] == info["pairs"] and "cached" not in again
    assert (entry / "pairs.jsonl.gz").read_bytes() == before


def test_a_damaged_reward_model_is_rebuilt(built, capsys):
    entry = built.entry("reward_model")
    before = _tensors(entry / "model.safetensors")
    _truncate(entry / "model.safetensors")
    capsys.readouterr()
    rm, metrics = built.reward_model()
    assert "the cached reward model" in _rebuilt_warning(capsys, entry)
    assert metrics["cached"] is False
    assert metrics["held_out"] == built.rm[1]["held_out"]
    prompts, completions = ["This film was"], [" a joy to watch"]
    assert torch.equal(rm(prompts, completions), built.rm[0](prompts, completions))
    assert _same_tensors(_tensors(entry / "model.safetensors"), before)


def test_damaged_reference_logps_are_recomputed(built, capsys):
    [entry] = [p for p in (built.root / "reference").glob("*.safetensors") if not p.name.startswith("damaged-")]
    assert entry.with_name(entry.name + ".sha256").exists()
    _flip_a_byte(entry)
    capsys.readouterr()
    again = built.reference_logps()
    assert "recomputing them" in _rebuilt_warning(capsys, entry)
    assert _same_tensors(again, built.reference) and _same_tensors(_tensors(entry), built.reference)


# ------------------------------------------------------------------------------------ a finished run


@pytest.fixture
def sweep(built: Stages, small_imdb: Path, tmp_path: Path) -> Path:
    """A finished sweep of two tiny DPO runs (its shared stages are the module's)."""
    doc = {
        "name": "damaged",
        "task": {**TASK, "data_dir": str(small_imdb)},
        "model": MODEL,
        "sft": SFT,
        "data": {"source": "reviews", "pairs": 16, "eval_pairs": 8, "prompt_words": 3, "completion_words": 6},
        "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "save_every": 2, "progress": False, "log_with": []},
        "eval": {"prompts": 4, "max_new_tokens": 4},
        "methods": [{"name": "dpo", "sweep": {"beta": [0.1, 0.5]}}],
        "out_dir": str(tmp_path / "results"),
        "runs_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert run_experiment(path)["trained"] == 2
    return path


def _without_timing(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in TIMING}


@pytest.mark.parametrize(("name", "damage"), [("summary.json", _truncate), ("metrics.jsonl", _cut_mid_line)])
def test_a_finished_run_with_damaged_results_is_resumed_and_the_sweep_completes(sweep, capsys, name, damage):
    run = load_experiment(sweep).runs[1]
    out = Path(run.cfg.out_dir)
    summary = json.loads((out / "summary.json").read_text())
    metrics = (out / "metrics.jsonl").read_text()
    frontier = pd.read_csv(sweep.parent / "results" / "frontier.csv")
    damage(out / name)
    assert status(run) == "started"  # not finished any more
    capsys.readouterr()
    again = run_experiment(sweep)
    assert again["trained"] == 1 and again["skipped_finished"] == 1 and again["unfinished"] == []
    warnings = _warnings(capsys)
    assert warnings and all(name in w for w in warnings)
    assert _without_timing(json.loads((out / "summary.json").read_text())) == _without_timing(summary)
    assert (out / "metrics.jsonl").read_text() == metrics  # restored from the final checkpoint's copy
    assert (
        pd.read_csv(sweep.parent / "results" / "frontier.csv")
        .drop(columns="wall_s")
        .equals(frontier.drop(columns="wall_s"))
    )
    if name == "summary.json":
        assert (out / "damaged-summary.json").exists()


# ------------------------------------------------------------------------------------ the CSVs


FRONTIER = (
    "experiment,method,objective,run,setting,seed,step,kl,kl_ci_low,kl_ci_high,reward,reward_ci_low,"
    "reward_ci_high,samples,wall_s,finished,knobs\n"
    "x,dpo,dpo,dpo-a,-,0,0,0.0,0.0,0.0,0.1,0.0,0.2,8,1.0,True,{}\n"
    "x,dpo,dpo,dpo-a,-,0,2,0.5,0.4,0.6,0.3,0.2,0.4,8,2.0,True,{}\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "frontier.csv: not a CSV table"),
        (b"", "frontier.csv: not a CSV table"),
        (b"hello, world\nthis is not the frontier\n", "frontier.csv: not a CSV table of alignlab's (none"),
        (FRONTIER.replace(",0.5,0.4,", ",lots,0.4,").encode(), "frontier.csv: row 2: kl is 'lots', not a number"),
        (FRONTIER.replace("x,dpo,dpo,dpo-a,-,0,2,", "x,dpo,dpo,dpo-a,-,0,,").encode(), "row 2: step is empty"),
        (FRONTIER.replace(",kl_ci_high,", ",kl_hi,").encode(), "frontier.csv: no column kl_ci_high"),
        (FRONTIER.encode()[:-40] + b'"\n', "frontier.csv: not a CSV table"),
    ],
)
@pytest.mark.parametrize("command", ["plot", "table"])
def test_a_garbage_frontier_csv_is_one_line_from_plot_and_table(tmp_path, capsys, command, text, expected):
    (tmp_path / "frontier.csv").write_bytes(text)
    assert main([command, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alignlab: error: ") and expected in err, err
    assert str(tmp_path / "frontier.csv") in err


def test_the_frontier_csv_itself_still_plots_and_tabulates(tmp_path, capsys):
    (tmp_path / "frontier.csv").write_text(FRONTIER)
    assert main(["plot", str(tmp_path)]) == 0 and main(["table", str(tmp_path)]) == 0
    # its method column holds the objective's name (an unlabelled method of an older alignlab): shown as DPO
    assert "| DPO | - | 0 | 2 | 0.50 [0.40, 0.60] | 0.30 [0.20, 0.40] |" in (tmp_path / "frontier.md").read_text()


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "winrate.csv",
            "method,run,setting,temperature,win_rate,win_rate_ci_low,win_rate_ci_high,n,judge\n"
            "dpo,dpo-a,-,0.5,0.6,0.5,0.7,eight,gold\n",
            "winrate.csv: row 1: n is 'eight', not a number",
        ),
        ("compute.csv", "method,steps\ndpo,3\n", "compute.csv: no column roles, batch_size"),
    ],
)
def test_a_garbage_winrate_or_compute_csv_is_one_line_from_table(tmp_path, capsys, name, text, expected):
    (tmp_path / "frontier.csv").write_text(FRONTIER)
    (tmp_path / name).write_text(text)
    assert main(["table", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alignlab: error: ") and expected in err, err


def test_finished_runs_on_another_pi_ref_are_named_not_mixed_into_the_results(sweep):
    """A run finished before the SFT stage changed (its summary names another π_ref) and one after:
    collecting refuses with one line naming the stale run, and writes nothing; once it is retrained
    the results are written again."""
    from alignlab.errors import AlignlabError
    from alignlab.experiment.runner import collect

    exp = load_experiment(sweep)
    stale, fresh = (Path(r.cfg.out_dir) for r in exp.runs)
    summary = json.loads((stale / "summary.json").read_text())
    summary["policy"] = "$ALIGNLAB_CACHE_DIR/sft/0123456789abcdef"
    (stale / "summary.json").write_text(json.dumps(summary))
    older = (fresh / "summary.json").stat().st_mtime - 60
    os.utime(stale / "summary.json", (older, older))
    frontier = sweep.parent / "results" / "frontier.csv"
    before = frontier.read_bytes()
    with pytest.raises(AlignlabError, match=rf"1 finished run\(s\) .*sft/0123456789abcdef.*: {exp.runs[0].run_id};"):
        collect(exp)
    assert frontier.read_bytes() == before
    shutil.rmtree(stale)  # what the message asks for: the run is retrained on the current π_ref
    assert run_experiment(sweep)["trained"] == 1
    assert collect(load_experiment(sweep))["frontier_rows"] > 0
