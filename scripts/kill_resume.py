"""Kill and resume: an experiment killed with SIGKILL at many moments ends exactly where an uninterrupted one ends.

    python scripts/kill_resume.py --work /tmp/kill_resume [--seed 0] [--kills 12] [--max-rounds 4]

1. A small sweep (smoke preset, IMDb, DPO and PPO-GT at two settings each, generated pairs, a few
   steps, evaluations and checkpoints) runs uninterrupted with ``alignlab run`` in a fresh cache:
   the reference. The shared stages (tokenizer, SFT, gold judge, pair generation, reference
   log-probs) are built inside the run.
2. The same experiment runs again in another fresh cache and results directory, and is killed with
   SIGKILL (the whole process group) again and again, each time resumed by rerunning the same
   command, until it finishes. The moments are steered by phase: the killer samples the process's
   Python stack (a SIGUSR1 handler, installed by a ``sitecustomize`` so the command is unchanged,
   writes it in ``faulthandler``'s format) and watches the directories for files being written,
   and kills, with seeded randomness, when a phase it still wants shows (SFT, pair generation,
   reference caching, offline and PPO training steps and evaluations, checkpoint writing, result
   writing: ``REQUIRED``). The stack sample taken just before each kill names the phase hit.
   How many kills fit depends on the machine's speed: when a sweep finishes before every phase
   has been hit, another round runs the experiment again in a fresh cache and results directory,
   aiming at the phases missed, up to ``--max-rounds`` rounds (and no new round after
   ``--max-minutes``); phases still missed then are a failure, reported after the comparisons.
   Once every phase is hit, random moments are killed up to ``--kills`` kills in all while the
   sweep lasts.
3. After every kill, no file under the results, runs or cache directory may be truncated or
   half-written: every .json/.jsonl/.yaml/.csv parses whole, every .safetensors and .pt loads,
   every .gz decompresses with a good CRC, every checkpoint and cache entry is complete. Temporary
   files of atomic writes (``.<name>.<random>.tmp`` files, ``.<name>.tmp-<random>`` directories) may
   be left by a writer killed mid-write; they are counted, never parsed as results.
4. At the end of every round, whatever its number of kills, the killed-and-resumed experiment must
   equal the reference: frontier.csv and compute.csv (every column except wall-clock ones), every
   run's metrics.jsonl and summary.json (except timings), every final checkpoint's tensors,
   optimiser, scheduler and RNG state (``accelerate/``; ``torch.equal``), and the cached stages.

The code under test is copied once (``work/src``) so that edits to the working tree during the
run cannot change it between attempts. Prints one line per kill and per round, ``N kills survived``,
and a ``FAILED:`` line for each failure (``failures``); exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# The phases the first round aims at, with how many kills each (checkpoint and result writing, where a
# half-written file would show, twice); a complete test has killed every one of them at least once.
AIM = Counter(
    {
        "sft": 1,
        "pair generation": 1,
        "reference caching": 1,
        "training step/offline": 1,
        "training step/PPO": 1,
        "evaluation/offline": 1,
        "evaluation/PPO": 1,
        "checkpoint writing": 2,
        "result writing": 2,
    }
)
REQUIRED = tuple(AIM)

TIMING_KEYS = {"peak_rss_mb", "tokens_per_second", "seconds", "s_per_step"}


def is_timing(key: str) -> bool:
    """Wall-clock and memory columns: they differ between any two runs and are left out of equality."""
    return key in TIMING_KEYS or key.endswith("_s") or key.endswith("_seconds")


def experiment_doc(work: Path, data_dir: str) -> dict[str, Any]:
    """The sweep: DPO β ∈ {0.1, 0.5} and PPO-GT target KL ∈ {4, 12}, smoke preset, generated pairs."""
    return {
        "name": "kill_resume",
        "task": {"name": "imdb", "data_dir": data_dir, "use_unsup": False, "max_rows": 3000},
        "model": {"preset": "smoke", "vocab_size": 1000, "tokenizer_texts": 2000},
        "sft": {"steps": 40, "batch_size": 16, "seq_len": 64, "lr": 2.0e-3, "warmup_steps": 4, "eval_blocks": 8},
        "data": {
            "source": "generated",
            "eval_pairs": 32,
            "generate": {"samples_per_prompt": 4, "max_prompts": 48, "max_new_tokens": 16},
        },
        "train": {
            "steps": 8,
            "batch_size": 16,
            "optimizer": "adamw",
            "lr": 2.0e-3,
            "warmup_steps": 0,
            "eval_every": 4,
            "save_every": 2,
            "log_every": 1,
            "progress": False,
        },
        "rollout": {"max_new_tokens": 16, "critic": "sft"},
        "eval": {"prompts": 16, "max_new_tokens": 16},
        "methods": [
            {"name": "dpo", "sweep": {"beta": [0.1, 0.5]}},
            {
                "name": "ppo",
                "label": "PPO-GT",
                "reward": {"kind": "gold"},
                "rollout": {"kl_coef": 0.05, "minibatches": 2},
                "train": {"steps": 6, "batch_size": 16, "lr": 1.0e-3, "grad_clip": 1.0, "eval_every": 3},
                "sweep": {"rollout.target_kl": [4, 12]},
            },
        ],
        "out_dir": str(work / "results"),
        "runs_dir": str(work / "runs"),
    }


# ------------------------------------------------------------------------------------ the processes

HOOK = """\
# Written by scripts/kill_resume.py: on SIGUSR1, append the main thread's Python stack to
# $KILL_RESUME_STACKS in faulthandler's format (most recent call first) and go on. A Python-level
# handler, which the main thread runs between bytecodes: faulthandler.register's dump walks the
# frames inside the C signal handler, on whichever thread the kernel delivered the signal to (a
# tensorboard or tokenizer thread as well as the main one), and can crash the process: a SIGSEGV
# during an import was seen (python/cpython#116008). One os.write per dump: no buffer, no lock.
# SA_RESTART (siginterrupt False), as faulthandler's: a system call of C code in another thread
# restarts instead of failing with EINTR. At exit SIGUSR1 is ignored: the interpreter's finalisation
# resets a Python-level handler to the default action, which would end a finished run with status
# -SIGUSR1 (faulthandler's unregistering at exit did the same).
import atexit, os, signal
_path = os.environ.get("KILL_RESUME_STACKS")
if _path:
    _fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _kill_resume_dump(signum, frame):
        try:
            lines = ["Stack (most recent call first):"]
            while frame is not None:
                code = frame.f_code
                lines.append(f'  File "{code.co_filename}", line {frame.f_lineno or 0} in {code.co_name}')
                frame = frame.f_back
            data = ("\\n".join(lines) + "\\n\\n").encode("utf-8", "replace")
            while data:
                data = data[os.write(_fd, data):]
        except BaseException:  # never into the program under test
            pass

    signal.signal(signal.SIGUSR1, _kill_resume_dump)
    signal.siginterrupt(signal.SIGUSR1, False)
    atexit.register(signal.signal, signal.SIGUSR1, signal.SIG_IGN)
    os.write(_fd, b"ready\\n")  # the killer signals only after this: before it, SIGUSR1 would end the process
