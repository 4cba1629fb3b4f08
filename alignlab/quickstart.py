"""``alignlab train``: the smallest real end-to-end run — any paired objective on IMDb-derived pairs.

Until the experiment runner lands this is alignlab's main job. It exercises the whole
foundation on real data: plugins, the registry, config validation, the scoring core and the
loss functions. In numbered steps:

1. read IMDb train reviews (data directory or Hub) and form pairs: the prompt is the opening
   words of a positive review, the chosen completion its true continuation, the rejected one a
   continuation taken from a negative review — a sentiment preference with known labels;
2. train a byte-level BPE tokenizer and a GPT-2 preset from scratch;
3. a short SFT on the pair texts, so that π_ref is a language model, not noise;
4. freeze a copy as π_ref and score every pair under it once (when the objective needs it);
5. train the objective, evaluating its loss and metrics on held-out pairs;
6. write the resolved config, ``metrics.jsonl`` and ``summary.json`` (atomically).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignlab.config import apply_overrides, load_yaml
from alignlab.core.scoring import EncodedBatch, concat_pairs, score_pairs, sequence_logps
from alignlab.data import load_records, resolve_data_dir
from alignlab.encoding import encode_completions
from alignlab.errors import AlignlabError, ConfigError
from alignlab.io import atomic_write_json, atomic_write_jsonl, atomic_write_yaml
from alignlab.models import PRESETS, build_preset, train_tokenizer
from alignlab.objectives import Objective, ObjectiveConfig, PairedLogps, get_objective
from alignlab.plugins import load_plugins
from alignlab.schema import Config, knob
from alignlab.sft import lm_nll


@dataclass(frozen=True)
class QuickstartConfig(Config):
    objective: Any = knob(
        default_factory=lambda: {"name": "dpo"},
        help="The objective: {name: <registered name>, <knob>: <value>, ...}; see `alignlab objectives`.",
    )
    plugins: list[str] = knob(
        default_factory=list, help="Modules or .py files (relative to the YAML) that register objectives."
    )
    data_dir: str | None = knob(
        None,
        "Directory holding imdb/train.jsonl.gz; unset: $ALIGNLAB_DATA_DIR, else the Hub (stanfordnlp/imdb).",
    )
    out_dir: str = knob("runs/quickstart", "Where the run writes its config, metrics and summary.")
    seed: int = knob(0, "Seed of the data split, the model initialisation and the batch order.")
    n_pairs: int = knob(512, "Training pairs.", gt=0)
    n_eval_pairs: int = knob(128, "Held-out pairs for evaluation.", gt=0)
    prompt_words: int = knob(4, "Words of the review opening used as the prompt.", gt=0)
    completion_words: int = knob(16, "Words of each completion.", gt=0)
    vocab_size: int = knob(2000, "BPE vocabulary size.", ge=300)
    preset: str = knob("smoke", f"Model size: one of {', '.join(PRESETS)}.")
    sft_steps: int = knob(80, "SFT steps on the pair texts before π_ref is frozen.", ge=0)
    sft_lr: float = knob(2e-3, "SFT learning rate (AdamW).", gt=0)
    steps: int = knob(60, "Objective training steps.", gt=0)
    lr: float = knob(5e-4, "Objective learning rate (AdamW).", gt=0)
    batch_size: int = knob(16, "Pairs per step.", gt=0)
    eval_every: int = knob(20, "Evaluate every this many steps (and at the start and the end).", gt=0)


def _clean(text: str) -> list[str]:
    return text.replace("<br />", " ").replace("<br/>", " ").split()


def build_pairs(cfg: QuickstartConfig) -> tuple[list[str], list[str], list[str]]:
    """(prompts, chosen, rejected) for n_pairs + n_eval_pairs pairs, deterministic in the seed."""
    records = load_records(resolve_data_dir(cfg.data_dir), "imdb/train", "stanfordnlp/imdb", "train")
    need = cfg.prompt_words + cfg.completion_words
    pos = [w for t, y in zip(records["text"], records["label"], strict=True) if y == 1 and len(w := _clean(t)) >= need]
    neg = [w for t, y in zip(records["text"], records["label"], strict=True) if y == 0 and len(w := _clean(t)) >= need]
    n = cfg.n_pairs + cfg.n_eval_pairs
    if min(len(pos), len(neg)) < n:
        raise AlignlabError(f"imdb/train has {len(pos)} positive and {len(neg)} negative usable reviews; {n} needed")
    rng = random.Random(cfg.seed)
    pos_pick, neg_pick = rng.sample(pos, n), rng.sample(neg, n)
    k, m = cfg.prompt_words, cfg.completion_words
    prompts = [" ".join(w[:k]) for w in pos_pick]
    chosen = [" " + " ".join(w[k : k + m]) for w in pos_pick]
    rejected = [" " + " ".join(w[k : k + m]) for w in neg_pick]
    return prompts, chosen, rejected


def _sft(model: torch.nn.Module, data: EncodedBatch, cfg: QuickstartConfig) -> float:
    """Token-mean NLL training on whole texts (everything after the first token is a target)."""
    if cfg.sft_steps == 0:
        return float("nan")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(cfg.sft_steps), desc="sft", leave=False):
        idx = torch.randint(0, data.input_ids.shape[0], (cfg.batch_size,), generator=gen).tolist()
        b = data.select(idx)
        loss = lm_nll(model, b.input_ids, b.attention_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


class PairData:
    """Encoded chosen/rejected batches of a split, with reference sums computed once."""

    def __init__(self, tokenizer: Any, prompts: list[str], chosen: list[str], rejected: list[str], ctx: int):
        self.chosen = encode_completions(tokenizer, prompts, chosen, ctx)
        self.rejected = encode_completions(tokenizer, prompts, rejected, ctx)
        self.pad_id = tokenizer.pad_token_id
        self.ref: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.chosen.input_ids.shape[0]

    @torch.no_grad()
    def cache_reference(self, reference: torch.nn.Module, batch_size: int) -> None:
        chosen: list[torch.Tensor] = []
        rejected: list[torch.Tensor] = []
        for start in range(0, len(self), batch_size):
            idx = list(range(start, min(start + batch_size, len(self))))
            c, cm, r, rm = score_pairs(reference, self.chosen.select(idx), self.rejected.select(idx), self.pad_id)
            chosen.append(sequence_logps(c, cm, "sum"))
            rejected.append(sequence_logps(r, rm, "sum"))
        self.ref = (torch.cat(chosen), torch.cat(rejected))

    def logps(self, model: torch.nn.Module, idx: list[int], objective: Objective) -> PairedLogps:
        """Score rows ``idx`` under ``model`` (one forward pass) as the objective's input."""
        c, cm, r, rm = score_pairs(model, self.chosen.select(idx), self.rejected.select(idx), self.pad_id)
        token_level = objective.needs.token_level
        return PairedLogps(
            policy_chosen_logps=sequence_logps(c, cm, "sum"),
            policy_rejected_logps=sequence_logps(r, rm, "sum"),
            chosen_lengths=cm.sum(-1),
            rejected_lengths=rm.sum(-1),
            ref_chosen_logps=self.ref[0][idx] if self.ref is not None else None,
            ref_rejected_logps=self.ref[1][idx] if self.ref is not None else None,
            chosen_token_logps=c if token_level else None,
            chosen_mask=cm if token_level else None,
            rejected_token_logps=r if token_level else None,
            rejected_mask=rm if token_level else None,
        )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: PairData, objective: Objective, cfg: ObjectiveConfig, bs: int
) -> dict[str, float]:
    """Mean loss and mean of every metric of the objective over all pairs of ``data``."""
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(data), bs):
        idx = list(range(start, min(start + bs, len(data))))
        out = objective(data.logps(model, idx, objective), cfg)
        for name, value in {"loss": out.losses, **out.metrics}.items():
            totals[name] = totals.get(name, 0.0) + float(value.float().mean()) * len(idx)
    model.train()
    return {name: total / len(data) for name, total in totals.items()}


