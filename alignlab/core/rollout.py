"""The rollout core: prompts -> sampled completions -> completion mask -> log-probs -> rewards.

Used by preference-data generation, PPO, best-of-N and evaluation alike, so every method's
samples are drawn, masked and scored the same way:

- sampling is Hugging Face ``generate``'s KV-cached multinomial sampling (temperature, top-p, max
  new tokens), stopping when every row has emitted EOS. For the causal LMs it is tested against
  (GPT-2, Llama) a plain loop (:func:`sample_with_cache`) draws the same tokens, bit for bit, from the
  same random stream, without ``generate``'s per-token machinery; any other model calls ``generate``.
  ``draw="inverse_cdf"`` (``rollout.draw``) lets the loop draw each token from the same distribution by
  one uniform per row and a search of the cumulative probabilities instead of ``torch.multinomial``
  (≈ 30× cheaper on CPU at a vocabulary of 8,000): the same law, another random stream;
- a completion ends at its first EOS, which counts as a completion token; what ``generate``
  pads after it never does;
- log-probs come from the scoring core (:func:`alignlab.core.scoring.token_logps`) under the
  sampling temperature — never from ``generate``'s own scores;
- rewards are any callable ``(prompts, completions) -> (B,)`` over decoded texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from alignlab.core.scoring import EncodedBatch, token_logps
from alignlab.encoding import encode_text

Draw = Literal["multinomial", "inverse_cdf"]


@dataclass(frozen=True)
class Rollout:
    """B sampled completions and everything measured on them."""

    prompts: list[str]
    """(B) the prompt of each row (a prompt sampled k times appears k times, consecutively)."""
    completions: list[str]
    """(B) the decoded completions, up to (not including) EOS."""
    sequences: EncodedBatch
    """(B, P + N) left-padded prompt + right-padded completion, with the completion mask."""
    policy_logps: Tensor | None = None
    """(B, P + N) per-token log π of the completion tokens (0 elsewhere)."""
    ref_logps: Tensor | None = None
    """(B, P + N) per-token log π_ref of the completion tokens."""
    rewards: Tensor | None = None
    """(B,) reward of each (prompt, completion)."""


def encode_prompts(tokenizer: Any, prompts: Sequence[str], max_prompt_tokens: int | None = None) -> EncodedBatch:
    """Left-padded prompt ids (generation continues from the right edge), with BOS if the tokenizer has one.

    Special-token strings in a prompt are text (:func:`alignlab.encoding.encode_text`).
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [bos + ids for ids in encode_text(tokenizer, prompts)]
    if max_prompt_tokens is not None:
        for i, row in enumerate(rows):
            if len(row) > max_prompt_tokens:
                raise ValueError(f"prompt {i} is {len(row)} tokens, over the limit of {max_prompt_tokens}")
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return EncodedBatch(ids, mask, torch.zeros_like(mask))


def completion_mask_until_eos(completion_ids: Tensor, eos_token_id: int) -> Tensor:
    """(B, N) 1 on every completion token up to and including the first EOS, 0 after it."""
    is_eos = completion_ids == eos_token_id
    # tokens strictly after the first EOS have a positive count of EOS before them
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    return (eos_before == 0).long()


@torch.no_grad()
def sample(
    model: nn.Module,
    prompts: EncodedBatch,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_token_id: int,
    pad_token_id: int,
    seed: int | None = None,
    draw: Draw = "multinomial",
) -> EncodedBatch:
    """Sample one completion per row of left-padded ``prompts``.

    Args:
        model: a causal LM with Hugging Face ``generate`` (or one that :func:`samples_like_generate`).
        prompts: (B, P) left-padded prompt ids and attention mask.
        max_new_tokens: the completion length limit N.
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling threshold (1.0 disables it).
        eos_token_id, pad_token_id: the tokenizer's.
        seed: re-seed torch's generator first, for reproducible samples.
        draw: how the plain loop draws a token (:func:`draw_tokens`); a model that samples through
            ``generate`` always draws as ``generate`` does (multinomial).

    Returns:
        (B, P + N') sequences, N' ≤ N, with the completion mask (first EOS included).
    """
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    greedy = temperature == 0
    P = prompts.input_ids.shape[1]
    if samples_like_generate(model):
        completion = sample_with_cache(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            draw=draw,
        )
    else:
        completion = model.generate(  # type: ignore[operator]
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )[:, P:]
    model.train(was_training)
    completion_mask = completion_mask_until_eos(completion, eos_token_id)
    ids = torch.cat([prompts.input_ids, torch.where(completion_mask.bool(), completion, pad_token_id)], dim=1)
    attention = torch.cat([prompts.attention_mask, completion_mask], dim=1)
    return EncodedBatch(ids, attention, torch.cat([torch.zeros_like(prompts.attention_mask), completion_mask], dim=1))


