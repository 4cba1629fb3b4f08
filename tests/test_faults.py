"""Faults outside the bad-input corpus (issue 19) that need more than one command line: real
signals and processes, permissions, and the rules behind the corpus's one-line errors checked on
every knob and by hand.

The processes run ``python -m alignlab.cli`` from the corpus directory on its tiny fixture data
(``tests/fixtures/bad_inputs/train/ok.yaml``: the smoke preset, no SFT), with their own cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from alignlab.cli import main
from alignlab.config import MAX_YAML_NODES, YAMLLimitError, parse_yaml
from alignlab.errors import ConfigError
from alignlab.objectives import LossOutput, ObjectiveError, PairedLogps, get_objective
from alignlab.ownership import MARKER, check_claimable, owned, remove_owned
from alignlab.schema import INT_LIMIT, SEED_BOUNDS, Config, field_bounds

CORPUS = Path(__file__).resolve().parent / "fixtures" / "bad_inputs"
OK = "train/ok.yaml"


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def env_for(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ALIGNLAB_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", ALIGNLAB_CACHE_DIR=str(cache), PYTHONDONTWRITEBYTECODE="1")
    return env


def start(argv: list[str], cache: Path, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "alignlab.cli", *argv],
        cwd=CORPUS,
        env=env_for(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def processes_naming(text: str) -> list[int]:
    """The pids whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def steps_of(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]


