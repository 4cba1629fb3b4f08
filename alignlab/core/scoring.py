"""The scoring core: the one place alignlab turns a model and token ids into log-probs.

Every method — DPO and its variants, reward models, PPO's policy/reference scoring, the
frontier's KL — gets its log-probs from :func:`token_logps`. Its contract:

- output (B, T) aligned with ``input_ids``: ``out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])``;
- only completion tokens count: the output is exactly 0 wherever ``completion_mask`` is 0, so
  prompt and padding tokens never enter a sum;
- position ids come from the attention mask, so left and right padding give the same numbers;
- the log-softmax runs in float32 (or float64 if the model does) whatever the model's dtype;
- the LM head runs on the hidden states of completion tokens only, when the model's logits are a
  plain linear head over its backbone (every Hugging Face GPT-2/Llama-style causal LM): prompt and
  padding positions never reach the (N, V) projection. Otherwise (a wrapped or soft-capped model)
  the full forward runs and the log-softmax covers the completion columns only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class EncodedBatch:
    """A tokenised batch of prompt + completion sequences."""

    input_ids: Tensor
    """(B, T) token ids, padded."""
    attention_mask: Tensor
    """(B, T) 1 on real tokens, 0 on padding."""
    completion_mask: Tensor
    """(B, T) 1 on completion tokens (a subset of the attention mask), 0 on prompt and padding."""

    def __post_init__(self) -> None:
        shapes = {self.input_ids.shape, self.attention_mask.shape, self.completion_mask.shape}
        if len(shapes) != 1 or self.input_ids.dim() != 2:
            raise ValueError(
                "input_ids, attention_mask and completion_mask must share one (B, T) shape, got "
                f"{tuple(self.input_ids.shape)}, {tuple(self.attention_mask.shape)}, "
                f"{tuple(self.completion_mask.shape)}"
            )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: Tensor | list[int]) -> EncodedBatch:
        """The given rows."""
        return EncodedBatch(self.input_ids[rows], self.attention_mask[rows], self.completion_mask[rows])

    def to(self, device: torch.device | str) -> EncodedBatch:
        """The batch on ``device`` (a no-op when it is there already)."""
        return EncodedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device))

    def used(self) -> slice:
        """The columns that hold a real token in some row (all of them when no row has one)."""
        used = self.attention_mask.bool().any(dim=0).nonzero()
        return slice(int(used[0]), int(used[-1]) + 1) if used.numel() else slice(None)

    def trim(self) -> EncodedBatch:
        """Drop the columns that are padding in every row (either side), e.g. after :meth:`select`."""
        cols = self.used()
        return EncodedBatch(self.input_ids[:, cols], self.attention_mask[:, cols], self.completion_mask[:, cols])


def token_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token log-probs of the completion tokens.

    Args:
        model: a causal LM whose forward takes ``input_ids``, ``attention_mask``,
            ``position_ids`` and returns ``.logits`` of shape (B, T, V).
        input_ids: (B, T) token ids, left- or right-padded.
        attention_mask: (B, T) 1 on real tokens.
        completion_mask: (B, T) 1 on the tokens to score. Position 0 cannot be scored (nothing
            precedes it) and must be 0.
        temperature: logits are divided by it first (the policy's sampling distribution).

    Returns:
        (B, T) float tensor, log p(input_ids[:, t] | input_ids[:, :t]) where
        ``completion_mask`` is 1, exactly 0 elsewhere.
    """
    completion = completion_mask.bool()
    if completion[:, 0].any():
        raise ValueError("completion_mask marks position 0, which has no preceding token to condition on")
    if (completion & ~attention_mask.bool()).any():
        raise ValueError("completion_mask marks tokens that the attention mask treats as padding")
    positions = position_ids(attention_mask)
    split = backbone_and_head(model)
    if split is not None:
        return _completion_head_logps(*split, input_ids, attention_mask, positions, completion, temperature)
    if not completion.any():
        return torch.zeros(input_ids.shape, device=input_ids.device, dtype=torch.float32)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False).logits
    return logps_from_logits(logits, input_ids, completion_mask, temperature=temperature)


