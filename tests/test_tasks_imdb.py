"""The IMDb task on the real files, and its bad-row handling on small broken ones."""

from __future__ import annotations

import gzip
import json

import pytest

from alignlab.data import DataError
from alignlab.errors import ConfigError
from alignlab.models import train_tokenizer
from alignlab.tasks import build_task
from alignlab.tasks.base import BadRowError
from alignlab.tasks.imdb import clean_review


@pytest.fixture(scope="module")
def imdb(data_dir):
    return build_task({"name": "imdb", "data_dir": str(data_dir)})


def test_counts_of_the_real_splits(imdb):
    train, test = imdb.labelled("train"), imdb.labelled("eval")
    assert len(train) == len(test) == 25_000
    assert sum(y for _, y in train) == sum(y for _, y in test) == 12_500
    assert len(imdb.sft_texts()) == 75_000  # train + unsup
    assert imdb.report.skipped() == 0
    assert not any("<br" in t for t, _ in train[:2000])


def test_clean_review():
    assert clean_review("Great.<br /><br />Really  great.<BR/>") == "Great. Really great."


def test_prompts_are_token_prefixes_of_2_to_8_tokens(imdb):
    """Train prompts: prefixes of train reviews in a seeded order that mixes both labels (the file lists
    the 12,500 positive reviews first), less the validation part, disjoint from it by text."""
    reviews = imdb.labelled("train")
    tokenizer = train_tokenizer([t for t, _ in reviews[:3000]], vocab_size=2000)
    prompts = imdb.prompts("train", tokenizer)
    validation = imdb.held_out_prompts("validation", tokenizer)
    assert 10_000 < len(prompts) < 15_000 and not set(prompts) & set(validation)  # validation_fraction 0.5
    lengths, first = set(), []
    for prompt in prompts[:300]:
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert 2 <= n <= 8
        lengths.add(n)
    for prompt in prompts[:40]:
        matches = [y for t, y in reviews if t.startswith(prompt)]
        assert matches  # a prefix of some train review
        first.append(matches[-1])  # the last review it opens: a negative one if any (they come last)
    assert lengths == set(range(2, 9))
    assert 0 < sum(first) < len(first)  # the first prompts open reviews of both labels
    assert imdb.prompts("train", tokenizer)[:50] == prompts[:50]  # deterministic
    eval_prompts = imdb.prompts("eval", tokenizer)
    assert imdb.labelled("eval")[0][0].startswith(eval_prompts[0])  # eval prefixes from test reviews
    with pytest.raises(DataError, match="pass the policy's tokenizer"):
        imdb.prompts("train")


def test_prefix_range_is_validated():
    with pytest.raises(ConfigError, match="prompt_tokens_max: must be >= prompt_tokens_min"):
        build_task({"name": "imdb", "prompt_tokens_min": 5, "prompt_tokens_max": 3})
    with pytest.raises(ConfigError, match=r"task.name: unknown task 'imbd'; did you mean 'imdb'\?"):
        build_task({"name": "imbd"})


def write_broken(tmp_path):
    """imdb/train.jsonl.gz with 8 rows: 3 good, then one of each defect."""
    root = tmp_path / "data"
    (root / "imdb").mkdir(parents=True)
    good = [json.dumps({"text": f"A fine film number {i}.", "label": i % 2}).encode() for i in range(3)]
    lines = [
        *good,
        json.dumps({"label": 1}).encode(),  # row 4: missing text
        json.dumps({"text": "  ", "label": 0}).encode(),  # row 5: empty
        json.dumps({"text": "<br /><br />", "label": 0}).encode(),  # row 6: markup only
        json.dumps({"text": "Odd label.", "label": 7}).encode(),  # row 7: bad label
        b'{"text": "caf\xe9", "label": 1}',  # row 8: Latin-1, not UTF-8
        b'{"text": "cut off',  # row 9: malformed JSON
    ]
    with gzip.open(root / "imdb" / "train.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return root


def test_bad_rows_are_counted_per_file_and_named(tmp_path):
    task = build_task({"name": "imdb", "data_dir": str(write_broken(tmp_path))})
    assert [y for _, y in task.labelled("train")] == [0, 1, 0]
    report = task.report.to_dict()["imdb/train.jsonl.gz"]
    assert report["rows"] == 9 and report["kept"] == 3
    assert report["skipped"] == {
        "missing field": 1,
        "empty text": 2,
        "bad label": 1,
        "undecodable text": 1,
        "malformed JSON": 1,
    }
    assert report["examples"][0] == "row 4: missing field: 'text'"
    assert "skipped 6" in task.report.summary()


def test_bad_rows_can_be_fatal(tmp_path):
    task = build_task({"name": "imdb", "data_dir": str(write_broken(tmp_path)), "on_bad_row": "error"})
    with pytest.raises(BadRowError, match=r"imdb/train.jsonl.gz: row 4: missing field: 'text'"):
        task.labelled("train")


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataError, match=r"IMDb test split not found: looked for .*imdb/test.jsonl.gz"):
        build_task({"name": "imdb", "data_dir": str(tmp_path)}).labelled("eval")
    with pytest.raises(ConfigError, match=r"^task\.data_dir: data directory .* does not exist"):  # a setting's error
        build_task({"name": "imdb", "data_dir": str(tmp_path / "nope")})


def test_offline_hub_gets_a_clear_error(monkeypatch):
    monkeypatch.delenv("ALIGNLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"stanfordnlp/imdb\[train\] cannot be downloaded: set data_dir"):
        build_task({"name": "imdb"}).labelled("train")
