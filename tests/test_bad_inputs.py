"""The bad-input corpus (issue 7, part 3): every broken input is one line on stderr, naming the file
and the key or row, with exit status 2 and no traceback (``--debug`` shows it); nothing already
written is damaged.

The cases live in ``tests/fixtures/bad_inputs/cases.yaml``: each is an ``alignlab`` command run from
that directory, against the small broken files beside it, and the texts its message must contain.
Every case fails before any training (the valid-looking rest is the ``smoke`` preset with
``sft.steps: 0``), so the whole module runs in-process in seconds; one case runs in a real process
to check the exit status itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from alignlab.cli import main
from alignlab.experiment.config import load_experiment
from alignlab.io import atomic_write_json, atomic_write_jsonl, atomic_write_yaml
from alignlab.jobs.job import Method, _resolved, claim_out_dir, resolve
from alignlab.ownership import training_lock
from alignlab.run_config import RunConfig
from alignlab.tasks import build_task
from alignlab.tasks.base import BadRowError

CORPUS = Path(__file__).resolve().parent / "fixtures" / "bad_inputs"
CASES: list[dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
# the kinds of mistake issue 7 lists, as the manifest's categories
CATEGORIES = {
    "malformed": "malformed YAML (and malformed command-line overrides)",
    "unknown-key": "unknown keys",
    "wrong-type": "wrong types",
    "out-of-range": "out-of-range knobs",
    "unknown-objective": "unknown objective (task, preset) with a suggestion",
    "plugin": "missing or broken plugin module",
    "missing-data": "missing or empty data files",
    "bad-row": "rows with missing fields",
    "non-utf8": "non-UTF-8 text",
    "prompt-too-long": "prompts longer than the context",
    "model": "tokenizer/model mismatch",
    "owned-out-dir": "a results directory owned by another run",
    # issue 19's classes (each case also names its class)
    "not-ours": "a directory alignlab did not write: never written into, never deleted",
    "text-is-text": "text spelling special tokens: trained on as text",
    "damaged-state": "result files damaged by hand",
    "invalid-value": "valid YAML that is not a valid setting",
    "plugin-contract": "a plugin loss that breaks the objective contract",
    "processes": "a second process on a run, the worker count",
    "paths": "unwritable or odd paths",
}
CLASSES = {
    "1-not-ours",
    "2-text-is-text",
    "3-damaged-state",
    "4-invalid-value",
    "5-plugin-contract",
    "6-processes",
    "7-paths",
}
ANNOUNCEMENT = re.compile(r"^\[\d+/\d+\] \S+: ")  # `alignlab run` naming the run it starts
PROGRESS = re.compile(r"^alignlab: (?!error: |warning: )[^:]+: ")  # a stage starting, reused, done (alignlab.progress)


def digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def mismatched_model_weights() -> None:
    """Write the weights of models/vocab_mismatch (a 1-layer, 8-wide GPT-2 from its config.json, whose
    embedding is smaller than its tokenizer) once: weights are not kept in git, even tiny ones."""
    target = CORPUS / "models" / "vocab_mismatch" / "model.safetensors"
    if target.exists():
        return
    import tempfile

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config.from_pretrained(target.parent))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        (Path(tmp) / "model.safetensors").replace(target)


@pytest.fixture(scope="module")
def corpus_digest() -> dict[str, str]:
    """The corpus as it was before any case ran (checked again by the last test)."""
    mismatched_model_weights()
    return digest(CORPUS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the module: the few cases that build a tokenizer share it."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def in_corpus(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    cache: Path,
    corpus_digest: dict[str, str],
) -> Path:
    """Run from the corpus directory, with no data directory but the cases' own, offline, caching under tmp."""
    monkeypatch.chdir(CORPUS)
    monkeypatch.delenv("ALIGNLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(cache))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing the plugins leaves no __pycache__ here
    # the cases' plugins register objectives in this process: forget them afterwards, as a fresh
    # `alignlab` process would (other tests count the registered objectives)
    from alignlab.objectives import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    imported = set(sys.modules)
    request.addfinalizer(
        lambda: [sys.modules.pop(m) for m in set(sys.modules) - imported if m.startswith("alignlab_plugin_")]
    )
    # `alignlab` turns the Hugging Face progress bars off before it imports transformers; in this
    # process conftest imported it first, so turn them off as a fresh `alignlab` process has them
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        request.addfinalizer(hf_logging.enable_progress_bar)
    return tmp_path


def fill(text: str, tmp: Path) -> str:
    """``text`` with {tmp} replaced by the test's temporary directory (other braces are YAML)."""
    return text.replace("{tmp}", str(tmp))


def command(case: dict[str, Any], tmp: Path) -> list[str]:
    """The case's argv with {tmp} filled in, its outputs sent under ``tmp`` unless it names them."""
    argv = [fill(item, tmp) for item in case["argv"]]
    named = {item.partition("=")[0] for item in argv[2:] if "=" in item}
    if argv[0] == "train" and "out_dir" not in named and not case.get("yaml_out_dir"):
        argv.append(f"out_dir={tmp / 'out'}")
    if argv[0] == "run":
        argv += [
            f"{key}={tmp / folder}"
            for key, folder in (("out_dir", "results"), ("runs_dir", "runs"))
            if key not in named
        ]
    return argv


def finished_run(path: str, out: Path) -> None:
    """``out`` as ``alignlab train path`` leaves it when the run has finished: its resolved config
    (written by ``claim_out_dir``, as a run does), metrics, and ``summary.json`` written last."""
    cfg, method = resolve(path, [f"out_dir={out}"])
    _finish(cfg, method, path)


def finished_experiment(path: str, results: Path, runs: Path) -> None:
    """Every run of the experiment finished under ``runs``, and its resolved configs under ``results``
    as ``alignlab run`` writes them (step 2 of the runner)."""
    exp = load_experiment(path, [f"out_dir={results}", f"runs_dir={runs}"])
    atomic_write_yaml(results / "experiment.yaml", {**exp.data, "runs": [r.run_id for r in exp.runs]})
    for run in exp.runs:
        atomic_write_yaml(results / "configs" / f"{run.run_id}.yaml", run.data)
        _finish(run.cfg, run.method, path)


def _finish(cfg: RunConfig, method: Method, path: str) -> None:
    out = Path(cfg.out_dir)
    resolved = _resolved(cfg, build_task(cfg.task, path), method)
    assert claim_out_dir(out, resolved, False, path) is None  # a fresh directory: claimed, config.yaml written
    row = {"step": 2, "split": "eval", "eval_loss": 0.69}
    atomic_write_jsonl(out / "metrics.jsonl", [{"step": 1, "split": "train", "loss": 0.7}, row])
    atomic_write_json(out / "summary.json", {"method": method.name, "knobs": method.cfg.to_dict(), "final": row})


# ------------------------------------------------------------------------------------------ the corpus


def test_the_corpus_covers_every_kind_of_mistake_on_both_commands() -> None:
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)) >= 30
    counts = {category: sum(case["category"] == category for case in CASES) for category in CATEGORIES}
    assert set(counts) == {case["category"] for case in CASES} and min(counts.values()) >= 2, counts
    commands = {case["argv"][0] for case in CASES}
    assert {"train", "run"} <= commands
    with_overrides = [
        c for c in CASES if any("=" in a and not a.startswith(("out_dir", "runs_dir")) for a in c["argv"])
    ]
    assert {c["argv"][0] for c in with_overrides} >= {"train", "run"}
    for case in CASES:
        said = " ".join(case["expect"])
        assert re.search(r"\.yaml|\.jsonl|\.parquet|\.py|\.csv|models/|data/|command line|\$ALIGNLAB_", said), case[
            "id"
        ]  # a file, a setting
        if case["category"] == "unknown-objective":
            assert "did you mean" in said, case["id"]  # with a suggestion