# ------------------------------------------------------------------------------------------ signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_train_checkpoints_says_how_to_resume_and_the_resumed_run_is_the_uninterrupted_one(
    tmp_path: Path, sig: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal lands mid-training: the step in progress finishes, its checkpoint is written, one
    line says how to resume, and the same command then ends where an uninterrupted run ends."""
    cache = tmp_path / "cache"
    argv = ["train", OK, "train.steps=120", "train.save_every=1000", "train.log_every=1000"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = start([*argv, f"out_dir={cut}"], cache)
    wait_for(lambda: (cut / "checkpoints" / "step-0000000").is_dir(), "the run to start training")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    (line,) = [line for line in err.splitlines() if line.startswith("alignlab: stopped")]
    prefix = f"alignlab: stopped by {sig.name} after step "
    assert line.startswith(prefix) and "Traceback" not in err, err
    step = int(line.removeprefix(prefix).split()[0])
    assert 0 < step < 120, line
    assert line.endswith(f"of 120; its checkpoint is in {cut / 'checkpoints'}: run the same command again to resume")
    assert (cut / "checkpoints" / f"step-{step:07d}" / "state.json").is_file()
    assert not (cut / "summary.json").exists()
    if sig == signal.SIGINT:
        return  # the same checkpoint as SIGTERM's: resuming it is checked once

    again = start([*argv, f"out_dir={cut}"], cache)
    assert again.wait(timeout=300) == 0
    assert steps_of(cut) == list(range(1, 121))  # each step once, in order
    monkeypatch.chdir(CORPUS)  # the uninterrupted run, in this process (a fresh one costs startup)
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(cache))
    assert main([*argv, f"out_dir={whole}"]) == 0

    def final(out: Path) -> dict[str, Any]:
        row = json.loads((out / "summary.json").read_text())["final"]
        return {k: v for k, v in row.items() if not k.endswith("_s")}

    assert final(cut) == final(whole)


def test_a_second_train_on_the_same_out_dir_is_refused_while_the_first_trains(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["train", OK, "train.steps=100000", "train.save_every=100000", f"out_dir={out}"]
    first = start(argv, cache)
    try:
        wait_for(lambda: (out / "checkpoints" / "step-0000000").is_dir(), "the first process to train")
        before = digest(out / "checkpoints")
        second = start(argv, cache)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        assert err.splitlines() == [
            f"alignlab: error: command line: out_dir={out}: {out} is in use: another alignlab process is training "
            "this run; wait for it to finish (or stop it), or pick another directory"
        ]
        assert digest(out / "checkpoints") == before
        assert first.poll() is None  # the first one trains on
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)


def _run_workers(tmp_path: Path, cache: Path) -> tuple[subprocess.Popen[str], list[str]]:
    results = tmp_path / "results"
    argv = ["run", "run/ok.yaml", "train.steps=100000", "train.save_every=100000", f"out_dir={results}"]
    argv += [f"runs_dir={tmp_path / 'runs'}", "--workers", "8"]
    proc = start(argv, cache, start_new_session=True)
    runs = tmp_path / "runs"
    wait_for(
        lambda: len(list(runs.glob("*/checkpoints/step-0000000"))) >= 2 and len(processes_naming(str(results))) >= 3,
        "two workers training",
        timeout=180,
    )
    return proc, argv


def test_sigterm_to_run_with_workers_stops_every_worker_and_workers_are_capped(tmp_path: Path) -> None:
    """run/ok.yaml has 3 runs: --workers 8 starts 3. SIGTERM to the parent alone stops them all,
    each after checkpointing its step."""
    cache, results = tmp_path / "cache", tmp_path / "results"
    proc, _ = _run_workers(tmp_path, cache)
    workers = [p for p in processes_naming(str(results)) if p != proc.pid]
    assert len(workers) == 3  # capped at the pending runs, not 8
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    # each of the 3 workers, then the parent (counted in the text: the workers share one stderr)
    assert err.count("alignlab: stopped by SIGTERM") == 4, err
    assert err.count("alignlab: stopped by SIGTERM after step") >= 2, err  # those training checkpointed their step
    wait_for(lambda: not processes_naming(str(results)), "the workers to exit", timeout=30)


@pytest.mark.parametrize("trainer", ["offline", "online"])
def test_a_signal_during_step_0s_evaluation_checkpoints_step_0(tmp_path: Path, trainer: str) -> None:
    """A signal that arrives while a new run evaluates step 0 waits for that evaluation, then the
    run checkpoints step 0 and says so (the test above waits for step 0's checkpoint and then
    signals: a run must be inside its step boundaries from that checkpoint on)."""
    from conftest import tiny_gpt2

    from alignlab import interrupts
    from alignlab.interrupts import Interrupted
    from alignlab.sft import lm_nll
    from alignlab.train.config import TrainConfig
    from alignlab.train.loop import make_accelerator

    out = tmp_path / "run"
    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=0, save_every=100, log_with=[], progress=False)
    evaluated: list[int] = []

    def evaluate(policy: torch.nn.Module) -> dict[str, float]:
        evaluated.append(len(evaluated))
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, in the middle of the evaluation
        time.sleep(0.05)
        return {"probe": 1.0}

    with interrupts.installed(), pytest.raises(Interrupted) as stopped:
        if trainer == "offline":
            from alignlab.train.offline import train_offline

            data = torch.randint(0, 64, (8, 6), generator=torch.Generator().manual_seed(0))

            def step(m: torch.nn.Module, rows: list[int]) -> LossOutput:
                return LossOutput(torch.stack([lm_nll(m, data[[r]]) for r in rows]), {})

            train_offline(tiny_gpt2(), step, len(data), cfg, out, make_accelerator(cfg, out), evaluate=evaluate)
        else:
            import copy

            from test_online_methods import tokenizer_and_gpt2

            from alignlab.objectives import get_objective
            from alignlab.train.online import train_online
            from alignlab.train.online_batches import PolicyAndValue, RolloutConfig, Settings

            texts = ["the film was a delight", "a boring plot", "what a cast", "i hated it"]
            tokenizer, start = tokenizer_and_gpt2(texts)
            grpo = get_objective("grpo")
            assert grpo.needs.online is not None
            s = Settings.resolve(RolloutConfig(max_new_tokens=4), grpo.needs.online)
            length = lambda prompts, completions: torch.tensor([float(len(c)) for c in completions])  # noqa: E731
            core = PolicyAndValue(copy.deepcopy(start), temperature=1.0)
            cfg = dataclasses.replace(cfg, batch_size=8)
            train_online(
                core, start, tokenizer, texts, length, grpo, grpo.config(), s, cfg, out, make_accelerator(cfg, out),
                evaluate=evaluate,
            )  # fmt: skip
    assert "after step 0 of 4" in str(stopped.value) and stopped.value.exit_status == 143
    assert evaluated == [0]  # the evaluation finished; no step ran
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-0000000"]


def test_workers_stop_when_run_is_killed(tmp_path: Path) -> None:
    """SIGKILL cannot be caught by the parent; its workers notice it is gone and stop themselves."""
    cache, results = tmp_path / "cache", tmp_path / "results"
    proc, _ = _run_workers(tmp_path, cache)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not processes_naming(str(results)), "orphaned workers to stop", timeout=60)
    assert list((tmp_path / "runs").glob("*/checkpoints/step-*"))  # each saved what it had


def test_workers_are_capped_at_the_pending_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No worker process is started for runs that are finished: with one pending run, none at all."""
    from alignlab.experiment import runner

    spawned: list[int] = []
    monkeypatch.setattr(runner, "_spawn_workers", lambda path, overrides, n: spawned.append(n))
    monkeypatch.setattr(runner, "_work", lambda exp: None)
    monkeypatch.setattr(runner, "collect", lambda exp, draw=True: {})
    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))
    argv = [f"out_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}"]
    runner.run_experiment("run/ok.yaml", argv, workers=8)
    runner.run_experiment("run/ok.yaml", [*argv, "methods=[{name: ipo}]"], workers=8)
    assert spawned == [3]  # 3 runs: 3 workers; 1 run: trained in this process