"""


def snapshot(work: Path) -> Path:
    """Copy the package under test and the stack hook to ``work/src``: every attempt runs this code."""
    src = work / "src"
    if not src.exists():
        shutil.copytree(REPO / "alignlab", src / "alignlab", ignore=shutil.ignore_patterns("__pycache__"))
        (src / "sitecustomize.py").write_text(HOOK)
    return src


@dataclass
class Workspace:
    """One experiment's directories: its YAML, cache, results, runs and the logs of its attempts."""

    root: Path
    data_dir: str
    src: Path
    attempts: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.yaml = self.root / "experiment.yaml"
        self.yaml.write_text(yaml.safe_dump(experiment_doc(self.root, self.data_dir), sort_keys=False))

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "alignlab.cli", "run", str(self.yaml)]

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        """The next attempt of the command, in its own process group; (process, its stack-dump file)."""
        self.attempts += 1
        stacks = self.root / "logs" / f"stacks-{self.attempts:02d}.txt"
        log = open(self.root / "logs" / f"attempt-{self.attempts:02d}.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            "ALIGNLAB_CACHE_DIR": str(self.cache),
            "ALIGNLAB_DATA_DIR": self.data_dir,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(self.src),
            "KILL_RESUME_STACKS": str(stacks),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=log, start_new_session=True, cwd=self.root)
        log.close()
        return proc, stacks

    def imports_snapshot(self) -> bool:
        """Whether the command imports alignlab from the snapshot (not from the working tree)."""
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        probe = [sys.executable, "-c", "import alignlab; print(alignlab.__file__)"]
        found = subprocess.run(probe, env=env, cwd=self.root, capture_output=True, text=True, check=True).stdout
        return Path(found.strip()).is_relative_to(self.src)

    def finish(self) -> int:
        """Run the command to the end; its exit status."""
        proc, _ = self.start()
        return proc.wait()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the whole process group (the command and anything it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def sample_stack(proc: subprocess.Popen[bytes], stacks: Path, timeout: float = 1.0) -> str | None:
    """The process's Python stack now (SIGUSR1 → the hook), or None if it has ended or is not ready."""
    if proc.poll() is not None or not stacks.exists() or stacks.stat().st_size == 0:
        return None  # no hook yet: SIGUSR1 would end the process
    before = stacks.stat().st_size
    try:
        proc.send_signal(signal.SIGUSR1)
    except ProcessLookupError:
        return None
    deadline, last, stable_since = time.time() + timeout, before, time.time()
    while time.time() < deadline:
        size = stacks.stat().st_size
        if size != last:
            last, stable_since = size, time.time()
        elif size > before and time.time() - stable_since > 0.004:
            break
        time.sleep(0.001)
    if last == before:
        return None
    with open(stacks, "rb") as f:
        f.seek(before)
        return f.read().decode("utf-8", "replace")


FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')

# (module path under alignlab/, function) -> phase; the innermost matching frame decides.
RULES: dict[tuple[str, str], str] = {
    ("train/state.py", "save_checkpoint"): "checkpoint writing",
    ("train/loop.py", "save"): "checkpoint writing",
    ("train/state.py", "load_checkpoint"): "resume (loading a checkpoint)",
    ("train/state.py", "flush"): "metrics writing",
    ("train/evaluation.py", "sample_metrics"): "evaluation",
    ("train/offline.py", "evaluate_step"): "evaluation",
    ("jobs/evaluation.py", "evaluate"): "evaluation",
    ("train/data.py", "cached_reference"): "reference caching",
    ("train/data.py", "attach_reference"): "reference caching",
    ("train/offline.py", "train_offline"): "training step",
    ("train/online.py", "collect"): "training step",
    ("train/online.py", "update"): "training step",
    ("train/online.py", "train_online"): "training step",
    ("train/loop.py", "__init__"): "resume (loading a checkpoint)",
    ("jobs/evaluation.py", "eval_prompts"): "run setup",
    ("jobs/methods.py", "load_reference"): "run setup",
    ("jobs/methods.py", "train_method"): "run setup",
    ("jobs/methods.py", "offline_trainer"): "run setup",
    ("jobs/methods.py", "online_trainer"): "run setup",
    ("jobs/job.py", "claim_out_dir"): "run setup",
    ("jobs/job.py", "_pairs"): "loading stages",
    ("jobs/job.py", "_method_data"): "loading stages",
    ("jobs/job.py", "task"): "reading data",
    ("sft.py", "_tokenizer"): "tokenizer",
    ("sft.py", "_build_policy"): "sft",
    ("sft.py", "train_sft"): "sft",
    ("sft.py", "perplexity"): "sft",
    ("sft.py", "prepare_policy"): "loading stages",
    ("stages.py", "gold_judge"): "gold judge",
    ("stages.py", "generated_pairs"): "pair generation",
    ("pairs.py", "generate_pairs"): "pair generation",
    ("stages.py", "load_generated"): "loading stages",
    ("experiment/runner.py", "collect"): "result writing",
    ("experiment/report.py", "*"): "result writing",
    ("experiment/runner.py", "run_experiment"): "experiment setup",
    ("experiment/runner.py", "_work"): "run scheduling",
    ("experiment/config.py", "*"): "startup",
    ("tasks/imdb.py", "*"): "reading data",
    ("tasks/base.py", "*"): "reading data",
    ("cli.py", "*"): "startup",
}


_LOOP_LINES: dict[str, int] = {}


def _loop_line(path: str) -> int:
    """The line of a trainer's step loop (``for ... in range(loop.start_step, ...)``) in its source:
    a frame of the trainer above it is setting up (optimiser, scheduler, resume), not training."""
    if path not in _LOOP_LINES:
        lines = Path(path).read_text().splitlines() if Path(path).exists() else []
        found = [i + 1 for i, text in enumerate(lines) if re.match(r"\s+for \w+ in range\(loop\.start_step", text)]
        _LOOP_LINES[path] = found[0] if found else 0
    return _LOOP_LINES[path]


def classify(dump: str) -> tuple[str, str]:
    """(phase, detail) of a stack dump (faulthandler's format): the innermost alignlab frame of the
    main thread that a rule names; ``training step`` and ``evaluation`` get ``/PPO`` or ``/offline``
    from the trainer."""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump.strip())
    main = max(blocks, key=lambda b: ("alignlab/cli.py" in b, b.count("File ")))
    frames = [(m["file"].replace("\\", "/"), m["func"], int(m["line"])) for m in FRAME.finditer(main)]
    ours = [(f.split("/alignlab/", 1)[1], fn, line) for f, fn, line in frames if "/alignlab/" in f]
    loops = {
        f.split("/alignlab/", 1)[1]: _loop_line(f) for f, fn, _ in frames if fn in ("train_offline", "train_online")
    }
    if not ours:
        return "startup", "imports"
    phase, detail = "other", f"{ours[0][0]}:{ours[0][1]}"
    if any(func == "<module>" and module != "cli.py" for module, func, _ in ours):  # still importing
        return "startup", f"importing {ours[0][0]}"
    for module, func, line in ours:
        rule = RULES.get((module, func)) or RULES.get((module, "*"))
        if module == "jobs/job.py" and func == "execute":
            inner = ours[0][0]
            rule = "result writing" if inner == "io.py" else "run setup"
        if func in ("train_offline", "train_online") and line < loops.get(module, 0):
            rule = "run setup"  # the trainer's optimiser, scheduler, resume: before its step loop
        if rule is not None:
            phase, detail = rule, f"{module}:{func}:{line}"
            break
    if phase in ("training step", "evaluation"):
        names = {(m, fn) for m, fn, _ in ours}
        if ("train/online.py", "train_online") in names:
            phase += "/PPO"
        elif ("train/offline.py", "train_offline") in names:
            phase += "/offline"
    return phase, detail


