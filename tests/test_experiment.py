"""Experiments: validation, sweep expansion, the runner (resume, skip, two processes), the writers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from alignlab.cli import main
from alignlab.errors import ConfigError
from alignlab.experiment import load_experiment
from alignlab.experiment.plots import fit_gao, gao_curve, plot_frontier, plot_winrate, reward_label, setting_label
from alignlab.experiment.report import frontier_table, pareto_front, winrate_table
from alignlab.experiment.runner import run_experiment, status
from alignlab.experiment.shipped import find, shipped
from alignlab.rewards.judges import CausalLMJudge, LLMJudge, RewardJudge

REPO = Path(__file__).resolve().parents[1]
SMOKE_MODEL = {"preset": "smoke", "vocab_size": 1000, "tokenizer_texts": 2000}
SMOKE_SFT = {"steps": 40, "batch_size": 16, "seq_len": 64, "lr": 2.0e-3, "warmup_steps": 4, "eval_blocks": 8}


def _experiment(tmp_path: Path, data_dir: Path | str = "data", **over) -> dict:
    doc = {
        "name": "tiny",
        "task": {"name": "imdb", "data_dir": str(data_dir), "use_unsup": False},
        "model": SMOKE_MODEL,
        "sft": SMOKE_SFT,
        "data": {"source": "reviews", "pairs": 128, "eval_pairs": 32, "completion_words": 8},
        "train": {
            "steps": 4,
            "batch_size": 8,
            "optimizer": "adamw",
            "lr": 1.0e-3,
            "eval_every": 2,
            "save_every": 2,
            "progress": False,
            "log_with": [],
        },
        "eval": {"prompts": 8, "max_new_tokens": 8},
        "methods": [{"name": "dpo", "sweep": {"beta": [0.1, 0.5]}}, {"name": "best_of_n", "n": 2}],
        "out_dir": str(tmp_path / "results"),
        "runs_dir": str(tmp_path / "runs"),
    }
    doc.update(over)
    return doc


def _write(tmp_path: Path, doc: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"tarin": {}}, "tarin", "did you mean 'train'"),
        ({"objective": {"name": "dpo"}}, "objective", "methods:"),
        ({"methods": []}, "methods", "at least one"),
        ({"methods": ["dpo"]}, "methods[0]", "expected a mapping"),
        ({"methods": [{"beta": 0.1}]}, "methods[0].name", "required"),
        ({"methods": [{"name": "dpoo"}]}, "methods[0].name", "did you mean 'dpo'"),
        ({"methods": [{"name": "dpo", "betta": 0.1}]}, "methods[0].betta", "did you mean 'beta'"),
        ({"methods": [{"name": "dpo", "sweep": {"betta": [0.1]}}]}, "methods[0].sweep.betta", "did you mean 'beta'"),
        ({"methods": [{"name": "dpo", "sweep": {"beta": 0.1}}]}, "methods[0].sweep.beta", "non-empty list"),
        ({"methods": [{"name": "dpo", "sweep": {"beta": [0.1, -1]}}]}, "methods[0].sweep.beta", "must be > 0"),
        ({"methods": [{"name": "dpo"}, {"name": "dpo"}]}, "methods", "different labels"),
        ({"methods": [{"name": "dpo", "label": "a b"}]}, "methods[0].label", "letters"),
        ({"methods": [{"name": "dpo", "train": {"stepz": 3}}]}, "methods[0].train.stepz", "did you mean 'steps'"),
        ({"methods": [{"name": "ppo", "rollout": {"minibatches": 3}}]}, "methods[0].train.batch_size", "do not split"),
        ({"train": {"lr": "fast"}}, "train.lr", "expected float"),
        ({"name": "a/b"}, "name", "letters"),
        ({"extends": "missing.yaml"}, "extends", "no such file"),
    ],
)
def test_bad_experiments_are_refused_naming_the_key(tmp_path, change, key, message):
    path = _write(tmp_path, _experiment(tmp_path) | change)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert err.value.key == key and message in err.value.message and err.value.source == str(path)


def test_cli_reports_a_bad_experiment_in_one_line_with_status_2(tmp_path, capsys):
    path = _write(tmp_path, _experiment(tmp_path, methods=[{"name": "dpo", "sweep": {"betta": [1]}}]))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}: methods[0].sweep.betta: unknown key" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()  # nothing written


# ---------------------------------------------------------------------------------------- expansion


def test_sweeps_expand_into_the_product_of_their_lists(tmp_path):
    methods = [
        {"name": "dpo", "sweep": {"beta": [0.05, 1.0], "seed": [0, 1]}},
        {"name": "ipo", "label": "IPO-mean", "length_normalized": True, "sweep": {"train.lr": [1.0e-4, 3.0e-4]}},
        {"name": "ppo", "label": "PPO-GT", "train": {"batch_size": 16, "steps": 3}, "reward": {"kind": "gold"}},
    ]
    exp = load_experiment(_write(tmp_path, _experiment(tmp_path, methods=methods)))
    ids = [r.run_id for r in exp.runs]
    assert ids == [
        "dpo-beta0.05-seed0",
        "dpo-beta0.05-seed1",
        "dpo-beta1-seed0",
        "dpo-beta1-seed1",
        "IPO-mean-lr0.0001",
        "IPO-mean-lr0.0003",
        "PPO-GT",
    ]
    by_id = {r.run_id: r for r in exp.runs}
    run = by_id["dpo-beta1-seed1"]
    assert run.method.cfg.beta == 1.0 and run.cfg.train.seed == 1 and run.setting == {"beta": 1.0, "seed": 1}
    assert run.cfg.out_dir == str(tmp_path / "runs" / "dpo-beta1-seed1")
    ipo = by_id["IPO-mean-lr0.0003"]
    assert ipo.cfg.train.lr == 3.0e-4 and ipo.method.cfg.length_normalized is True and ipo.label == "IPO-mean"
    ppo = by_id["PPO-GT"]  # the method's sections merge over the experiment's, key by key
    assert (ppo.cfg.train.batch_size, ppo.cfg.train.steps, ppo.cfg.train.eval_every) == (16, 3, 2)
    assert ppo.cfg.reward.kind == "gold" and by_id["dpo-beta1-seed0"].cfg.train.batch_size == 8
    # a method without a label is named by its objective's display name; its run ids keep the objective's name
    assert by_id["dpo-beta1-seed1"].label == "DPO" and ppo.label == "PPO-GT"


def test_a_methods_keys_are_overridden_by_index_or_by_label(tmp_path):
    """``methods[i].<key>=...`` and ``methods.<label>.<key>=...`` (the label as plots show it) set that
    method's keys; the others keep theirs."""
    methods = [
        {"name": "dpo", "sweep": {"beta": [0.05, 1.0]}},
        {"name": "ipo", "tau": 0.5},
        {"name": "ppo", "label": "PPO-GT", "reward": {"kind": "gold"}, "train": {"batch_size": 16, "steps": 3}},
    ]
    path = _write(tmp_path, _experiment(tmp_path, methods=methods))
    exp = load_experiment(
        path, ["methods.DPO.sweep.beta=[0.2]", "methods[1].tau=0.3", "methods.PPO-GT.train.steps=5", "train.lr=2e-3"]
    )
    assert [r.run_id for r in exp.runs] == ["dpo-beta0.2", "ipo", "PPO-GT"]
    dpo, ipo, ppo = exp.runs
    assert dpo.method.cfg.beta == 0.2 and ipo.method.cfg.tau == 0.3
    assert (ppo.cfg.train.steps, ppo.cfg.train.batch_size) == (5, 16)  # merged into the method's own train section
    assert dpo.cfg.train.steps == 4 and {r.cfg.train.lr for r in exp.runs} == {2e-3}
    assert load_experiment(path).runs[2].method.cfg.tau == 0.5  # the file itself is as it was


