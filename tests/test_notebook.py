"""notebooks/quickstart.ipynb: committed without outputs, and it runs — results, frontier, a new loss trained."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 5
    for cell in code:
        assert cell.outputs == [], f"cell {cell.get('id')} has outputs: clear them before committing"
        assert cell.execution_count is None, f"cell {cell.get('id')} has an execution count"


def _text(cell) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def _tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r}"
    return cells[0]


@pytest.fixture(scope="module")
def executed(data_dir, tmp_path_factory):
    """The notebook run as Jupyter runs it (from notebooks/), its training run under a temp directory;
    the cache is $ALIGNLAB_CACHE_DIR or the default, as for a user."""
    runs = tmp_path_factory.mktemp("notebook_runs")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this environment
        # the kernel runs in notebooks/: a relative directory (the README's ../shared/data) must be made absolute
        mp.setenv("ALIGNLAB_DATA_DIR", str(Path(data_dir).resolve()))
        if os.environ.get("ALIGNLAB_CACHE_DIR"):
            mp.setenv("ALIGNLAB_CACHE_DIR", str(Path(os.environ["ALIGNLAB_CACHE_DIR"]).resolve()))
        mp.setenv("ALIGNLAB_NOTEBOOK_RUNS", str(runs))
        mp.setenv("HF_HUB_OFFLINE", "1")
        client = NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
        )
        client.execute()
    return nb, runs / "gpo_exp"


def test_the_notebook_reads_the_results_and_draws_the_frontier(executed):
    nb, _ = executed
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    results = _text(_tagged(nb, "results"))
    assert "PPO-GT" in results and "beta=0.1" in results
    plot = _tagged(nb, "frontier-plot")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs), "the frontier cell drew no figure"


def test_the_notebook_registers_and_trains_its_loss(executed):
    nb, out = executed
    registered = _text(_tagged(nb, "register"))
    assert "reference, paired | tensor([0.8187])" in registered  # exp(−0.1 · 2), the hand value in the cell
    assert "'gpo_exp'" in registered and "'dpo'" in registered
    assert "gpo_exp {'beta': 0.1}" in _text(_tagged(nb, "train"))
    assert "eval_margins" in _text(_tagged(nb, "metrics"))

    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "gpo_exp" and summary["knobs"] == {"beta": 0.1}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert [r["step"] for r in evals] == [0, 4, 8, 12]
    assert evals[0]["eval_loss"] == pytest.approx(1.0, abs=1e-6)  # π = π_ref at step 0: exp(0)
    assert evals[0]["sample_kl"] == pytest.approx(0.0, abs=1e-6)
    for row in train + evals:
        for key, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value), (row["step"], key, value)
    for key in ("loss", "margins", "reward_accuracy", "grad_norm"):
        assert all(key in r for r in train), key
    assert evals[-1]["eval_loss"] < 1.0  # 12 steps of exp(−β h) lowered the held-out loss
    assert evals[-1]["samples"] == 16
    assert summary["final"] == evals[-1]
