"""Text is text (issue 19): a special-token string inside user data never becomes a special id.

Every alignlab path from text to ids — pair encoding (and the reward model's), SFT packing, rollout
prompts and the decoding of samples, fit_to_context, eval prompt fitting, prepare's ``fits``, IMDb
prefixes, the LLM judge and the HF classifier reward — is run on text full of special-token strings,
with three tokenizers:

- ``preset``: :func:`alignlab.models.train_tokenizer` as it returns, in memory. transformers'
  ``split_special_tokens`` does not reach its Rust object, so this one exercises the fallback;
- ``preset-saved``: the same tokenizer after ``save_pretrained`` / ``AutoTokenizer``, as
  ``prepare_policy`` loads it;
- ``hf``: a pretrained-style tokenizer: byte-level BPE with distinct BOS ``<s>``, EOS
  ``<|endoftext|>``, pad ``<pad>`` and unk ``<unk>``, extra special tokens ``<|im_start|>`` and
  ``<|im_end|>``, a non-special added token ``<tool>``, and a template that adds BOS (as Llama's).

The expected ids come from an oracle independent of alignlab and of ``split_special_tokens``: the
same ``tokenizer.json`` with its special added tokens and template removed, which can only read
those strings as characters. Around them, alignlab alone adds BOS, EOS and padding.
"""

from __future__ import annotations

import ast
import gzip
import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers import models as tok_models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from alignlab.core.rollout import decode_completions, encode_prompts
from alignlab.core.scoring import EncodedBatch
from alignlab.encoding import (
    EncodingError,
    encode_completions,
    encode_text,
    encode_with_template,
    special_ids,
    template_tokens,
)
from alignlab.jobs.evaluation import eval_prompts
from alignlab.models import train_tokenizer
from alignlab.prepare import fits
from alignlab.rewards.judges import DIALOGUE_TEMPLATE, CausalLMJudge
from alignlab.rewards.model import RewardModel
from alignlab.sft import pack
from alignlab.tasks import build_task
from alignlab.tasks.base import DataReport, PreferencePair, fit_to_context

# every special string of any of the three tokenizers, and look-alikes that are not special anywhere
SPECIAL_STRINGS = ["<|endoftext|>", "<|pad|>", "<s>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<tool>"]
PIECES = [
    "the", "cat", "sat", " ", "  ", "\n", "\n\nHuman:", "\n\nAssistant:", "TL;DR:", "<", ">", "|", "<|", "|>",
    "endoftext", "<|endof", "im_start", "pad", "s>", "</s>", "é", "日本", "😀", "<br />", "\t", "A", " B", ".",
]  # fmt: skip
CORPUS = [
    "the cat sat on the mat . A film , a story <|endoftext|> and a summary",
    "Human: hello Assistant: hi <|im_start|> user <pad> TL;DR: a post",
    "é 日本 😀 <s> </s> <br /> endoftext im_start pad",
] * 30
KINDS = ("preset", "preset-saved", "hf")
N_TEXTS = 300


def hf_style_tokenizer(path: Path) -> Any:
    """The ``hf`` kind: trained with ``tokenizers``, saved, and loaded back through ``AutoTokenizer``."""
    t = Tokenizer(tok_models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<s>", "<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(CORPUS, trainer)
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.add_tokens(["<tool>"])  # added, not special: text may spell it
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tokenizers_(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    preset = train_tokenizer(CORPUS, vocab_size=400)
    saved = tmp_path_factory.mktemp("preset")
    preset.save_pretrained(saved)
    return {
        "preset": preset,
        "preset-saved": AutoTokenizer.from_pretrained(saved),
        "hf": hf_style_tokenizer(tmp_path_factory.mktemp("hf")),
    }


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tok(tokenizers_: dict[str, Any], kind: str) -> Any:
    return tokenizers_[kind]


# the template each kind's own post-processor puts around one text, by hand: none for the byte-level
# preset, the BOS <s> (id 1: the second special token trained) for the hf kind
TEMPLATES = {"preset": ([], []), "preset-saved": ([], []), "hf": ([1], [])}


class Oracle:
    """Plain-text ids: the tokenizer's own pipeline with no special added token and no template.

    A special added token that the model's vocabulary also holds is dropped from the added tokens;
    any other is renamed to a string no text holds, keeping its place so that the added tokens after
    it keep their ids. Either way the oracle can only read the special strings as characters.
    """

    def __init__(self, tok: Any) -> None:
        spec = json.loads(tok.backend_tokenizer.to_str())
        vocab = spec["model"]["vocab"]
        added = [t for t in spec["added_tokens"] if not (t["special"] and t["content"] in vocab)]
        for token in added:
            if token["special"]:
                token["content"] = f"\x00never {token['id']}\x00"
        spec["added_tokens"], spec["post_processor"] = added, None
        self.backend = Tokenizer.from_str(json.dumps(spec))

    def __call__(self, text: str) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=False).ids)


