"""The keep-ratio baselines: uniform, random, and criterion-ranked (L1, L2, BN scale) with two allocations.

Every baseline solves its per-unit keep counts for the budgets exactly (:func:`solve_budget`): the plan
meets the MAC budget and the static env's parameter budget, and keeping one more channel wherever the rule
would add the next one breaks one of them.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from pruning.criteria import get_criterion
from pruning.plan import keep_count

from .base import BaselinePolicy, PruningTarget, register_baseline, solve_budget

__all__ = ["CriterionBaseline", "FBSBaseline", "GeometricMedianBaseline", "RandomBaseline", "UniformBaseline"]


def _uniform_counts(target: PruningTarget, budget: float) -> np.ndarray:
    channels = [int(c) for c in target.channels]

    def counts_at(ratio: float) -> np.ndarray:
        return np.array([int(keep_count(ratio, c)) for c in channels], dtype=np.int64)

    return solve_budget(target, counts_at, 0.0, 1.0, budget)


@register_baseline("uniform")
class UniformBaseline(BaselinePolicy):
    """The same keep ratio for every unit, the largest whose MACs meet the budget.

    In the static env the ratio is a static keep ratio (channels ranked by the env's criterion); in the
    runtime env it is the runtime keep ratio of every unit for every image (channels ranked by ``u_r``).
    Units whose ``min_keep`` floor is above the ratio stay at the floor.

    Args:
        budget: MAC budget (fraction of the base MACs); ``None`` (default) uses the env's.
    """

    def allocate(self, target: PruningTarget, budget: float) -> np.ndarray:
        """Keep counts of the largest uniform ratio that meets ``budget``."""
        return _uniform_counts(target, budget)


@register_baseline("fbs")
class FBSBaseline(UniformBaseline):
    """Feature Boosting and Suppression (Gao et al., ICLR 2019): the runtime mechanism Chen et al. build on.

    The same channel-importance predictor ``u_r = Linear(GAP(x))`` as Chen, Chen & Pan ("Storage Efficient and
    Dynamic Flexible Runtime Channel Pruning via Deep Reinforcement Learning", NeurIPS 2020), and one constant
    runtime keep ratio for every unit and every image, solved for the MAC budget; per input the top-k channels
    by ``u_r`` run (winner-take-all). It is :class:`UniformBaseline` restricted to the runtime env, where the
    ratio is a runtime ratio and the env's predictors choose the channels. (FBS also trains its predictors with
    a sparsity loss; here they are whatever the model's gate stage trained.)

    Args:
        budget: MAC budget (fraction of the base MACs); ``None`` (default) uses the env's.

    Raises:
        ValueError: from :meth:`prepare` on a static env (FBS has no static side).
    """

    env_kinds: ClassVar[frozenset[str]] = frozenset({"runtime"})


@register_baseline("random")
class RandomBaseline(BaselinePolicy):
    """Random per-unit keep ratios, scaled together to meet the budget (a control).

    Draws ``ρ_t ~ U[0.1, 1)`` per unit from ``numpy.random.default_rng(seed)`` and keeps ``min(1, s·ρ_t)`` of
    unit ``t``, with the largest scale ``s`` that meets the budget; the same seed gives the same plan.

    Args:
        budget: MAC budget (fraction of the base MACs); ``None`` (default) uses the env's.
        seed: Seed of the draw (default 0).
    """

    def __init__(self, *, budget: float | None = None, seed: int = 0) -> None:
        super().__init__(budget=budget)
        self.seed = int(seed)

    @property
    def stochastic(self) -> bool:
        """The profile is a seeded draw."""
        return True

    def allocate(self, target: PruningTarget, budget: float) -> np.ndarray:
        """Keep counts of the largest scale of the seeded random profile that meets ``budget``."""
        rho = np.random.default_rng(self.seed).uniform(0.1, 1.0, size=target.num_units)

        def counts_at(s: float) -> np.ndarray:
            pairs = zip(rho, target.channels, strict=True)
            return np.array([int(keep_count(min(1.0, s * r), int(c))) for r, c in pairs], dtype=np.int64)

        return solve_budget(target, counts_at, 0.0, float(1.0 / rho.min()), budget)


class CriterionBaseline(BaselinePolicy):
    """Rank channels by a criterion; allocate per unit uniformly or by one global threshold.

    ``allocation="uniform"`` (default) gives every unit the same keep ratio (as :class:`UniformBaseline`),
    with channels chosen by the criterion (the static env must be built with ``criterion=self.criterion``).
    ``allocation="global"`` ranks all channels of all units together by their score divided by the unit's
    largest score (scores of different layers are on different scales), and keeps the top of that ranking,
    one channel at a time, while the MACs meet the budget (every unit at least at its ``min_keep`` floor):
    per-unit ratios emerge, as in network slimming's global γ threshold (Liu et al., ICCV 2017).

    In the runtime env channels are ranked by ``u_r`` whatever the criterion; the criterion then only shapes
    the global allocation.

    Args:
        budget: MAC budget (fraction of the base MACs); ``None`` (default) uses the env's.
        allocation: ``"uniform"`` (default) or ``"global"``.
    """

    def __init__(self, *, budget: float | None = None, allocation: str = "uniform") -> None:
        super().__init__(budget=budget)
        if allocation not in ("uniform", "global"):
            raise ValueError(f"allocation must be 'uniform' or 'global', got {allocation!r}")
        self.allocation = allocation

    def allocate(self, target: PruningTarget, budget: float) -> np.ndarray:
        """Keep counts of the chosen allocation that meet ``budget``."""
        if self.allocation == "uniform":
            return _uniform_counts(target, budget)
        assert self.criterion is not None
        crit = get_criterion(self.criterion)
        owners, values = [], []
        for unit in target.units:
            s = torch.as_tensor(crit(target.model, unit), dtype=torch.float64).flatten().cpu().numpy()
            top = s.max()
            values.append(s / top if top > 0 else np.zeros_like(s))
            owners.append(np.full(s.shape, unit.index))
        order = np.argsort(-np.concatenate(values), kind="stable")
        owner = np.concatenate(owners)[order]
        # cum[n, t]: channels of unit t among the n best-ranked channels
        cum = np.zeros((len(owner) + 1, target.num_units), dtype=np.int64)
        cum[np.arange(1, len(owner) + 1), owner] = 1
        cum = cum.cumsum(axis=0)

        def counts_at(n: float) -> np.ndarray:
            return cum[int(np.floor(n))]

        return solve_budget(target, counts_at, 0.0, float(len(owner)), budget)


@register_baseline("l1")
class L1Baseline(CriterionBaseline):
    """Filter L1 norm (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017); see CriterionBaseline."""

    criterion = "l1"


@register_baseline("l2")
class L2Baseline(CriterionBaseline):
    """Filter L2 norm; see :class:`CriterionBaseline`."""

    criterion = "l2"


@register_baseline("l2_gm")
class GeometricMedianBaseline(CriterionBaseline):
    """FPGM: the filters nearest the geometric median of their layer are pruned first; see CriterionBaseline.

    He, Liu, Wang, Hu & Yang, "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks
    Acceleration", CVPR 2019. Plain slicing of the ``l2_gm`` ranking (:mod:`pruning.criteria`);
    ``neuron_merging:criterion=l2_gm`` is the same plan with Neuron Merging's compensation.
    """

    criterion = "l2_gm"


@register_baseline("bn_scale")
class BNScaleBaseline(CriterionBaseline):
    """BN scale ``|γ|`` (Liu et al., "Network Slimming", ICCV 2017; use ``allocation="global"``).

    See :class:`CriterionBaseline`.
    """

    criterion = "bn_scale"