def test_command_line_overrides_and_extends(tmp_path):
    _write(tmp_path, _experiment(tmp_path), "base.yaml")
    child = {"extends": "base.yaml", "name": "child", "train": {"steps": 9}}
    exp = load_experiment(_write(tmp_path, child, "child.yaml"), ["train.lr=2.0e-3", "eval.prompts=3"])
    assert exp.name == "child" and len(exp.runs) == 3
    cfg = exp.runs[0].cfg
    assert (cfg.train.steps, cfg.train.lr, cfg.train.batch_size, cfg.eval.prompts) == (9, 2.0e-3, 8, 3)
    _write(tmp_path, {"extends": "loop_b.yaml"}, "loop_a.yaml")
    _write(tmp_path, {"extends": "loop_a.yaml"}, "loop_b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_experiment(tmp_path / "loop_a.yaml")


def test_every_shipped_experiment_validates():
    names = shipped()
    assert {"imdb_smoke", "imdb_frontier", "tldr_winrate", "hh_winrate"} <= set(names)
    assert any(n.startswith("paper/") for n in names)
    for name, path in names.items():
        exp = load_experiment(path)
        assert exp.runs or exp.tuned, name  # a fully tuned experiment plans its runs once tuned
    frontier = load_experiment(find("imdb"))
    # every method is tuned: the runs of its first candidate stand for those that the tuning selects
    planned = frontier.planned
    labels = {r.label for r in planned}
    assert {"DPO", "PPO", "PPO-GT", "Unlikelihood", "Preferred-FT", "best-of-N"} <= labels
    assert {r.run_id.rsplit("-seed", 1)[1] for r in planned if r.label == "DPO"} == {"0", "1", "2"}
    # the variants, the margin-aware four and the online four: three experiments on the frontier's stages,
    # each with DPO β 0.1 beside them and every method tuned
    expected = {
        "imdb_variants": {"IPO", "cDPO", "rDPO", "KTO", "ORPO", "SimPO", "SLiC"},
        "imdb_margin": {"MADPO", "ODPO", "DPOP", "beta-DPO"},
        "imdb_online": {"RLOO", "GRPO", "online-DPO", "iterative-DPO"},
    }
    for name, labels in expected.items():
        exp = load_experiment(find(name))
        assert {t.label for t in exp.tuned} == labels | {"DPO"}, name
        same_stages = {frontier.planned[0].cfg.data.generate}
        assert {r.cfg.data.generate for r in exp.planned} == same_stages, name
    assert {r.cfg.data.scores for r in load_experiment(find("imdb_margin")).planned} == {"reward_model"}
    dpo = sorted({r.method.cfg.beta for r in planned if r.label == "DPO"})
    ppo = sorted({r.cfg.rollout.target_kl for r in planned if r.label == "PPO"})
    ul = sorted({r.method.cfg.alpha for r in planned if r.label == "Unlikelihood"})
    assert dpo == [0.05, 0.1, 1.0, 5.0] and ppo == [3, 6, 9, 12] and ul == [0.05, 0.1, 0.5, 1.0]


def test_paper_twins_change_only_the_model_data_and_batch_settings():
    allowed = {"extends", "name", "description", "model", "sft", "data", "train", "rollout", "reward", "task"}
    for name, path in shipped().items():
        if not name.startswith("paper/"):
            continue
        own = yaml.safe_load(path.read_text())
        assert set(own) <= allowed | {"out_dir", "runs_dir"}, name
        base = load_experiment(path.parent / own["extends"])
        twin = load_experiment(path)
        assert [r.run_id for r in twin.runs] == [r.run_id for r in base.runs]
        assert [r.method.cfg for r in twin.runs] == [r.method.cfg for r in base.runs]  # same methods and knobs
        assert twin.runs[0].cfg.model.name_or_path is not None


# ---------------------------------------------------------------------------------------- writers


def test_pareto_front_by_hand():
    kl = [0.0, 1.0, 2.0, 2.0, 3.0, 5.0]
    reward = [0.1, 0.5, 0.4, 0.7, 0.6, 0.9]
    # (0, .1) → (1, .5) → (2, .7) → (5, .9); (2, .4) and (3, .6) are dominated
    assert pareto_front(kl, reward) == [0, 1, 3, 5]


def test_gao_fit_recovers_its_parameters():
    d = np.linspace(0.2, 4, 30)
    for kind, (a, b) in (("rl", (1.0, 0.3)), ("bon", (0.8, 0.1))):
        params = fit_gao(d**2, gao_curve(d, a, b, kind), kind)
        assert params is not None and np.allclose(params, (a, b), atol=1e-4)
    assert fit_gao(np.array([0.0, 1.0]), np.array([0.0, 0.5]), "rl") is None


def _frontier_frame() -> pd.DataFrame:
    rows = []
    for method, slope in (("DPO", 0.2), ("PPO", 0.1)):
        for step, kl in enumerate([0.0, 1.0, 4.0]):
            r = 0.1 + slope * kl
            rows.append(
                {
                    "method": method,
                    "objective": method.lower(),
                    "run": f"{method}-a",
                    "setting": "beta=0.1",
                    "seed": 0,
                    "step": step * 10,
                    "kl": kl,
                    "kl_ci_low": kl - 0.1,
                    "kl_ci_high": kl + 0.1,
                    "reward": r,
                    "reward_ci_low": r - 0.05,
                    "reward_ci_high": r + 0.05,
                }
            )
    return pd.DataFrame(rows)


def test_frontier_plot_and_table(tmp_path):
    frame = _frontier_frame()
    paths = plot_frontier(frame, tmp_path, fit=True)
    assert [p.name for p in paths] == ["frontier.png", "frontier.svg", "frontier_fit.png", "frontier_fit.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in paths[1].read_bytes()[:400]
    text = frontier_table(frame)
    assert "| DPO | beta=0.1 | 0 | 20 | 4.00 [3.90, 4.10] | 0.90 [0.85, 0.95] |" in text
    assert "| PPO | 3 | 0.00 → 0.10, 1.00 → 0.20, 4.00 → 0.50 |" in text


def test_fits_go_to_their_own_file_and_the_plot_is_the_same_bytes_every_time(tmp_path):
    """--fit writes frontier_fit.* beside frontier.*, which stays what it was without --fit; drawing the
    same rows again gives the same bytes (no date in the SVG, no random ids): a rerun leaves the files alone."""
    frame = _frontier_frame()
    plain = {p.name: p.read_bytes() for p in plot_frontier(frame, tmp_path / "plain")}
    fitted = {p.name: p.read_bytes() for p in plot_frontier(frame, tmp_path / "fitted", fit=True)}
    assert fitted["frontier.png"] == plain["frontier.png"] and fitted["frontier.svg"] == plain["frontier.svg"]
    assert fitted["frontier_fit.svg"] != fitted["frontier.svg"]
    assert b"Gao et al. (2023) fits" in fitted["frontier_fit.svg"] and b"Gao et al." not in fitted["frontier.svg"]
    assert b"<dc:date>" not in plain["frontier.svg"]


def test_settings_of_a_method_get_their_own_markers_and_labels(tmp_path):
    """Two settings of one method: one colour, two markers, each setting named in the legend and
    written (as β=…) at the last step of its trajectory."""
    import matplotlib.pyplot as plt

    from alignlab.experiment.plots import _frontier_figure

    rows = _frontier_frame()
    second = rows[rows["method"] == "DPO"].assign(run="DPO-b", setting="beta=0.5", reward=lambda f: f["reward"] / 2)
    frame = pd.concat([rows, second], ignore_index=True)
    fig = _frontier_figure(frame, "t", False, True, (), (), False)
    ax = fig.axes[0]
    legend = {h.get_label(): h for h in ax.get_legend().legend_handles}
    assert list(legend) == ["DPO", "  β=0.1", "  β=0.5", "PPO"]  # PPO has one setting: its line alone
    dpo, first, other = legend["DPO"], legend["  β=0.1"], legend["  β=0.5"]
    assert first.get_marker() != other.get_marker()
    assert first.get_color() == other.get_color() == dpo.get_color() != legend["PPO"].get_color()
    # each setting's last point (step 20, KL 4): DPO β=0.1 at 0.1 + 0.2·4, β=0.5 at half that; PPO at 0.1 + 0.1·4
    written = sorted((t.get_text(), round(float(t.xy[0]), 6), round(float(t.xy[1]), 6)) for t in ax.texts)
    assert written == [("β=0.1", 4.0, 0.5), ("β=0.1", 4.0, 0.9), ("β=0.5", 4.0, 0.45)]
    plt.close(fig)


def test_the_y_axis_names_the_reward_it_shows():
    frame = _frontier_frame()
    assert (
        reward_label(frame.assign(reward_scale="log_odds"), use_p=True) == "P(positive) = σ(mean gold-judge log-odds)"
    )
    assert reward_label(frame.assign(reward_scale="log_odds"), use_p=False) == "mean gold-judge log-odds of positive"
    assert reward_label(frame.assign(reward_scale="reward_model"), use_p=False) == "mean reward-model score of samples"
    assert setting_label("beta=0.1 train.lr=0.001") == "β=0.1, lr=0.001" and setting_label("-") == "-"


def test_winrate_table_lays_out_temperature_by_method(tmp_path):
    rows = []
    for method, base in (("DPO", 0.6), ("PPO", 0.5)):
        for t in (0.0, 0.5, 1.0):
            w = base - 0.1 * t
            rows.append(
                {
                    "method": method,
                    "run": method,
                    "setting": "-",
                    "temperature": t,
                    "win_rate": w,
                    "win_rate_ci_low": w - 0.1,
                    "win_rate_ci_high": w + 0.1,
                    "n": 40,
                    "judge": "reward:rm",
                }
            )
    frame = pd.DataFrame(rows)
    text = winrate_table(frame)
    assert "| temperature | DPO | PPO |" in text
    assert "| 0.5 | 55.0 [45, 65] | 45.0 [35, 55] |" in text and "judge: reward:rm; prompts: 40" in text
    assert [p.name for p in plot_winrate(frame, tmp_path)] == ["winrate.png", "winrate.svg"]


# ---------------------------------------------------------------------------------------- judges


class _Reward:
    name = "len"

    def __call__(self, prompts, completions):
        return torch.tensor([float(len(c)) for c in completions])


def test_reward_judge_counts_ties_as_half():
    wins = RewardJudge(_Reward()).compare(["p"] * 3, ["aa", "a", "aaa"], ["a", "a", "aaaa"])
    assert wins.tolist() == [1.0, 0.5, 0.0]


class _FirstSlot(LLMJudge):
    """A judge that always prefers whatever it is shown first (pure position bias)."""

    def prefer_first(self, prompts, first, second):
        return torch.full((len(prompts),), 0.9)


def test_position_randomisation_cancels_a_position_biased_judge():
    judge = _FirstSlot(seed=3)
    n = 400
    p = judge.compare(["q"] * n, ["a"] * n, ["b"] * n)
    assert {round(v, 4) for v in p.tolist()} == {0.9, 0.1}  # each row mapped back to "a"
    assert abs(float(p.mean()) - 0.5) < 0.05  # without randomisation it would be 0.9


def test_causal_lm_judge_reads_the_letter_odds():
    from alignlab.models import build_preset, train_tokenizer

    tokenizer = train_tokenizer(["Response A or Response B: which is more helpful? " * 5] * 20, vocab_size=300)
    model = build_preset("tiny-s", tokenizer)  # the smoke preset's 128 positions are shorter than the prompt
    judge = CausalLMJudge(model, tokenizer, batch_size=2)
    p = judge.compare(["hi", "how are you", "?"], ["hello", "fine", "yes"], ["bye", "bad", "no"])
    assert p.shape == (3,) and bool(((p > 0) & (p < 1)).all())
    assert torch.equal(p, judge.compare(["hi", "how are you", "?"], ["hello", "fine", "yes"], ["bye", "bad", "no"]))
    # the same pair shown in the other order: P(first) comes from a different prompt, not 1 − P
    ab, ba = judge.prefer_first(["hi"], ["hello"], ["bye"]), judge.prefer_first(["hi"], ["bye"], ["hello"])
    assert not torch.equal(ab, ba)


# ---------------------------------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNLAB_CACHE_DIR", str(path))
        yield path


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_the_frontier_skips_finished_runs_and_resumes_unfinished_ones(tmp_path, data_dir, cache, capsys):
    path = _write(tmp_path, _experiment(tmp_path, data_dir))
    first = run_experiment(path)
    assert "alignlab: tiny: 3 runs to train" in capsys.readouterr().err
    assert first["trained"] == 3 and first["unfinished"] == [] and first["frontier_rows"] == 3 * 2 + 1
    results = tmp_path / "results"
    frame = pd.read_csv(results / "frontier.csv")
    assert list(frame["run"].unique()) == ["dpo-beta0.1", "dpo-beta0.5", "best_of_n"]
    assert sorted(frame[frame["run"] == "dpo-beta0.1"]["step"]) == [0, 2, 4]
    dpo = frame[frame["objective"] == "dpo"]
    for col in ("kl", "reward"):  # each mean inside its interval
        assert (dpo[f"{col}_ci_low"] <= dpo[col] + 1e-9).all() and (dpo[col] <= dpo[f"{col}_ci_high"] + 1e-9).all()
    assert (dpo[dpo["step"] > 0]["kl"] != 0).all() and (dpo[dpo["step"] == 0]["kl"] == 0).all()
    bon = frame[frame["objective"] == "best_of_n"].iloc[0]
    assert bon["kl"] == pytest.approx(np.log(2) - 0.5)
    for name in ("frontier.png", "frontier.svg", "frontier.md", "experiment.yaml", "configs/dpo-beta0.5.yaml"):
        assert (results / name).stat().st_size > 0, name
    config = yaml.safe_load((results / "configs" / "dpo-beta0.5.yaml").read_text())
    assert config["objective"] == {"name": "dpo", "beta": 0.5}
    # alignlab list: finished, as asked; with another learning rate the same run ids hold other runs: changed
    assert main(["list", str(path)]) == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()[1:]] == [
        ["finished", "dpo-beta0.1"],
        ["finished", "dpo-beta0.5"],
        ["finished", "best_of_n"],
    ]
    assert main(["list", str(path), "train.lr=3e-3", "methods.DPO.sweep.beta=[0.5, 0.7]"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split() for line in listed[1:3]] == [["changed", "dpo-beta0.5"], ["pending", "dpo-beta0.7"]]
    assert listed[3].split() == ["changed", "best_of_n"] and listed[4].startswith("changed: the run directory holds")

    # a finished experiment: nothing is trained again, nothing in the runs changes
    runs = tmp_path / "runs"
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and not p.name.startswith(".")}
    again = run_experiment(path)
    assert again["trained"] == 0 and again["skipped_finished"] == 3
    assert "alignlab: tiny: 0 runs to train, 3 finished already (skipped)" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert after == before
    assert pd.read_csv(results / "frontier.csv").equals(frame)

    # an unfinished run (killed after its step-2 checkpoint) resumes and ends where it would have
    run_dir = runs / "dpo-beta0.5"
    (run_dir / "summary.json").unlink()
    for ckpt in (run_dir / "checkpoints").glob("step-0000004"):
        import shutil

        shutil.rmtree(ckpt)
    assert status(load_experiment(path).runs[1]) == "started"
    resumed = run_experiment(path)
    assert resumed["trained"] == 1 and resumed["skipped_finished"] == 2
    assert f"alignlab: resuming {run_dir} from step 2 of 4" in capsys.readouterr().err.splitlines()
    cols = ["run", "step", "kl", "reward"]
    assert pd.read_csv(results / "frontier.csv")[cols].equals(frame[cols])


def test_two_processes_on_one_experiment_split_the_runs(tmp_path, data_dir, cache):
    doc = _experiment(tmp_path, data_dir, methods=[{"name": "dpo", "sweep": {"beta": [0.1, 0.2, 0.3, 0.4]}}])
    path = _write(tmp_path, doc)
    env = {**os.environ, "ALIGNLAB_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "alignlab.cli", "run", str(path)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    started = [line for _, err in outs for line in err.splitlines() if ": dpo (" in line]
    assert len(started) == 4  # each run trained once, by one of the two
    assert all(": dpo (" in err for _, err in outs)  # and each process trained some: they split the runs
    for run in load_experiment(path).runs:
        rows = _metrics(Path(run.cfg.out_dir))
        steps = [r["step"] for r in rows if r["split"] == "train"]
        assert steps == [1, 2, 3, 4], run.run_id
        summary = json.loads((Path(run.cfg.out_dir) / "summary.json").read_text())
        assert summary["final"] == [r for r in rows if r["split"] == "eval"][-1], run.run_id
    assert len(pd.read_csv(tmp_path / "results" / "frontier.csv")) == 4 * 3
    # nothing half-written: every file of the results, runs and shared cache reads whole, every
    # checkpoint is complete and names its own step, no writer's temporary is left behind
    spec = importlib.util.spec_from_file_location("kill_resume", REPO / "scripts" / "kill_resume.py")
    assert spec is not None and spec.loader is not None
    checks = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = checks
    spec.loader.exec_module(checks)
    found = checks.inspect([tmp_path / "results", tmp_path / "runs", cache], Path(tmp_path.anchor))
    assert found.files > 4 * 10 and found.problems == [] and found.temps == []


def test_plot_and_table_commands_redraw_from_the_csv(tmp_path, capsys):
    results = tmp_path / "res"
    results.mkdir()
    assert main(["plot", str(results)]) == 2
    assert "no frontier.csv or winrate.csv" in capsys.readouterr().err
    _frontier_frame().to_csv(results / "frontier.csv", index=False)
    assert main(["plot", str(results)]) == 0 and (results / "frontier.svg").exists()
    assert main(["table", str(results), "--print"]) == 0
    assert "Pareto front of each method" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "nope")]) == 2


