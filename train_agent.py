"""Train paper 7's pruning agents: ``python train_agent.py --help`` (the same as ``prunegym train``)."""

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
