"""alignlab: RLHF-PPO against DPO and its variants, on one footing."""

__version__ = "0.1.0"