# ------------------------------------------------------------------------------------ the checks


def is_temp(name: str) -> bool:
    """A leftover of a writer killed mid-write: ``alignlab.io.atomic_file``'s ``.<name>.<random>.tmp``
    or ``atomic_dir``'s ``.<name>.tmp-<random>``."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)


def _check_csv(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("no final newline (cut short)")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError("empty")
    widths = {len(r) for r in rows}
    if widths != {len(rows[0])}:
        raise ValueError(f"rows of {sorted(widths)} fields under a header of {len(rows[0])}")
    import pandas as pd

    pd.read_csv(path)


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    if not (data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")):
        raise ValueError("not a whole PNG")


def _check_jsonl(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("no final newline (cut short)")
    for line in text.splitlines():
        if line.strip():
            json.loads(line)


def _check_gz(path: Path) -> None:
    with gzip.open(path, "rb") as f:
        data = f.read()  # a cut file raises EOFError, a damaged one a CRC error
    if path.name.endswith(".jsonl.gz"):
        for line in data.decode("utf-8").splitlines():
            json.loads(line)


def _check_safetensors(path: Path) -> None:
    from safetensors.torch import load_file

    load_file(str(path))


def _check_pt(path: Path) -> None:
    import torch

    torch.load(path, weights_only=True)


def _check_accelerate_file(path: Path) -> None:
    """What ``accelerator.save_state`` writes (``optimizer.bin``, ``random_states_0.pkl``), as accelerate loads it."""
    from accelerate.utils import load

    load(path)


CHECKERS: dict[str, Callable[[Path], Any]] = {
    ".json": lambda p: json.loads(p.read_text(encoding="utf-8")),
    ".jsonl": _check_jsonl,
    ".yaml": lambda p: yaml.safe_load(p.read_text(encoding="utf-8")),
    ".yml": lambda p: yaml.safe_load(p.read_text(encoding="utf-8")),
    ".csv": _check_csv,
    ".safetensors": _check_safetensors,
    ".pt": _check_pt,
    ".bin": _check_accelerate_file,
    ".pkl": _check_accelerate_file,
    ".gz": _check_gz,
    ".png": _check_png,
    ".svg": lambda p: ET.parse(p),
    ".md": lambda p: p.read_text(encoding="utf-8"),
    ".txt": lambda p: p.read_text(encoding="utf-8"),
}

# The training state of a checkpoint of one process (accelerator.save_state, alignlab.train.checkpoint).
ACCELERATE = ("accelerate/optimizer.bin", "accelerate/scheduler.bin", "accelerate/random_states_0.pkl")

# A stage entry or checkpoint is complete when the file its writer publishes last is in it.
COMPLETE = {
    "tokenizer": ["tokenizer.json"],
    "sft": ["sft.json", "model.safetensors"],
    "gold": ["config.json", "model.safetensors"],
    "pairs": ["pairs.json", "pairs.jsonl.gz"],
    "reward_model": ["metrics.json"],
}


@dataclass
class Inspection:
    """What is on disk after a kill: problems (must be none), temporaries left, files checked."""

    problems: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    files: int = 0


def inspect(roots: Iterable[Path], base: Path) -> Inspection:
    """Parse every file under ``roots`` by its type; check that checkpoints and cache entries are whole."""
    out = Inspection()
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            for name in [d for d in dirnames if is_temp(d)]:
                out.temps.append(str((here / name).relative_to(base)) + "/")
                dirnames.remove(name)  # a temporary directory is not a result: not parsed
            for name in filenames:
                path = here / name
                rel = str(path.relative_to(base))
                if is_temp(name):
                    out.temps.append(rel)
                    continue
                if name.endswith(".lock"):
                    continue
                out.files += 1
                checker = CHECKERS.get(path.suffix)
                try:
                    if path.stat().st_size == 0 and not name.endswith(".md"):
                        raise ValueError("empty file")
                    if checker is not None:
                        checker(path)
                except Exception as err:  # any failure to read it whole is the finding
                    out.problems.append(f"{rel}: {type(err).__name__}: {str(err)[:120]}")
            if here.name == "checkpoints":
                for d in dirnames:
                    if d.startswith("step-"):
                        _check_checkpoint(here / d, base, out)
            if here.parent == root and root.name == "cache" and here.name in COMPLETE:
                for d in [d for d in dirnames if not d.startswith(".")]:  # not a stage's .<key>.run directory
                    missing = [f for f in COMPLETE[here.name] if not (here / d / f).exists()]
                    if missing:
                        out.problems.append(f"{(here / d).relative_to(base)}: incomplete stage entry, lacks {missing}")
    return out


def _check_checkpoint(path: Path, base: Path, out: Inspection) -> None:
    rel = path.relative_to(base)
    # a checkpoint is a model: weights, config and tokenizer at its top, run state beside them
    missing = [
        f for f in ("state.json", "config.json", "tokenizer_config.json", *ACCELERATE) if not (path / f).exists()
    ]
    if missing or not any(path.glob("*.safetensors")):
        out.problems.append(f"{rel}: incomplete checkpoint (lacks {missing or 'model weights'})")
    elif json.loads((path / "state.json").read_text()).get("step") != int(path.name[5:]):
        out.problems.append(f"{rel}: state.json names another step")


# ------------------------------------------------------------------------------------ the comparison


def _tensor_digest(path: Path) -> str:
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for key, value in sorted(load_file(str(path)).items()):
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested containers of tensors, arrays and plain values."""
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _drop_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_timing(v) for k, v in obj.items() if not is_timing(k)}
    if isinstance(obj, list):
        return [_drop_timing(v) for v in obj]
    return obj


