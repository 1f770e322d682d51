"""RL agents, baselines and the training CLI of PruneGym."""