def test_every_class_of_issue_19_has_three_cases() -> None:
    """Each class of faults outside the first corpus has at least three cases, each naming its class."""
    counts = {c: sum(case.get("class") == c for case in CASES) for c in CLASSES}
    assert min(counts.values()) >= 3, counts
    assert {case["class"] for case in CASES if "class" in case} == CLASSES


def test_every_fixture_is_used_by_a_case() -> None:
    """No broken file sits in the corpus untested: each YAML is a case's file, each data directory
    and model is named by one of them."""
    argv = {item for case in CASES for item in case["argv"]} | {
        path for case in CASES for path in (case.get("setup") or {}).values()
    }
    yamls = {str(p.relative_to(CORPUS)) for folder in ("train", "run") for p in (CORPUS / folder).glob("*.yaml")}
    named_by_yaml = {"run/malformed.yaml"}  # the parent of run/extends_malformed.yaml
    assert yamls - argv - named_by_yaml == set()
    said = "\n".join([*argv, *((CORPUS / y).read_text(encoding="latin-1") for y in yamls)])
    entries = [
        *(CORPUS / "data").iterdir(),
        *(CORPUS / "models").iterdir(),
        *(CORPUS / "plugins").glob("*.py"),
        *(CORPUS / "frontiers").iterdir(),
    ]
    for entry in entries:
        assert str(entry.relative_to(CORPUS)) in said, entry


