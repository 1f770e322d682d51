"""Neuron Merging (Kim, Kim, Park & Jeon, NeurIPS 2020) as a baseline: prune by a criterion, then merge.

The plan is that of a criterion baseline (:class:`agents.baselines.policies.CriterionBaseline`: one keep ratio
for every unit, as the paper's ``cfg = [16, 32, 64]·(1 − ratio)`` for ResNet-56, or a global threshold), with
channels ranked by the paper's criteria: ``"l1"`` (default), ``"l2"`` or ``"l2_gm"`` (FPGM's geometric-median
redundancy, :mod:`pruning.criteria.fpgm`). The scored model is then not the plainly sliced one:
:meth:`NeuronMergingBaseline.transform` calls :func:`pruning.methods.neuron_merging.merge_pruned`, which folds
every pruned channel into its most similar kept one in the consumer's weights (data-free, no training). Shapes,
MACs and parameters are exactly those of plain pruning with the same plan, so the budget is met as solved.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from pruning.methods.neuron_merging import merge_pruned
from pruning.plan import PruningPlan

from .base import register_baseline
from .policies import CriterionBaseline

__all__ = ["NeuronMergingBaseline"]


@register_baseline("neuron_merging")
class NeuronMergingBaseline(CriterionBaseline):
    """Prune by ``criterion``, then compensate with Neuron Merging (static env only).

    Args:
        budget: MAC budget (fraction of the base MACs); ``None`` (default) uses the env's.
        allocation: ``"uniform"`` (default, as in the paper) or ``"global"`` (see :class:`CriterionBaseline`).
        criterion: Which channels are pruned: ``"l1"`` (default), ``"l2"`` or ``"l2_gm"`` (the paper's three).
        threshold: Minimum cosine similarity for a merge (default 0.1, the paper's for VGG-16 / ResNet-56).
        lam: λ, weight of the cosine distance against the normalised BN-bias mismatch (default 0.85, paper).

    Raises:
        ValueError: an unknown criterion, or ``lam`` outside ``[0, 1]``.
    """

    env_kinds: ClassVar[frozenset[str]] = frozenset({"static"})
    CRITERIA: ClassVar[tuple[str, ...]] = ("l1", "l2", "l2_gm")

    def __init__(
        self,
        *,
        budget: float | None = None,
        allocation: str = "uniform",
        criterion: str = "l1",
        threshold: float = 0.1,
        lam: float = 0.85,
    ) -> None:
        super().__init__(budget=budget, allocation=allocation)
        if criterion not in self.CRITERIA:
            raise ValueError(f"neuron_merging ranks channels by one of {list(self.CRITERIA)}, got {criterion!r}")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam (λ) must be in [0, 1], got {lam}")
        self.criterion = criterion
        self.threshold = float(threshold)
        self.lam = float(lam)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(criterion={self.criterion!r}, allocation={self.allocation!r}, "
            f"threshold={self.threshold}, lam={self.lam}, budget={self.budget})"
        )

    def transform(self, base: nn.Module, plan: PruningPlan) -> nn.Module:
        """The plan's channels removed from ``base`` with Neuron Merging's compensation (``base`` unchanged).

        The kept channels are the plan's (its ``static_scores``, the env's criterion ranking); see
        :func:`pruning.methods.neuron_merging.merge_pruned`.
        """
        return merge_pruned(base, plan, lam=self.lam, threshold=self.threshold)