def compare(ref: Workspace, got: Workspace) -> tuple[list[str], list[str]]:
    """(differences, what was compared) between the reference and the killed-and-resumed experiment.
    A file missing or unreadable on either side is a difference of its item; the other items are
    still compared."""
    diffs: list[str] = []
    checked: list[str] = []
    items: list[tuple[str, Callable[[], str]]] = [
        (name, partial(_compare_csv, ref.results / name, got.results / name, diffs))
        for name in ("frontier.csv", "compute.csv")
    ]
    runs = sorted(p.name for p in ref.runs.iterdir() if p.is_dir())
    theirs = sorted(p.name for p in got.runs.iterdir() if p.is_dir()) if got.runs.is_dir() else []
    if runs != theirs:
        diffs.append(f"the runs differ: {runs} vs {theirs}")
    items += [(run, partial(_compare_run, run, ref.runs / run, got.runs / run, diffs)) for run in runs]
    # the shared stages: every cached tensor file and dataset, by content (keys name cache paths)
    items += [
        ("cached tensors", partial(_compare_cache, ref, got, "cached tensors", "*.safetensors", _tensor_digest, diffs)),
        (
            "cached pair datasets",
            partial(_compare_cache, ref, got, "cached pair datasets", "*.jsonl.gz", _sha256, diffs),
        ),
    ]
    for what, item in items:
        try:
            checked.append(item())
        except Exception as err:  # a missing or unreadable file: this item differs, the others are compared
            diffs.append(f"{what}: cannot compare ({type(err).__name__}: {str(err)[:160]})")
    return diffs, checked


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compare_csv(a_path: Path, b_path: Path, diffs: list[str]) -> str:
    import pandas as pd

    a, b = pd.read_csv(a_path), pd.read_csv(b_path)
    timing = [c for c in a.columns if is_timing(c)]
    a, b = a.drop(columns=timing), b.drop(columns=[c for c in timing if c in b.columns])
    if list(a.columns) != list(b.columns) or not a.equals(b):
        bad = [c for c in a.columns if c in b.columns and not a[c].equals(b[c])]
        diffs.append(f"{a_path.name}: differs in columns {bad or 'set'}")
    return f"{a_path.name} ({len(a)} rows; left out: {', '.join(timing)})"


