"""Tasks by capability (issue 15): what a task can give is read from what its class declares, never from its
name; ``register_task`` adds a task of one's own, from a plugin; the README's worked example trains DPO on a
plugin's task through ``alignlab train``."""

from __future__ import annotations

import importlib
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignlab import reference, stages
from alignlab.cache_keys import code_version
from alignlab.errors import AlignlabError, ConfigError
from alignlab.experiment.report import reward_scale
from alignlab.jobs.job import resolve, run_training
from alignlab.prepare import run_prepare
from alignlab.rewards import gold
from alignlab.rewards.judges import DIALOGUE_TEMPLATE, SUMMARY_TEMPLATE, llm_judge
from alignlab.run_config import DataConfig
from alignlab.tasks import (
    DATA_SOURCES,
    TASKS,
    GoldJudge,
    Task,
    TaskConfig,
    UnknownTaskError,
    build_task,
    get_task,
    register_task,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "adding_a_task"


# ---------------------------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize(
    ("name", "sources", "has_gold", "has_references", "template"),
    [
        ("imdb", ("generated", "reviews", "file"), True, False, DIALOGUE_TEMPLATE),
        ("hh", ("task", "file"), False, True, DIALOGUE_TEMPLATE),
        ("tldr", ("task", "file"), False, True, SUMMARY_TEMPLATE),
        ("cnndm", ("task", "file"), False, True, SUMMARY_TEMPLATE),
    ],
)
def test_each_builtin_task_declares_what_it_can_give(name, sources, has_gold, has_references, template):
    task = get_task(name)
    assert task.data_sources() == sources
    assert task.has_gold_judge() is has_gold and (task.gold_judge is not None) is has_gold
    assert task.has_references() is has_references
    assert task.judge_template is template


def test_the_data_sources_table_covers_every_data_source():
    (sources,) = [typing.get_args(t) for f, t in typing.get_type_hints(DataConfig).items() if f == "source"]
    assert tuple(DATA_SOURCES) == sources


def test_imdb_gold_judge_is_the_sentiment_classifier_under_the_same_cache_key():
    """The key of the cached judge is what it was when stages.gold_judge named imdb: the gold module's code."""
    judge = get_task("imdb").gold_judge
    assert judge is not None and judge.reward_scale == "log_odds"
    assert judge.modules() == ("alignlab.rewards.gold",)
    assert code_version(*map(importlib.import_module, judge.modules())) == code_version(gold)


def test_the_reward_scale_of_results_follows_the_tasks_gold_judge():
    assert reward_scale("imdb") == "log_odds" and reward_scale(None) == "log_odds"  # a run's default task
    assert reward_scale("hh") == "reward_model" and reward_scale("tldr") == "reward_model"
    register_task(GoldLabelled)
    assert reward_scale("test_gold") == "gold"  # a plugin's judge: no claim to log-odds


def test_tasks_is_a_read_only_view_of_the_registry():
    assert list(TASKS) == ["imdb", "hh", "tldr", "cnndm"]
    with pytest.raises(TypeError):
        TASKS["mine"] = Task  # type: ignore[index]


# ---------------------------------------------------------------------------------------------- register_task


class Tiny(Task):
    """Two labelled texts and their prompts, nothing read."""

    name = "test_tiny"

    def sft_texts(self) -> list[str]:
        return [t for t, _ in self.labelled("train")]

    def prompts(self, split: Any, tokenizer: Any = None) -> list[str]:
        return ["one", "two"]

    def labelled(self, split: Any) -> list[tuple[str, int]]:
        return [("good words here now", 1), ("bad things there then", 0)] * 2


def _train_judge(task: Task, out_dir: Path, seed: int) -> None:
    (out_dir / "judge.json").write_text(json.dumps({"seed": seed, "task": task.name}))


class LengthJudge:
    """A stand-in gold reward: the completion's length."""

    def __init__(self, path: Path) -> None:
        self.saved = json.loads((path / "judge.json").read_text())
        self.name = f"length:{self.saved['seed']}"

    def __call__(self, prompts: Any, completions: Any) -> Any:
        import torch

        return torch.tensor([float(len(c)) for c in completions])


class GoldLabelled(Tiny):
    name = "test_gold"
    gold_judge = GoldJudge(train=_train_judge, load=LengthJudge, doing="measuring lengths")


def test_a_registered_task_is_found_by_name_and_offers_what_it_declares(monkeypatch):
    assert register_task(Tiny) is Tiny
    assert get_task("test_tiny") is Tiny and list(TASKS)[-1] == "test_tiny"
    assert Tiny.data_sources() == ("reviews", "file")  # labelled texts: review pairs, and a file
    assert not Tiny.has_gold_judge() and not Tiny.has_references() and Tiny.judge_template == DIALOGUE_TEMPLATE
    register_task(Tiny)  # the same class again (a plugin imported twice) is harmless
    monkeypatch.delenv("ALIGNLAB_DATA_DIR", raising=False)
    task = build_task({"name": "test_tiny"})
    assert isinstance(task, Tiny) and task.source == "(no data directory)"
    assert GoldLabelled.data_sources() == ("generated", "reviews", "file")


