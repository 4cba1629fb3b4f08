"""Shared fixtures: a tiny GPT-2 for the cores' tests, the shared data directory, a small IMDb and a
module's own stage cache."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the README's command sets ALIGNLAB_DATA_DIR=../shared/data, relative to the repository root; tests that
# change directory (into the bad-input corpus, a temp dir) or start subprocesses there must see it whole
if os.environ.get("ALIGNLAB_DATA_DIR"):
    os.environ["ALIGNLAB_DATA_DIR"] = str(Path(os.environ["ALIGNLAB_DATA_DIR"]).expanduser().resolve())


def tiny_gpt2(vocab_size: int = 64, seed: int = 0, dtype: torch.dtype = torch.float64) -> GPT2LMHeadModel:
    """A 2-layer, 32-wide GPT-2 with random weights; float64 so comparisons can be tight."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).to(dtype).eval()


@pytest.fixture(autouse=True)
def _registries_restored():
    """Each test sees the built-in objectives, trainers, estimators and tasks only: what a test's plugin
    registers is dropped after it (a plugin in one test must not change another's listing)."""
    import alignlab.jobs.methods  # noqa: F401  (the built-in trainers, registered before the snapshot)
    from alignlab.core import advantages
    from alignlab.jobs import trainers
    from alignlab.objectives import registry
    from alignlab.tasks import registry as task_registry

    tables = [registry._REGISTRY, registry._ALIASES, trainers.TRAINERS, advantages.ESTIMATORS, task_registry._REGISTRY]
    saved = [dict(t) for t in tables]
    yield
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)


@pytest.fixture
def model() -> GPT2LMHeadModel:
    return tiny_gpt2()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data directory ($ALIGNLAB_DATA_DIR). Missing data fails in CI, skips elsewhere."""
    value = os.environ.get("ALIGNLAB_DATA_DIR")
    if value and Path(value).is_dir():
        return Path(value)
    if os.environ.get("CI"):
        pytest.fail("CI must set ALIGNLAB_DATA_DIR to the shared data directory")
    pytest.skip("ALIGNLAB_DATA_DIR is not set")


@pytest.fixture(scope="module")
def small_imdb(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every 50th review of IMDb train and test (the files are sorted by label: both labels kept)."""
    out = tmp_path_factory.mktemp("imdb_small")
    (out / "imdb").mkdir()
    for split in ("train", "test"):
        with gzip.open(data_dir / "imdb" / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for i, line in enumerate(f) if i % 50 == 0]
        with gzip.open(out / "imdb" / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A stage cache of the module's own ($ALIGNLAB_CACHE_DIR for its tests)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNLAB_CACHE_DIR", str(path))
        yield path


CORPUS = Path(__file__).resolve().parent / "fixtures" / "bad_inputs"


@pytest.fixture(scope="module")
def corpus_cache(cache: Path):
    """The module's stage cache, working from the bad-input corpus directory, whose tiny fixture
    YAMLs (``train/ok.yaml``, ``run/ok.yaml``) name their data relative to it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(CORPUS)
        yield cache


@pytest.fixture
def stop_after(monkeypatch: pytest.MonkeyPatch) -> dict[int, Any]:
    """step -> what happens at the training loop's end-of-step check after that step (after its
    evaluation, before its checkpoint): a signal's name asks the run to stop, an exception type kills
    it. Fill and clear the dict between runs."""
    from alignlab.train.loop import RunLoop

    stop: dict[int, Any] = {}

    def requested(self: RunLoop) -> str | None:
        what = stop.get(self.log.rows[-1]["step"])
        if isinstance(what, type):
            raise what
        return what

    monkeypatch.setattr(RunLoop, "_stop_requested", requested)
    return stop


# Two small runs on the small IMDb, DPO and PPO-GT, each 3 steps with the sampling evaluation at 0, 2
# and 3 and checkpoints at 0, 2 and 3: what tests/test_determinism.py trains twice and
# tests/test_checkpoints.py loads back.
SMALL_TRAIN = {
    "batch_size": 8,
    "optimizer": "adamw",
    "lr": 1.0e-3,
    "warmup_steps": 0,
    "log_with": [],
    "progress": False,
}
SMALL_RUNS = {
    "dpo": {
        "objective": {"name": "dpo", "beta": 0.1},
        "data": {"source": "reviews", "pairs": 32, "eval_pairs": 8, "prompt_words": 3, "completion_words": 6},
        "train": {**SMALL_TRAIN, "steps": 3, "eval_every": 2, "save_every": 2},
    },
    "ppo": {
        "objective": {"name": "ppo"},
        "reward": {"kind": "gold"},
        "rollout": {"max_new_tokens": 6, "kl_coef": 0.05, "minibatches": 2, "epochs": 2},
        "train": {**SMALL_TRAIN, "steps": 3, "eval_every": 2, "save_every": 2, "grad_clip": 1.0},
    },
}


def train_small(small_imdb: Path, out: Path, method: str, overrides: list[str] | None = None) -> dict:
    """``alignlab train`` of the small ``method`` run (:data:`SMALL_RUNS`) into ``out``, with dotted
    ``overrides``; its summary."""
    import yaml

    from alignlab.jobs.job import run_training

    doc = {
        "task": {"name": "imdb", "data_dir": str(small_imdb), "use_unsup": False},
        "model": {"preset": "smoke", "vocab_size": 500, "tokenizer_texts": 300},
        "sft": {"steps": 4, "batch_size": 8, "seq_len": 32, "lr": 2.0e-3, "warmup_steps": 1, "eval_blocks": 2},
        "eval": {"prompts": 6, "max_new_tokens": 6},
        "out_dir": str(out),
        **SMALL_RUNS[method],
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(doc))
    return run_training(path, overrides or [])