def _compare_run(run: str, a_dir: Path, b_dir: Path, diffs: list[str]) -> str:
    import torch
    from accelerate.utils import load
    from safetensors.torch import load_file

    for name in ("metrics.jsonl", "summary.json"):
        if name.endswith(".jsonl"):
            a = [json.loads(x) for x in (a_dir / name).read_text().splitlines()]
            b = [json.loads(x) for x in (b_dir / name).read_text().splitlines()]
        else:
            a, b = json.loads((a_dir / name).read_text()), json.loads((b_dir / name).read_text())
        if _drop_timing(a) != _drop_timing(b):
            diffs.append(f"{run}/{name} differs")
    steps = [sorted((d / "checkpoints").glob("step-*"))[-1] for d in (a_dir, b_dir)]
    if steps[0].name != steps[1].name:
        diffs.append(f"{run}: last checkpoint {steps[0].name} vs {steps[1].name}")
        return f"{run}: metrics, summary, last checkpoints {steps[0].name} vs {steps[1].name}"
    files = sorted(p.relative_to(steps[0]) for p in steps[0].rglob("*.safetensors"))
    for rel in files:
        x, y = load_file(str(steps[0] / rel)), load_file(str(steps[1] / rel))
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            diffs.append(f"{run}/{steps[0].name}/{rel}: tensors differ")
    for part in ACCELERATE:  # the optimiser, the scheduler and the RNGs, as accelerate saved them
        if not _same(*(load(s / part) for s in steps)):
            diffs.append(f"{run}/{steps[0].name}: {part} differs")
    a, b = (json.loads((s / "state.json").read_text()) for s in steps)
    if a != b:
        diffs.append(f"{run}/{steps[0].name}/state.json differs")
    return f"{run}: metrics, summary, {steps[0].name} ({len(files)} weight files, optimiser, scheduler, RNG)"


def _compare_cache(
    ref: Workspace, got: Workspace, kind: str, pattern: str, digest: Callable[[Path], str], diffs: list[str]
) -> str:
    found = [sorted(digest(p) for p in ws.cache.rglob(pattern) if not _in_temp(p, ws.cache)) for ws in (ref, got)]
    if found[0] != found[1]:
        diffs.append(f"{kind} differ ({len(found[0])} vs {len(found[1])} files)")
    return f"{kind}: {len(found[0])}"