def test_a_plugins_task_stays_out_of_the_yaml_reference():
    register_task(Tiny)
    assert "test_tiny" in TASKS and "test_tiny" not in reference.render()


def test_review_pairs_come_from_any_tasks_labelled_texts():
    """Prompt: the opening of a text labelled 1; chosen: its continuation; rejected: a 0-labelled text's."""
    task = Tiny(TaskConfig(name="test_tiny"))
    pairs = task.review_pairs(2, prompt_words=1, completion_words=2, seed=0)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("good", " words here", " things there")] * 2
    with pytest.raises(AlignlabError, match=r"task 'test_tiny' .* has 2 texts labelled 1 .* need 3 of each"):
        task.review_pairs(3, prompt_words=1, completion_words=2, seed=0)


def test_registering_something_that_is_not_a_task_is_one_clear_error():
    with pytest.raises(TypeError, match=r"^register_task: <class 'dict'> is not a Task subclass"):
        register_task(dict)  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"is not a Task subclass"):
        register_task(lambda: None)  # type: ignore[type-var]


def test_a_task_must_name_itself_and_implement_the_required_methods():
    class Nameless(Tiny):
        pass

    with pytest.raises(ValueError, match=r"Nameless: set its name, lower-case .* got None"):
        register_task(Nameless)

    class Shouting(Tiny):
        name = "MyTask"

    with pytest.raises(ValueError, match=r"got 'MyTask'"):
        register_task(Shouting)

    class Incomplete(Task):
        name = "test_incomplete"

    with pytest.raises(TypeError, match=r"Incomplete: implement prompts, sft_texts"):
        register_task(Incomplete)


def test_a_taken_name_is_refused_unless_it_is_the_same_class():
    class OtherIMDb(Tiny):
        name = "imdb"

    with pytest.raises(ValueError, match=r"task name 'imdb' is already registered by alignlab\.tasks\.imdb\.IMDbTask"):
        register_task(OtherIMDb)
    assert get_task("imdb").__name__ == "IMDbTask"


def test_declared_capabilities_of_the_wrong_kind_are_refused():
    class BadTemplate(Tiny):
        name = "test_bad_template"
        judge_template = "Which is better, {first} or {second}?"

    with pytest.raises(TypeError, match=r"judge_template shows no \{prompt\}"):
        register_task(BadTemplate)

    class BadJudge(Tiny):
        name = "test_bad_judge"
        gold_judge = "sentiment"  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"gold_judge must be a GoldJudge or None, got 'sentiment'"):
        register_task(BadJudge)

    class BadConfig(Tiny):
        name = "test_bad_config"
        config_cls = dict  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"config_cls must be a TaskConfig subclass"):
        register_task(BadConfig)


def test_an_unknown_task_suggests_the_closest_or_the_plugins_list():
    with pytest.raises(UnknownTaskError, match=r"unknown task 'imbd'; did you mean 'imdb'\? \(tasks: imdb, hh"):
        get_task("imbd")
    with pytest.raises(UnknownTaskError, match=r"is the plugin that registers it listed under plugins:\?"):
        get_task("zzzzzz")
    with pytest.raises(UnknownTaskError, match=r"unknown task 'tdlr'; did you mean 'tldr'"):
        llm_judge("no-model-is-loaded", "tdlr", seed=0)  # the task's prompt is looked up first


# ---------------------------------------------------------------------------------------------- pre-flight


def _run_yaml(tmp_path: Path, **sections: Any) -> Path:
    doc = {"model": {"preset": "smoke"}, "out_dir": str(tmp_path / "run"), **sections}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_generated_pairs_from_a_task_without_a_gold_judge_is_one_line_naming_the_file_and_key(tmp_path):
    path = _run_yaml(tmp_path, task={"name": "hh"}, data={"source": "generated"})
    with pytest.raises(ConfigError) as err:
        resolve(path, [])
    assert str(err.value) == (
        f"{path}: data.source: generated needs a task with a gold judge (tasks with one: imdb); "
        "task 'hh' can give: task, file"
    )


