"""HH-RLHF, TL;DR and CNN/DM tasks: counts on the real files, pairs checked literally against the
raw records, bad rows in small synthetic files, and clear errors when there is no data.

The expected strings below were copied by hand from the raw records named beside them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from alignlab.data import DataError
from alignlab.tasks.base import BadRowError, PreferencePair, Split, Task, TaskConfig
from alignlab.tasks.hh import HHTask, split_dialogue
from alignlab.tasks.tldr import CNNDMTask, TLDRTask

HH_FILE = "hh-rlhf/harmless-base/test.jsonl.gz"
TLDR_FILES = {
    "tldr/comparisons/batch13.jsonl.gz": 1097,
    "tldr/comparisons/batch18.jsonl.gz": 674,
    "tldr/comparisons/edit_b2_eval_test.jsonl.gz": 5,
}


def make(cls: type[Task], data_dir: Path, **settings: Any) -> Any:
    return cls(TaskConfig(name=cls.name, data_dir=str(data_dir), **settings))


def all_pairs(task: Any) -> list[PreferencePair]:
    return task.pairs("train") + task.pairs("eval")


def pair_with_prompt(task: Any, prompt: str) -> PreferencePair:
    (found,) = [p for p in all_pairs(task) if p.prompt == prompt]
    return found


def write_gz(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def assert_split_by_prompt(task: Any, fraction: float) -> None:
    """Train and eval share no prompt, and eval holds about ``fraction`` of the distinct prompts."""
    train, held_out = set(task.prompts("train")), set(task.prompts("eval"))
    assert not train & held_out
    assert len(held_out) / len(train | held_out) == pytest.approx(fraction, abs=0.03)


# ---------------------------------------------------------------------------------------------
# HH-RLHF on the real file
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hh(data_dir: Path) -> HHTask:
    return make(HHTask, data_dir)


def test_hh_counts(hh: HHTask) -> None:
    train, held_out = hh.pairs("train"), hh.pairs("eval")
    report = hh.report.files[HH_FILE]
    # 4 rows have a blank chosen reply (e.g. row 926: "\n\nAssistant: " vs "\n\nAssistant: Ok").
    assert (report.rows, report.kept, report.skipped) == (2312, 2308, {"empty text": 4})
    assert report.examples == [f"row {n}: empty text: chosen or rejected completion" for n in (87, 517, 926, 1104)]
    assert len(train) + len(held_out) == report.kept
    assert (len(train), len(held_out)) == (2073, 235)
    assert_split_by_prompt(hh, 0.1)


def test_hh_split_is_deterministic_and_seeded(hh: HHTask, data_dir: Path) -> None:
    again = make(HHTask, data_dir)
    assert again.pairs("train") == hh.pairs("train") and again.pairs("eval") == hh.pairs("eval")
    other_seed = make(HHTask, data_dir, seed=1)
    assert other_seed.prompts("eval") != hh.prompts("eval")
    assert len(all_pairs(other_seed)) == 2308
    assert_split_by_prompt(other_seed, 0.1)


def test_hh_pair_extraction_single_turn(hh: HHTask) -> None:
    # row 965: {"chosen": "\n\nHuman: Can shoot a plan\n\nAssistant: What?",
    #           "rejected": "\n\nHuman: Can shoot a plan\n\nAssistant: Can't shoot a plan.  What are you trying to do?"}
    pair = pair_with_prompt(hh, "\n\nHuman: Can shoot a plan\n\nAssistant:")
    assert pair.chosen == " What?"
    assert pair.rejected == " Can't shoot a plan.  What are you trying to do?"


def test_hh_pair_extraction_cuts_at_the_shared_prefix(hh: HHTask) -> None:
    # row 1255: the chosen final reply itself contains "\n\nAssistant:", so cutting at the last
    # marker of `chosen` (as the DPO code does) would move half of it into the prompt.
    prompt = (
        "\n\nHuman: Are drag queens men?\n\nAssistant: No. Drag queens are women who act like stereotypical men."
        "\n\nHuman: Isn't that drag kings?\n\nAssistant:"
    )
    pair = pair_with_prompt(hh, prompt)
    assert pair.chosen == (
        " No. Men who impersonate stereotypical women are called drag kings.  Human: Then how do they come to "
        "be called drag kings if they don't perform stereotypical women?\n\nAssistant:  I think they call them"
        " that because"
    )
    assert (
        pair.rejected
        == " A drag king is the opposite of a drag queen, like a male who acts like a stereotypical woman."
    )


def test_split_dialogue_ignores_a_shared_start_of_the_replies() -> None:
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: How are you?\n\nAssistant: I am well."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: How are you?\n\nAssistant: I am bored."
    assert split_dialogue(chosen, rejected) == (
        "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: How are you?\n\nAssistant:",
        " I am well.",
        " I am bored.",
    )
    assert split_dialogue("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y") is None


def test_hh_sft_texts_and_references(hh: HHTask) -> None:
    train = hh.pairs("train")
    assert set(hh.sft_texts()) == {p.prompt + p.chosen for p in train}
    refs = hh.references("eval")
    assert [prompt for prompt, _ in refs] == hh.prompts("eval")
    first_chosen = {p.prompt: p.chosen for p in reversed(hh.pairs("eval"))}
    assert refs == [(prompt, first_chosen[prompt]) for prompt in hh.prompts("eval")]


def test_hh_max_rows(data_dir: Path) -> None:
    task = make(HHTask, data_dir, max_rows=100)
    assert (len(task.pairs("train")), len(task.pairs("eval"))) == (100, 100)
    report = task.report.files[HH_FILE]
    assert report.kept == 200
    assert report.rows < 2312  # it stopped reading once both splits were full


# ---------------------------------------------------------------------------------------------
# TL;DR and CNN/DM on the real files
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tldr(data_dir: Path) -> TLDRTask:
    return make(TLDRTask, data_dir)


def test_tldr_counts(tldr: TLDRTask, data_dir: Path) -> None:
    train, held_out = tldr.pairs("train"), tldr.pairs("eval")
    for name, rows in TLDR_FILES.items():
        report = tldr.report.files[name]
        assert (report.rows, report.kept, report.skipped) == (rows, rows, {})
    assert len(train) + len(held_out) == 1776
    assert (len(train), len(held_out)) == (1601, 175)
    assert len(tldr.prompts("train")) + len(tldr.prompts("eval")) == 1006
    assert_split_by_prompt(tldr, 0.1)
    assert make(TLDRTask, data_dir).pairs("eval") == held_out  # the same split on every reading


def test_tldr_prompt_and_pair_literal(tldr: TLDRTask) -> None:
    # batch13 row 177 (t3_jpplv, the shortest post), choice 0.
    prompt = (
        "SUBREDDIT: r/AskReddit\n\nTITLE: Holy mother of God, how do I get rid of these warrior-class fruit "
        "flies?! They even live IN THE FRIDGE.\n\nPOST: *\n\nTL;DR:"
    )
    (pair,) = [p for p in all_pairs(tldr) if p.prompt == prompt]
    assert pair.chosen == (
        " these fruit flies are totally out of control and live in the fridges and even have their own"
        ' personal "warrior clans." What can I do to get rid of them?!'
    )
    assert (
        pair.rejected
        == " I have a fruit fly problem in my kitchen, and I need to find a way to get rid of these things."
    )


def test_tldr_subreddit_prefix_and_leading_space(tldr: TLDRTask) -> None:
    # edit_b2_eval_test row 2: subreddit "r/Advice" where the other batches write "Advice", summaries
    # without a leading space, choice 0 (policy human_editor) over policy ref. batch13 row 356 is the
    # same post (t3_2l90w3, subreddit "Advice"): both must give one prompt, so one side of the split.
    head = (
        "SUBREDDIT: r/Advice\n\nTITLE: Almost every career in the medical field is saturated. What jobs are stable"
        " and pay decently now?\n\nPOST: I honestly do not care anymore. \n\nExcluding"
    )
    pairs = [p for p in all_pairs(tldr) if p.prompt.startswith(head)]
    assert len(pairs) == 2 and pairs[0].prompt == pairs[1].prompt
    assert pairs[0].prompt.endswith("Any advice is appreciated. Thanks\n\nTL;DR:")
    chosen = " Medical field looks like its going to hell. What are some good careers right now?"
    (pair,) = [p for p in pairs if p.chosen == chosen]
    reference = (
        " Life sucks if you don't have money. Medical field looks like its going to hell."
        " What are some good careers right now?"
    )
    assert pair.rejected == reference
    assert dict(tldr.references("train") + tldr.references("eval"))[pair.prompt] == reference


def test_tldr_references_are_the_ref_summaries(tldr: TLDRTask) -> None:
    # Policy "ref" appears only in batch18 (110 posts) and edit_b2_eval_test (2 posts).
    refs = tldr.references("train") + tldr.references("eval")
    assert len(refs) == len({prompt for prompt, _ in refs}) == 112
    splits: tuple[Split, ...] = ("train", "eval")
    for split in splits:
        prompts = tldr.prompts(split)
        ref_prompts = [prompt for prompt, _ in tldr.references(split)]
        assert ref_prompts == [p for p in prompts if p in set(ref_prompts)]
    assert all(text.startswith(" ") and text.strip() for _, text in refs)


def test_tldr_sft_texts(tldr: TLDRTask) -> None:
    texts = tldr.sft_texts()
    assert set(texts) == {p.prompt + p.chosen for p in tldr.pairs("train")}
    assert len(texts) == len(set(texts)) == 1124


def test_cnndm(data_dir: Path) -> None:
    task = make(CNNDMTask, data_dir)
    pairs = task.pairs("eval")
    reports = task.report.files
    # 12 comparisons have an empty summary (e.g. row 22); cnndm0 repeats batch0_cnndm but for `batch`.
    first, second = reports["cnndm/comparisons/batch0_cnndm.jsonl.gz"], reports["cnndm/comparisons/cnndm0.jsonl.gz"]
    assert (first.rows, first.kept, first.skipped) == (437, 425, {"empty text": 12})
    assert (second.rows, second.kept, second.skipped) == (437, 0, {"empty text": 12, "duplicate comparison": 425})
    assert first.examples[0] == "row 22: empty text: chosen or rejected completion"
    assert len(pairs) == 425 and len(task.prompts("eval")) == len(task.references("eval")) == 45
    with gzip.open(data_dir / "cnndm/comparisons/batch0_cnndm.jsonl.gz", "rt", encoding="utf-8") as f:
        raw = json.loads(f.readline())
    assert pairs[0].prompt == raw["info"]["article"] + "\n\nTL;DR:"
    assert pairs[0].chosen == raw["summaries"][raw["choice"]]["text"]  # it already starts with a space
    with pytest.raises(DataError, match="eval split only"):
        task.pairs("train")
    with pytest.raises(DataError, match="evaluation-only"):
        task.sft_texts()


# ---------------------------------------------------------------------------------------------
# Bad rows, in synthetic files
# ---------------------------------------------------------------------------------------------

HH_GOOD = js({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello there.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."})
HH_BAD = {
    "missing field": js({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello."}),
    "empty text": js({"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello."}),
    "identical completions": js(
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Yo.", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo."}
    ),
    "undecodable text": b'{"chosen": "\xff\xfe", "rejected": "x"}',
    "malformed JSON": b'{"chosen": "\\n\\nHuman: Hi',
    "no shared prompt": js({"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Bye\n\nAssistant: B"}),
    "wrong type": js({"chosen": 3, "rejected": "\n\nHuman: Hi\n\nAssistant: B"}),
}


def test_hh_bad_rows_are_counted_per_file_and_named(tmp_path: Path) -> None:
    write_gz(tmp_path / HH_FILE, [HH_GOOD, *HH_BAD.values()])
    write_gz(tmp_path / "hh-rlhf/helpful-base/test.jsonl.gz", [HH_BAD["empty text"], HH_GOOD.replace(b"Hi", b"Hey")])
    task = make(HHTask, tmp_path)
    assert len(all_pairs(task)) == 2
    harmless, helpful = task.report.files[HH_FILE], task.report.files["hh-rlhf/helpful-base/test.jsonl.gz"]
    assert (harmless.rows, harmless.kept, harmless.skipped) == (8, 1, dict.fromkeys(HH_BAD, 1))
    assert harmless.examples[4].startswith("row 6: malformed JSON: ")
    assert harmless.examples[:4] == [
        "row 2: missing field: 'rejected'",
        "row 3: empty text: chosen or rejected completion",
        "row 4: identical completions: chosen == rejected",
        "row 5: undecodable text: invalid UTF-8 at byte 12",
    ]
    assert (helpful.rows, helpful.kept, helpful.skipped) == (2, 1, {"empty text": 1})
    assert task.report.skipped() == 8


@pytest.mark.parametrize("reason", list(HH_BAD))
def test_hh_bad_row_raises_in_error_mode(tmp_path: Path, reason: str) -> None:
    write_gz(tmp_path / HH_FILE, [HH_GOOD, HH_BAD[reason]])
    task = make(HHTask, tmp_path, on_bad_row="error")
    with pytest.raises(BadRowError, match=f"^{HH_FILE}: row 2: {reason}"):
        task.pairs("train")


def tldr_record(**changes: Any) -> dict[str, Any]:
    record = {
        "info": {"id": "t3_1", "post": "My cat sleeps all day.", "title": "Lazy cat", "subreddit": "cats"},
        "summaries": [{"text": " Cat sleeps.", "policy": "ref", "note": None}, {"text": "Lazy cat.", "policy": "sup4"}],
        "choice": 1,
        "split": "valid2",
        "batch": "batch1",
    }
    return {**record, **changes}


TLDR_BAD = {
    "missing field": tldr_record(info={"title": "Lazy cat", "subreddit": "cats"}),
    "bad choice": tldr_record(choice=2),
    "not a pair": tldr_record(summaries=[{"text": " Cat sleeps.", "policy": "ref"}]),
    "identical completions": tldr_record(summaries=[{"text": " Cat."}, {"text": "Cat."}]),
    "empty text": tldr_record(summaries=[{"text": ""}, {"text": "Cat."}]),
    "wrong type": tldr_record(summaries=[{"text": " Cat."}, {"text": 7}]),
}


def test_tldr_pair_from_a_synthetic_record(tmp_path: Path) -> None:
    same_post = tldr_record(info={"post": "My cat sleeps all day.", "title": "Lazy cat", "subreddit": "r/cats"})
    write_gz(tmp_path / "tldr/comparisons/a.jsonl.gz", [js(tldr_record()), js(same_post)])
    task = make(TLDRTask, tmp_path)
    prompt = "SUBREDDIT: r/cats\n\nTITLE: Lazy cat\n\nPOST: My cat sleeps all day.\n\nTL;DR:"
    assert all_pairs(task) == [PreferencePair(prompt, " Lazy cat.", " Cat sleeps.")] * 2
    assert task.references("train") + task.references("eval") == [(prompt, " Cat sleeps.")]


def test_tldr_bad_rows_are_counted_and_named(tmp_path: Path) -> None:
    cnndm_row = tldr_record(info={"article": "News.", "title": "T", "site": "cnn"})
    lines = [js(tldr_record()), *(js(r) for r in TLDR_BAD.values()), js(cnndm_row), js(tldr_record(batch="batch2"))]
    write_gz(tmp_path / "tldr/comparisons/a.jsonl.gz", lines)
    task = make(TLDRTask, tmp_path)
    assert len(all_pairs(task)) == 1
    report = task.report.files["tldr/comparisons/a.jsonl.gz"]
    assert (report.rows, report.kept) == (9, 1)
    assert report.skipped == {**dict.fromkeys(TLDR_BAD, 1), "not tldr": 1, "duplicate comparison": 1}
    assert report.examples == [
        "row 2: missing field: 'post'",
        "row 3: bad choice: expected 0 or 1, got 2",
        "row 4: not a pair: 1 summaries, need 2",
        "row 5: identical completions: chosen == rejected",
        "row 6: empty text: chosen or rejected completion",
    ]


@pytest.mark.parametrize("reason", list(TLDR_BAD))
def test_tldr_bad_row_raises_in_error_mode(tmp_path: Path, reason: str) -> None:
    write_gz(tmp_path / "tldr/comparisons/a.jsonl.gz", [js(tldr_record()), js(TLDR_BAD[reason])])
    task = make(TLDRTask, tmp_path, on_bad_row="error")
    with pytest.raises(BadRowError, match=f"^tldr/comparisons/a.jsonl.gz: row 2: {reason}"):
        task.pairs("eval")


def test_tldr_records_with_a_train_split_keep_it(tmp_path: Path) -> None:
    other = {"post": "My dog barks.", "title": "Loud dog", "subreddit": "dogs"}
    lines = [js(tldr_record(split="train")), js(tldr_record(info=other, split="valid1"))]
    write_gz(tmp_path / "tldr/comparisons/a.jsonl.gz", lines)
    task = make(TLDRTask, tmp_path)
    assert [p.prompt.split("\n")[0] for p in task.pairs("train")] == ["SUBREDDIT: r/cats"]
    assert [p.prompt.split("\n")[0] for p in task.pairs("eval")] == ["SUBREDDIT: r/dogs"]


# ---------------------------------------------------------------------------------------------
# No data
# ---------------------------------------------------------------------------------------------


def test_missing_local_files_name_where_they_were_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        make(HHTask, tmp_path).pairs("train")
    assert str(tmp_path / "hh-rlhf/*/train.jsonl.gz") in str(err.value)
    assert str(tmp_path / "hh-rlhf/*/test.parquet") in str(err.value)
    for cls, pattern in ((TLDRTask, "tldr/comparisons/*"), (CNNDMTask, "cnndm/comparisons/*")):
        with pytest.raises(DataError, match="looked for") as err:
            make(cls, tmp_path).pairs("eval")
        assert str(tmp_path / f"{pattern}.jsonl.gz") in str(err.value)


@pytest.mark.parametrize(
    ("cls", "label"), [(HHTask, "Anthropic/hh-rlhf"), (TLDRTask, "openai/summarize_from_feedback")]
)
def test_offline_hub_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, cls: type[Task], label: str) -> None:
    monkeypatch.delenv("ALIGNLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task: Any = cls(TaskConfig(name=cls.name))
    assert task.source == f"hub:{label}"
    with pytest.raises(DataError, match=f"Hub is offline.*{label}"):
        task.pairs("train")


def fake_hub(rows: dict[str, list[dict[str, Any]]]) -> Any:
    """Stands in for ``iter_hub``: the given rows per Hub split, counted as iter_hub counts them."""

    def iter_hub(hub_id: str, split: str, report: Any, config: str | None = None) -> Any:
        name = f"hub:{hub_id}{':' + config if config else ''}[{split}]"
        for number, row in enumerate(rows[split], start=1):
            report.file(name).rows += 1
            yield number, row

    return iter_hub


def test_hub_rows_are_read_split_by_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIGNLAB_DATA_DIR", raising=False)
    # The Hub's comparisons fill every info field, with None for the other domain's.
    post = {"id": "t3_1", "post": "My cat sleeps.", "title": "Cat", "subreddit": "cats", "article": None, "site": None}
    article = {"id": "a1", "post": None, "title": "News", "subreddit": None, "article": "Rain today.", "site": "cnn"}
    tldr_row, cnndm_row = tldr_record(info=post), tldr_record(info=article, batch="cnndm0")
    monkeypatch.setattr(
        "alignlab.tasks.base.iter_hub", fake_hub({"train": [tldr_row], "validation": [tldr_row, cnndm_row]})
    )
    tldr, cnndm = TLDRTask(TaskConfig(name="tldr")), CNNDMTask(TaskConfig(name="cnndm"))
    assert len(tldr.pairs("train")) == len(tldr.pairs("eval")) == 1
    assert [p.prompt for p in cnndm.pairs("eval")] == ["Rain today.\n\nTL;DR:"]
    validation = "hub:openai/summarize_from_feedback:comparisons[validation]"
    assert (tldr.report.files[validation].kept, tldr.report.files[validation].skipped) == (1, {"not tldr": 1})
    assert (cnndm.report.files[validation].kept, cnndm.report.files[validation].skipped) == (1, {"not cnndm": 1})

    dialogue = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: No."}
    monkeypatch.setattr("alignlab.tasks.base.iter_hub", fake_hub({"train": [dialogue] * 5, "test": [dialogue] * 5}))
    hh = HHTask(TaskConfig(name="hh", max_rows=2))
    assert len(hh.pairs("train")) == len(hh.pairs("eval")) == 2
    assert [(r.rows, r.kept) for r in hh.report.files.values()] == [(2, 2), (2, 2)]  # stopped at max_rows
    assert list(hh.report.files) == ["hub:Anthropic/hh-rlhf[train]", "hub:Anthropic/hh-rlhf[test]"]