ERRORS = [case for case in CASES if case.get("status", 2) == 2]
RUNS = [case for case in CASES if case.get("status", 2) == 0]


@pytest.mark.parametrize("case", ERRORS, ids=[case["id"] for case in ERRORS])
def test_bad_input_is_one_line_naming_the_file_and_key_with_status_2(
    case: dict[str, Any], in_corpus: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = in_corpus
    setup = {key: fill(value, tmp) for key, value in (case.get("setup") or {}).items()}
    owned = tmp / "owned"
    if "finished_run" in setup:
        finished_run(setup["finished_run"], owned)
    if "finished_experiment" in setup:
        finished_experiment(setup["finished_experiment"], owned / "results", owned / "runs")
    if "notes_dir" in setup:  # a user's directory
        Path(setup["notes_dir"]).mkdir(parents=True)
        (Path(setup["notes_dir"]) / "notes.txt").write_text("my notes\n")
    if "file" in setup:
        Path(setup["file"]).parent.mkdir(parents=True, exist_ok=True)
        Path(setup["file"]).write_text("a file, not a directory\n")
    for key, value in (case.get("env") or {}).items():
        monkeypatch.setenv(key, fill(value, tmp))
    before = digest(tmp)
    assert not ({"finished_run", "finished_experiment", "notes_dir"} & set(setup)) or len(before) >= 1

    with contextlib.ExitStack() as held:
        if "locked" in setup:  # as another process training that run holds it
            held.enter_context(training_lock(Path(setup["locked"]), "(test)"))
        code = main(command(case, tmp))

    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    *before_error, message = lines
    announced = [line for line in before_error if ANNOUNCEMENT.match(line)]
    assert len(announced) == (1 if case.get("progress") else 0), err
    assert all(ANNOUNCEMENT.match(line) or PROGRESS.match(line) for line in before_error), err  # nothing else
    assert message.startswith("alignlab: error: ")
    for text in case["expect"]:
        assert fill(text, tmp) in message, f"{text!r} not in {message!r}"
    after = digest(tmp)
    assert {k: v for k, v in after.items() if k in before} == before  # every byte there before, as it was
    if "notes_dir" in setup or "file" in setup or "locked" in setup:
        assert after == before  # and nothing written beside them


def record_encodings(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every batch of token ids the run scores (the scoring core's inputs, as the offline trainer
    and the reference cache hand them over) and every SFT packing, as (texts, blocks)."""
    from alignlab import sft
    from alignlab.train import data as train_data

    batches: list[tuple[Any, ...]] = []
    packs: list[tuple[Any, ...]] = []
    token_logps, score_pairs, pack = train_data.token_logps, train_data.score_pairs, sft.pack

    def recorded_token_logps(model: Any, input_ids: Any, attention_mask: Any, completion_mask: Any, **kw: Any) -> Any:
        batches.append((input_ids, attention_mask, completion_mask))
        return token_logps(model, input_ids, attention_mask, completion_mask, **kw)

    def recorded_score_pairs(model: Any, chosen: Any, rejected: Any, *args: Any, **kw: Any) -> Any:
        batches.extend((b.input_ids, b.attention_mask, b.completion_mask) for b in (chosen, rejected))
        return score_pairs(model, chosen, rejected, *args, **kw)

    def recorded_pack(tokenizer: Any, texts: list[str], n_tokens: int, seq_len: int) -> Any:
        blocks = pack(tokenizer, texts, n_tokens, seq_len)
        packs.append((texts, blocks))
        return blocks

    monkeypatch.setattr(train_data, "token_logps", recorded_token_logps)
    monkeypatch.setattr(train_data, "score_pairs", recorded_score_pairs)
    monkeypatch.setattr(sft, "pack", recorded_pack)
    return batches, packs


def special_ids_only_where_alignlab_puts_them(out: Path, batches: list[Any], packs: list[Any]) -> None:
    """In every scored row a special id is only alignlab's: BOS first, EOS last of the completion,
    padding where the attention mask is 0. In SFT packing the only special ids are the EOS that
    separate texts (at most one per text). The data of these cases spells every special token."""
    from transformers import AutoTokenizer

    from alignlab.encoding import special_ids

    (tokenizer_dir,) = sorted(out.glob("checkpoints/step-*"))[-1:]  # a checkpoint is the model with its tokenizer
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = special_ids(tokenizer)
    assert batches and packs
    for input_ids, attention, completion in batches:
        for ids, att, comp in zip(input_ids.tolist(), attention.tolist(), completion.tolist(), strict=True):
            last = max(i for i, c in enumerate(comp) if c)
            for i, (token, a) in enumerate(zip(ids, att, strict=True)):
                allowed = (
                    not a
                    or (i == 0 and token == tokenizer.bos_token_id)
                    or (i == last and token == tokenizer.eos_token_id)
                )
                assert token not in special or allowed, f"special id {token} at position {i} of {ids}"
    for texts, blocks in packs:
        found = [t for t in blocks.flatten().tolist() if t in special]
        assert set(found) <= {tokenizer.eos_token_id} and len(found) <= len(texts), found


CHECKS = {"special_ids_only_where_alignlab_puts_them": special_ids_only_where_alignlab_puts_them}


@pytest.mark.parametrize("case", RUNS, ids=[case["id"] for case in RUNS])
def test_faulty_input_that_is_not_an_error_runs_as_it_should(
    case: dict[str, Any], in_corpus: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corpus's cases with status 0: the command succeeds, and its check holds."""
    batches, packs = record_encodings(monkeypatch)
    assert main(command(case, in_corpus)) == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    CHECKS[case["check"]](in_corpus / "out", batches, packs)


# ------------------------------------------------------------------------------------------ beside the cases


def test_a_finished_run_is_recognised_and_left_as_it_was(in_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hand-made finished run of the owned-directory cases is what alignlab writes: the same YAML
    into it is a finished run, not trained again and not touched."""
    owned = in_corpus / "owned"
    finished_run("train/ok.yaml", owned)
    before = digest(owned)
    assert main(["train", "train/ok.yaml", f"out_dir={owned}"]) == 0
    assert "holds this run, finished; nothing to do" in capsys.readouterr().err
    assert digest(owned) == before


def test_nothing_is_written_before_an_experiment_that_cannot_start(
    in_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run directory held by another run stops `alignlab run` before it writes its resolved configs."""
    results, runs = in_corpus / "results", in_corpus / "runs"
    finished_experiment("run/ok.yaml", results / "first", runs)
    argv = ["run", "run/ok.yaml", "eval.seed=1", f"out_dir={results / 'second'}", f"runs_dir={runs}"]
    assert main(argv) == 2
    assert "holds a run with a different config than run 'dpo-beta0.1'" in capsys.readouterr().err
    assert not (results / "second").exists()


def test_debug_raises_the_error_with_its_traceback(in_corpus: Path) -> None:
    with pytest.raises(BadRowError) as info:
        main(["--debug", "train", "train/row_missing_text.yaml", f"out_dir={in_corpus / 'out'}"])
    shown = "".join(traceback.format_exception(info.value))
    assert shown.startswith("Traceback (most recent call last):")
    assert "BadRowError: imdb/train.jsonl: row 3: missing field: 'text'" in shown
    assert re.search(r'alignlab/cli\.py", line \d+, in main\b', shown)  # from the command line
    assert re.search(r'alignlab/tasks/base\.py", line \d+, in bad\b', shown)  # to where it was raised
    assert re.search(r'alignlab/tasks/base\.py", line \d+, in bad', shown)  # where it was raised


def test_the_real_exit_status_is_2_with_one_line(in_corpus: Path) -> None:
    """In a process of its own, as a user runs it: a case that trains a tokenizer, builds a model and
    saves it before the bad row, so any log line or progress bar on the way would show here: only
    alignlab's own progress lines (the stages it starts) come before the error."""
    env = {k: v for k, v in os.environ.items() if k != "ALIGNLAB_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", ALIGNLAB_CACHE_DIR=str(in_corpus / "cache"))
    argv = ["train", "train/prompt_too_long.yaml", f"out_dir={in_corpus / 'out'}"]
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", *argv], cwd=CORPUS, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    *before, line = proc.stderr.splitlines()
    assert before and all(PROGRESS.match(said) for said in before), proc.stderr
    assert "alignlab: tokenizer: training a 300-token BPE" in before[0]
    assert line.startswith("alignlab: error: hh-rlhf/harmless-base/train.jsonl: row 3: prompt too long: ")
    assert proc.stdout == ""  # no summary


def test_the_corpus_is_left_as_it_was(corpus_digest: dict[str, str]) -> None:
    """Runs last: no case wrote into, or changed, the corpus it ran in (nor left a run's default
    directories there, which a case without its out_dir would)."""
    assert digest(CORPUS) == corpus_digest
    assert not [p for p in ("runs", "results") if (CORPUS / p).exists()]
    assert not list(CORPUS.rglob("summary.json")) and not list(CORPUS.rglob("config.yaml"))
