"""Rewards: anything that maps (prompt, completion) texts to one float each."""

from alignlab.rewards.base import Reward

__all__ = ["Reward"]
