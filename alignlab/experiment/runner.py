"""``alignlab run FILE``: every run of an experiment, then its frontier, win rates, plots and tables.

In numbered steps:

1. load and validate the experiment and every run it expands to, before any work;
2. write ``<out_dir>/experiment.yaml`` and ``<out_dir>/configs/<run>.yaml`` (the resolved config
   of every run);
3. the tuning runs of tuned methods first (``tune:``, :mod:`alignlab.experiment.tuning`), then
   ``tuning.csv``/``tuning.md`` and each method's selected settings; then the runs, one after
   another (or split over ``--workers`` processes): a run holds a lock on its directory while it
   trains, so several ``alignlab run`` processes on one experiment split the runs between them
   instead of colliding; a finished run is skipped, an unfinished one
   resumes from its last checkpoint. Shared stages (tokenizer, SFT, gold judge, pairs, reward
   model, reference log-probs) are cached by content and built once, under a lock;
4. ``frontier.csv`` (and ``winrate.csv``) rewritten after every run, the plots and tables at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import AlignlabError
from alignlab.experiment.config import Experiment, PlannedRun, load_experiment, preflight
from alignlab.experiment.csvs import COMPUTE_COLUMNS, FRONTIER_COLUMNS, WINRATE_COLUMNS, write_csv
from alignlab.experiment.report import compute_rows, mixed_references, plot_dir, run_rows, table_dir
from alignlab.experiment.tuning import TUNING_COLUMNS, every_run, select_all, tune_runs, tuning_markdown, unselected
from alignlab.io import atomic_write_text, atomic_write_yaml, clear_temps, file_lock
from alignlab.ownership import directory_lock, mark, remove_owned, training_lock
from alignlab.progress import say


def status(run: PlannedRun) -> str:
    """finished | diverged | started | pending (a run whose results are damaged is only started)."""
    from alignlab.train.state import read_summary

    out = run.run_dir  # a final run that tune.reuse took from its tuning run: that run's
    if read_summary(out) is not None:
        return "finished"
    if (out / "diverged.txt").exists():
        return "diverged"
    if (out / "config.yaml").exists():
        return "started"
    return "pending"


def listed_status(run: PlannedRun, source: str) -> str:
    """:func:`status` for ``alignlab list``, which also says ``changed`` when the run directory holds a run
    whose stored config (``config.yaml``) is not this run's (the YAML or an override changed since):
    ``alignlab run`` refuses it until it is given another runs_dir, or ``--force``."""
    from alignlab.jobs.job import _resolved, holds_other_run
    from alignlab.tasks import build_task

    out = Path(run.cfg.out_dir)
    changed = (out / "config.yaml").is_file() and holds_other_run(
        out, _resolved(run.cfg, build_task(run.cfg.task, source), run.method)
    )
    return "changed" if changed else status(run)


def _lock(exp: Experiment, run: PlannedRun) -> Path:
    return exp.runs_dir / f".{run.run_id}.lock"


def collect(exp: Experiment, draw: bool = True, fit: bool = False) -> dict[str, Any]:
    """Rewrite frontier.csv / winrate.csv from the run directories; then the plots and tables.

    One process at a time (a lock on the results directory): it first removes what a writer killed
    mid-write left there, which no other process can be writing while it holds the lock.

    Raises:
        AlignlabError: finished runs that should share π_ref were trained on different ones
            (:func:`~alignlab.experiment.report.mixed_references`); nothing is written.
    """
    mixed = mixed_references([*exp.runs, *tune_runs(exp)])
    if mixed:
        raise AlignlabError(f"{exp.runs_dir}: {mixed}")
    frontier: list[dict[str, Any]] = []
    winrate: list[dict[str, Any]] = []
    for run in exp.runs:
        f, w = run_rows(exp.name, run)
        frontier += f
        winrate += w
    compute = compute_rows(exp.runs)
    with directory_lock(exp.out_dir):
        clear_temps(exp.out_dir)
        paths = [write_csv(exp.out_dir / "frontier.csv", frontier, FRONTIER_COLUMNS)]
        if winrate:
            paths.append(write_csv(exp.out_dir / "winrate.csv", winrate, WINRATE_COLUMNS))
        if compute:
            paths.append(write_csv(exp.out_dir / "compute.csv", compute, COMPUTE_COLUMNS))
        if draw and (frontier or winrate):
            paths += plot_dir(exp.out_dir, fit=fit) + table_dir(exp.out_dir)
    return {"frontier_rows": len(frontier), "winrate_rows": len(winrate), "files": [str(p) for p in paths]}


def run_experiment(
    path: str | Path,
    overrides: list[str] | None = None,
    workers: int = 1,
    force: bool = False,
    worker: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the experiment at ``path``; returns what was done and where the results are."""
    t0 = time.time()
    if worker:
        _watch_parent()
    # 1. every run validated before any work; the data is there and no run directory is taken
    exp = load_experiment(path, overrides)
    if not worker:
        preflight(exp, force=force)
    # 2. the resolved configs, beside the results
    if not worker:
        if force:  # only what alignlab wrote, and none of it while another process trains one of the runs
            with contextlib.ExitStack() as held:
                existing = [r for r in every_run(exp) if Path(r.cfg.out_dir).is_dir()]
                for run in existing:
                    held.enter_context(training_lock(Path(run.cfg.out_dir), f"runs_dir ({run.run_id})", exp.source))
                for run in existing:
                    remove_owned(Path(run.cfg.out_dir))
        _write_configs(exp, tune_runs(exp))
    # 3. the tuning runs, the selection, then the runs
    before = {r.run_id: status(r) for r in trained(every_run(exp))}
    pending = [r for r in exp.runs + tune_runs(exp) if before[r.run_id] not in ("finished", "diverged")]
    if not worker:
        skipped = len(exp.runs + tune_runs(exp)) - len(pending)
        said = f", {skipped} finished already (skipped)" if skipped else ""
        say(f"{exp.name}: {len(pending)} runs to train{said}")
    final = len(trained([r for t in exp.tuned for r in t.candidates[0].final_runs]))
    workers = min(workers, len(pending) + final)  # no idle ones
    if workers > 1 and not worker:
        _spawn_workers(path, overrides or [], workers)
    elif exp.tuned:
        _work(exp, tune_runs(exp))
    if exp.tuned:
        exp = _select(exp, write=not worker)
    if (workers <= 1 or worker) and exp.runs:
        _work(exp)
    # 4. results (once, by the main process of a distributed launch)
    result = collect(exp, draw=not worker) if int(os.environ.get("RANK", "0")) == 0 else {}
    done = {r.run_id: status(r) for r in trained(exp.runs + tune_runs(exp))}  # each trained run once
    return {
        "experiment": exp.name,
        "runs": len(done),
        "trained": sum(before[k] != "finished" and done[k] == "finished" for k in done),
        "skipped_finished": sum(v == "finished" for v in before.values()),
        "diverged": [k for k, v in done.items() if v == "diverged"],
        "unfinished": [k for k, v in done.items() if v not in ("finished", "diverged")],
        "results": str(exp.out_dir),
        "wall_time_s": round(time.time() - t0, 1),
        **result,
    }


