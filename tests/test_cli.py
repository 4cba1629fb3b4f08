"""The command line: `alignlab objectives`, `alignlab train`, and one-line errors with exit status 2."""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alignlab.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "alignlab", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_objectives_lists_every_builtin_with_knobs_needs_and_citations(capsys):
    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("20 objectives")
    offline = ["dpo", "ipo", "cdpo", "rdpo", "kto", "orpo", "simpo", "slic", "sft", "unlikelihood"]
    margin = ["madpo", "odpo", "dpop", "beta_dpo"]
    for name in [*offline, *margin, "ppo", "rloo", "grpo", "online_dpo", "iterative_dpo", "best_of_n"]:
        assert re.search(rf"^{name}\b", out, re.MULTILINE), name
    assert "beta: float = 0.1" in out and "length_normalized: bool = False" in out
    assert "needs:    reference-free, paired, token-level" in out  # unlikelihood
    assert "Rafailov et al. 2023, Direct Preference Optimization, Eq. 7" in out
    # the margin-aware four, with their knobs and what they need
    assert "c_max: float = 2.0" in out and "offset: 'log' | 'identity' | 'log_ratio' = 'log'" in out
    assert "lam: float = 50.0" in out and "rho: float = 0.2" in out
    assert "needs:    reference, paired, scores" in out and "needs:    reference, paired, stateful" in out
    assert "needs:    reference, online, grpo advantages" in out and "needs:    reference, online, ranked pairs" in out