# ------------------------------------------------------------------------------------------ permissions


def _without_root_override() -> list[str]:
    """A command prefix that runs without root's override of file permissions: as root, with
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from the bounding set (``setpriv``); as any
    other user, nothing. Skips where neither works."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "import alignlab"], capture_output=True)
    except OSError:
        pytest.skip("setpriv is not installed: cannot drop root's override of permissions")
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop root's capabilities here: {probe.stderr.decode()[-200:]}")
    return prefix


@pytest.mark.parametrize(
    "what",
    ["out_dir", "results", "cache"],
)
def test_an_unwritable_directory_is_one_line_before_any_work(tmp_path: Path, what: str) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    for p in (tmp_path, home):
        p.chmod(0o777)
    locked.chmod(0o555)  # nobody may write here (the test's user included, unless root)
    prefix = _without_root_override()
    cache = locked / "cache" if what == "cache" else home / "cache"
    if what == "results":
        argv = ["run", "run/ok.yaml", f"out_dir={locked / 'results'}", f"runs_dir={home / 'runs'}"]
        expected = f"command line: out_dir={locked / 'results'}: {locked / 'results'}: permission denied"
    else:
        out = locked / "out" if what == "out_dir" else home / "out"
        argv = ["train", OK, f"out_dir={out}"]
        expected = (
            f"command line: out_dir={out}: {out}: permission denied"  # the argument that named it
            if what == "out_dir"
            else f"$ALIGNLAB_CACHE_DIR: {cache}: permission denied"
        )
    env = {**env_for(cache), "HOME": str(home)}
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "alignlab.cli", *argv], cwd=CORPUS, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"alignlab: error: {expected}, alignlab cannot write there"), line
    assert not any(home.glob("out*")) and not (home / "runs").exists()  # nothing started


# ------------------------------------------------------------------------------------------ not ours


def test_force_removes_only_what_alignlab_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished run with a user's notes.txt inside: --force retrains it, and notes.txt stays."""
    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", OK, f"out_dir={out}"]) == 0
    assert (out / MARKER).is_file() and owned(out, "run")
    (out / "notes.txt").write_text("mine\n")
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(b"\x89PNG mine")
    first = (out / "summary.json").read_bytes()
    assert main(["train", "--force", OK, f"out_dir={out}"]) == 0
    assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / "plots" / "loss.png").read_bytes() == b"\x89PNG mine"
    assert (out / "summary.json").read_bytes() != first  # trained again (its wall time differs)


def test_the_working_directory_is_never_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "model.py").write_text("print('mine')\n")
    (work / "config.yaml").write_text("lr: 0.1\n")  # a config.yaml, but not an alignlab run's
    before = digest(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))
    for out in (".", str(work), "./", "src/.."):
        assert main(["train", "--force", str(CORPUS / OK), f"out_dir={out}"]) == 2
    assert digest(work) == before