def test_list_and_reproduce_name_the_shipped_experiments(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "imdb_frontier (alignlab reproduce imdb)" in out and "paper/" in out
    assert main(["reproduce", "imbd"]) == 2
    assert "did you mean 'imdb'?" in capsys.readouterr().err
    assert main(["list", str(REPO / "experiments" / "imdb_smoke.yaml")]) == 0
    assert "imdb_smoke: 6 runs" in capsys.readouterr().out


def test_win_rate_experiment_on_hh_writes_the_temperature_table(tmp_path, data_dir, cache):
    doc = _experiment(
        tmp_path,
        data_dir,
        name="hh_tiny",
        task={"name": "hh", "data_dir": str(data_dir), "max_rows": 600},
        sft={**SMOKE_SFT, "steps": 10},
        data={"source": "task", "pairs": 64, "eval_pairs": 16},
        reward={"model": {"epochs": 1, "batch_size": 16}, "max_pairs": 64},
        eval={"prompts": 4, "max_new_tokens": 8, "winrate": {"temperatures": [0.0, 1.0], "prompts": 12}},
        methods=[{"name": "best_of_n", "label": "SFT", "n": 1, "reward": {"kind": "model"}}, {"name": "dpo"}],
    )
    result = run_experiment(_write(tmp_path, doc))
    assert result["winrate_rows"] == 2 * 2
    frame = pd.read_csv(tmp_path / "results" / "winrate.csv")
    assert sorted(frame["temperature"]) == [0.0, 0.0, 1.0, 1.0] and (frame["n"] == 12).all()
    assert frame["win_rate"].between(0, 1).all() and (frame["judge"] == "reward:reward_model").all()
    assert (frame["win_rate_ci_low"] <= frame["win_rate"]).all()
    assert (frame["win_rate"] <= frame["win_rate_ci_high"]).all()
    table = (tmp_path / "results" / "winrate.md").read_text()
    assert "| temperature | SFT | DPO |" in table and (tmp_path / "results" / "winrate.png").exists()
    compute = pd.read_csv(tmp_path / "results" / "compute.csv").set_index("run")
    assert compute.loc["SFT", "roles"] == "policy + reward_model"  # best-of-N ranked by the reward model
    assert compute.loc["dpo", "roles"] == "policy + reference" and compute.loc["dpo", "trainable"] == 1


def test_a_method_far_past_the_budgets_runs_off_the_kl_axis_and_is_named():
    """A reference-free loss can leave π_ref by 100+ nats: with budgets up to KL 2 the axis ends at
    3 × 2 = 6, the far method's points beyond it are counted in a note, and the others fill the panel;
    without such points (or without budgets) the axis is matplotlib's own."""
    import matplotlib.pyplot as plt

    from alignlab.experiment.plots import _frontier_figure

    rows = _frontier_frame()
    far = rows[rows["method"] == "PPO"].assign(method="SimPO", run="SimPO-a", kl=lambda f: f["kl"] * 40)
    fig = _frontier_figure(pd.concat([rows, far], ignore_index=True), "t", False, True, (1.0, 2.0), (), False)
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((-0.3, 6.0))  # the far points' error bars set neither end
    notes = [t.get_text() for t in ax.texts if "off the axis" in t.get_text()]
    assert notes == ["SimPO: 2 more point(s) off the axis, up to KL 160 →"]  # KL 40 and 160 (steps 10, 20)
    plt.close(fig)
    for budgets in ((1.0, 2.0), ()):
        fig = _frontier_figure(rows, "t", False, True, budgets, (), False)
        assert fig.axes[0].get_xlim()[1] > 4.0 and not [t for t in fig.axes[0].texts if "off the axis" in t.get_text()]
        plt.close(fig)


def test_the_budget_bars_start_at_pi_refs_reward_not_at_best_of_ns():
    """π_ref's reward is 0.1 (the trained methods' step 0); best-of-N's rows are also at step 0 but are
    its samples' reward (1.5): the bars' baseline is 0.1, not the mean of all step-0 rows (0.55)."""
    import matplotlib.pyplot as plt

    from alignlab.experiment.plots import _frontier_figure, reference_reward
    from alignlab.experiment.summary import seed_means

    rows = _frontier_frame()
    bon = pd.DataFrame(
        [
            {
                **rows.iloc[0].to_dict(),
                "method": "best-of-N",
                "objective": "best_of_n",
                "run": f"bon-{n}",
                "setting": f"n={n}",
                "step": 0,
                "kl": kl,
                "reward": 1.5,
            }
            for n, kl in ((4, 0.64), (16, 1.83))
        ]
    )
    frame = pd.concat([rows, bon], ignore_index=True)
    assert reference_reward(seed_means(frame)) == pytest.approx(0.1)
    fig = _frontier_figure(frame, "t", False, True, (1.0,), (), False)
    bars = fig.axes[-1]
    assert [line.get_ydata()[0] for line in bars.get_lines() if line.get_color() == "grey"] == [pytest.approx(0.1)]
    plt.close(fig)