# The classes whose generate the plain loop reproduces (tests/test_sampler.py checks it token for token);
# named, not imported: the cores import no model library. Subclasses (which may override generation) and
# wrappers (peft, the adapters-off reference view) are not in it and call generate.
EXACT_LOOP_CLASSES = frozenset(
    {
        "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel",
        "transformers.models.llama.modeling_llama.LlamaForCausalLM",
    }
)
# What a model's own generation config may set and still sample as the loop does: special tokens (the
# caller's EOS and pad are passed explicitly) and bookkeeping. Anything else (a repetition penalty, a
# static cache, min_length, its own sampling defaults, ...) sends sampling through generate.
_HARMLESS_GENERATION_SETTINGS = {
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "_from_model_config": None,
    "transformers_version": None,
    "use_cache": True,
    "output_attentions": False,
    "output_hidden_states": False,
}


def samples_like_generate(model: nn.Module) -> bool:
    """Whether :func:`sample_with_cache` draws exactly what ``model.generate`` would: a GPT-2 or Llama causal
    LM of transformers itself, no ``generate`` patched onto the instance, and a generation config that
    adds no processor, stopping rule or cache of its own."""
    cls = type(model)
    if f"{cls.__module__}.{cls.__qualname__}" not in EXACT_LOOP_CLASSES or "generate" in vars(model):
        return False
    generation_config: Any = model.generation_config
    settings = generation_config.to_diff_dict()
    return all(
        key in _HARMLESS_GENERATION_SETTINGS and _HARMLESS_GENERATION_SETTINGS[key] in (None, value)
        for key, value in settings.items()
    )


@torch.no_grad()
def sample_with_cache(
    model: nn.Module,
    prompts: EncodedBatch,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_token_id: int,
    pad_token_id: int,
    draw: Draw = "multinomial",
) -> Tensor:
    """The tokens ``model.generate`` samples from left-padded ``prompts``, as a plain KV-cached loop.

    It is ``generate``'s ``_sample`` (transformers 5) stripped of its per-token machinery, doing the same
    arithmetic on the same tensors in the same order, so the tokens are bit-identical and the random
    stream is consumed identically: the same forward inputs (position ids counted over real tokens, an
    all-ones mask dropped, only the last position's logits), float32 scores divided by the temperature,
    then ``TopPLogitsWarper``'s filter, then a softmax, then ``torch.multinomial``'s draw; greedy is the
    argmax of the raw scores. A row that has emitted EOS emits pad; the loop stops when every row has.
    Bookkeeping and sampling stay on the prompts' device, as ``generate``'s do. With
    ``draw="inverse_cdf"`` the last step is :func:`draw_tokens`' instead: the same distribution, not the
    same tokens.

    Returns:
        (B, N') the sampled tokens, N' ≤ ``max_new_tokens`` (what ``generate`` returns after the prompt).
    """
    ids, mask = prompts.input_ids, prompts.attention_mask
    device = next(model.parameters()).device  # the model's, where its forward runs
    B = ids.shape[0]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    attention: Tensor | None = None if bool((mask == 1).all()) else mask  # generate drops an all-ones mask
    inputs, cache = ids, None  # the model's forward starts the DynamicCache generate would start
    unfinished = torch.ones(B, dtype=torch.long, device=ids.device)
    tokens: list[Tensor] = []
    for _ in range(max_new_tokens):
        out = model(
            input_ids=inputs.to(device),
            attention_mask=None if attention is None else attention.to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
        )
        cache = out.cache
        scores = out.logits[:, -1].to(copy=True, dtype=torch.float32, device=ids.device)
        if temperature == 0:
            next_tokens = torch.argmax(scores, dim=-1)
        else:
            next_tokens = draw_tokens(next_token_probs(scores, temperature, top_p), draw)
        next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
        tokens.append(next_tokens)
        unfinished = unfinished & (next_tokens != eos_token_id).long()
        if unfinished.max() == 0:
            break
        inputs, positions = next_tokens[:, None], positions[:, -1:] + 1
        if attention is not None:
            attention = torch.cat([attention, attention.new_ones((B, 1))], dim=-1)
    return torch.stack(tokens, dim=1)