def _in_temp(path: Path, root: Path) -> bool:
    return any(is_temp(part) for part in path.relative_to(root).parts)


# ------------------------------------------------------------------------------------ the killer


def _watch(ws: Workspace) -> list[Path]:
    """The directories whose new temporary files mark a short phase (checkpoint, reference, result writing)."""
    dirs = [ws.results, ws.cache / "reference"]
    if ws.runs.is_dir():
        for run in ws.runs.iterdir():
            if run.is_dir():
                dirs += [run, run / "checkpoints"]
    return dirs


def _trigger(ws: Workspace, seen: set[str]) -> str | None:
    """The phase a newly appeared temporary file marks, if any."""
    for d in _watch(ws):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            key = f"{d}/{name}"
            if key in seen or not (is_temp(name) or d.name == "reference"):
                continue
            seen.add(key)
            if name.startswith(".step-"):
                return "checkpoint writing"
            if d.name == "reference":
                return "reference caching"
            if d == ws.results or name.startswith(".summary.json"):
                return "result writing"
    return None


def disk_state(ws: Workspace, since: float) -> str:
    """What was on disk at a kill: the newest file written in this attempt, checkpoints, finished runs."""
    newest, newest_t = "-", since
    for root in (ws.results, ws.runs, ws.cache):
        for p in root.rglob("*") if root.exists() else []:
            try:
                t = p.stat().st_mtime
            except OSError:
                continue
            if t > newest_t and p.is_file() and not p.name.endswith(".lock"):
                newest, newest_t = str(p.relative_to(ws.root)), t
    finished = sum((r / "summary.json").exists() for r in ws.runs.iterdir()) if ws.runs.is_dir() else 0
    ckpts = []
    if ws.runs.is_dir():
        for r in sorted(ws.runs.iterdir()):
            steps = sorted((r / "checkpoints").glob("step-*")) if (r / "checkpoints").is_dir() else []
            if steps and not (r / "summary.json").exists():
                ckpts.append(f"{r.name}@{int(steps[-1].name[5:])}")
    stages = [k for k in ("sft", "gold", "pairs", "reference") if any((ws.cache / k).glob("[!.]*"))]
    return f"newest write {newest}; stages {'+'.join(stages) or 'none'}; runs finished {finished}" + (
        f"; resuming {', '.join(ckpts)}" if ckpts else ""
    )


@dataclass
class Kill:
    number: int
    round: int
    attempt: int
    seconds: float
    phase: str
    detail: str
    disk: str
    temps: int
    problems: list[str]


# A wanted phase that a stack sample has shown this many times and the killer let pass is killed at
# its next sighting: a short phase (pair generation, an offline step) may not show again in the sweep.
PASSES = 2


@dataclass
class Steering:
    """What the killer aims at: the phases still wanted (with how many kills each), the phase of the
    last kill (not aimed at twice running while another is wanted), and per phase how many stack
    samples showed it (``sampled``) and how many of those the killer let pass while it was wanted."""

    wanted: Counter[str]
    last: str | None = None
    sampled: Counter[str] = field(default_factory=Counter)
    passed: Counter[str] = field(default_factory=Counter)

    def want(self, phase: str) -> bool:
        return self.wanted[phase] > 0 and (phase != self.last or sum(self.wanted.values()) == self.wanted[phase])

    def take(self, phase: str, triggered: bool, rng: random.Random) -> bool:
        """Kill at a sample that shows ``phase``? A wanted phase is killed at once when a file being
        written marked it or it was let pass ``PASSES`` times, else with probability 0.35, so that the
        moment within a long phase varies."""
        if not self.want(phase):
            return False
        if triggered or self.passed[phase] >= PASSES or rng.random() < 0.35:
            return True
        self.passed[phase] += 1
        return False

    def killed(self, phase: str) -> None:
        self.last = phase
        if self.wanted[phase] > 0:
            self.wanted[phase] -= 1
            self.passed[phase] = 0


def kill_once(ws: Workspace, steer: Steering, rng: random.Random, fill: bool) -> Kill | int:
    """Start the next attempt and kill it when a wanted phase shows (or, when ``fill``, at a random
    moment); its exit status if it ended by itself first. Every stack sample's phase goes to
    ``logs/samples-NN.txt``."""
    proc, stacks = ws.start()
    t0 = time.time()
    seen: set[str] = set()
    _trigger(ws, seen)  # what is already there does not trigger
    deadline = t0 + rng.uniform(2.0, 25.0) if fill else None
    next_sample = t0 + 0.5
    dump: str | None = None
    with open(ws.root / "logs" / f"samples-{ws.attempts:02d}.txt", "w") as trace:
        while proc.poll() is None:
            now = time.time()
            if fill:
                if now >= deadline:  # type: ignore[operator]
                    dump = sample_stack(proc, stacks)
                    break
            elif _trigger(ws, seen) is not None or now >= next_sample:
                # a file being written marks a short phase: look at once; else look now and then
                triggered = now < next_sample
                next_sample = now + rng.uniform(0.03, 0.1)
                sampled = sample_stack(proc, stacks)
                if sampled is not None:
                    phase, detail = classify(sampled)
                    steer.sampled[phase] += 1
                    trace.write(f"{now - t0:8.3f} {phase} [{detail}]{' (file)' if triggered else ''}\n")
                    if steer.take(phase, triggered, rng):
                        dump = sampled
                        break
            time.sleep(0.003)
    if proc.poll() is not None:
        return proc.returncode
    kill_group(proc)
    seconds = time.time() - t0
    phase, detail = classify(dump) if dump else ("unknown", "no stack sample")
    found = inspect([ws.results, ws.runs, ws.cache], ws.root)
    return Kill(0, 0, ws.attempts, seconds, phase, detail, disk_state(ws, t0), len(found.temps), found.problems)