def test_ownership_by_hand(tmp_path: Path) -> None:
    """missing / empty: claimable; a user's files: refused; an old alignlab run (a resolved
    config.yaml beside its metrics or checkpoints) or results directory (experiment.yaml listing its
    runs, each config in configs/): alignlab's; a user's YAMLs of the same names are not; kinds do not
    mix; --force removes only a run's own names, links removed and never followed, the marker last."""
    assert owned(tmp_path / "missing", "run")
    (tmp_path / "empty").mkdir()
    assert owned(tmp_path / "empty", "run")
    resolved = "".join(
        f"{k}: {{}}\n" for k in ("task", "model", "sft", "data", "reward", "objective", "train", "rollout", "eval")
    )
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    (old_run / "config.yaml").write_text(resolved + "plugins: []\nout_dir: x\n")
    assert not owned(old_run, "run")  # a config.yaml alone, even a resolved one, may be the user's
    (old_run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert owned(old_run, "run") and not owned(old_run, "results")
    users_run = tmp_path / "users_run"
    users_run.mkdir()
    (users_run / "config.yaml").write_text("task: {}\nmodel: {}\nobjective: {}\ntrain: {}\nout_dir: x\n")
    (users_run / "metrics.jsonl").write_text("mine\n")
    assert not owned(users_run, "run")  # the user's own run YAML: not resolved by alignlab
    old_results = tmp_path / "old_results"
    (old_results / "configs").mkdir(parents=True)
    (old_results / "experiment.yaml").write_text("name: x\nruns: [a, b]\n")
    (old_results / "configs" / "a.yaml").write_text("{}\n")
    assert not owned(old_results, "results")  # run b's config is missing
    (old_results / "configs" / "b.yaml").write_text("{}\n")
    assert owned(old_results, "results") and not owned(old_results, "run")
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "experiment.yaml").write_text("name: x\nmethods: [{name: dpo}]\n")
    assert not owned(project, "results")  # a user's experiment and its configs/ folder
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.yaml").write_text("lr: 0.1\n")
    assert not owned(user, "run")
    with pytest.raises(ConfigError, match="holds files alignlab did not write"):
        check_claimable(user, "run", "out_dir")
    with pytest.raises(ConfigError, match="holds files alignlab did not write"):
        check_claimable(user / "new" / "..", "run", "out_dir")  # not a new directory: `user` itself
    (old_run / MARKER).write_text('{"written_by": "alignlab", "kind": "run"}')
    (old_run / "checkpoints").mkdir()
    for name in ("notes.txt", "damaged-notes.txt", "notes.txt.sha256", ".notes.txt.ab12.tmp"):
        (old_run / name).write_text("mine")
    for name in (".metrics.jsonl.ab12.tmp", "damaged-summary.json", "damaged-2-metrics.jsonl"):
        (old_run / name).write_text("alignlab's")
    link_target = tmp_path / "elsewhere"
    link_target.mkdir()
    (link_target / "keep.txt").write_text("x")
    (old_run / "alignlab").symlink_to(link_target)
    kept = [".notes.txt.ab12.tmp", "damaged-notes.txt", "notes.txt", "notes.txt.sha256"]
    assert remove_owned(old_run) == kept
    assert sorted(p.name for p in old_run.iterdir()) == kept
    assert (link_target / "keep.txt").read_text() == "x"  # a link is removed, never followed


# ------------------------------------------------------------------------------------------ values