def decode(tok: Any, ids: list[int]) -> str:
    return str(tok.decode(ids, clean_up_tokenization_spaces=False))


def special_strings(tok: Any) -> list[str]:
    """All special tokens plus every added token, as strings."""
    return sorted(set(tok.all_special_tokens) | {str(t) for t in tok.added_tokens_decoder.values()})


def random_texts(tok: Any, n: int = N_TEXTS, seed: int = 0) -> list[str]:
    """``n`` seeded strings of ordinary pieces with 1-4 of the tokenizer's special strings at random places."""
    rng = random.Random(seed)
    specials = special_strings(tok)
    texts = []
    for _ in range(n):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(0, 10))]
        for _ in range(rng.randint(1, 4)):
            parts.insert(rng.randint(0, len(parts)), rng.choice(specials))
        texts.append(("" if rng.random() < 0.5 else " ").join(parts))
    return texts


# ------------------------------------------------------------------------------------------------
# one checker per path, shared by the property tests and the per-task tests
# ------------------------------------------------------------------------------------------------


def check_pairs(tok: Any, prompts: list[str], completions: list[str]) -> None:
    """encode_completions and the reward model's encode: [BOS] prompt completion EOS, then padding."""
    plain, forbidden = Oracle(tok), special_ids(tok)
    batch = encode_completions(tok, prompts, completions, max_length=10**6)
    rm = RewardModel(SimpleNamespace(config=SimpleNamespace()), tok)
    assert torch.equal(rm.encode(prompts, completions, max_length=10**6).input_ids, batch.input_ids)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids, attention, mask = (x[i].tolist() for x in (batch.input_ids, batch.attention_mask, batch.completion_mask))
        n = sum(attention)
        head = [tok.bos_token_id] if tok.bos_token_id is not None else []
        plain_p, plain_c = plain(p), plain(c)
        assert ids[:n] == head + plain_p + plain_c + [tok.eos_token_id], (p, c)
        assert forbidden.isdisjoint(ids[len(head) : n - 1]), (p, c)
        assert ids[n:] == [tok.pad_token_id] * (len(ids) - n)
        assert mask == [0] * (len(head) + len(plain_p)) + [1] * (len(plain_c) + 1) + [0] * (len(ids) - n)
        completion = [t for t, m in zip(ids, mask, strict=True) if m][:-1]  # minus alignlab's EOS
        assert decode(tok, completion) == c
        assert decode(tok, ids[len(head) : n - len(completion) - 1]) == p


def check_packing(tok: Any, texts: list[str]) -> None:
    """SFT blocks: each text's plain ids, then alignlab's EOS; with seq_len 1 every token is kept."""
    plain = Oracle(tok)
    flat = pack(tok, texts, n_tokens=10**9, seq_len=1).flatten().tolist()
    assert flat == [i for t in texts for i in [*plain(t), tok.eos_token_id]]
    assert flat.count(tok.eos_token_id) == len(texts)


def check_prompts(tok: Any, prompts: list[str]) -> None:
    """Rollout prompts: left padding, [BOS], the prompt's plain ids; they decode back to the prompt."""
    plain = Oracle(tok)
    batch = encode_prompts(tok, prompts)
    head = [tok.bos_token_id] if tok.bos_token_id is not None else []
    for i, p in enumerate(prompts):
        ids, attention = batch.input_ids[i].tolist(), batch.attention_mask[i].tolist()
        pad = len(ids) - sum(attention)
        assert ids == [tok.pad_token_id] * pad + head + plain(p), p
        assert decode(tok, ids[pad + len(head) :]) == p


