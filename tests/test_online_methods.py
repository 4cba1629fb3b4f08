"""The online methods end to end on real IMDb data with smoke-size models: RLOO, GRPO, online DPO and
iterative DPO each raise the gold reward of their samples on held-out prompts over π_ref's within a
fixed number of iterations (as PPO-GT does in test_trainers.py), and a plugin's own online objective
trains through the same shared iteration."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignlab.jobs.job import run_training

SMOKE_MODEL = {"preset": "smoke", "vocab_size": 1000, "tokenizer_texts": 2000}
SMOKE_SFT = {"steps": 60, "batch_size": 16, "seq_len": 64, "lr": 2.0e-3, "warmup_steps": 6, "eval_blocks": 8}
TRAIN = {"optimizer": "adamw", "warmup_steps": 0, "grad_clip": 1.0, "log_with": [], "progress": False}


def _run(tmp_path: Path, data_dir: Path, name: str, **sections: Any) -> list[dict[str, Any]]:
    doc = {
        "task": {"name": "imdb", "data_dir": str(data_dir), "use_unsup": False},
        "model": SMOKE_MODEL,
        "sft": SMOKE_SFT,
        "reward": {"kind": "gold"},
        "eval": {"prompts": 64, "max_new_tokens": 16},
        "out_dir": str(tmp_path / name),
        **sections,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    run_training(path)
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "rollout", "train"),
    [
        (
            "rloo",
            {"kl_coef": 0.05, "minibatches": 2, "whiten_advantages": True},
            {"steps": 32, "batch_size": 64, "lr": 2.0e-3},
        ),
        ("grpo", {"kl_coef": 0.04, "epochs": 4, "minibatches": 2}, {"steps": 24, "batch_size": 64, "lr": 1.0e-3}),
        ("online_dpo", {"epochs": 4, "minibatches": 2}, {"steps": 24, "batch_size": 64, "lr": 1.0e-3}),
        ("iterative_dpo", {"epochs": 2}, {"steps": 16, "batch_size": 64, "lr": 1.0e-3}),
    ],
)
def test_each_online_method_raises_the_gold_reward_over_pi_ref(name, rollout, train, tmp_path, data_dir, cache):
    """Smoke preset, the gold judge as the reward, 64 held-out prompts: the mean gold reward of samples
    rises over π_ref's by 0.2 (PPO-GT's test, test_trainers.py, with the same budget of updates)."""
    rows = _run(
        tmp_path,
        data_dir,
        name,
        objective={"name": name},
        rollout={"max_new_tokens": 16, **rollout},
        train={**TRAIN, **train, "eval_every": train["steps"], "save_every": train["steps"]},
    )
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, train["steps"]]
    assert evals[-1]["sample_reward"] > evals[0]["sample_reward"] + 0.2, evals
    assert evals[-1]["sample_kl"] > 0
    iterations = [r for r in rows if r["split"] == "train"]
    assert len(iterations) == train["steps"] and all("reward" in r and "kl" in r for r in iterations)
    if name.endswith("dpo"):  # ranked pairs: their count, and DPO's own metrics
        assert all(r["pairs"] > 0 and "reward_accuracy" in r for r in iterations)


@pytest.mark.parametrize("name", ["rloo", "grpo", "online_dpo", "iterative_dpo", "ppo"])
def test_each_online_method_trains_through_the_shared_iteration(name, corpus_cache, tmp_path):
    """Two iterations on the corpus's tiny data: the iteration's own metrics are logged, the policy moves
    away from π_ref, and the checkpoint holds the policy (and a critic for PPO's GAE only)."""
    out = tmp_path / name
    batch = "4" if name != "ppo" else "2"
    run_training(
        "train/ok.yaml",
        [
            f"objective={{name: {name}}}",
            "reward.kind=gold",
            "rollout.max_new_tokens=4",
            f"train.batch_size={batch}",
            "eval.prompts=2",
            "eval.max_new_tokens=4",
            f"out_dir={out}",
        ],
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all({"reward", "kl", "gen_s", "kl_coef", "wall_s"} <= set(r) for r in train)
    assert 0 < train[0]["wall_s"] < train[1]["wall_s"]  # seconds since the run started, at each iteration's end
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals[0]["sample_kl"] == 0 and evals[-1]["sample_kl"] != 0
    # each checkpoint is the policy (a model at its top) with the critic, when there is one, aside
    assert all((c / "model.safetensors").is_file() for c in (out / "checkpoints").glob("step-*"))
    saved = sorted(p.name for p in (out / "checkpoints").glob("step-*/*") if p.is_dir())
    assert ("critic" in saved) == (name == "ppo")


PLUGIN = textwrap.dedent(
    '''
    """A plugin's own online objective: plain REINFORCE on the estimator's advantages, −A log π(y|x)."""
    from dataclasses import dataclass

    import torch

    from alignlab.objectives import LossOutput, Needs, ObjectiveConfig, Online, RolloutBatch, register_objective


    @dataclass(frozen=True)
    class PGConfig(ObjectiveConfig):
        pass


    @register_objective(
        "my_pg",
        config=PGConfig,
        needs=Needs(reference=True, data="online", online=Online(advantage="reinforce", epochs=1)),
        citation="Williams 1992",
    )
    def my_pg(batch: RolloutBatch, cfg: PGConfig) -> LossOutput:
        """−A log π(y|x) per sequence."""
        mask = batch.mask.to(batch.logprobs.dtype)
        logp = (batch.logprobs * mask).sum(-1)
        advantage = (batch.advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return LossOutput(-advantage * logp, {"my_advantage": advantage.detach()})
    '''
)


def test_a_plugins_online_objective_trains_through_the_shared_iteration(tmp_path, data_dir, cache):
    (tmp_path / "my_pg.py").write_text(PLUGIN)
    rows = _run(
        tmp_path,
        data_dir,
        "my_pg",
        plugins=["my_pg.py"],
        objective={"name": "my_pg"},
        rollout={"max_new_tokens": 8},
        train={**TRAIN, "steps": 3, "batch_size": 16, "lr": 1.0e-3, "eval_every": 3, "save_every": 3},
        eval={"prompts": 8, "max_new_tokens": 8},
    )
    iterations = [r for r in rows if r["split"] == "train"]
    assert len(iterations) == 3 and all("my_advantage" in r and "loss" in r for r in iterations)
    summary = json.loads((tmp_path / "my_pg" / "summary.json").read_text())
    assert summary["method"] == "my_pg" and summary["citation"] == "Williams 1992"
    # the moving baseline is the estimator's state, kept in the checkpoint
    state = json.loads(next((tmp_path / "my_pg" / "checkpoints").glob("step-*/state.json")).read_text())
    assert isinstance(state["estimator"]["baseline"], float)


TRAINER_PLUGIN = textwrap.dedent(
    '''
    """A plugin's own trainer, and an objective that names it."""
    from alignlab.objectives import LossOutput, Needs, ObjectiveConfig, register_objective
    from alignlab.jobs.trainers import RunContext, register_trainer


    @register_trainer("count_prompts", data=())
    def count_prompts(ctx: RunContext) -> dict:
        """Trains nothing: evaluates π_ref through the shared sampling evaluation and counts the task's prompts."""
        n = len(ctx.task.prompts("train", ctx.policy.tokenizer))
        return {"step": 0, "split": "eval", "train_prompts": n, **ctx.sampler(ctx.policy.model)}


    @register_objective(
        "counted", config=ObjectiveConfig, needs=Needs(reference=False, data="paired", trainer="count_prompts"),
        citation="none",
    )
    def counted(batch, cfg) -> LossOutput:
        """Never called: its trainer trains nothing."""
        raise NotImplementedError
    '''
)


def test_a_plugin_registers_a_whole_trainer_that_its_objective_names(corpus_cache, tmp_path):
    (tmp_path / "count.py").write_text(TRAINER_PLUGIN)
    out = tmp_path / "counted"
    summary = run_training(
        "train/ok.yaml",
        [
            f"plugins=[{tmp_path / 'count.py'}]",
            "objective={name: counted}",
            "eval.prompts=2",
            "eval.max_new_tokens=4",
            f"out_dir={out}",
        ],
    )
    assert summary["method"] == "counted" and summary["final"]["train_prompts"] == 3
    assert summary["final"]["sample_kl"] == 0.0  # π_ref against itself, through the shared evaluation


def test_best_of_n_draws_other_samples_for_another_seed_and_the_same_for_the_same(tmp_path, data_dir, cache):
    """Best-of-N trains nothing, so an experiment's seeds must be seeds of its samples: seed 0 twice gives
    the same rows; seeds 0 and 1 draw different N-tuples (else its CI over seeds would be a fake 0)."""

    def final(seed: int, name: str) -> dict:
        rows = _run(
            tmp_path,
            data_dir,
            name,
            objective={"name": "best_of_n", "n": 4},
            train={**TRAIN, "seed": seed},
            eval={"prompts": 16, "max_new_tokens": 8},
        )
        return rows[-1]

    first, again, other = final(0, "a"), final(0, "b"), final(1, "c")
    assert first["sample_reward"] == again["sample_reward"]
    assert first["sample_reward"] != other["sample_reward"]


def tokenizer_and_gpt2(texts: list[str]):
    """A tokenizer trained on ``texts`` and a 1-layer GPT-2 over it, initialised from seed 0."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignlab.models import train_tokenizer

    tokenizer = train_tokenizer(texts * 10, vocab_size=120)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, GPT2LMHeadModel(config)


@pytest.mark.parametrize(("method", "grad_accum"), [("grpo", 1), ("grpo", 2), ("online_dpo", 1), ("online_dpo", 2)])
def test_old_logps_from_the_update_give_the_iteration_it_gave_with_their_own_forward(
    method, grad_accum, tmp_path, monkeypatch
):
    """GRPO and online DPO with one update per batch: the rollouts skip the policy forward for the old
    log-probs (the update's own forward gives them, detached: GRPO's ratio 1), and the iteration is the one
    it was with that forward — the same losses, rollout KL and entropy, rewards, and weights after three
    iterations (online DPO: no tied pair here, so the update scores every rollout)."""
    import copy

    import torch
    from transformers import GPT2LMHeadModel

    from alignlab.objectives import get_objective
    from alignlab.train import online
    from alignlab.train.config import TrainConfig
    from alignlab.train.loop import make_accelerator
    from alignlab.train.online_batches import PolicyAndValue, RolloutConfig, Settings

    texts = ["the film was a delight", "a boring plot and bad acting", "what a wonderful cast", "i hated it"]
    tokenizer, start = tokenizer_and_gpt2(texts)
    objective = get_objective(method)
    assert objective.needs.online is not None
    s = Settings.resolve(RolloutConfig(max_new_tokens=6, kl_coef=0.1), objective.needs.online)
    assert s.old_logps_from_update
    cfg = TrainConfig(
        steps=3, batch_size=8, grad_accum=grad_accum, optimizer="adamw", lr=1e-2, warmup_steps=0, grad_clip=1.0,
        log_with=[], progress=False,
    )  # fmt: skip

    def reward(prompts, completions):  # distinct completions: distinct rewards (online DPO: no tied pair)
        return torch.tensor([float(c.count("a")) - 0.1 * len(c) + 1e-3 * (sum(map(ord, c)) % 997) for c in completions])

    forwards: list[int] = []
    policy_forward = online.forward
    monkeypatch.setattr(online, "forward", lambda *a, **k: forwards.append(1) or policy_forward(*a, **k))

    def run(name: str) -> tuple[list[dict], GPT2LMHeadModel]:
        core = PolicyAndValue(copy.deepcopy(start), temperature=1.0)
        rows = online.train_online(
            core, copy.deepcopy(start), tokenizer, texts, reward, objective, objective.config(), s, cfg,
            tmp_path / name, make_accelerator(cfg, tmp_path / name),
        )  # fmt: skip
        return [r for r in rows if r["split"] == "train"], core.policy

    fast, fast_policy = run("fast")
    assert forwards == []  # collect ran no forward of the policy
    monkeypatch.setattr(Settings, "old_logps_from_update", property(lambda self: False))
    slow, slow_policy = run("slow")
    assert len(forwards) == cfg.steps  # one per iteration, as before
    keys = ("policy_loss", "kl_loss", "ratio") if method == "grpo" else ("pairs", "ties")
    for a, b in zip(fast, slow, strict=True):
        for key in ("reward", "kl", "entropy", "loss", "length", *keys):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
        assert a.get("ratio", 1.0) == 1.0
        assert a.get("ties", 0) == 0
        assert a["step_tokens"] < b["step_tokens"]  # the skipped forward is not counted as compute
    assert fast[0]["kl"] == 0 != fast[-1]["kl"]  # π_θ = π_ref at the first iteration only: the KL stat is live
    for p, q in zip(fast_policy.parameters(), slow_policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def one_iteration(method: str, reward, tmp_path, **rollout) -> list[dict]:
    """One online iteration of ``method`` (8 rollouts of ≤ 4 tokens) on a 1-layer GPT-2 from scratch;
    the train rows."""
    import copy

    from alignlab.objectives import get_objective
    from alignlab.train import online
    from alignlab.train.config import TrainConfig
    from alignlab.train.loop import make_accelerator
    from alignlab.train.online_batches import PolicyAndValue, RolloutConfig, Settings

    texts = ["the film was a delight", "a boring plot", "what a cast", "i hated it"]
    tokenizer, model = tokenizer_and_gpt2(texts)
    objective = get_objective(method)
    assert objective.needs.online is not None
    s = Settings.resolve(RolloutConfig(max_new_tokens=4, **rollout), objective.needs.online)
    cfg = TrainConfig(steps=1, batch_size=8, optimizer="adamw", lr=1e-3, warmup_steps=0, log_with=[], progress=False)
    rows = online.train_online(
        PolicyAndValue(copy.deepcopy(model), temperature=1.0), copy.deepcopy(model), tokenizer, texts, reward,
        objective, objective.config(), s, cfg, tmp_path, make_accelerator(cfg, tmp_path),
    )  # fmt: skip
    return [r for r in rows if r["split"] == "train"]


def test_rollout_draw_reaches_the_sampler(tmp_path, monkeypatch):
    """``rollout.draw: inverse_cdf`` is how every rollout token of an online run is drawn (the default,
    multinomial, is generate's draw)."""
    import torch

    from alignlab.core import rollout as rollout_core

    draws: list[str] = []
    real = rollout_core.draw_tokens
    monkeypatch.setattr(
        rollout_core, "draw_tokens", lambda probs, draw="multinomial": draws.append(draw) or real(probs, draw)
    )
    for draw in ("inverse_cdf", "multinomial"):
        draws.clear()
        length = lambda prompts, completions: torch.tensor([float(len(c)) for c in completions])  # noqa: E731
        one_iteration("grpo", length, tmp_path / draw, draw=draw)
        assert draws and set(draws) == {draw}


def test_online_dpo_with_every_pair_tied_still_logs_the_rollouts_kl(tmp_path):
    """A constant reward ties every pair: nothing trains, and the update, which scored no rollout, scores
    them all for the logged KL and entropy, as the rollouts' own forward did (π_θ = π_ref at the first
    iteration: KL 0, entropy > 0)."""
    import torch

    (row,) = one_iteration("online_dpo", lambda prompts, completions: torch.zeros(len(completions)), tmp_path)
    assert row["pairs"] == 0 and row["ties"] == 4
    assert row["kl"] == pytest.approx(0.0, abs=1e-6) and row["entropy"] > 0
