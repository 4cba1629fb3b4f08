"""Rewards: anything that maps (prompt, completion) texts to one float each."""

from alignlab.rewards.base import Reward
from alignlab.rewards.gold import GoldSentiment

__all__ = ["GoldSentiment", "Reward"]
