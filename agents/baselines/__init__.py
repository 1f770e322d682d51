"""Baseline policies: fixed keep-ratio rules scored with the same code as trained agents.

A baseline implements stable-baselines3's ``PolicyPredictor`` protocol, so
``stable_baselines3.common.evaluation.evaluate_policy(baseline, env)`` works once the baseline is prepared
for the env (:meth:`BaselinePolicy.prepare`). Baselines work in both environments, single or vectorised.

| name       | per-unit keep ratios                                | channels (static env)  |
|------------|-----------------------------------------------------|------------------------|
| `uniform`  | one ratio for all units, solved for the MAC budget  | the env's criterion    |
| `random`   | seeded random profile, scaled to the MAC budget     | the env's criterion    |
| `l1`       | uniform, or `allocation="global"`                   | filter L1 norm         |
| `l2`       | uniform, or `allocation="global"`                   | filter L2 norm         |
| `bn_scale` | uniform, or `allocation="global"` (slimming)        | BN `|γ|`               |
| `fbs`      | one runtime ratio for all units and images (FBS)    | runtime env only: `u_r` |
| `pfp`      | PFP sample sizes m(ε), one ε solved for the budget  | env's (`pfp_sensitivity`) |

Example:
    >>> from agents.baselines import get_baseline, list_baselines
    >>> from envs.static import StaticPruningEnv
    >>> list_baselines()
    ['bn_scale', 'fbs', 'l1', 'l2', 'pfp', 'random', 'uniform']
    >>> policy = get_baseline("l2", allocation="global")
    >>> env = StaticPruningEnv(num_val=16, budget=0.5, criterion=policy.criterion)
    >>> policy = policy.prepare(env)
    >>> obs, _ = env.reset(seed=0)
    >>> done = False
    >>> while not done:
    ...     action, _ = policy.predict(obs)
    ...     obs, reward, done, _, info = env.step(action)
    >>> info["macs_fraction"] <= 0.5
    True
"""

from __future__ import annotations

from .base import (
    BaselinePolicy,
    BuiltModel,
    PruningTarget,
    TrainContext,
    TrainedBaseline,
    get_baseline,
    list_baselines,
    register_baseline,
    solve_budget,
)
from .pfp import PFPBaseline
from .policies import CriterionBaseline, FBSBaseline, RandomBaseline, UniformBaseline

__all__ = [
    "BaselinePolicy",
    "BuiltModel",
    "CriterionBaseline",
    "FBSBaseline",
    "PFPBaseline",
    "PruningTarget",
    "RandomBaseline",
    "TrainContext",
    "TrainedBaseline",
    "UniformBaseline",
    "get_baseline",
    "list_baselines",
    "register_baseline",
    "solve_budget",
]
