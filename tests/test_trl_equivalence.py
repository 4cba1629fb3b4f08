"""alignlab's losses against TRL 1.x on identical inputs, wherever TRL implements the loss.

Two kinds of entry point, the smallest that computes each loss:

- the real ``DPOTrainer`` / ``KTOTrainer`` on a tiny GPT-2: a batch from TRL's own data
  collator goes through ``trainer._compute_loss`` on one side, and through alignlab's scoring
  core and objective on the other — this checks scoring and loss together. TRL's fused LM head
  computes in float32 whatever the model's dtype, so these compare at float32 precision;
- TRL's tensor-level loss methods (ORPO's ``odds_ratio_loss``, CPO's ``cpo_loss``) called
  unbound on the same tensors, in float64 where TRL keeps the dtype;
- the real ``RLOOTrainer`` / ``GRPOTrainer`` on alignlab's own rollouts: the online trainer's
  ``collect`` samples them, and TRL's ``_generate_and_score_completions`` is fed the same tokens
  (its model's ``generate`` replays them), then its ``_compute_loss``: advantages, loss and every
  parameter's gradient at float32 precision.

Every known convention difference is its own named test below, never a looser tolerance.
"""

from __future__ import annotations

import copy
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from alignlab.core.scoring import position_ids, sequence_logps, token_logps
from alignlab.models import train_tokenizer
from alignlab.objectives import PairedLogps, UnpairedLogps, get_objective
from alignlab.objectives.kto import kl_baseline
from alignlab.train.config import disable_dropout
from alignlab.train.online import collect
from alignlab.train.online_batches import Costs, PolicyAndValue, RolloutConfig, Settings, minibatch_loss

trl = pytest.importorskip("trl")

# float32 end to end (TRL's fused head): relative agreement to ~1e-6 is what float32 gives
F32 = dict(rtol=2e-6, atol=2e-6)

SENTENCES = [
    "The movie was a delight from start to finish.",
    "I hated every minute of this boring film.",
    "What is the capital of France? Paris is the capital.",
    "Two plus two equals four, not five.",
    "A quiet, moving story with a wonderful cast.",
    "The plot made no sense and the acting was worse.",
]


PREFERENCE_DATA = {
    "prompt": ["What is the capital of France?", "Two plus two", "The movie was", "The plot"],
    "chosen": [" Paris is the capital.", " equals four.", " a delight from start to finish.", " was moving."],
    "rejected": [" I do not know.", " equals five, not four.", " boring.", " made no sense and the acting was worse."],
}


def report(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    diff = (ours.double() - theirs.double()).abs().max().item()
    print(f"[trl-equivalence] {name}: max |ours - TRL| = {diff:.3e}")
    return diff


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES * 5, vocab_size=300)


