"""Train runtime and static pruning agents: ``python train_agent.py --help`` (the same as ``prunegym train``).

The agents and their schedule are those of Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime
Channel Pruning via Deep Reinforcement Learning", NeurIPS 2020.
"""

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
