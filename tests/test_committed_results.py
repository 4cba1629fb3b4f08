"""Every shipped experiment with committed results still resolves to the run configs it committed.

Experiments extend one another (``imdb_variants``, ``imdb_quick``, ``imdb_margin`` and ``imdb_online``
extend ``imdb_frontier``): a change to the parent, or to an experiment's own keys, that would make
``alignlab run`` see the committed runs as changed fails here, naming the run and the keys. The
tuning runs and the runs of untuned methods are compared (a tuned method's final runs follow the
selection, and carry the same keys as its tuning runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from alignlab.experiment.config import load_experiment
from alignlab.experiment.tuning import tune_runs

REPO = Path(__file__).resolve().parents[1]

# results committed before a later change to their experiment's keys, and why; each is checked to
# still differ, so that regenerating one fails here until its entry goes
STALE = {
    "protocol_demo": "its tuning runs predate tune.reuse, which adds eval.also_test to them",
    "tldr_winrate": "PPO's knobs moved from objective: to rollout: after it ran (the same values)",
}


def _with_results() -> list[Path]:
    paths = []
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        name = (yaml.safe_load(path.read_text()) or {}).get("name")
        if name and (REPO / "results" / str(name) / "configs").is_dir():
            paths.append(path)
    return paths


def _differences(path: Path) -> list[tuple[str, list[str]]]:
    exp = load_experiment(path)
    configs = REPO / "results" / exp.name / "configs"
    found = []
    for run in [*exp.runs, *tune_runs(exp)]:
        committed = configs / f"{run.run_id}.yaml"
        if not committed.exists():
            found.append((run.run_id, ["(no committed config)"]))
            continue
        ours: dict[str, Any] = {k: v for k, v in run.data.items() if k != "out_dir"}
        theirs: dict[str, Any] = {k: v for k, v in yaml.safe_load(committed.read_text()).items() if k != "out_dir"}
        keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if keys:
            found.append((run.run_id, keys))
    return found


@pytest.mark.parametrize("path", _with_results(), ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_a_shipped_experiment_resolves_to_the_configs_its_results_committed(path: Path) -> None:
    name = yaml.safe_load(path.read_text())["name"]
    differences = _differences(path)
    if name in STALE:
        assert differences, f"results/{name} matches its experiment again: remove it from STALE"
    else:
        assert not differences, f"{path.name}: the committed runs of results/{name} changed: {differences[:3]}"


def test_the_experiments_that_extend_the_frontier_are_checked() -> None:
    names = {yaml.safe_load(p.read_text())["name"] for p in _with_results()}
    assert {"imdb_frontier", "imdb_variants", "imdb_quick"} <= names