def _config_classes() -> list[type[Config]]:
    import importlib
    import pkgutil

    import alignlab

    for info in pkgutil.walk_packages(alignlab.__path__, "alignlab."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found: list[type[Config]] = []
    todo = [Config]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.append(sub)
                todo.append(sub)
    return found


def _numeric_fields() -> list[tuple[type[Config], dataclasses.Field[Any], type]]:
    out = []
    for cls in _config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            options = typing.get_args(hints[f.name]) or (hints[f.name],)
            for number in (float, int):
                if number in options:
                    out.append((cls, f, number))
    return out


def _required(cls: type[Config]) -> dict[str, Any]:
    """Values for the keys ``cls`` requires (a task's name), so that one other key can be tried."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else ()
            values[f.name] = choices[0] if choices else "x"
    return values


def test_every_float_knob_refuses_non_finite_values() -> None:
    fields = [(c, f) for c, f, t in _numeric_fields() if t is float]
    assert len(fields) > 40
    for cls, f in fields:
        in_list = typing.get_origin(typing.get_type_hints(cls)[f.name]) is list
        for bad in (float("inf"), float("-inf"), float("nan"), "1e400"):
            with pytest.raises(ConfigError) as info:
                cls.from_dict({**_required(cls), f.name: [1.0, bad] if in_list else bad}, "x.yaml")
            assert info.value.key == f.name and "must be a finite number" in info.value.message, (cls, f.name)


def test_every_int_knob_has_its_range() -> None:
    """Within int64 always; seeds in numpy's [0, 2**32); and every int knob bounded below."""
    fields = [(c, f) for c, f, t in _numeric_fields() if t is int]
    assert len(fields) > 40
    for cls, f in fields:
        with pytest.raises(ConfigError, match=f"^x.yaml: {f.name}: "):
            cls.from_dict({**_required(cls), f.name: INT_LIMIT}, "x.yaml")
        assert {"ge", "gt"} & set(field_bounds(f)), f"{cls.__name__}.{f.name} has no lower bound"
        if f.name == "seed" or f.name.endswith("_seed"):
            assert field_bounds(f) == SEED_BOUNDS, f"{cls.__name__}.{f.name}"
            for bad in (-1, 2**32):
                with pytest.raises(ConfigError, match=f"{f.name}: must be"):
                    cls.from_dict({**_required(cls), f.name: bad})
            cls.from_dict({**_required(cls), f.name: 2**32 - 1})


def test_duplicate_keys_name_both_lines_and_merge_keys_still_override() -> None:
    with pytest.raises(YAMLLimitError, match=r"duplicate key 'b' on lines 2 and 4"):
        parse_yaml("a: 1\nb: 2\nc: 3\nb: 4\n")
    with pytest.raises(YAMLLimitError, match=r"duplicate key 'x' on lines 1 and 1"):
        parse_yaml("{x: 1, x: 2}\n")
    assert parse_yaml("base: &b {x: 1, y: 2}\nrun: {<<: *b, x: 3}\n")["run"] == {"x": 3, "y": 2}
    assert parse_yaml("a: [1, 1]\nb: {c: 1}\nd: {c: 1}\n") == {"a": [1, 1], "b": {"c": 1}, "d": {"c": 1}}


def test_an_alias_bomb_is_refused_with_bounded_memory() -> None:
    """Ten levels of nine aliases each: 9**10 values once expanded. Refused from the node graph,
    in a few MB, whatever the depth."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    tracemalloc.start()
    try:
        with pytest.raises(YAMLLimitError, match="expands to more than"):
            parse_yaml("\n".join(lines) + "\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    small = "\n".join(lines[:3]) + "\n"  # 9**3 values: a legitimate use of aliases
    assert len(parse_yaml(small)["a2"]) == 9 and MAX_YAML_NODES > 9**3
    with pytest.raises(YAMLLimitError, match="contains it"):
        parse_yaml("a: &a [1, *a]\n")
    with pytest.raises(YAMLLimitError, match="nested more than"):
        parse_yaml("[" * 200 + "]" * 200)


# ------------------------------------------------------------------------------------------ plugin contract


def _pairs(requires_grad: bool) -> PairedLogps:
    policy = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64, requires_grad=requires_grad)
    ones = torch.ones(3)
    return PairedLogps(policy, policy - 1, ones, ones, torch.zeros(3, dtype=torch.float64), torch.zeros(3))


def test_built_in_objectives_keep_the_contract_and_a_broken_output_is_named() -> None:
    dpo = get_objective("dpo")
    out = dpo(_pairs(True))
    assert out.losses.shape == (3,) and out.losses.requires_grad
    from alignlab.objectives.registry import check_output

    for bad, said in [
        (LossOutput(out.losses.mean()), "shape (); it must hold one loss per example, shape (3,)"),
        (LossOutput(out.losses[:, None] + out.losses[None, :]), "shape (3, 3)"),
        ((out.losses, {}), "returned a tuple, not a LossOutput"),
        (out.losses, "returned a tensor of shape (3,), not a LossOutput"),
        (LossOutput(out.losses.detach()), "has no graph"),
        (LossOutput(out.losses, {"margins": torch.zeros(2)}), "metric 'margins' is a tensor of shape (2,)"),
        (LossOutput(torch.ones(3, dtype=torch.long)), "LossOutput.losses is a tensor of shape (3,) of torch.int64"),
    ]:
        with pytest.raises(ObjectiveError) as info:
            check_output(dpo, bad, _pairs(True))
        assert said in str(info.value) and "objective 'dpo'" in str(info.value)
    check_output(dpo, LossOutput(out.losses.detach()), _pairs(False))  # no graph needed without one


# ------------------------------------------------------------------------------------------ divergence


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_learning_rate_that_overflows_the_weights_saves_no_broken_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """lr = 1e39 is finite, so a valid setting, but one AdamW step puts the float32 weights at ±inf.
    The run stops with one line; every checkpoint left holds finite weights; metrics.jsonl is JSON."""
    from safetensors.torch import load_file

    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["train", OK, "train.lr=1e39", "train.steps=6", "train.save_every=1", f"out_dir={out}"]
    assert main(argv) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("alignlab: error")]
    assert line.startswith("alignlab: error: after step 1: the weights are no longer finite"), line
    weights = sorted(out.glob("checkpoints/step-*/*.safetensors"))
    assert weights and all(torch.isfinite(t).all() for w in weights for t in load_file(str(w)).values())
    for row in (out / "metrics.jsonl").read_text().splitlines():
        _strict_json(row)


def test_json_results_are_strict_json() -> None:
    """NaN and ±inf (an evaluation of a diverged model) are written as null, not as NaN/Infinity."""
    from alignlab.io import atomic_write_json, atomic_write_jsonl, finite

    assert finite({"a": [1.0, float("nan"), (float("inf"), 2)], "b": "x", "c": 3}) == {
        "a": [1.0, None, [None, 2]],
        "b": "x",
        "c": 3,
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        atomic_write_jsonl(Path(tmp) / "m.jsonl", [{"loss": float("nan"), "step": 1}])
        atomic_write_json(Path(tmp) / "s.json", {"final": {"kl": float("-inf")}})
        assert _strict_json((Path(tmp) / "m.jsonl").read_text()) == {"loss": None, "step": 1}
        assert _strict_json((Path(tmp) / "s.json").read_text()) == {"final": {"kl": None}}


def test_a_damaged_winrate_file_of_an_unfinished_run_is_judged_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """winrate.json is read back by a resumed run; a damaged one is moved aside (kept) and judged anew."""
    from alignlab.jobs import evaluation
    from alignlab.jobs.job import resolve

    class JudgedAgain(Exception):
        pass

    def judge_again(*args: Any, **kwargs: Any) -> Any:
        raise JudgedAgain

    monkeypatch.setattr(evaluation, "model_context", lambda model: 64)
    monkeypatch.setattr(evaluation, "eval_prompts", judge_again)
    cfg, _ = resolve(CORPUS / "train" / "text_special_tokens_hh.yaml", ["eval.winrate.temperatures=[0.0]"])
    (tmp_path / "winrate.json").write_text('[{"temperature": 0.0, "win_ra')
    with pytest.raises(JudgedAgain):
        evaluation.win_rate_rows(
            cfg, None, type("Policy", (), {"model": None, "tokenizer": None})(), None, {}, tmp_path, None
        )
    assert (tmp_path / "damaged-winrate.json").read_text() == '[{"temperature": 0.0, "win_ra'
    assert not (tmp_path / "winrate.json").exists()


def test_results_left_half_written_by_a_killed_writer_are_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A process killed inside write_csv leaves .frontier.csv.<random>.tmp in the results directory;
    the next collect, holding the results directory's lock, removes it (and nothing of the user's)."""
    from alignlab.experiment import runner
    from alignlab.experiment.config import load_experiment

    monkeypatch.chdir(CORPUS)
    exp = load_experiment("run/ok.yaml", [f"out_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}"])
    exp.out_dir.mkdir(parents=True)
    (exp.out_dir / ".frontier.csv.k1ll3d.tmp").write_text("experiment,method\nhalf")
    (exp.out_dir / "my_notes.tmp").write_text("mine")
    runner.collect(exp, draw=False)
    assert sorted(p.name for p in exp.out_dir.iterdir()) == ["frontier.csv", "my_notes.tmp"]


def test_a_stop_request_is_no_exception_a_loader_could_swallow() -> None:
    """Interrupted passes every `except Exception` on its way (a loader taking any error for a
    damaged file would set a good checkpoint aside and train on)."""
    from alignlab.interrupts import Interrupted

    assert issubclass(Interrupted, BaseException) and not issubclass(Interrupted, Exception)
    with pytest.raises(Interrupted):
        try:
            raise Interrupted("SIGTERM")
        except Exception:
            pytest.fail("caught as an Exception")


def test_the_same_run_under_another_spelling_of_its_out_dir_is_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("ALIGNLAB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["train", OK, f"out_dir={tmp_path / 'run'}"]) == 0
    before = digest(tmp_path / "run")
    capsys.readouterr()
    for spelling in (f"{tmp_path / 'run'}/", f"{tmp_path}/x/../run", os.path.relpath(tmp_path / "run")):
        assert main(["train", OK, f"out_dir={spelling}"]) == 0
        assert "holds this run, finished; nothing to do" in capsys.readouterr().err
    assert digest(tmp_path / "run") == before


def test_yaml_1_1_booleans_are_the_choices_they_spell_and_numbers_parse_in_linear_time() -> None:
    from alignlab.run_config import RunConfig

    assert RunConfig.from_dict(parse_yaml("train: {mixed_precision: no}")).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match=r"train\.optimizer: expected 'rmsprop' \| 'adamw', got True"):
        RunConfig.from_dict({"objective": {"name": "ipo"}, "train": {"optimizer": True}})
    start = time.process_time()
    with pytest.raises(ConfigError, match=r"train\.lr: expected float"):
        RunConfig.from_dict({"train": {"lr": "1" * 200_000 + "x"}})
    assert time.process_time() - start < 5  # the old pattern backtracked for hours on this


def test_a_wait_for_a_lock_another_process_holds_is_said_not_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A stage whose cache entry another process is building waits for its lock: one line says so (a
    silent wait on a stopped process looked like a hang); an uncontended lock says nothing."""
    import threading

    from alignlab.io import file_lock

    lock = tmp_path / "entry.lock"
    with file_lock(lock):
        pass
    assert capsys.readouterr().err == ""
    got: list[bool] = []
    with file_lock(lock):
        waiter = threading.Thread(target=lambda: got.append(file_lock(lock).__enter__()))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and got == []  # it waits while the lock is held
    waiter.join(timeout=10)
    assert got == [True]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"alignlab: waiting for {lock}: another alignlab process holds it")


def test_a_run_written_before_a_knob_existed_is_the_same_run_at_that_knobs_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory whose config.yaml lacks a knob added to alignlab since (e.g. a new rollout setting)
    holds the same run when this run has that knob at its default; a missing knob set to anything else,
    or a changed value, is another run."""
    import yaml

    from alignlab.jobs.job import _resolved, holds_other_run, resolve
    from alignlab.tasks import build_task

    monkeypatch.chdir(CORPUS)  # ok.yaml's data directory is relative to the corpus
    cfg, method = resolve(OK, [])
    resolved = _resolved(cfg, build_task(cfg.task, OK), method)
    out = tmp_path / "run"
    out.mkdir()

    def held(drop: str, **change: Any) -> bool:
        old = json.loads(json.dumps(resolved))
        section, key = drop.split(".")
        del old[section][key]  # as written by an alignlab before the knob
        (out / "config.yaml").write_text(yaml.safe_dump(old))
        mine = json.loads(json.dumps(resolved))
        for dotted, value in change.items():
            s, k = dotted.split("__")
            mine[s][k] = value
        return holds_other_run(out, mine)

    from alignlab.run_config import RunConfig

    default = RunConfig()
    assert resolved["rollout"]["kl_estimator"] == default.rollout.kl_estimator  # ok.yaml leaves both at their defaults
    assert resolved["train"]["eval_points"] == default.train.eval_points
    assert not held("rollout.kl_estimator")  # the new knob at its default: the same run
    assert not held("train.eval_points")
    assert held("rollout.kl_estimator", rollout__kl_estimator="k3")  # the new knob set: another run
    assert held("train.eval_points", train__lr=resolved["train"]["lr"] * 2)  # another value changed