def test_objectives_with_a_plugin_file(tmp_path, capsys):
    plugin = REPO / "examples" / "adding_a_loss" / "my_losses.py"
    assert main(["objectives", "--plugin", str(plugin), "--names-only"]) == 0
    assert "ln_dpo" in capsys.readouterr().out.split()


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ("objective: {name: dpoo}\n", r"unknown objective 'dpoo'; did you mean 'dpo'\?"),
        (
            "objective: {name: dpo, betta: 1}\n",
            r"exp.yaml: objective.betta: unknown key; did you mean 'beta'\?",
        ),
        ("objective: {name: dpo, beta: -1}\n", r"exp.yaml: objective.beta: must be > 0, got -1"),
        ("objective: {name: dpo}\ntrain: {stpes: 3}\n", r"exp.yaml: train.stpes: unknown key; did you mean 'steps'\?"),
        ("objective: {name: dpo}\ntrain: {steps: many}\n", r"exp.yaml: train.steps: expected int, got 'many'"),
        ("objective: [dpo\n", r"exp.yaml: line 2, column 1: malformed YAML"),
        ("objective: {name: dpo}\ntrain: {batch_size: 10, grad_accum: 3}\n", r"exp.yaml: train.batch_size: 10 is not"),
        ("plugins: [missing.py]\n", r"plugins: no such file 'missing.py'"),
        ("- just\n- a list\n", r"exp.yaml: \(top level\): expected a mapping"),
    ],
)
def test_bad_yaml_is_one_line_and_exit_2(tmp_path, capsys, yaml_text, expected):
    path = write(tmp_path, yaml_text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(expected, err), err


def test_missing_file_and_bad_override(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err
    path = write(tmp_path, "objective: {name: dpo}\n")
    assert main(["train", str(path), "steps"]) == 2
    assert "an override must look like key.sub=value" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    path = write(tmp_path, "objective: {name: dpoo}\n")
    proc = run_cli("--debug", "train", str(path))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "UnknownObjectiveError" in proc.stderr


def test_offline_hub_without_data_dir_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ALIGNLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write(tmp_path, f"objective: {{name: dpo}}\nout_dir: {tmp_path / 'out'}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the Hub is offline" in err and "ALIGNLAB_DATA_DIR" in err


# ------------------------------------------------------------------------ no data directory, no Hub (issue 18)


@pytest.fixture
def no_data_dir(monkeypatch: pytest.MonkeyPatch):
    """No data directory and no variable that turns the Hub off: alignlab has to find out about the Hub."""
    from alignlab import data

    monkeypatch.delenv("ALIGNLAB_DATA_DIR", raising=False)
    for name in data.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(data, "HUB_PROBE_TIMEOUT_S", 1.0)
    data._probe.cache_clear()
    yield data
    data._probe.cache_clear()


@contextlib.contextmanager
def hub_at(answer: bool):
    """A fake Hub endpoint on this machine: one that answers every request with 404, or one that
    accepts connections and never answers (as a Hub behind a dead network route hangs)."""
    if answer:
        server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
        return
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def _train_without_data(tmp_path: Path, capsys) -> tuple[int, float, list[str]]:
    path = write(tmp_path, f"objective: {{name: dpo}}\nout_dir: {tmp_path / 'out'}\n")
    t0 = time.monotonic()
    code = main(["train", str(path)])
    return code, time.monotonic() - t0, capsys.readouterr().err.splitlines()


def test_an_unreachable_hub_is_one_line_at_once_not_half_a_minute_of_retries(
    no_data_dir, tmp_path, monkeypatch, capsys
):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub's own client was called"))
    with hub_at(answer=False) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        code, seconds, err = _train_without_data(tmp_path, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("alignlab: error: no data directory is set and the Hugging Face Hub")
    assert f"({endpoint}) cannot be reached (no answer within 1 s), so stanfordnlp/imdb[train]" in err[0]
    assert "ALIGNLAB_DATA_DIR" in err[0]
    assert seconds < 20  # a 1 s probe, not the Hub clients' 35-50 s of retries (they were never called)


def test_a_refused_connection_and_each_offline_variable_are_said_at_once(no_data_dir, tmp_path, monkeypatch, capsys):
    with hub_at(answer=False) as endpoint:  # bound, then closed: nothing listens there any more
        pass
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    code, _, err = _train_without_data(tmp_path, capsys)
    assert code == 2 and f"({endpoint}) cannot be reached (" in err[-1] and "refused" in err[-1], err
    for name in no_data_dir.OFFLINE_ENV:
        with monkeypatch.context() as env:
            env.setenv(name, "true")
            code, _, err = _train_without_data(tmp_path, capsys)
        assert code == 2 and f"no data directory is set and the Hub is offline ({name}=true)" in err[-1], err


def test_a_reachable_hub_is_announced_before_the_download(no_data_dir, tmp_path, monkeypatch, capsys):
    import datasets

    def load_dataset(*args, **kwargs):
        raise ConnectionError("the download failed")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with hub_at(answer=True) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        code, _, err = _train_without_data(tmp_path, capsys)
    assert code == 2
    assert err[-2] == (
        f"alignlab: no data directory is set: reading stanfordnlp/imdb[train] from the Hugging Face Hub ({endpoint})"
    )
    assert err[-1].startswith("alignlab: error: could not load stanfordnlp/imdb[train]")


def readme_block(title: str) -> str:
    """The fenced code block that follows the README line ``title``."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(title) :]
    return re.search(r"```\w*\n(.*?)```", after, re.DOTALL).group(1)


def test_readme_worked_example_is_the_shipped_files():
    example = REPO / "examples" / "adding_a_loss"
    assert readme_block("`examples/adding_a_loss/my_losses.py`") == (example / "my_losses.py").read_text()
    assert readme_block("`examples/adding_a_loss/experiment.yaml`") == (example / "experiment.yaml").read_text()


def test_readme_algorithm_example_is_the_shipped_files():
    example = REPO / "examples" / "adding_an_algorithm"
    assert readme_block("`examples/adding_an_algorithm/my_algorithm.py`") == (example / "my_algorithm.py").read_text()
    assert readme_block("`examples/adding_an_algorithm/experiment.yaml`") == (example / "experiment.yaml").read_text()


def test_readme_algorithm_example_runs_and_raises_the_gold_reward(data_dir, tmp_path):
    """The README's RAFT plugin, as written (only out_dir redirected): found by name, trained through the
    shared online iteration (4 samples per prompt, the best one fine-tuned on), and the gold reward of its
    samples on held-out prompts rises over π_ref's."""
    assert "\nalignlab train examples/adding_an_algorithm/experiment.yaml\n" in (REPO / "README.md").read_text()
    out = tmp_path / "raft"
    proc = run_cli("train", "examples/adding_an_algorithm/experiment.yaml", f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "raft" and summary["knobs"] == {"length_normalized": True}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = [r for r in rows if r["split"] == "train"]
    assert len(iterations) == 8 and all(r["pairs"] == 16 - r["ties"] and "best_logps" in r for r in iterations)
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 4, 8]
    assert evals[-1]["sample_reward"] > evals[0]["sample_reward"] + 0.1, evals


def test_readme_worked_example_runs_and_learns(data_dir, tmp_path):
    """The README's command, as written (only out_dir redirected): the plugin's loss is found by
    name, trains, and its own held-out signal improves — loss below log 2, margins above 0."""
    command = readme_block("Then run it:").strip().splitlines()[-1]
    assert command == "alignlab train examples/adding_a_loss/experiment.yaml"
    out = tmp_path / "ln_dpo"
    proc = run_cli("train", "examples/adding_a_loss/experiment.yaml", f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "ln_dpo" and summary["knobs"] == {"beta": 1.0}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # π = π_ref at step 0
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.005
    assert evals[-1]["eval_margins"] > 0.01
    assert summary["final"] == evals[-1]
    resolved = (out / "config.yaml").read_text()
    assert "name: ln_dpo" in resolved and "beta: 1.0" in resolved

    # a finished run is not trained again, nor overwritten
    before = (out / "summary.json").read_text()
    again = run_cli("train", "examples/adding_a_loss/experiment.yaml", f"out_dir={out}")
    assert again.returncode == 0 and "holds this run, finished" in again.stderr
    assert (out / "summary.json").read_text() == before