def position_ids(attention_mask: Tensor) -> Tensor:
    """(B, T) position ids counted over real tokens only, so left and right padding give the same numbers."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def logps_from_logits(
    logits: Tensor, input_ids: Tensor, completion_mask: Tensor, *, temperature: float = 1.0
) -> Tensor:
    """:func:`token_logps` from the logits (B, T, V) of a forward already run over ``input_ids`` (B, T) with
    :func:`position_ids`: for a module whose forward returns more than logits (the policy and its critic
    behind one forward). The same arithmetic; the same contract.
    """
    completion = completion_mask.bool()
    T = input_ids.shape[1]
    columns = completion.any(dim=0).nonzero()
    if columns.numel() == 0:
        return torch.zeros(input_ids.shape, device=input_ids.device, dtype=torch.float32)
    # Logits at t−1 predict token t: only columns [first − 1, last) are needed, which skips the
    # log-softmax over long prompts.
    first, last = int(columns[0]), int(columns[-1]) + 1
    picked = _picked_logps(logits[:, first - 1 : last - 1], input_ids[:, first:last], temperature)
    # where, not multiply: logits at padded positions may be NaN (fully masked attention rows)
    picked = torch.where(completion[:, first:last], picked, torch.zeros_like(picked))
    return F.pad(picked, (first, T - last))


COMPLETION_HEAD = True
"""Run the LM head on completion tokens only where the model allows it (off: always the full forward,
for before/after measurements; the numbers are the same either way)."""

# Configs that change the logits after the LM head (soft-capping, scaling): such models keep the full forward.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(backbone, LM head) of a Hugging Face causal LM whose logits are exactly ``head(backbone(x)[0])``, else None.

    With the two apart, the head runs only on the hidden states of completion tokens: prompt and
    padding positions (a fifth to a half of a preference batch) never reach the (N, V) projection
    and its log-softmax. A model wrapped for distributed training (DDP) is not split, since its
    gradient synchronisation hooks into the wrapper's own forward: it takes the full forward. Nor is
    one sharded by FSDP2 (``fully_shard``, which keeps the model's class): its root unit gathers the
    embeddings and the head in the root's own forward, and a call of the backbone alone is refused.
    """
    if not COMPLETION_HEAD or _fully_sharded(model):
        return None
    unwrap = getattr(model, "get_base_model", None)
    if callable(unwrap):  # a peft model: its adapters live inside the base model's layers, active there
        model = unwrap()
    get_head = getattr(model, "get_output_embeddings", None)
    backbone = getattr(model, "base_model", None)
    config = getattr(model, "config", None)
    if get_head is None or backbone is None or backbone is model or config is None:
        return None
    head = get_head()
    transformed = any(getattr(config, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS)
    if not isinstance(head, nn.Linear) or transformed:
        return None
    return backbone, head


def _fully_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is an FSDP2 unit (``torch.distributed.fsdp.fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without distributed support
        return False
    return isinstance(model, FSDPModule)


def _picked_logps(logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / temperature)[target], in float32 at least; (..., V), (...) -> (...)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature != 1.0:
        logits = logits / temperature
    # log p(y) = −cross-entropy(z, y): the fused kernel, without materialising the (…, V) log-softmax
    return -F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


def _completion_head_logps(
    backbone: nn.Module,
    head: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    completion: Tensor,
    temperature: float,
) -> Tensor:
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    # the hidden state at t−1 predicts token t: gather the (N, d) states before completion tokens only
    predicts = completion[:, 1:]
    picked = _picked_logps(head(hidden[:, :-1][predicts]), input_ids[:, 1:][predicts], temperature)
    # row-major order on both sides: completion[:, 0] is all False, so the N values land where they belong
    return torch.zeros(input_ids.shape, device=picked.device, dtype=picked.dtype).masked_scatter(completion, picked)


def sequence_logps(token_logps: Tensor, mask: Tensor, reduction: Literal["sum", "mean"]) -> Tensor:
    """Reduce per-token log-probs (B, T) to one value per sequence (B,); the reduction is explicit.

    Args:
        token_logps: (B, T) as returned by :func:`token_logps`.
        mask: (B, T) the completion mask.
        reduction: "sum" — log π(y|x); "mean" — the per-token average (length-normalised).
    """
    mask = mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(dim=-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.sum(dim=-1).clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _pad_to(x: Tensor, length: int, value: int, side: Literal["left", "right"]) -> Tensor:
    pad = length - x.shape[1]
    if pad == 0:
        return x
    filler = torch.full((x.shape[0], pad), value, dtype=x.dtype, device=x.device)
    return torch.cat([x, filler] if side == "right" else [filler, x], dim=1)


def concat_pairs(
    chosen: EncodedBatch,
    rejected: EncodedBatch,
    pad_token_id: int,
    padding_side: Literal["left", "right"] = "right",
) -> EncodedBatch:
    """Stack chosen (first B rows) and rejected (last B rows) into one (2B, T) batch."""
    if chosen.input_ids.shape[0] != rejected.input_ids.shape[0]:
        raise ValueError(
            f"chosen and rejected batches differ in size: {chosen.input_ids.shape[0]} vs {rejected.input_ids.shape[0]}"
        )
    T = max(chosen.input_ids.shape[1], rejected.input_ids.shape[1])
    return EncodedBatch(
        *(
            torch.cat([_pad_to(c, T, v, padding_side), _pad_to(r, T, v, padding_side)], dim=0)
            for c, r, v in (
                (chosen.input_ids, rejected.input_ids, pad_token_id),
                (chosen.attention_mask, rejected.attention_mask, 0),
                (chosen.completion_mask, rejected.completion_mask, 0),
            )
        )
    )


def score_pairs(
    model: nn.Module,
    chosen: EncodedBatch,
    rejected: EncodedBatch,
    pad_token_id: int,
    padding_side: Literal["left", "right"] = "right",
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Score chosen and rejected completions in one forward pass.

    Returns:
        (chosen_token_logps, chosen_mask, rejected_token_logps, rejected_mask), each (B, T) with
        T the longer of the two inputs.
    """
    both = concat_pairs(chosen, rejected, pad_token_id, padding_side)
    logps = token_logps(model, both.input_ids, both.attention_mask, both.completion_mask, temperature=temperature)
    B = chosen.input_ids.shape[0]
    return logps[:B], both.completion_mask[:B], logps[B:], both.completion_mask[B:]