def make_model(tokenizer, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=64,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # a random init gives near-uniform logits; scale up to make log-probs differ
        model.transformer.wte.weight.mul_(20)
    return model.eval()


@pytest.fixture(scope="module")
def policy_and_reference(tokenizer):
    reference = make_model(tokenizer, seed=0)
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return policy, reference


def trl_args(config_cls, tmp_path_factory, **kwargs):
    return config_cls(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 even on CPU; the reference would then run under autocast
        gradient_checkpointing=False,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        max_length=None,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------
# DPO family through the real DPOTrainer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_setup(tokenizer, policy_and_reference, tmp_path_factory):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy, reference = (copy.deepcopy(m) for m in policy_and_reference)
    data = Dataset.from_dict(PREFERENCE_DATA)
    args = trl_args(DPOConfig, tmp_path_factory, per_device_train_batch_size=4, beta=0.1, loss_type=["sigmoid"])
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()

    # alignlab's side: the scoring core on TRL's own batch (chosen rows first, then rejected)
    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        pol = token_logps(trainer.model, ids, att, comp)
        ref = token_logps(trainer.ref_model, ids, att, comp)
    sums_pol, sums_ref = sequence_logps(pol, comp, "sum"), sequence_logps(ref, comp, "sum")
    lengths = comp.sum(-1).float()
    B = ids.shape[0] // 2
    paired = PairedLogps(
        policy_chosen_logps=sums_pol[:B],
        policy_rejected_logps=sums_pol[B:],
        chosen_lengths=lengths[:B],
        rejected_lengths=lengths[B:],
        ref_chosen_logps=sums_ref[:B],
        ref_rejected_logps=sums_ref[B:],
    )
    return trainer, batch, paired


def trl_dpo_loss(trainer, batch, loss_type: str, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.beta, trainer.label_smoothing = beta, label_smoothing
    with torch.no_grad():
        return trainer._compute_loss(trainer.model, batch, return_outputs=False)


@pytest.mark.parametrize(
    "loss_type,beta,label_smoothing,name,knobs",
    [
        ("sigmoid", 0.1, 0.0, "dpo", {"beta": 0.1}),
        ("sigmoid", 0.5, 0.0, "dpo", {"beta": 0.5}),
        ("ipo", 0.1, 0.0, "ipo", {"tau": 0.1, "length_normalized": True}),
        ("ipo", 0.5, 0.0, "ipo", {"tau": 0.5, "length_normalized": True}),
        ("robust", 0.1, 0.2, "rdpo", {"beta": 0.1, "epsilon": 0.2}),
        ("robust", 0.5, 0.4, "rdpo", {"beta": 0.5, "epsilon": 0.4}),
        ("hinge", 0.1, 0.0, "slic", {"beta": 0.1, "delta": 1.0}),
        ("hinge", 2.0, 0.0, "slic", {"beta": 2.0, "delta": 1.0}),
    ],
)
def test_dpo_family_matches_trl_dpo_trainer(dpo_setup, loss_type, beta, label_smoothing, name, knobs):
    trainer, batch, paired = dpo_setup
    theirs = trl_dpo_loss(trainer, batch, loss_type, beta, label_smoothing)
    ours = get_objective(name)(paired, get_objective(name).config(**knobs)).losses.mean()
    report(f"{name} {knobs} vs DPOTrainer loss_type={loss_type}", ours, theirs)
    assert_close(ours, theirs, **F32)


def test_dpo_implicit_rewards_match_trl_metrics(dpo_setup):
    trainer, batch, paired = dpo_setup
    trainer.model.eval()
    trainer._metrics["eval"].clear()
    trl_dpo_loss(trainer, batch, "sigmoid", 0.1)
    out = get_objective("dpo")(paired, get_objective("dpo").config(beta=0.1))
    logged = trainer._metrics["eval"]
    for ours_key, trl_key in [
        ("chosen_rewards", "rewards/chosen"),
        ("rejected_rewards", "rewards/rejected"),
        ("margins", "rewards/margins"),
        ("reward_accuracy", "rewards/accuracies"),
    ]:
        assert_close(out.metrics[ours_key].mean().item(), logged[trl_key][-1], **F32)


def test_ipo_convention_summed_by_default_trl_divides_by_length(dpo_setup):
    """Named convention difference: alignlab's default IPO sums log-ratios (the paper's formula and
    the original DPO code); TRL averages them per token. With `length_normalized=True` the two agree
    (test above); with the default they must not, and ours must equal the summed formula."""
    trainer, batch, paired = dpo_setup
    theirs = trl_dpo_loss(trainer, batch, "ipo", 0.1)
    ours = get_objective("ipo")(paired, get_objective("ipo").config(tau=0.1)).losses
    h = (paired.policy_chosen_logps - paired.ref_chosen_logps) - (
        paired.policy_rejected_logps - paired.ref_rejected_logps
    )
    assert_close(ours, (h - 5.0) ** 2)
    assert not torch.allclose(ours.mean(), theirs, rtol=1e-3)


def test_cdpo_matches_trl_cpo_label_smoothed_sigmoid_on_log_ratios():
    """TRL 1.x dropped label smoothing from DPOTrainer's sigmoid loss. Its CPO loss with
    `label_smoothing` is the same cross-entropy against (1−ε, ε) on `chosen − rejected` log-probs,
    so feeding it the π/π_ref log-ratios gives conservative DPO exactly (float64)."""
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-20 * torch.rand(16, generator=g, dtype=torch.float64) for _ in range(4))
    for beta, eps in [(0.1, 0.1), (0.5, 0.3), (1.0, 0.0)]:
        this = SimpleNamespace(
            beta=beta,
            accelerator=SimpleNamespace(device=torch.device("cpu")),
            loss_type="sigmoid",
            label_smoothing=eps,
            alpha=0.0,
            simpo_gamma=0.0,
        )
        theirs, _, _ = CPOTrainer.cpo_loss(this, pc - rc, pr - rr)
        batch = PairedLogps(
            policy_chosen_logps=pc,
            policy_rejected_logps=pr,
            chosen_lengths=torch.ones(16),
            rejected_lengths=torch.ones(16),
            ref_chosen_logps=rc,
            ref_rejected_logps=rr,
        )
        ours = get_objective("cdpo")(batch, get_objective("cdpo").config(beta=beta, epsilon=eps)).losses
        report(f"cdpo beta={beta} eps={eps} vs CPO sigmoid+label_smoothing on log-ratios", ours, theirs)
        assert_close(ours, theirs, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# KTO through the real KTOTrainer
# ---------------------------------------------------------------------------------------------


def sums(model, batch, prefix: str = "") -> torch.Tensor:
    """Sequence sums through alignlab's scoring core on TRL's rows ``prefix + input_ids`` etc."""
    ids, att, comp = (batch[prefix + k] for k in ("input_ids", "attention_mask", "completion_mask"))
    return sequence_logps(token_logps(model, ids, att, comp), comp, "sum")


def kto_z0s_matching_trl(tokenizer, policy_and_reference, tmp_path_factory, swap: bool) -> list[float]:
    """z0 from TRL's own mismatched rows (prompt_i with completion_{i−1}), through alignlab's
    `kl_baseline`; swapping policy and reference exercises both sides of the clamp at 0."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    policy, reference = (copy.deepcopy(m) for m in policy_and_reference)
    if swap:
        policy, reference = reference, policy
    data = Dataset.from_dict(
        {
            "prompt": [
                "What is the capital of France?",
                "Two plus two",
                "The movie was",
                "The plot",
                "A quiet, moving story",
                "I hated",
            ],
            "completion": [
                " Paris is the capital.",
                " equals five.",
                " a delight.",
                " made no sense.",
                " with a wonderful cast.",
                " every minute of this boring film.",
            ],
            "label": [True, False, True, False, True, False],
        }
    )
    args = trl_args(
        KTOConfig,
        tmp_path_factory,
        per_device_train_batch_size=3,
        beta=0.1,
        desirable_weight=1.0,
        undesirable_weight=1.5,
    )
    trainer = KTOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer)
    cfg = get_objective("kto").config(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)
    z0s = []
    for batch in trainer.get_train_dataloader():
        trainer.model.eval()
        with torch.no_grad():
            theirs = trainer._compute_loss(trainer.model, batch, return_outputs=False)

            z0 = kl_baseline(sums(trainer.model, batch, "KL_"), sums(trainer.ref_model, batch, "KL_"))
            unpaired = UnpairedLogps(
                policy_logps=sums(trainer.model, batch),
                ref_logps=sums(trainer.ref_model, batch),
                desirable=batch["label"].bool(),
                kl_baseline=z0,
            )
        ours = get_objective("kto")(unpaired, cfg).losses.mean()
        report(f"kto (swap={swap}) vs KTOTrainer", ours, theirs)
        assert_close(ours, theirs, **F32)
        assert_close(z0.item(), trainer._metrics["eval"]["kl"][-1], **F32)
        z0s.append(z0.item())
    return z0s


def test_kto_matches_trl_kto_trainer(tokenizer, policy_and_reference, tmp_path_factory):
    z0s = [
        z
        for swap in (False, True)
        for z in kto_z0s_matching_trl(tokenizer, policy_and_reference, tmp_path_factory, swap)
    ]
    assert 0.0 in z0s and any(z > 0 for z in z0s)  # both sides of the clamp were exercised


# ---------------------------------------------------------------------------------------------
# ORPO and SimPO through TRL's tensor-level loss methods
# ---------------------------------------------------------------------------------------------


def mean_logp_pairs(seed: int, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    lengths_c = torch.randint(1, 30, (n,), generator=g).double()
    lengths_r = torch.randint(1, 30, (n,), generator=g).double()
    mean_c = -3 * torch.rand(n, generator=g, dtype=torch.float64) - 1e-3
    mean_r = -3 * torch.rand(n, generator=g, dtype=torch.float64) - 1e-3
    batch = PairedLogps(
        policy_chosen_logps=mean_c * lengths_c,
        policy_rejected_logps=mean_r * lengths_r,
        chosen_lengths=lengths_c,
        rejected_lengths=lengths_r,
    )
    return batch, mean_c, mean_r


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_odds_ratio_term_matches_trl(lam):
    """TRL returns +λ·log σ(log odds ratio) (added with a minus sign to its total); ours returns
    L_OR = −log σ(·), weighted by λ in the loss. TRL casts to float32, hence the float32 tolerance."""
    from trl.experimental.orpo import ORPOTrainer

    batch, mean_c, mean_r = mean_logp_pairs(seed=1)
    this = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device=torch.device("cpu")))
    theirs, _, _, _, log_odds = ORPOTrainer.odds_ratio_loss(this, mean_c, mean_r)
    out = get_objective("orpo")(batch, get_objective("orpo").config(lam=lam))
    report(
        f"orpo odds-ratio term lam={lam} vs ORPOTrainer.odds_ratio_loss",
        lam * out.metrics["odds_ratio_loss"],
        -theirs,
    )
    assert_close(lam * out.metrics["odds_ratio_loss"], -theirs.double(), **F32)
    assert_close(out.metrics["log_odds_ratio"].mean(), log_odds.double(), **F32)


def test_orpo_nll_convention_differs_from_trl(tokenizer, tmp_path_factory):
    """Named convention difference: TRL's ORPO NLL is one token-mean over the prompt *and*
    completion tokens of all chosen rows of the batch; alignlab's (and the paper's L_SFT on y_w)
    is the per-example mean NLL of the completion only. The odds-ratio terms agree; the totals
    differ by exactly the NLL convention."""
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    data = Dataset.from_dict(PREFERENCE_DATA)
    lam = 0.1
    args = trl_args(ORPOConfig, tmp_path_factory, per_device_train_batch_size=4, beta=lam)
    args.max_length = 64
    trainer = ORPOTrainer(
        model=make_model(tokenizer, seed=3), args=args, train_dataset=data, processing_class=tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        theirs, _ = trainer.get_batch_loss_metrics(trainer.model, batch, train_eval="train")
        side = {}
        for name in ("chosen", "rejected"):
            ids, att, labels = (
                batch[f"{name}_input_ids"],
                batch[f"{name}_attention_mask"],
                batch[f"{name}_labels"],
            )
            comp = (labels != -100).long()
            side[name] = (
                token_logps(trainer.model, ids, att, comp),
                comp,
                token_logps(trainer.model, ids, att, torch.cat([torch.zeros_like(att[:, :1]), att[:, 1:]], dim=1)),
                att,
            )
    (c_tok, c_comp, c_all, c_att), (r_tok, r_comp, _, _) = side["chosen"], side["rejected"]
    paired = PairedLogps(
        policy_chosen_logps=sequence_logps(c_tok, c_comp, "sum"),
        policy_rejected_logps=sequence_logps(r_tok, r_comp, "sum"),
        chosen_lengths=c_comp.sum(-1).float(),
        rejected_lengths=r_comp.sum(-1).float(),
    )
    out = get_objective("orpo")(paired, get_objective("orpo").config(lam=lam))
    trl_nll = -c_all.sum() / (c_att[:, 1:].sum())  # every non-pad token after the first, batch token-mean
    trl_total_from_ours = trl_nll + lam * out.metrics["odds_ratio_loss"].mean()
    report("orpo total with TRL's NLL convention vs ORPOTrainer", trl_total_from_ours, theirs)
    assert_close(trl_total_from_ours, theirs, **F32)
    assert not math.isclose(out.losses.mean().item(), theirs.item(), rel_tol=1e-3)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (2.5, 1.6), (0.1, 0.0)])
def test_simpo_matches_trl_cpo_simpo(beta, gamma):
    """CPO's simpo loss takes average log-probs and γ in reward units (coded as β(m − γ/β))."""
    from trl.experimental.cpo import CPOTrainer

    batch, mean_c, mean_r = mean_logp_pairs(seed=2)
    this = SimpleNamespace(
        beta=beta,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
        loss_type="simpo",
        simpo_gamma=gamma,
        label_smoothing=0.0,
        alpha=0.0,
    )
    theirs, chosen_rewards, _ = CPOTrainer.cpo_loss(this, mean_c, mean_r)
    out = get_objective("simpo")(batch, get_objective("simpo").config(beta=beta, gamma=gamma))
    report(f"simpo beta={beta} gamma={gamma} vs CPOTrainer.cpo_loss(simpo)", out.losses, theirs)
    assert_close(out.losses, theirs, rtol=0, atol=1e-12)
    assert_close(out.metrics["chosen_rewards"], chosen_rewards, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# RLOO and GRPO through the real RLOOTrainer / GRPOTrainer, on alignlab's own rollouts
# ---------------------------------------------------------------------------------------------

SAME_LENGTH_PROMPTS = ["The movie was a", "I hated", "Two plus"]  # 5 tokens each: no left padding
RAGGED_PROMPTS = ["The", "I hated every", "What is the capital"]  # 1, 9 and 6 tokens
K, KL_COEF, TEMPERATURE, MAX_NEW_TOKENS = 4, 0.1, 0.7, 12


def text_score(prompts, completions) -> torch.Tensor:
    """A reward on texts standing in for the gold judge: varied, deterministic, with occasional ties."""
    return torch.tensor(
        [c.count("e") - 0.1 * len(c) + 0.5 * ("a" in p) for p, c in zip(prompts, completions, strict=True)]
    )


def trl_text_score(prompts, completions, **_):
    """``text_score`` as a TRL reward function; TRL's prompts carry the BOS token as text."""
    return text_score([p.removeprefix("<|endoftext|>") for p in prompts], completions).tolist()


def perturbed(model, seed: int, scale: float):
    out = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


@pytest.fixture(scope="module")
def online_weights(tokenizer, tmp_path_factory):
    """π_ref, saved where TRL reloads its reference from (the policy's ``name_or_path``); π_old, which
    samples; π_θ, the policy after an update on those samples (the second epoch: ratios away from 1)."""
    from transformers import GPT2LMHeadModel

    path = tmp_path_factory.mktemp("pi_ref")
    make_model(tokenizer, seed=0).save_pretrained(path)
    reference = GPT2LMHeadModel.from_pretrained(path).eval()
    old = perturbed(reference, seed=1, scale=0.3)
    return reference, old, perturbed(old, seed=2, scale=0.05)


@contextmanager
def replayed(model, completions: list[list[int]], prompts: list[list[int]], pad: int):
    """``model.generate`` answers TRL's own prompt ids (checked to be alignlab's) with the given completions."""

    def generate(input_ids, attention_mask, **_):
        assert [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask, strict=True)] == prompts
        width = max(len(c) for c in completions)
        return torch.cat([input_ids, torch.tensor([c + [pad] * (width - len(c)) for c in completions])], dim=1)

    model.generate = generate
    try:
        yield
    finally:
        del model.generate


@contextmanager
def counted_positions(*models):
    """The models' forwards given position ids counted over real tokens (as ``generate`` and alignlab count them)."""
    saved = [m.forward for m in models]
    for m, forward in zip(models, saved, strict=True):

        def with_positions(*args, _forward=forward, **kwargs):
            if kwargs.get("position_ids") is None and kwargs.get("attention_mask") is not None:
                kwargs["position_ids"] = position_ids(kwargs["attention_mask"])
            return _forward(*args, **kwargs)

        m.forward = with_positions
    try:
        yield
    finally:
        for m, forward in zip(models, saved, strict=True):
            m.forward = forward


@dataclass
class OnlineSides:
    ours_loss: torch.Tensor
    ours_advantages: torch.Tensor  # (B,) the advantage of each rollout
    ours_grads: list[torch.Tensor]
    metrics: dict[str, torch.Tensor]
    trl_loss: torch.Tensor
    trl_advantages: torch.Tensor
    trl_grads: list[torch.Tensor]


def online_sides(
    method, tokenizer, weights, tmp_path_factory, prompts=SAME_LENGTH_PROMPTS, moved=False, positions=True, **trl_kw
) -> OnlineSides:
    """One batch of rollouts sampled by π_old through alignlab's ``collect`` (reward, old and reference
    log-probs, advantages), then the loss and its gradient at π_θ (= π_old unless ``moved``): alignlab's
    ``minibatch_loss`` on one side; on the other, TRL's ``_generate_and_score_completions`` fed the same
    tokens (its ``generate`` replays them) and its ``_compute_loss``, run as they are."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    reference, old, new = weights
    objective = get_objective(method)
    ocfg = objective.config(clip_ratio=0.2)
    rc = RolloutConfig(
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        samples_per_prompt=K,
        epochs=2 if moved else 1,
        kl_coef=KL_COEF,
    )
    s = Settings.resolve(rc, objective.needs.online)
    policy = copy.deepcopy(old)
    disable_dropout(policy)
    core = PolicyAndValue(policy, temperature=TEMPERATURE)
    exp = collect(
        policy, core, reference, tokenizer, prompts, text_score, KL_COEF, s, 0, Costs.of(core, reference, None), {}
    )
    if moved:
        policy.load_state_dict(new.state_dict())
    out, _, _ = minibatch_loss(policy, core, exp, list(range(len(exp.sequences))), objective, ocfg, s, KL_COEF)
    out.losses.mean().backward()
    mask = exp.sequences.completion_mask.float()
    assert exp.advantages is not None

    config, trainer_cls = (RLOOConfig, RLOOTrainer) if method == "rloo" else (GRPOConfig, GRPOTrainer)
    args = config(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        per_device_train_batch_size=K * len(prompts),
        num_generations=K,
        max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE,
        beta=KL_COEF,
        epsilon=0.2,
        num_iterations=2 if moved else 1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_strategy="no",
        disable_dropout=True,
        seed=0,
        **trl_kw,
    )
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": [tokenizer.bos_token + p for p in prompts]})
    trainer = trainer_cls(
        model=copy.deepcopy(old), reward_funcs=trl_text_score, args=args, train_dataset=data, processing_class=tokenizer
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    seqs = exp.sequences
    real, comp = seqs.attention_mask.bool(), seqs.completion_mask.bool()
    prompt_ids = [ids[r & ~c].tolist() for ids, r, c in zip(seqs.input_ids, real, comp, strict=True)]
    completion_ids = [ids[c].tolist() for ids, c in zip(seqs.input_ids, comp, strict=True)]
    numbering = counted_positions(trainer.model, trainer.ref_model) if positions else nullcontext()
    with numbering:
        with replayed(trainer.model, completion_ids, prompt_ids, tokenizer.pad_token_id):
            batch = trainer._generate_and_score_completions([{"prompt": p} for p in data["prompt"] for _ in range(K)])
        if moved:
            trainer.model.load_state_dict(new.state_dict())
        theirs = trainer._compute_loss(trainer.model, batch)
        theirs.backward()
    return OnlineSides(
        ours_loss=out.losses.mean().detach(),
        ours_advantages=(exp.advantages * mask).sum(-1) / mask.sum(-1),
        ours_grads=[p.grad for p in policy.parameters()],
        metrics=out.metrics,
        trl_loss=theirs.detach(),
        trl_advantages=batch["advantages"],
        trl_grads=[p.grad for p in trainer.model.parameters()],
    )


def assert_grads_close(name: str, sides: OnlineSides) -> None:
    """Every parameter's gradient, to float32 rounding of sums over a few hundred tokens whose terms
    cancel: within 1e-5 of the largest gradient entry of the model (elementwise, plus 1e-5 relative)."""
    ours = torch.cat([g.flatten() for g in sides.ours_grads])
    theirs = torch.cat([g.flatten() for g in sides.trl_grads])
    scale = ours.abs().max().item()
    diff = report(f"{name} gradient (max |∇| {scale:.2e})", ours, theirs)
    assert scale > 1e-3  # a gradient to compare
    assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * scale)
    assert diff < 1e-5 * scale


@pytest.mark.parametrize("moved", [False, True], ids=["ratio-1", "second-epoch"])
def test_rloo_matches_trl_rloo_trainer(tokenizer, online_weights, tmp_path_factory, moved):
    """RLOO, KL k1 in the reward: the leave-one-out advantages, the clipped sequence-ratio loss and every
    parameter's gradient. At ratio 1 the loss is 0 on both sides (the leave-one-out advantages of a prompt
    sum to 0), so the gradient is what says they agree; the second epoch (ratios off 1) exercises the clip."""
    sides = online_sides("rloo", tokenizer, online_weights, tmp_path_factory, moved=moved)
    assert_close(sides.ours_advantages, sides.trl_advantages, **F32)
    report(f"rloo loss ({'second epoch' if moved else 'ratio 1'}) vs RLOOTrainer", sides.ours_loss, sides.trl_loss)
    assert_close(sides.ours_loss, sides.trl_loss, **F32)
    assert_grads_close(f"rloo ({'second epoch' if moved else 'ratio 1'})", sides)
    clipped = sides.metrics["clipfrac"].mean()
    assert (0 < clipped < 1 and abs(sides.ours_loss) > 1e-2) if moved else clipped == 0


@pytest.mark.parametrize("moved", [False, True], ids=["ratio-1", "second-epoch"])
def test_grpo_matches_trl_grpo_trainer(tokenizer, online_weights, tmp_path_factory, moved):
    """GRPO, β·k3 in the loss: the group-normalised advantages (std with Bessel's correction, + 1e-4),
    the per-token clipped loss with the KL term, each sequence's mean then the batch mean (TRL's
    ``loss_type="grpo"``), and every parameter's gradient. TRL's KL term is multiplied by the ratio by
    default (``use_bias_correction_kl``, next test): off here, as in GRPO's Eq. 3."""
    sides = online_sides(
        "grpo",
        tokenizer,
        online_weights,
        tmp_path_factory,
        moved=moved,
        loss_type="grpo",
        scale_rewards="group",
        use_bias_correction_kl=False,
    )
    assert_close(sides.ours_advantages, sides.trl_advantages, **F32)
    report(f"grpo loss ({'second epoch' if moved else 'ratio 1'}) vs GRPOTrainer", sides.ours_loss, sides.trl_loss)
    assert_close(sides.ours_loss, sides.trl_loss, **F32)
    assert_grads_close(f"grpo ({'second epoch' if moved else 'ratio 1'})", sides)
    assert sides.metrics["kl_loss"] > 0  # π_θ ≠ π_ref: the KL term is live
    clipped = sides.metrics["clipfrac"]
    assert (0 < clipped < 1 and abs(sides.ours_loss) > 1e-2) if moved else clipped == 0


def test_grpo_trl_default_kl_bias_correction_changes_the_gradient_not_the_loss(
    tokenizer, online_weights, tmp_path_factory
):
    """Named convention difference: TRL's GRPO multiplies β·k3 by the probability ratio by default
    (``use_bias_correction_kl=True``). At ratio 1 (one update per batch) the loss is the same, but the
    ratio's gradient ∇log π_θ adds β·k3·∇log π_θ per token: the gradients differ."""
    sides = online_sides("grpo", tokenizer, online_weights, tmp_path_factory, loss_type="grpo")
    assert_close(sides.ours_loss, sides.trl_loss, **F32)
    assert not all(
        torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(sides.ours_grads, sides.trl_grads, strict=True)
    )


@pytest.mark.parametrize(
    "method,trl_kw", [("rloo", {}), ("grpo", {"loss_type": "grpo", "use_bias_correction_kl": False})]
)
def test_trl_position_ids_on_left_padded_prompts(tokenizer, online_weights, tmp_path_factory, method, trl_kw):
    """Named convention difference: TRL's RLOO/GRPO training forwards pass no position ids, so a GPT-2
    (absolute position embeddings) numbers a left-padded prompt's positions from its padding, whereas
    ``generate`` (which sampled the tokens) and alignlab's scoring count real tokens only. Prompts of
    unequal length: TRL's own numbering gives other gradients; given counted position ids, the same."""
    own = online_sides(method, tokenizer, online_weights, tmp_path_factory, RAGGED_PROMPTS, positions=False, **trl_kw)
    assert not all(
        torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(own.ours_grads, own.trl_grads, strict=True)
    )
    counted = online_sides(method, tokenizer, online_weights, tmp_path_factory, RAGGED_PROMPTS, **trl_kw)
    assert_close(counted.ours_advantages, counted.trl_advantages, **F32)
    assert_grads_close(f"{method}, prompts of unequal length, counted position ids", counted)