def _fitting_limit(lengths: list[int], bos: int) -> int:
    """A context in which the shorter half of the distinct prompt lengths fit, with one completion token."""
    distinct = sorted(set(lengths))
    return distinct[(len(distinct) - 1) // 2] + bos + 1


def check_fitting(tok: Any, prompts: list[str], task: Any = None) -> None:
    """fit_to_context, eval_prompts and prepare.fits decide by the prompts' plain-text lengths."""
    plain = Oracle(tok)
    bos = int(tok.bos_token_id is not None)
    lengths = [len(plain(p)) for p in prompts]
    limit = _fitting_limit(lengths, bos)
    pairs = [PreferencePair(p, " a", " b") for p in prompts]
    kept = fit_to_context(pairs, tok, limit, DataReport()) if task is None else task.fit_to_context(pairs, tok, limit)
    assert [k.prompt for k in kept] == [p for p, n in zip(prompts, lengths, strict=True) if n + bos + 1 <= limit]
    assert kept and (len(kept) < len(pairs) or len(set(lengths)) == 1)
    # eval prompts: the task's own (or these), fitting with 3 new tokens
    source = task if task is not None else SimpleNamespace(prompts=lambda split, tokenizer: list(prompts))
    candidates = source.prompts("eval", tok)
    n_eval = [len(plain(p)) for p in candidates]
    context = _fitting_limit(n_eval, bos) + 2
    expected = [p for p, n in zip(candidates, n_eval, strict=True) if n + bos + 3 <= context]
    assert eval_prompts(source, tok, context, 3, 0, split="eval") == expected and expected  # type: ignore[arg-type]
    for p, n in zip(prompts, lengths, strict=True):
        assert fits(tok, p, n + 1) and not fits(tok, p, n)


class _StubLM:
    """Just enough of a causal LM for CausalLMJudge's constructor; the test never runs it."""

    config = SimpleNamespace(_name_or_path="stub")

    def eval(self) -> _StubLM:
        return self


def check_judged(tok: Any, kind: str, texts: list[str], classifier_dir: Path) -> None:
    """The LLM judge (left-padded) and the HF classifier (right-padded, truncated) frame plain ids in the
    tokenizer's own template."""
    from alignlab.rewards.hf import HFClassifierReward

    plain = Oracle(tok)
    prefix, suffix = TEMPLATES[kind]
    assert template_tokens(tok) == (prefix, suffix)
    judge = CausalLMJudge(_StubLM(), tok)
    assert judge.choices == [plain(" A")[-1], plain(" B")[-1]]
    enc = judge.encode(texts)
    for i, t in enumerate(texts):
        ids, attention = enc["input_ids"][i].tolist(), enc["attention_mask"][i].tolist()
        pad = len(ids) - sum(attention)
        assert ids == [tok.pad_token_id] * pad + prefix + plain(t) + suffix, t
    reward = HFClassifierReward(str(classifier_dir), positive_label="POSITIVE", batch_size=4, device="cpu")
    for max_length in (512, 6):
        reward.max_length = max_length
        enc = reward.encode(texts)
        room = max_length - len(prefix) - len(suffix)
        for i, t in enumerate(texts):
            ids, n = enc["input_ids"][i].tolist(), int(enc["attention_mask"][i].sum())
            assert ids == prefix + plain(t)[:room] + suffix + [tok.pad_token_id] * (len(ids) - n), t
    scores = reward(texts[:3], [" a"] * 3)
    assert scores.shape == (3,) and bool(torch.isfinite(scores).all())


@pytest.fixture
def classifier_dir(tok: Any, tmp_path: Path) -> Path:
    """A 1-layer GPT-2 sequence classifier with ``tok``, saved as HFClassifierReward loads one."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=512,
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tok.pad_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------------------------
# the property tests: a few hundred random strings through every path
# ------------------------------------------------------------------------------------------------


def test_the_tokenizers_read_special_strings_as_specials_by_default(tok):
    """What the tests below guard against: a plain call turns each special string into its special id."""
    for s in special_strings(tok):
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert ids == [tok.convert_tokens_to_ids(s)]
        special = s != "<tool>"  # <tool> is added but not special
        assert (ids[0] in special_ids(tok)) == special
        assert (len(Oracle(tok)(s)) > 1) == special  # the oracle spells each special string as characters


def test_encode_text_is_the_plain_text_tokenisation(tok):
    texts = random_texts(tok)
    assert {s for s in special_strings(tok) if any(s in t for t in texts)} == set(special_strings(tok))
    plain, forbidden = Oracle(tok), special_ids(tok)
    rows = encode_text(tok, texts)
    assert rows == [plain(t) for t in texts]
    assert all(forbidden.isdisjoint(row) for row in rows)
    assert [decode(tok, row) for row in rows] == texts
    assert encode_text(tok, []) == []


def test_special_ids_by_hand(tokenizers_):
    """preset: <|endoftext|> 0 (EOS and BOS), <|pad|> 1. hf: <|endoftext|> 0, <s> 1, <pad> 2, <unk> 3 (the
    trainer's special tokens come first), then the trained vocabulary (V ids in all), then the tokens added
    after training in order: <|im_start|> V, <|im_end|> V + 1, special; <tool> V + 2, not special."""
    assert special_ids(tokenizers_["preset"]) == special_ids(tokenizers_["preset-saved"]) == {0, 1}
    hf = tokenizers_["hf"]
    v = hf.vocab_size
    assert special_ids(hf) == {0, 1, 2, 3, v, v + 1}
    assert hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<tool>"]) == [v, v + 1, v + 2]


def test_pairs_and_reward_model_encoding(tok):
    texts = random_texts(tok)
    check_pairs(tok, texts[::2], texts[1::2])


def test_sft_packing(tok):
    check_packing(tok, random_texts(tok))


def test_rollout_prompts(tok):
    check_prompts(tok, random_texts(tok))


def test_context_fitting(tok):
    check_fitting(tok, random_texts(tok, n=100))


def test_judge_and_hf_classifier(tok, kind, classifier_dir):
    check_judged(tok, kind, random_texts(tok, n=100), classifier_dir)


def test_decoded_samples_re_encode_as_text(tok):
    """A sample whose ids spell a special string decodes to that string, which re-encodes as text; a special
    id the model itself emits inside a completion is dropped from the text."""
    plain = Oracle(tok)
    spelled = plain(" x<|endoftext|>y")  # the characters, as a model may sample them
    stray = max(special_ids(tok) - {tok.eos_token_id})  # <|pad|> / <|im_end|>
    completion = [*spelled, stray, *plain(" z"), tok.eos_token_id, tok.pad_token_id]
    mask = [1] * (len(completion) - 1) + [0]
    sequences = EncodedBatch(torch.tensor([completion]), torch.tensor([mask]), torch.tensor([mask]))
    (text,) = decode_completions(tok, sequences)
    assert text == " x<|endoftext|>y z"
    assert encode_text(tok, [text]) == [plain(text)]
    assert special_ids(tok).isdisjoint(encode_text(tok, [text])[0])


def test_wordpiece_classifier_template_and_unknown_characters():
    """A BERT-style tokenizer (WordPiece, [CLS] $A [SEP]): the unknown token is text, not control.

    Vocabulary by hand: [UNK] 0, [CLS] 1, [SEP] 2, [PAD] 3, "[" 4, "]" 5, a 6, good 7, film 8. The
    pre-tokenizer splits "[CLS]" into "[", "CLS", "]", and "CLS" (like the emoji) is not in the
    vocabulary, so it is [UNK]; "[SEP]" likewise. A plain call would give the [CLS] and [SEP] ids.
    """
    vocab = {t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[", "]", "a", "good", "film"])}
    backend = Tokenizer(tok_models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]"
    )
    texts = ["a good film 😀", "[CLS] a [SEP] film"]
    assert tok(texts[1], add_special_tokens=False)["input_ids"] == [1, 6, 2, 8]
    assert encode_text(tok, texts) == [[6, 7, 8, 0], [4, 0, 5, 6, 4, 0, 5, 8]]
    assert template_tokens(tok) == ([1], [2])
    assert encode_with_template(tok, texts, max_length=4) == [[1, 6, 7, 2], [1, 4, 0, 2]]


def test_a_vocabulary_that_spells_a_special_token_is_an_error():
    """Text that no encoding keeps clear of special ids stops with the row named: here "cat", a token of
    the trained vocabulary (a text's first word has no leading "Ġ"), is made a special token, so a text
    opening with "cat" can only encode to it."""
    tok = train_tokenizer(CORPUS, vocab_size=400)
    assert tok.tokenize("cat the cat") == ["cat", "Ġthe", "Ġcat"]
    cat = tok.convert_tokens_to_ids("cat")
    tok.add_special_tokens({"additional_special_tokens": ["cat"]})
    assert tok.convert_tokens_to_ids("cat") == cat and cat in special_ids(tok)  # the vocabulary's id, now special
    assert encode_text(tok, ["the cat"]) == [tok.convert_tokens_to_ids(["the", "Ġcat"])]
    with pytest.raises(EncodingError, match=r"row 1: .*'cat'"):
        encode_text(tok, ["the mat", "cat"])


# ------------------------------------------------------------------------------------------------
# per task: tiny data directories in each task's schema, rows full of special strings
# ------------------------------------------------------------------------------------------------

S = " ".join(SPECIAL_STRINGS)


def _review(i: int) -> str:
    return f"<|endoftext|>Film {i}<br />was a <s>great</s> watch {S} and the cast <|im_start|> shone , truly"


def _hh(i: int) -> dict[str, str]:
    prompt = f"\n\nHuman: question {i} <|endoftext|> about <|im_start|>user cats?\n\nAssistant:"
    return {"chosen": f"{prompt} Yes {i}, {S}<|endoftext|>", "rejected": f"{prompt} No <pad> {i} <|pad|>"}


def _comparison(i: int, info: dict[str, str], split: str) -> dict[str, Any]:
    summaries = [
        {"text": f" summary {i} could reduce cases by 50,000<|endoftext|>A trader {S}", "policy": "ref", "note": None},
        {"text": f" other {i} <s> summary </s> <|im_end|>", "policy": "sup", "note": None},
    ]
    return {"info": info, "summaries": summaries, "choice": 0, "worker": "w", "batch": "b", "split": split, "extra": {}}


TASK_FILES = {
    "imdb": {
        "imdb/train.jsonl": [{"text": _review(i), "label": i % 2} for i in range(6)],
        "imdb/test.jsonl": [{"text": _review(10 + i), "label": i % 2} for i in range(4)],
        "imdb/unsup.jsonl": [{"text": _review(20 + i), "label": -1} for i in range(2)],
    },
    "hh": {"hh-rlhf/harmless-base/test.jsonl": [_hh(i) for i in range(8)]},
    "tldr": {
        "tldr/comparisons/batch1.jsonl": [
            _comparison(i, {"id": f"t{i}", "subreddit": "cats", "title": f"T{i} <s>", "post": f"P{i}. {S}"}, "valid1")
            for i in range(8)
        ]
    },
    "cnndm": {
        "cnndm/comparisons/cnndm0.jsonl": [
            _comparison(i, {"id": f"c{i}", "site": "cnn", "title": "T", "article": f"(CNN) Story {i} {S}"}, "valid2")
            for i in range(4)
        ]
    },
}


def _write(root: Path, files: dict[str, list[dict[str, Any]]]) -> None:
    for name, rows in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@pytest.mark.parametrize("task_name", list(TASK_FILES))
def test_task_data_through_every_path(task_name, tok, kind, tmp_path, classifier_dir):
    data = tmp_path / "data"
    _write(data, TASK_FILES[task_name])
    task = build_task({"name": task_name, "data_dir": str(data), "eval_fraction": 0.5})
    if task_name == "imdb":
        pairs = task.review_pairs(3, prompt_words=3, completion_words=5, seed=0)
        prompts = task.prompts("train", tok) + task.prompts("eval", tok)
        # prefixes of up to 8 plain tokens of a review that opens with "<|endoftext|>": its characters
        reviews = [t for t, _ in task.reviews("train") + task.reviews("test")]
        assert all(any(r.startswith(p) for r in reviews) for p in prompts)
        assert any(p.startswith("<|") for p in prompts)
    else:
        splits = ["eval"] if task_name == "cnndm" else ["train", "eval"]
        pairs = [p for split in splits for p in task.pairs(split)]
        prompts = [p for split in splits for p in task.prompts(split, tok)]
    assert "<|endoftext|>" in "".join(p.prompt + p.chosen for p in pairs)  # the data exercise the bug
    check_pairs(tok, [p.prompt for p in pairs], [p.chosen for p in pairs])
    check_pairs(tok, [p.prompt for p in pairs], [p.rejected for p in pairs])
    check_prompts(tok, prompts)
    check_fitting(tok, [p.prompt for p in pairs], task)
    if task_name != "cnndm":  # evaluation-only
        check_packing(tok, task.sft_texts())
    judge_texts = [DIALOGUE_TEMPLATE.format(prompt=p.prompt, first=p.chosen, second=p.rejected) for p in pairs]
    check_judged(tok, kind, judge_texts, classifier_dir)


def test_real_cnndm_rows_with_endoftext(data_dir, tokenizers_):
    """The shared CNN/DM comparisons: 21 rows of each file hold "<|endoftext|>" (README of the data);
    cnndm0 repeats batch0_cnndm, so the task keeps each once."""
    lines = []
    for path in sorted((data_dir / "cnndm/comparisons").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines += f.readlines()
    assert sum("<|endoftext|>" in line for line in lines) == 42
    task = build_task({"name": "cnndm", "data_dir": str(data_dir)})
    pairs = [p for p in task.pairs("eval") if "<|endoftext|>" in p.prompt + p.chosen + p.rejected]
    assert len(pairs) == 21 and all("<|endoftext|>" in p.chosen + p.rejected for p in pairs)  # in a summary
    for tok in tokenizers_.values():
        check_pairs(tok, [p.prompt for p in pairs], [p.chosen for p in pairs])
        check_pairs(tok, [p.prompt for p in pairs], [p.rejected for p in pairs])


# ------------------------------------------------------------------------------------------------
# no way around encode_text
# ------------------------------------------------------------------------------------------------

# the only places in alignlab that call a tokenizer on text: encode_text itself and its fallback, and
# template_tokens' one-letter probe
ALLOWED = {
    ("alignlab/encoding.py", "encode_text"),
    ("alignlab/encoding.py", "_encode_without_added_tokens"),
    ("alignlab/encoding.py", "template_tokens"),
}
ENCODING_METHODS = {
    "encode", "encode_plus", "batch_encode_plus", "encode_batch", "_encode_plus", "_batch_encode_plus",
    "tokenize", "apply_chat_template", "__call__", "pre_tokenize_str",
}  # fmt: skip


def tokenizer_calls(root: Path) -> set[tuple[str, str]]:
    """(file, innermost enclosing function) of every call that hands text to a tokenizer: ``tokenizer(...)``,
    ``x.tokenizer(...)``, or an encoding method on a receiver named like a tokenizer or backend."""
    found = set()

    class Finder(ast.NodeVisitor):
        def __init__(self, name: str) -> None:
            self.name, self.scope = name, ["<module>"]

        def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
            self.scope.append(node.name)
            self.generic_visit(node)
            self.scope.pop()

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Call(self, node: ast.Call) -> None:
            f = node.func
            direct = (isinstance(f, ast.Name) and f.id in {"tokenizer", "tok"}) or (
                isinstance(f, ast.Attribute) and f.attr == "tokenizer"
            )
            method = isinstance(f, ast.Attribute) and f.attr in ENCODING_METHODS
            receiver = ast.unparse(f.value).lower() if isinstance(f, ast.Attribute) else ""
            if direct or (method and ("tok" in receiver or "backend" in receiver)):
                found.add((self.name, self.scope[-1]))
            self.generic_visit(node)

    for path in sorted((root / "alignlab").rglob("*.py")):
        Finder(path.relative_to(root).as_posix()).visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_every_text_reaches_a_tokenizer_through_encode_text():
    root = Path(__file__).resolve().parents[1]
    assert tokenizer_calls(root) == ALLOWED


def test_the_call_finder_finds_what_it_should(tmp_path):
    """The finder above catches each way of calling a tokenizer (so an empty result would mean something)."""
    (tmp_path / "alignlab").mkdir()
    (tmp_path / "alignlab" / "m.py").write_text(
        "def a(tokenizer, t):\n    return tokenizer(t)\n"
        "def b(self, t):\n    return self.tokenizer([t], padding=True)\n"
        "def c(policy, t):\n    return policy.tokenizer.encode(t)\n"
        "def d(tok, t):\n    return tok.batch_encode_plus([t])\n"
        "def e(tokenizer, m):\n    return tokenizer.apply_chat_template(m)\n"
        "def f(t):\n    return t.encode()\n"  # str.encode: not a tokenizer
        "def g(tokenizer, t):\n    def inner():\n        return tokenizer.tokenize(t)\n    return inner\n"
        "IDS = tok.encode('x')\n"
    )
    expected = {("alignlab/m.py", name) for name in [*"abcde", "inner", "<module>"]}
    assert tokenizer_calls(tmp_path) == expected