def trained(runs: Iterable[PlannedRun]) -> list[PlannedRun]:
    """The runs that train: a final run that tune.reuse took from its tuning run is that run (trained,
    counted and waited for once, as the tuning run)."""
    return [r for r in runs if r.trained_by is None]


def _write_configs(exp: Experiment, extra: list[PlannedRun]) -> None:
    """experiment.yaml (the runs known so far) and configs/<run>.yaml of those and of ``extra``."""
    with directory_lock(exp.out_dir):  # the results directory's writers take turns (see collect)
        mark(exp.out_dir, "results")
        runs = [*exp.runs, *extra]
        atomic_write_yaml(exp.out_dir / "experiment.yaml", {**exp.data, "runs": [r.run_id for r in runs]})
        for run in runs:
            path = exp.out_dir / "configs" / f"{run.run_id}.yaml"
            if run.trained_by is None:
                atomic_write_yaml(path, run.data)
                continue
            said = f"# tune.reuse: trained as the tuning run {run.trained_by.run_id} ({run.trained_by.cfg.out_dir}),\n"
            said += "# whose test-prompt evaluations are this run's; it has no directory of its own\n"
            atomic_write_text(path, said + yaml.safe_dump(run.data, sort_keys=False, allow_unicode=True))


def _select(exp: Experiment, write: bool) -> Experiment:
    """Each tuned method's selected candidate from its finished tuning runs; tuning.csv and tuning.md.

    Raises:
        AlignlabError: a tuned method none of whose candidates finished with a score (after writing them).
    """
    selected, rows = select_all(exp)
    if write and int(os.environ.get("RANK", "0")) == 0:
        with directory_lock(exp.out_dir):
            write_csv(exp.out_dir / "tuning.csv", rows, TUNING_COLUMNS)
            atomic_write_text(exp.out_dir / "tuning.md", tuning_markdown(exp, rows))
        _write_configs(selected, tune_runs(exp))
    missing = unselected(exp, rows)
    if missing:
        raise AlignlabError(
            f"tuning: no candidate of {', '.join(missing)} finished with a score (see {exp.out_dir / 'tuning.md'}): "
            "widen its grid (a smaller train.lr) or check its diverged runs"
        )
    return selected