def next_token_probs(scores: Tensor, temperature: float, top_p: float) -> Tensor:
    """(B, V) ``generate``'s sampling distribution from float32 next-token scores (B, V): divided by the
    temperature (``TemperatureLogitsWarper``, skipped at 1), the least likely tokens whose total
    probability is ≤ 1 − top_p dropped but never the top one (``TopPLogitsWarper``, skipped at 1), softmax."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        drop = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = 0
        scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    return torch.softmax(scores, dim=-1)


def draw_tokens(probs: Tensor, draw: Draw = "multinomial") -> Tensor:
    """(B,) one token of each row of the (B, V) probabilities ``probs``.

    ``multinomial``: ``torch.multinomial``, as ``generate`` draws (its random stream). ``inverse_cdf``:
    one uniform u per row, the first token whose cumulative probability (float64) exceeds u times the
    row's total — the same law in one pass over V, where ``torch.multinomial`` costs ~30× more on CPU; a
    token of probability 0 is never drawn.
    """
    if draw == "multinomial":
        return torch.multinomial(probs, num_samples=1).squeeze(1)
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(1)
    if bool((tokens == probs.shape[1]).any()):  # u rounded up to the row's total: its last possible token
        tokens = torch.minimum(tokens, probs.shape[1] - 1 - (probs > 0).flip(-1).int().argmax(-1))
    return tokens


def decode_completions(tokenizer: Any, sequences: EncodedBatch) -> list[str]:
    """The completion text of each row, without its EOS."""
    texts = []
    eos = tokenizer.eos_token_id
    for ids, mask in zip(sequences.input_ids, sequences.completion_mask, strict=True):
        tokens = [t for t in ids[mask.bool()].tolist() if t != eos]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return texts


def rollout(
    policy: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    reference: nn.Module | None = None,
    reward: Callable[[Sequence[str], Sequence[str]], Tensor] | None = None,
    score_policy: bool = False,
    batch_size: int = 64,
    max_prompt_tokens: int | None = None,
    draw: Draw = "multinomial",
) -> Rollout:
    """Sample ``samples_per_prompt`` completions per prompt, then score and reward them.

    Rows come out prompt-major: the k samples of prompt i are rows i·k … i·k + k − 1. Log-probs
    use the sampling temperature, so they are those of the distribution actually sampled.
    Generation runs in chunks of ``batch_size`` rows; chunk c uses seed ``seed + c``. A prompt
    over ``max_prompt_tokens`` (e.g. the context minus ``max_new_tokens``) is an error naming it.
    """
    if not prompts:
        raise ValueError("rollout needs at least one prompt")
    expanded = [p for p in prompts for _ in range(samples_per_prompt)]
    chunks: list[EncodedBatch] = []
    for c, start in enumerate(range(0, len(expanded), batch_size)):
        encoded = encode_prompts(tokenizer, expanded[start : start + batch_size], max_prompt_tokens)
        chunks.append(
            sample(
                policy,
                encoded,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                seed=None if seed is None else seed + c,
                draw=draw,
            )
        )
    completions = [text for chunk in chunks for text in decode_completions(tokenizer, chunk)]
    sequences = _stack(chunks, tokenizer.pad_token_id)
    score_temperature = temperature if temperature > 0 else 1.0

    def score(model: nn.Module) -> Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    token_logps(model, c.input_ids, c.attention_mask, c.completion_mask, temperature=score_temperature)
                    for c in _split(sequences, batch_size)
                ]
            )

    return Rollout(
        prompts=expanded,
        completions=completions,
        sequences=sequences,
        policy_logps=score(policy) if score_policy else None,
        ref_logps=score(reference) if reference is not None else None,
        rewards=reward(expanded, completions) if reward is not None else None,
    )


def _stack(chunks: list[EncodedBatch], pad_token_id: int) -> EncodedBatch:
    """Concatenate chunks whose prompt widths (left) and completion widths (right) differ."""
    if len(chunks) == 1:
        return chunks[0]
    prompt_width = [int((c.completion_mask.cumsum(-1) == 0).sum(-1).max()) for c in chunks]
    left = max(prompt_width)
    right = max(c.input_ids.shape[1] - w for c, w in zip(chunks, prompt_width, strict=True))
    parts: list[list[Tensor]] = [[], [], []]
    for c, w in zip(chunks, prompt_width, strict=True):
        pad_left, pad_right = left - w, right - (c.input_ids.shape[1] - w)
        for i, (x, value) in enumerate(((c.input_ids, pad_token_id), (c.attention_mask, 0), (c.completion_mask, 0))):
            parts[i].append(torch.nn.functional.pad(x, (pad_left, pad_right), value=value))
    return EncodedBatch(*(torch.cat(p) for p in parts))


def _split(batch: EncodedBatch, size: int) -> list[EncodedBatch]:
    return [
        EncodedBatch(
            batch.input_ids[i : i + size], batch.attention_mask[i : i + size], batch.completion_mask[i : i + size]
        )
        for i in range(0, batch.input_ids.shape[0], size)
    ]