@dataclass
class Round:
    """One killed-and-resumed sweep in a fresh cache and results directory, and how it ended."""

    number: int
    root: str
    kills: list[Kill]
    deaths: list[str]
    attempts: int
    exit_status: int  # of the last, uninterrupted resume (0 when the sweep finished under the killer)
    differences: list[str]
    compared: list[str]
    final_problems: list[str]
    final_temps: list[str]
    minutes: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "kills": [k.__dict__ for k in self.kills]}


def kill_round(
    ref: Workspace,
    got: Workspace,
    number: int,
    steer: Steering,
    rng: random.Random,
    kills_before: int,
    kills: int,
    stop_at: float,
    say: Callable[[str], None],
) -> Round:
    """Kill ``got``'s sweep at the phases ``steer`` wants, then at random moments until ``kills``
    kills in all, resuming each time, until it finishes (or its attempts or ``stop_at`` run out: then
    it is run to the end uninterrupted); then compare it with ``ref``."""
    t0 = time.time()
    done: list[Kill] = []
    deaths: list[str] = []
    finished = False
    max_attempts = 4 * max(kills, sum(AIM.values()))
    while got.attempts < max_attempts and time.time() < stop_at:
        fill = sum(steer.wanted.values()) == 0
        if fill and kills_before + len(done) >= kills:
            break
        k = kill_once(got, steer, rng, fill)
        if k == 0:
            finished = True
            break
        if isinstance(k, int):  # it died by itself: say so, check the files, and resume like after a kill
            found = inspect([got.results, got.runs, got.cache], got.root)
            deaths.append(f"attempt {got.attempts} ended with status {k}; problems: {found.problems or 'none'}")
            say(f"attempt {got.attempts} ended by itself with status {k} (see its log); {disk_state(got, 0)}")
            if len(deaths) > 3:
                break
            continue
        k.number, k.round = kills_before + len(done) + 1, number
        done.append(k)
        steer.killed(k.phase)
        say(
            f"kill {k.number:2d} (round {number}, attempt {k.attempt}, after {k.seconds:5.1f} s): phase {k.phase} "
            f"[{k.detail}]; {k.disk}; temp files {k.temps}; "
            + ("files all whole" if not k.problems else f"PROBLEMS: {'; '.join(k.problems)}")
        )
    rc = 0 if finished else got.finish()
    final = inspect([got.results, got.runs, got.cache], got.root)
    diffs, checked = compare(ref, got) if rc == 0 else ([f"the last resume failed (exit {rc})"], [])
    for line in checked:
        say(f"round {number} compared: {line}")
    for line in diffs:
        say(f"round {number} DIFFERENCE: {line}")
    for line in final.problems:
        say(f"round {number} PROBLEM at the end: {line}")
    minutes = (time.time() - t0) / 60
    say(
        f"round {number}: {len(done)} kills, {got.attempts} attempts, {minutes:.1f} min; phases hit "
        f"{dict(sorted(Counter(k.phase for k in done).items()))}; temporary files left: {final.temps or 'none'}; "
        f"equals the uninterrupted run: {not diffs}"
    )
    return Round(
        number, str(got.root), done, deaths, got.attempts, rc, diffs, checked, final.problems, final.temps, minutes
    )