@pytest.mark.parametrize(
    ("sections", "key", "message"),
    [
        (
            {"task": {"name": "imdb"}, "data": {"source": "task"}},
            "data.source",
            "task needs a task with human preference pairs (tasks with them: hh, tldr, cnndm); "
            "task 'imdb' can give: generated, reviews, file",
        ),
        (
            {"task": {"name": "tldr"}, "data": {"source": "reviews"}},
            "data.source",
            "reviews needs a task with labelled texts (tasks with them: imdb); task 'tldr' can give: task, file",
        ),
        (
            {"task": {"name": "hh"}, "data": {"source": "task"}, "objective": {"name": "best_of_n"}},
            "reward.kind",
            "task 'hh' has no gold judge (tasks with one: imdb): use model",
        ),
        (
            {
                "task": {"name": "hh"},
                "data": {"source": "task"},
                "eval": {"winrate": {"temperatures": [0], "judge": "gold"}},
            },
            "eval.winrate.judge",
            "task 'hh' has no gold judge (tasks with one: imdb): use reward_model or llm",
        ),
    ],
)
def test_what_a_task_cannot_give_is_refused_before_any_work(tmp_path, sections, key, message):
    path = _run_yaml(tmp_path, **sections)
    with pytest.raises(ConfigError) as err:
        resolve(path, [])
    assert err.value.key == key and str(err.value) == f"{path}: {key}: {message}"
    assert not (tmp_path / "run").exists()


def test_a_plugins_task_with_a_gold_judge_may_generate_pairs(tmp_path):
    register_task(GoldLabelled)
    cfg, _ = resolve(_run_yaml(tmp_path, task={"name": "test_gold"}, data={"source": "generated"}), [])
    assert cfg.task == {"name": "test_gold"}
    with pytest.raises(ConfigError, match=r"\(tasks with one: imdb, test_gold\); task 'hh'"):
        resolve(_run_yaml(tmp_path, task={"name": "hh"}, data={"source": "generated"}), [])


def test_prepare_refuses_pair_generation_without_a_gold_judge(tmp_path):
    path = tmp_path / "prepare.yaml"
    path.write_text(yaml.safe_dump({"task": {"name": "hh"}, "pairs": {}, "out_dir": str(tmp_path / "out")}))
    with pytest.raises(ConfigError) as err:
        run_prepare(path)
    assert str(err.value) == (
        f"{path}: pairs: pair generation needs a task with a gold judge (tasks with one: imdb): leave pairs out"
    )


# ---------------------------------------------------------------------------------------------- the stage


def test_the_gold_judge_stage_trains_what_the_task_declares_once_then_loads_it(tmp_path, capsys):
    task = GoldLabelled(TaskConfig(name="test_gold"))
    judge = stages.gold_judge(task, seed=3, root=tmp_path)
    assert judge.name == "length:3" and judge.saved == {"seed": 3, "task": "test_gold"}
    assert "measuring lengths" in capsys.readouterr().err
    entries = sorted(p.name for p in (tmp_path / "gold").iterdir() if not p.name.startswith("."))  # not the lock
    again = stages.gold_judge(task, seed=3, root=tmp_path)  # cached: loaded, not trained again
    assert again.saved == judge.saved and len(entries) == 1
    assert sorted(p.name for p in (tmp_path / "gold").iterdir() if not p.name.startswith(".")) == entries
    assert "reused from the cache" in capsys.readouterr().err
    assert judge(["q"], ["abc"]).tolist() == [3.0]


def test_the_gold_judge_stage_of_a_task_without_one_names_the_tasks_with_one(tmp_path):
    with pytest.raises(AlignlabError, match=r"^task 'test_tiny' has no gold judge \(tasks with one: imdb\)$"):
        stages.gold_judge(Tiny(TaskConfig(name="test_tiny")), seed=0, root=tmp_path)


# ---------------------------------------------------------------------------------------------- the worked example


def readme_block(title: str) -> str:
    """The fenced code block that follows the README line ``title``."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(title) :]
    found = re.search(r"```\w*\n(.*?)```", after, re.DOTALL)
    assert found is not None, title
    return found.group(1)


def test_readme_task_example_is_the_shipped_files():
    assert readme_block("`examples/adding_a_task/my_task.py`") == (EXAMPLE / "my_task.py").read_text()
    assert readme_block("`examples/adding_a_task/experiment.yaml`") == (EXAMPLE / "experiment.yaml").read_text()


def test_readme_task_example_trains_dpo_on_the_plugins_task(tmp_path, monkeypatch, cache):
    """The README's plugin task, as written (only out_dir redirected; run from the repository root, as its
    data_dir says): registered by plugins:, found by name, its human pairs read, SFT on its text, and DPO
    trained on its pairs, its held-out loss falling from log 2."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "qa_dpo"
    summary = run_training(EXAMPLE / "experiment.yaml", [f"out_dir={out}"])
    assert summary["task"] == "qa_pairs" and summary["method"] == "dpo"
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 5, 10]
    assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # π = π_ref at step 0
    assert evals[-1]["eval_loss"] < 0.5 and evals[-1]["eval_reward_accuracy"] > 0.9
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["task"]["name"] == "qa_pairs" and resolved["data"]["source"] == "task"
    assert "qa_pairs" in TASKS  # registered by the run's plugins:, until this test ends