def _distributed() -> bool:
    """Under ``accelerate launch`` (or torchrun) with several processes: they train each run together."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _work(exp: Experiment, runs: list[PlannedRun] | None = None) -> None:
    """Run every unfinished run of ``runs`` (default: the experiment's) this process can lock; wait for
    those another process holds. After each, frontier.csv is rewritten from the experiment's runs.

    Under ``accelerate launch`` all processes train every run together, in order, without locks.
    """
    from alignlab.jobs.job import Shared, execute
    from alignlab.train.loop import TrainingDiverged

    shared = Shared()
    runs = trained(exp.runs if runs is None else runs)
    pending = [r for r in runs if status(r) not in ("finished", "diverged")]
    total = len(runs)
    together = _distributed()
    while pending:
        progressed = False
        for run in list(pending):
            with file_lock(_lock(exp, run), blocking=False) if not together else _held() as mine:
                if not mine:
                    continue
                if together or status(run) not in ("finished", "diverged"):  # another may have done it
                    k = runs.index(run) + 1
                    print(f"[{k}/{total}] {run.run_id}: {_describe(run)}", file=sys.stderr, flush=True)
                    t = time.time()
                    try:
                        summary = execute(run.cfg, run.method, exp.source, shared=shared)
                    except TrainingDiverged as err:  # a result, not a crash: the sweep goes on
                        atomic_write_text(Path(run.cfg.out_dir) / "diverged.txt", f"{err}\n")
                        print(f"[{k}/{total}] {run.run_id}: diverged: {err}", file=sys.stderr, flush=True)
                        pending.remove(run)
                        progressed = True
                        continue
                    final = summary.get("final") or {}
                    print(
                        f"[{k}/{total}] {run.run_id}: done in {time.time() - t:.0f} s; "
                        f"reward {final.get('sample_reward', float('nan')):.3f}, "
                        f"KL {final.get('sample_kl', float('nan')):.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if int(os.environ.get("RANK", "0")) == 0:
                        collect(exp, draw=False)
                pending.remove(run)
                progressed = True
        if pending and not progressed:  # all held by other processes: wait for the first to finish
            with file_lock(_lock(exp, pending[0])):
                pass


@contextmanager
def _held() -> Iterator[bool]:
    yield True


def _describe(run: PlannedRun) -> str:
    sampling = run.method.objective.needs.data == "sampling"
    kind = "sampling, no training" if sampling else f"{run.cfg.train.steps} steps"
    return f"{run.method.name} ({kind}), {run.cfg.out_dir}"


def _watch_parent(interval_s: float = 1.0) -> None:
    """In a worker: SIGTERM itself (checkpoint, stop) once the process that spawned it is gone."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="alignlab-parent-watch", daemon=True).start()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker still running and wait while each checkpoints its step; asked again, kill."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    try:
        for p in procs:
            p.wait()
    except BaseException:
        for p in procs:
            p.kill()
        raise


def _spawn_workers(path: str | Path, overrides: list[str], workers: int) -> None:
    """``workers`` processes of ``alignlab run --worker``, the CPU threads split between them.

    The workers live in a session of their own, so a Ctrl-C in the terminal reaches this process
    only: it stops them with one SIGTERM each (they checkpoint their step and exit) and waits. A
    worker whose parent dies is sent SIGTERM too: no worker outlives ``alignlab run``.
    """
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "alignlab.cli", "run", str(path), *overrides, "--worker"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen(command, env=env, start_new_session=True))
        codes = [p.wait() for p in procs]
    except BaseException:
        _stop(procs)
        raise
    failed = [c for c in codes if c != 0]
    if failed:
        raise AlignlabError(f"{len(failed)} of {workers} worker processes failed (exit {failed[0]}); see above")