def resolve(path: str | Path, overrides: list[str]) -> tuple[QuickstartConfig, Objective, ObjectiveConfig]:
    """Read, override and validate a quickstart YAML; load its plugins; look up its objective."""
    source = str(path)
    raw = apply_overrides(load_yaml(path), overrides)
    cfg: QuickstartConfig = QuickstartConfig.from_dict(raw, source)
    load_plugins(cfg.plugins, Path(path).parent, source)
    spec = cfg.objective if isinstance(cfg.objective, dict) else {"name": cfg.objective}
    if "name" not in spec:
        raise ConfigError("objective.name", "required key is missing", source)
    knobs = {k: v for k, v in spec.items() if k != "name"}
    objective = get_objective(str(spec["name"]))
    if objective.needs.data != "paired":
        raise ConfigError(
            "objective.name",
            f"{objective.name!r} needs {objective.needs.data} data; `alignlab train` runs paired objectives only",
            source,
        )
    return cfg, objective, objective.config_cls.from_dict(knobs, source, "objective.")


def run(path: str | Path, overrides: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the quickstart YAML at ``path``; returns the summary (also written to ``out_dir``)."""
    cfg, objective, obj_cfg = resolve(path, overrides or [])
    out = Path(cfg.out_dir)
    if (out / "summary.json").exists() and not force:
        print(f"{out} holds a finished run; nothing to do (pass --force to run it again)")
        return json.loads((out / "summary.json").read_text())
    t0 = time.time()
    torch.manual_seed(cfg.seed)

    # 1. pairs from real reviews
    prompts, chosen, rejected = build_pairs(cfg)
    n = cfg.n_pairs
    # 2. tokenizer and model from scratch
    tokenizer = train_tokenizer([p + c for p, c in zip(prompts, chosen, strict=True)] + rejected, cfg.vocab_size)
    policy = build_preset(cfg.preset, tokenizer, cfg.seed)
    ctx = policy.config.n_positions
    train = PairData(tokenizer, prompts[:n], chosen[:n], rejected[:n], ctx)
    held_out = PairData(tokenizer, prompts[n:], chosen[n:], rejected[n:], ctx)
    # 3. SFT on all training texts (chosen and rejected alike: π_ref must not prefer either)
    sft_loss = _sft(policy, concat_pairs(train.chosen, train.rejected, tokenizer.pad_token_id), cfg)
    # 4. π_ref: a frozen copy, scored once
    if objective.needs.reference:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        train.cache_reference(reference, cfg.batch_size * 4)
        held_out.cache_reference(reference, cfg.batch_size * 4)
        del reference
    # 5. train the objective
    rows = [{"step": 0, **evaluate(policy, held_out, objective, obj_cfg, cfg.batch_size * 4)}]
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    order: list[int] = []
    bar = tqdm(range(1, cfg.steps + 1), desc=objective.name)
    for step in bar:
        if len(order) < cfg.batch_size:
            order += torch.randperm(n, generator=gen).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        loss_out = objective(train.logps(policy, idx, objective), obj_cfg)
        loss = loss_out.losses.mean()
        if not torch.isfinite(loss):
            raise AlignlabError(f"step {step}: the {objective.name} loss is {loss.item()}; stopping")
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            rows.append({"step": step, **evaluate(policy, held_out, objective, obj_cfg, cfg.batch_size * 4)})
            atomic_write_jsonl(out / "metrics.jsonl", rows)
    # 6. results
    atomic_write_yaml(
        out / "config.yaml",
        {**cfg.to_dict(), "objective": {"name": objective.name, **obj_cfg.to_dict()}},
    )
    atomic_write_jsonl(out / "metrics.jsonl", rows)
    summary = {
        "objective": objective.name,
        "knobs": obj_cfg.to_dict(),
        "citation": objective.citation,
        "sft_final_loss": sft_loss,
        "eval_first": rows[0],
        "eval_last": rows[-1],
        "wall_time_s": round(time.time() - t0, 2),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
