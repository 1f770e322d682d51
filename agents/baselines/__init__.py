"""Baseline policies: fixed keep-ratio rules scored with the same code as trained agents.

A baseline implements stable-baselines3's ``PolicyPredictor`` protocol, so
``stable_baselines3.common.evaluation.evaluate_policy(baseline, env)`` works once the baseline is prepared
for the env (:meth:`BaselinePolicy.prepare`). Baselines work in the environments their ``env_kinds`` name,
single or vectorised, and meet the MAC budget and the static env's parameter budget exactly. Build the static
env with ``criterion=policy.channel_criterion(x)``; after the episode, ``policy.transform(base, plan)`` is the
model to score (slicing, or Neuron Merging's compensation). Training-based methods (:class:`TrainedBaseline`)
do not act in an env: :mod:`agents.compare` scores them through ``build``.

| name             | per-unit keep ratios                                | channels (static env)                 |
|------------------|-----------------------------------------------------|---------------------------------------|
| `uniform`        | one ratio for all units, solved for the budgets     | the env's criterion                   |
| `random`         | seeded random profile, scaled to the budgets        | the env's criterion                   |
| `l1`             | uniform, or `allocation="global"`                   | filter L1 norm                        |
| `l2`             | uniform, or `allocation="global"`                   | filter L2 norm                        |
| `l2_gm`          | uniform, or `allocation="global"` (FPGM)            | distance to the geometric median      |
| `bn_scale`       | uniform, or `allocation="global"` (slimming)        | BN `|γ|`                              |
| `neuron_merging` | uniform, or `allocation="global"`; static env only  | `l1`, `l2` or `l2_gm`, then merged    |
| `fbs`            | one runtime ratio for all units and images (FBS)    | runtime env only: `u_r`               |
| `pfp`            | PFP sample sizes m(ε), one ε solved for the budgets | `pfp_sampled` (seeded) / `pfp_sensitivity` |
| `scop`           | trained: one uniform rate solved for the MAC budget | knockoff scores `|γ|·(2β − 1)` (`build`) |
| `channel_gating` | trained: none (per-activation runtime gates)        | gate target solved for the budget (`build`) |
| `polarization`   | trained: first-valley cut, completed to the budget  | polarization-trained BN `|γ|`         |
| `grda`           | trained: what gRDA's zeros leave (no budget)        | filters not all zero                  |

Example:
    >>> from agents.baselines import get_baseline, list_baselines
    >>> from envs.static import StaticPruningEnv
    >>> {"uniform", "random", "l1", "l2", "bn_scale", "neuron_merging", "fbs", "pfp"} <= set(list_baselines())
    True
    >>> policy = get_baseline("l2", allocation="global")
    >>> env = StaticPruningEnv(num_val=16, budget=0.5, criterion=policy.channel_criterion())
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
    baseline_class,
    get_baseline,
    list_baselines,
    register_baseline,
    solve_budget,
)
from .channel_gating import ChannelGatingBaseline
from .grda import GRDABaseline
from .neuron_merging import NeuronMergingBaseline
from .pfp import PFPBaseline
from .polarization import PolarizationBaseline
from .policies import CriterionBaseline, FBSBaseline, GeometricMedianBaseline, RandomBaseline, UniformBaseline
from .scop import SCOPBaseline

__all__ = [
    "BaselinePolicy",
    "BuiltModel",
    "ChannelGatingBaseline",
    "CriterionBaseline",
    "FBSBaseline",
    "GRDABaseline",
    "GeometricMedianBaseline",
    "NeuronMergingBaseline",
    "PFPBaseline",
    "PolarizationBaseline",
    "PruningTarget",
    "RandomBaseline",
    "SCOPBaseline",
    "TrainContext",
    "TrainedBaseline",
    "UniformBaseline",
    "baseline_class",
    "get_baseline",
    "list_baselines",
    "register_baseline",
    "solve_budget",
]
