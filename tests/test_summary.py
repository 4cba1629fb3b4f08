"""The comparison protocol (alignlab.experiment.summary): means and t-intervals over seeds, fronts,
reward at KL budgets, areas, the pairwise table, seeds as an experiment key, and ``alignlab table``.

Student-t quantiles used below: t_{0.975,2} = 4.302653, t_{0.975,1} = 12.706205.

The frame of most tests (:func:`_frame`), (KL, reward) at steps 0, 10, 20, 30:

    A seed 0: (0, 0)  (2, 1.0)  (3, 1.5)  (6, 1.0)      setting "beta=0.1 seed=0"
    A seed 1: (0, 0)  (2, 1.2)  (4, 1.8)  (6, 1.1)
    A seed 2: (0, 0)  (2, 0.8)  (5, 1.1)  (6, 1.0)
    B seed 0: (0, 0)  (1, 0.2)  (3, 0.6)                 setting "seed=0" (nothing else swept)
    B seed 1: (0, 0)  (1, 0.4)  (3, 0.8)

Each A seed's step-30 point is dominated: its front holds its last reward flat from there to KL 6,
the largest KL the seed reached (A seed 0: (0, 0) (2, 1.0) (3, 1.5) (6, 1.5)). B has 2 seeds where A has 3.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from alignlab.cli import main
from alignlab.errors import ConfigError
from alignlab.experiment.csvs import FRONTIER_COLUMNS
from alignlab.experiment.summary import (
    area_under_front,
    base_setting,
    front_areas,
    interpolate_front,
    pairwise,
    reward_at_budgets,
    seed_means,
    summary_markdown,
    t_interval,
)

T2, T1 = 4.302653, 12.706205  # t_{0.975, 2}, t_{0.975, 1}
POINTS = {
    ("A", 0): [(0, 0), (2, 1.0), (3, 1.5), (6, 1.0)],
    ("A", 1): [(0, 0), (2, 1.2), (4, 1.8), (6, 1.1)],
    ("A", 2): [(0, 0), (2, 0.8), (5, 1.1), (6, 1.0)],
    ("B", 0): [(0, 0), (1, 0.2), (3, 0.6)],
    ("B", 1): [(0, 0), (1, 0.4), (3, 0.8)],
}


def _frame(points: dict = POINTS, scale: str = "log_odds") -> pd.DataFrame:
    rows = []
    for (method, seed), pts in points.items():
        setting = f"beta=0.1 seed={seed}" if method == "A" else f"seed={seed}"
        for step, (kl, reward) in zip((0, 10, 20, 30), pts, strict=False):
            rows.append(
                {
                    **dict.fromkeys(FRONTIER_COLUMNS),
                    "experiment": "toy",
                    "method": method,
                    "objective": method.lower(),
                    "run": f"{method}-seed{seed}",
                    "setting": setting,
                    "seed": seed,
                    "step": step,
                    "kl": float(kl),
                    "kl_ci_low": kl - 0.1,
                    "kl_ci_high": kl + 0.1,
                    "reward": reward,
                    "reward_ci_low": reward - 0.1,
                    "reward_ci_high": reward + 0.1,
                    "reward_scale": scale,
                    "finished": True,
                }
            )
    return pd.DataFrame(rows, columns=FRONTIER_COLUMNS)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-6)


def test_t_interval_by_hand():
    """[0.4, 0.5, 0.6]: mean 0.5, s = 0.1, half-width 4.302653 · 0.1 / √3 = 0.248414."""
    mean, low, high, n = t_interval([0.4, 0.5, 0.6])
    assert n == 3 and close(mean, 0.5) and close(low, 0.251586) and close(high, 0.748414)
    one = t_interval([0.7, math.nan])  # non-finite values are not seeds
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)
    assert t_interval([]).n == 0 and math.isnan(t_interval([]).mean)


def test_the_setting_without_its_seed():
    assert base_setting("beta=0.1 seed=2") == "beta=0.1"
    assert base_setting("seed=0") == "-" and base_setting("-") == "-" and base_setting(math.nan) == "-"
    assert base_setting("train.seed=3 train.lr=0.001") == "train.lr=0.001"


def test_means_over_three_seeds_their_intervals_and_the_front_of_the_means():
    """A, step 10: rewards 1.0, 1.2, 0.8 → mean 1.0, s = 0.2, half 4.302653 · 0.2/√3 = 0.496828;
    step 20: KL 3, 4, 5 → mean 4, s = 1, half 4.302653/√3 = 2.484138. Step 30's mean reward
    (1.0 + 1.1 + 1.0)/3 = 1.0333 at KL 6 is below step 20's 1.4667: off the front.
    B: two seeds where A has three → flagged; step 10 rewards 0.2, 0.4 → 0.3 ± 12.706205 · 0.1414/√2
    = 0.3 ± 1.270621."""
    means = seed_means(_frame())
    a = means[means["method"] == "A"].set_index("step")
    assert list(a["setting"]) == ["beta=0.1"] * 4 and list(a["n"]) == [3, 3, 3, 3] and a["complete"].all()
    assert a.loc[10, "seeds"] == "0, 1, 2"
    assert close(a.loc[10, "reward"], 1.0) and close(a.loc[10, "reward_ci_low"], 1.0 - 0.496828)
    assert close(a.loc[10, "reward_ci_high"], 1.0 + 0.496828) and close(a.loc[10, "kl_ci_low"], 2.0)
    assert close(a.loc[20, "kl"], 4.0) and close(a.loc[20, "kl_ci_low"], 4 - 2.484138)
    assert close(a.loc[20, "kl_ci_high"], 4 + 2.484138) and close(a.loc[20, "reward"], 4.4 / 3)
    assert list(a["on_front"]) == [True, True, True, False]
    b = means[means["method"] == "B"].set_index("step")
    assert list(b["setting"]) == ["-"] * 3 and list(b["n"]) == [2, 2, 2] and not b["complete"].any()
    assert (b["expected"] == 3).all() and close(b.loc[10, "reward_ci_low"], 0.3 - 1.270621)


def test_one_seed_gives_means_without_intervals():
    means = seed_means(_frame({("A", 0): POINTS[("A", 0)]}))
    assert list(means["n"]) == [1] * 4 and means["complete"].all()
    assert means["reward_ci_low"].isna().all() and means["kl_ci_high"].isna().all()
    assert list(means["reward"]) == [0, 1.0, 1.5, 1.0]
    at = reward_at_budgets(_frame({("A", 0): POINTS[("A", 0)]}), [1.0])
    assert at["n"].tolist() == [1] and close(at["reward"][0], 0.5) and math.isnan(at["reward_ci_low"][0])
    text = summary_markdown(_frame({("A", 0): POINTS[("A", 0)]}), [1.0], 20.0)
    # area 0–6: 2·1.0/2 + 1·(1.0 + 1.5)/2 + 3·1.5 = 1 + 1.25 + 4.5 = 6.75
    assert "| A | 1 | 0.50 n=1 |" in text and "| A | 1 | 6.75 | 0.00 – 6.00 | no |" in text


def test_interpolation_along_a_front_by_hand():
    """Front (0, 0) → (2, 1) → (6, 2): at 1, half-way to (2, 1): 0.5; at the vertex 2: 1; at 4:
    1 + (4 − 2)/(6 − 2) · (2 − 1) = 1.5; beyond 6 or below 0: blank."""
    kl, reward = np.array([0.0, 2.0, 6.0]), np.array([0.0, 1.0, 2.0])
    assert interpolate_front(kl, reward, 1.0) == 0.5 and interpolate_front(kl, reward, 2.0) == 1.0
    assert interpolate_front(kl, reward, 4.0) == 1.5 and interpolate_front(kl, reward, 6.0) == 2.0
    assert math.isnan(interpolate_front(kl, reward, 6.5)) and math.isnan(interpolate_front(kl, reward, -0.1))


def test_area_under_a_front_by_hand():
    """Front (0, 0) → (2, 1) → (6, 2): from 0 to 6, 2 · (0 + 1)/2 + 4 · (1 + 2)/2 = 1 + 6 = 7; from 1 to 4,
    f(1) = 0.5, f(4) = 1.5: 1 · (0.5 + 1)/2 + 2 · (1 + 1.5)/2 = 0.75 + 2.5 = 3.25; never extrapolated."""
    kl, reward = np.array([0.0, 2.0, 6.0]), np.array([0.0, 1.0, 2.0])
    assert area_under_front(kl, reward, 0.0, 6.0) == 7.0 and area_under_front(kl, reward, 1.0, 4.0) == 3.25
    assert math.isnan(area_under_front(kl, reward, 0.0, 8.0)) and math.isnan(area_under_front(kl, reward, 3, 3))


def test_reward_at_budgets_per_seed_front_then_over_seeds():
    """A at KL 1 (inside): 0.5, 0.6, 0.4 → 0.5 ± 0.248414; at KL 2 (a vertex of every front): 1.0, 1.2,
    0.8 → 1.0 ± 0.496828; at KL 4: seed 0's front is held at 1.5 from KL 3 (its runs went on to KL 6
    without doing better), seed 1's vertex 1.8, seed 2 0.8 + (4 − 2)/(5 − 2) · 0.3 = 1.0 → n = 3:
    mean 4.3/3 = 1.433333, s = √(0.326667/2) = 0.404145, half 4.302653 · 0.404145/√3 = 1.003952;
    at KL 6, the largest every seed reached: 1.5, 1.8, 1.1 → 4.4/3; at KL 7, beyond: blank.
    B at KL 2: 0.4, 0.6 → 0.5 (two seeds: flagged)."""
    at = reward_at_budgets(_frame(), [2.0, 1.0, 4.0, 6.0, 7.0]).set_index(["method", "kl"])
    assert close(at.loc[("A", 1.0), "reward"], 0.5) and close(at.loc[("A", 1.0), "reward_ci_low"], 0.251586)
    assert close(at.loc[("A", 2.0), "reward"], 1.0) and close(at.loc[("A", 2.0), "reward_ci_high"], 1.496828)
    assert at.loc[("A", 1.0), "complete"] and at.loc[("A", 2.0), "n"] == 3 and at.loc[("A", 2.0), "seeds"] == 3
    four = at.loc[("A", 4.0)]
    assert four["n"] == 3 and close(four["reward"], 4.3 / 3) and close(four["reward_ci_low"], 4.3 / 3 - 1.003952)
    assert four["complete"] and four["per_seed"] == "0:1.5 1:1.8 2:1"
    assert at.loc[("A", 6.0), "n"] == 3 and close(at.loc[("A", 6.0), "reward"], 4.4 / 3)
    assert at.loc[("A", 7.0), "n"] == 0 and math.isnan(at.loc[("A", 7.0), "reward"])
    assert close(at.loc[("B", 2.0), "reward"], 0.5) and not at.loc[("B", 2.0), "complete"]


def test_areas_over_the_range_every_seed_covers():
    """A's seeds all reached KL 6 (their fronts held flat from their last improvement): to cap 20
    each is integrated over [0, 6]: seed 0: 2·1.0/2 + 1·(1.0 + 1.5)/2 + 3·1.5 = 6.75; seed 1:
    1.2 + 2·(1.2 + 1.8)/2 + 2·1.8 = 7.8; seed 2: 0.8 + 3·(0.8 + 1.1)/2 + 1.1 = 4.75; mean 19.3/3 =
    6.433333, s = 1.549462, half 4.302653 · 1.549462/√3 = 3.849078. To cap 3, the range every seed
    covers is [0, 3]: seed 0 2.25; seed 1 1.2 + (1.2 + 1.5)/2 = 2.55; seed 2 0.8 + (0.8 + 0.9)/2 = 1.65;
    mean 2.15, s = √0.21 = 0.458258, half 4.302653 · 0.458258/√3 = 1.138375. B reached only KL 3:
    over [0, 3]: 0.9 and 1.4 → 1.15 ± 12.706205 · 0.353553/√2 = 1.15 ± 3.176551. With cap 2.5:
    seed 0 1.0 + 0.5 · (1.0 + 1.25)/2 = 1.5625."""
    areas = front_areas(_frame(), 20.0).set_index("method")
    a = areas.loc["A"]
    assert (a["kl_from"], a["kl_to"], a["n"], a["complete"]) == (0.0, 6.0, 3, True)
    assert close(a["area"], 19.3 / 3) and close(a["area_ci_low"], 19.3 / 3 - 3.849078)
    a3 = front_areas(_frame(), 3.0).set_index("method").loc["A"]
    assert (a3["kl_from"], a3["kl_to"]) == (0.0, 3.0) and close(a3["area"], 2.15)
    assert close(a3["area_ci_low"], 2.15 - 1.138375)
    b = areas.loc["B"]
    assert close(b["area"], 1.15) and close(b["area_ci_high"], 1.15 + 3.176551) and not b["complete"]
    capped = front_areas(_frame({("A", 0): POINTS[("A", 0)]}), 2.5).set_index("method").loc["A"]
    assert capped["kl_to"] == 2.5 and close(capped["area"], 1.5625)


def test_pairwise_says_whether_the_intervals_separate():
    """At KL 1: A 2.0 [1.8, 2.2], B 1.0 [0.9, 1.1], C 1.5 [1.0, 2.0], D 3.0 (one seed, no interval).
    A − B = 1.0, 1.8 > 1.1: separate; A − C = 0.5, 1.8 < 2.0: not; C − B = 0.5, 1.0 < 1.1: not;
    D against anyone: no interval, blank."""
    budgets = pd.DataFrame(
        {
            "method": ["A", "B", "C", "D"],
            "kl": [1.0] * 4,
            "reward": [2.0, 1.0, 1.5, 3.0],
            "reward_ci_low": [1.8, 0.9, 1.0, math.nan],
            "reward_ci_high": [2.2, 1.1, 2.0, math.nan],
            "complete": [True, True, True, False],
        }
    )
    pairs = pairwise(budgets).set_index(["above", "below"])
    assert len(pairs) == 6
    assert close(pairs.loc[("A", "B"), "difference"], 1.0) and pairs.loc[("A", "B"), "separate"] == "yes"
    assert pairs.loc[("A", "C"), "separate"] == "no" and pairs.loc[("C", "B"), "separate"] == "no"
    assert close(pairs.loc[("C", "B"), "difference"], 0.5)
    assert pairs.loc[("D", "A"), "separate"] == "" and not pairs.loc[("D", "A"), "complete"]


# ------------------------------------------------------------------------------------ seeds: an experiment key


def _load(tmp_path: Path, **doc):
    from alignlab.experiment.config import load_experiment

    doc = {"name": "s", "out_dir": str(tmp_path / "r"), "runs_dir": str(tmp_path / "runs"), **doc}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_experiment(path)


def test_seeds_run_every_method_with_each_seed(tmp_path):
    methods = [{"name": "dpo", "sweep": {"beta": [0.1, 1.0]}}, {"name": "ipo", "label": "IPO"}]
    exp = _load(tmp_path, seeds=2, methods=methods)
    assert [r.run_id for r in exp.runs] == [
        "dpo-beta0.1-seed0",
        "dpo-beta0.1-seed1",
        "dpo-beta1-seed0",
        "dpo-beta1-seed1",
        "IPO-seed0",
        "IPO-seed1",
    ]
    assert [r.cfg.train.seed for r in exp.runs] == [0, 1, 0, 1, 0, 1]
    assert exp.runs[1].setting == {"beta": 0.1, "seed": 1}
    listed = _load(tmp_path, seeds=[3, 7], methods=[{"name": "dpo"}])
    assert [(r.run_id, r.cfg.train.seed) for r in listed.runs] == [("dpo-seed3", 3), ("dpo-seed7", 7)]


@pytest.mark.parametrize(
    ("doc", "key", "message"),
    [
        ({"methods": [{"name": "dpo", "sweep": {"seed": [0, 1]}}]}, "methods[0].sweep.seed", "conflicts with seeds"),
        ({"methods": [{"name": "dpo", "train": {"seed": 4}}]}, "methods[0].train.seed", "conflicts with seeds"),
        ({"methods": [{"name": "dpo"}], "train": {"seed": 4}}, "train.seed", "conflicts with seeds"),
        ({"methods": [{"name": "dpo"}], "seeds": 0}, "seeds", "a number of seeds in 1 .. 1000"),
        ({"methods": [{"name": "dpo"}], "seeds": [1, 1]}, "seeds", "seed 1 is listed twice"),
        ({"methods": [{"name": "dpo"}], "seeds": [-1]}, "seeds", "must be >= 0"),
    ],
)
def test_seeds_conflicts_and_bad_values_are_refused(tmp_path, doc, key, message):
    doc = {"seeds": 2, **doc}
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, **doc)
    assert err.value.key == key and message in err.value.message, err.value


# ------------------------------------------------------------------------------------ alignlab table / plot


def test_table_writes_the_summaries_of_a_results_directory(tmp_path, capsys):
    """The frame above as frontier.csv, with the experiment's kl_budgets [1, 2, 4] and kl_cap 3 in its
    experiment.yaml. A at KL 1: 0.5 [0.25, 0.75] (n = 3), P(positive) σ(0.5) = 0.6225 [σ(0.2516) =
    0.5626, σ(0.7484) = 0.6788]; at KL 4: 1.43 [0.43, 2.44] (n = 3; σ: 0.807 [0.606, 0.920]).
    Area to 3: A 2.15 [1.01, 3.29] over 0 – 3, reaching the cap. A above B at KL 1 by 0.2, intervals
    overlapping (B: [−0.97, 1.57])."""
    results = tmp_path / "results"
    results.mkdir()
    _frame().to_csv(results / "frontier.csv", index=False)
    (results / "experiment.yaml").write_text(yaml.safe_dump({"name": "toy", "kl_budgets": [1, 2, 4], "kl_cap": 3}))
    assert main(["table", str(results), "--print"]) == 0
    printed = capsys.readouterr().out
    assert "## Reward at KL budgets (log-odds)" in printed and "quantity,method" not in printed  # not the CSV
    summary = pd.read_csv(results / "summary.csv", keep_default_na=False, na_values=[""])
    at = summary[summary["quantity"] == "reward_at_kl"].set_index(["method", "kl"])
    assert close(at.loc[("A", 1.0), "value"], 0.5) and close(at.loc[("A", 1.0), "ci_low"], 0.251586)
    one = at.loc[("A", 1.0)]
    assert close(one["p_positive"], 0.622459) and close(one["p_positive_ci_low"], 0.562567)
    assert at.loc[("A", 4.0), "n"] == 3 and at.loc[("A", 4.0), "complete"] and at.loc[("A", 4.0), "seeds"] == 3
    area = summary[summary["quantity"] == "area_to_cap"].set_index("method").loc["A"]
    assert close(area["value"], 2.15) and (area["kl_from"], area["kl_to"], area["kl"]) == (0.0, 3.0, 3.0)
    pair = summary[summary["quantity"] == "a_above_b"].set_index(["method", "versus", "kl"]).loc[("A", "B", 1.0)]
    assert close(pair["value"], 0.2) and pair["separate"] == "no" and (summary["reward_scale"] == "log_odds").all()
    text = (results / "frontier.md").read_text()
    assert "| A | 3 | 0.50 [0.25, 0.75] n=3 | 1.00 [0.50, 1.50] n=3 | 1.43 [0.43, 2.44] n=3 |" in text
    assert "| A | 3 | 0.622 [0.563, 0.679] n=3 | 0.731 [0.623, 0.817] n=3 | 0.807 [0.606, 0.920] n=3 |" in text
    assert "| B | 2 | 0.30 [-0.97, 1.57] n=2† | 0.50 [-0.77, 1.77] n=2† |  |" in text
    assert "## Area under the front to KL 3" in text and "| A | 3 | 2.15 [1.01, 3.29] | 0.00 – 3.00 | yes |" in text
    assert "| 1 | A | B | 0.20† | 0.048 | no |" in text  # σ(0.5) − σ(0.3) = 0.6225 − 0.5744
    assert "| A | 4 | 0.00 → 0.00, 2.00 → 1.00, 4.00 → 1.47 |" in text  # the front of the means
    assert "| B | - | 10 | 2† | 1.00 [1.00, 1.00] | 0.30 [-0.97, 1.57] | 0.574 [0.275, 0.828] | yes |" in text
    assert "## Last evaluation of each run" in text


def test_plot_draws_panels_and_the_budget_bars(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    _frame(scale="reward_model").to_csv(results / "frontier.csv", index=False)
    (results / "experiment.yaml").write_text(yaml.safe_dump({"plot_panels": [["B"]]}))
    assert main(["plot", str(results)]) == 0
    assert (results / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_reward_scale_comes_from_the_task():
    from alignlab.experiment.report import reward_scale

    assert reward_scale("imdb") == "log_odds" and reward_scale(None) == "log_odds"  # the default task
    assert reward_scale("hh") == "reward_model" and reward_scale("tldr") == "reward_model"
