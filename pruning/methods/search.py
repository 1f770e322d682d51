"""Budget searches of the training-based methods.

What a search over training runs returns (polarization's (λ, t) search, gRDA's ``c`` search), and the one
global score threshold that meets a MAC budget exactly (:func:`threshold_to_budget`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch import nn

from pruning.accounting import CostModel
from pruning.budget import bisect_monotone_int
from pruning.plan import PruningPlan

__all__ = ["SearchResult", "threshold_to_budget"]

TrialT = TypeVar("TrialT")


@dataclass
class SearchResult(Generic[TrialT]):
    """The trained copy closest to the target and every trial of a search, in order.

    ``TrialT`` is the search's own record of one run (its hyperparameters and the MAC fraction it reached).
    """

    model: nn.Module
    """The trained copy of the best trial (not yet pruned)."""
    best: TrialT
    """The trial closest to the target."""
    trials: list[TrialT] = field(default_factory=list)
    """All trials, in order."""
    hit: bool = False
    """Whether the best trial is within the tolerance the search was run with."""


def threshold_to_budget(model: nn.Module, scores: Sequence[torch.Tensor], budget: float) -> tuple[PruningPlan, float]:
    """The static plan keeping, in every unit, the channels scored above one global threshold, at the budget.

    Each unit keeps ``k = max(1, #{c : score_c > τ})`` channels; ``τ`` is the lowest of the scores (or
    ``-inf``: keep everything) whose plan costs at most ``budget`` of the unpruned MACs per image
    (:class:`pruning.accounting.CostModel`, exact). MACs never grow with ``τ``, so a bisection over the sorted
    scores (:func:`pruning.budget.bisect_monotone_int`) finds it; the next lower score would exceed the budget.
    This is network slimming's rule (Liu et al., ICCV 2017) and what a training-based method whose own threshold
    misses the budget is completed with: the scores must be comparable across units (BN scales, normalised
    filter norms).

    Args:
        model: A plain (or gated) model; only its shapes are read.
        scores: One score per output channel of every unit, in :func:`pruning.units.get_units` order.
        budget: The MAC budget, a fraction of the unpruned model's MACs per image.

    Returns:
        ``(plan, threshold)``: the plan (``static_keep`` = ``k/C``, ``static_scores`` = ``scores``, so the kept
        channels are exactly those above ``threshold``) and ``τ``.

    Raises:
        ValueError: ``scores`` do not match the units, or even one channel per unit costs more than ``budget``
            (raise the budget).
    """
    cost = CostModel(model)
    flat = [torch.as_tensor(s).detach().flatten().double().cpu() for s in scores]
    if [int(s.numel()) for s in flat] != [int(c) for c in cost.channels]:
        raise ValueError(
            f"scores have {[int(s.numel()) for s in flat]} channels per unit, the model's units "
            f"{cost.channels.tolist()}: pass one score per output channel of every unit"
        )

    def counts(tau: float) -> torch.Tensor:
        return torch.tensor([max(1, int((s > tau).sum())) for s in flat])

    def fraction(tau: float) -> float:
        k = counts(tau)
        return float(cost.from_counts(k, k).macs[0]) / cost.base_macs

    candidates = [float("-inf"), *torch.cat(flat).unique().tolist()]  # sorted ascending
    if fraction(candidates[-1]) > budget:
        raise ValueError(
            f"even one channel per unit costs {fraction(candidates[-1]):.4f} of the MACs, above the budget {budget}: "
            "raise the budget (layers that are not units are never pruned)"
        )
    tau = candidates[bisect_monotone_int(lambda i: fraction(candidates[i]) <= budget, len(candidates) - 1, 0)]
    keep = counts(tau)
    plan = PruningPlan(
        static_keep=[int(k) / int(c) for k, c in zip(keep, cost.channels, strict=True)],
        static_scores=[torch.as_tensor(s).detach().clone() for s in scores],
    )
    return plan, tau
