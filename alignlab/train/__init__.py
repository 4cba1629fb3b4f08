"""Training engines: the offline trainer (every offline objective, reward models) and PPO, on accelerate."""
