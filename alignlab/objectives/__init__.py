"""The objective registry and every built-in loss, each in its own module.

Importing this package registers the built-ins; ``get_objective(name)`` looks one up.
"""

from alignlab.objectives import (  # noqa: F401  (imported to register)
    best_of_n,
    beta_dpo,
    cdpo,
    dpo,
    dpop,
    grpo,
    ipo,
    iterative_dpo,
    kto,
    madpo,
    odpo,
    online_dpo,
    orpo,
    ppo,
    rdpo,
    rloo,
    sft,
    simpo,
    slic,
    unlikelihood,
)
from alignlab.objectives.base import (
    LossOutput,
    Needs,
    ObjectiveConfig,
    ObjectiveState,
    Online,
    PairedLogps,
    PPOBatch,
    RolloutBatch,
    SampledRewards,
    UnpairedLogps,
    knob,
    pairwise_metrics,
)
from alignlab.objectives.registry import (
    Objective,
    ObjectiveError,
    display_name,
    get_objective,
    list_objectives,
    register_objective,
)

__all__ = [
    "LossOutput",
    "Needs",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveError",
    "ObjectiveState",
    "Online",
    "PPOBatch",
    "PairedLogps",
    "RolloutBatch",
    "SampledRewards",
    "UnpairedLogps",
    "display_name",
    "get_objective",
    "knob",
    "list_objectives",
    "pairwise_metrics",
    "register_objective",
]
