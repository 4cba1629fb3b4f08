"""The shared cores: one way to score, one way to measure KL, one set of masked statistics."""

from alignlab.core.kl import kl_k1, kl_k2, kl_k3, per_token_kl, sequence_kl
from alignlab.core.scoring import (
    EncodedBatch,
    concat_pairs,
    score_pairs,
    sequence_logps,
    token_logps,
)
from alignlab.core.stats import gae, masked_mean, masked_var, masked_whiten

__all__ = [
    "EncodedBatch",
    "concat_pairs",
    "gae",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_kl",
    "score_pairs",
    "sequence_kl",
    "sequence_logps",
    "token_logps",
]