def kill_and_resume(
    work: Path,
    data_dir: str,
    kills: int = 12,
    seed: int = 0,
    say: Callable[[str], None] = print,
    max_rounds: int = 4,
    max_minutes: float = 120.0,
) -> dict[str, Any]:
    """The whole check; returns kills, phases hit, problems after kills, differences, timings.

    Round 1 aims at every phase of ``AIM``; a sweep that finishes before each of ``REQUIRED`` has
    been hit (a fast machine, a short phase) is followed by another round in a fresh cache and results
    directory that aims at the phases missed, at most ``max_rounds`` rounds and, unless a round is
    under way, ``max_minutes`` minutes in all. Every round is compared with the uninterrupted run."""
    t_start = time.time()
    stop_at = t_start + 60 * max_minutes
    work.mkdir(parents=True, exist_ok=True)
    src = snapshot(work)
    ref = Workspace(work / "reference", data_dir, src)
    if not ref.imports_snapshot():
        raise RuntimeError(f"the command does not import alignlab from the snapshot {src}")
    if not (ref.results / "frontier.png").exists():
        say(f"reference: {' '.join(ref.command()[1:])} (uninterrupted, fresh cache {ref.cache})")
        rc = ref.finish()
        if rc != 0:
            raise RuntimeError(f"the uninterrupted run failed (exit {rc}); see {ref.root / 'logs'}")
    ref_minutes = (time.time() - t_start) / 60
    say(f"reference done in {ref_minutes:.1f} min")
    rng = random.Random(seed)
    steer = Steering(Counter(AIM))
    rounds: list[Round] = []
    hit: Counter[str] = Counter()
    missing = list(REQUIRED)
    stopped = ""
    for number in range(1, max_rounds + 1):
        if number > 1:
            if rounds[-1].exit_status != 0:
                stopped = f"round {number - 1}'s sweep did not finish"
                break
            if time.time() >= stop_at:
                stopped = f"the time bound ({max_minutes:g} min) was reached"
                break
            steer.wanted, steer.last = Counter(dict.fromkeys(missing, 1)), None
            say(f"round {number - 1} ended before phases {missing} were hit: again in a fresh cache, aiming at them")
        got = Workspace(work / f"killed-{number}", data_dir, src)
        rounds.append(kill_round(ref, got, number, steer, rng, sum(len(r.kills) for r in rounds), kills, stop_at, say))
        hit.update(k.phase for k in rounds[-1].kills)
        missing = [p for p in REQUIRED if not hit[p]]
        if not missing:
            break
    else:
        stopped = f"the bound of {max_rounds} rounds was reached"
    all_kills = [k for r in rounds for k in r.kills]
    survived = sum(not k.problems for k in all_kills)
    minutes = (time.time() - t_start) / 60
    if missing:
        say(
            f"PHASES NEVER HIT: {missing} in {len(rounds)} rounds ({stopped}); stack samples showed "
            f"{dict(sorted(steer.sampled.items()))}"
        )
    say(
        f"{survived} kills survived (of {len(all_kills)}; {len(rounds)} rounds; "
        f"{sum(r.attempts for r in rounds)} attempts; phases hit: {dict(sorted(hit.items()))}); resumed results "
        f"equal the uninterrupted one: {not any(r.differences for r in rounds)}; {minutes:.1f} min"
    )
    return {
        "kills": [k.__dict__ for k in all_kills],
        "deaths": [f"round {r.number}: {d}" for r in rounds for d in r.deaths],
        "survived": survived,
        "phases": dict(hit),
        "missing_phases": missing,
        "missed_because": stopped if missing else "",
        "samples": dict(steer.sampled),
        "differences": [f"round {r.number}: {d}" for r in rounds for d in r.differences],
        "final_problems": [f"round {r.number}: {p}" for r in rounds for p in r.final_problems],
        "rounds": [r.as_dict() for r in rounds],
        "minutes": minutes,
        "reference_minutes": ref_minutes,
    }


# Where a temporary may be left at the end: the results directory (written by any process of the
# experiment) and the reference-log-prob cache; a run's and a stage's leftovers are removed on resume.
TEMPS_MAY_STAY = ("results/", "cache/reference/")


def failures(report: dict[str, Any]) -> list[str]:
    """Every way the report fails, the results' equality first and the phases' coverage last, so that
    a phase missed never hides a difference (and the other way round)."""
    out: list[str] = []
    for r in report["rounds"]:
        out += [f"round {r['number']}: {d}" for d in r["differences"]]
        out += [f"round {r['number']}: at the end, {p}" for p in r["final_problems"]]
        stray = [t for t in r["final_temps"] if not t.startswith(TEMPS_MAY_STAY)]
        if stray:
            out.append(f"round {r['number']}: temporaries a resume should have removed: {stray}")
    for k in report["kills"]:
        if k["problems"]:
            out.append(f"kill {k['number']} (round {k['round']}, {k['phase']}): not whole: {'; '.join(k['problems'])}")
    out += [f"{d}" for d in report["deaths"] if not d.endswith("problems: none")]
    if report["missing_phases"]:
        out.append(
            f"phases never hit: {report['missing_phases']} in {len(report['rounds'])} rounds "
            f"({report['missed_because']}); stack samples showed {report['samples']}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a directory for both experiments (created)")
    parser.add_argument(
        "--kills", type=int, default=12, help="random kills after every phase is hit, up to this many in all (12)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--max-rounds", type=int, default=4, help="killed sweeps at most (default 4)")
    parser.add_argument("--max-minutes", type=float, default=120.0, help="no new round after this (default 120)")
    parser.add_argument("--data-dir", default=os.environ.get("ALIGNLAB_DATA_DIR"), help="default $ALIGNLAB_DATA_DIR")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("set --data-dir or ALIGNLAB_DATA_DIR")
    report = kill_and_resume(
        args.work.resolve(),
        str(Path(args.data_dir).resolve()),
        args.kills,
        args.seed,
        max_rounds=args.max_rounds,
        max_minutes=args.max_minutes,
    )
    (args.work / "report.json").write_text(json.dumps(report, indent=2))
    bad = failures(report)
    for line in bad:
        print(f"FAILED: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
