"""Meeting a budget: the monotone bisections, the keep-count solver and the static env's action wall.

Every budget search in PruneGym asks the same question: along one number ``x`` (a keep ratio, an offset, a
threshold, an index into sorted scores) the cost moves one way only, so the settings that meet the budget
form one side of a single boundary; find the setting on that boundary. The answer is always the *feasible*
end, so the budget is met, never missed by half a step. This module holds that search once.

Bisections
    :func:`bisect_monotone` (floats) and :func:`bisect_monotone_int` (integers) take a predicate
    ``feasible(x)`` that is true from ``good`` up to the boundary and false beyond it toward ``bad``. ``good``
    may lie below or above ``bad``: the search direction follows from the two ends, so "largest ratio that
    fits" is ``bisect_monotone(fits, lo, hi, ...)`` and "smallest threshold that fits" is
    ``bisect_monotone(fits, hi, lo, ...)``. Both first try ``bad`` itself (the whole range may fit) and
    return it if it is feasible; ``good`` is assumed feasible and never evaluated. The float form halves the
    bracket exactly ``steps`` times (the final bracket is ``|bad - good| / 2**steps`` wide); the integer
    form halves until the two ends are adjacent. :func:`bisect_bracket` is the float halving alone, with no
    end tried, and returns both ends of the final bracket for searches that must look at both.

    >>> bisect_monotone(lambda x: x * x <= 2.0, 0.0, 2.0, steps=40)  # largest x with x² <= 2
    1.4142135623715149
    >>> bisect_monotone_int(lambda n: n * n >= 50, 100, 0)  # smallest n with n² >= 50
    8

Keep counts
    :func:`solve_budget` turns a one-parameter family of per-unit keep counts into the allocation that meets
    a MAC budget and a parameter budget (:class:`BudgetTarget`, costed exactly): every hand-designed
    baseline is such a family (a uniform ratio, a global threshold, PFP's ``ε``).

The action wall
    In ``budget_mode="clamp"`` the static env never lets an action break the budgets: with the earlier units
    decided and the later ones at their floor, MACs and parameters are affine in the current unit's channel
    counts, so two costings (:func:`unit_feasible`) price every candidate count exactly, and
    :func:`action_wall` clamps the requested count to the largest feasible one.

Costs are compared with a tolerance of ``1e-12`` (relative to the base model's cost in :func:`unit_feasible`;
:meth:`BudgetTarget.fits` says its own), so a plan exactly at the budget fits despite rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from .accounting import CostModel

__all__ = [
    "SOLVE_STEPS",
    "BudgetTarget",
    "action_wall",
    "bisect_bracket",
    "bisect_monotone",
    "bisect_monotone_int",
    "solve_budget",
    "unit_feasible",
]


# ------------------------------------------------------------------------------------------------------------
# bisections
# ------------------------------------------------------------------------------------------------------------


def bisect_bracket(feasible: Callable[[float], bool], good: float, bad: float, *, steps: int) -> tuple[float, float]:
    """Halve the bracket ``[good, bad]`` ``steps`` times, keeping ``feasible(good)`` and ``not feasible(bad)``.

    Neither end is evaluated: the caller knows (or assumes) ``good`` feasible and ``bad`` not. Each step
    evaluates ``feasible`` once at the midpoint ``0.5 * (good + bad)`` and moves the end of the same kind
    there.

    Args:
        feasible: Monotone predicate: true from ``good`` up to one boundary, false beyond it toward ``bad``.
        good: The feasible end (may be above ``bad``).
        bad: The infeasible end.
        steps: Number of halvings (evaluations of ``feasible``).

    Returns:
        ``(good, bad)``: the final bracket, ``|bad - good| / 2**steps`` wide, with the boundary inside it.
    """
    for _ in range(steps):
        mid = 0.5 * (good + bad)
        if feasible(mid):
            good = mid
        else:
            bad = mid
    return good, bad


def bisect_monotone(feasible: Callable[[float], bool], good: float, bad: float, *, steps: int) -> float:
    """The feasible point farthest from ``good`` toward ``bad``, to within ``|bad - good| / 2**steps``.

    ``bad`` is tried first and returned if feasible (then nothing else is evaluated); otherwise the bracket
    is halved ``steps`` times (:func:`bisect_bracket`) and its feasible end returned. The result is
    feasible whenever ``good`` is; ``good`` itself is never evaluated, so when even ``good`` is infeasible
    (a budget below the floor) the result is ``good``'s side of the range and the caller must check it.

    Args:
        feasible: Monotone predicate: true from ``good`` up to one boundary, false beyond it toward ``bad``.
        good: The end assumed feasible, e.g. the floor of a keep ratio.
        bad: The other end (above ``good`` for "largest feasible", below it for "smallest feasible").
        steps: Number of halvings after ``bad`` was found infeasible.

    Returns:
        ``bad`` if feasible, else the feasible end of the final bracket.

    Example:
        The largest keep ratio whose cost fits, and the smallest threshold whose cost fits:

        >>> bisect_monotone(lambda r: r**2 <= 0.5, 0.1, 1.0, steps=30)
        0.70710678...
        >>> bisect_monotone(lambda t: 1.0 - t <= 0.25, 1.0, -1.0, steps=10)
        0.75
    """
    if feasible(bad):
        return bad
    return bisect_bracket(feasible, good, bad, steps=steps)[0]


def bisect_monotone_int(feasible: Callable[[int], bool], good: int, bad: int) -> int:
    """The feasible integer farthest from ``good`` toward ``bad``: the next one toward ``bad`` is infeasible.

    ``bad`` is tried first and returned if feasible; otherwise the bracket is halved (``mid = (good + bad)
    // 2``) until its ends are adjacent, about ``log2 |bad - good|`` evaluations. ``good`` is never evaluated
    and is assumed feasible.

    Args:
        feasible: Monotone predicate on integers: true from ``good`` up to one boundary, false beyond it.
        good: The end assumed feasible.
        bad: The other end (above or below ``good``).

    Returns:
        ``bad`` if feasible; else ``n`` with ``feasible(n)`` (or ``n == good``) and ``not feasible(n ± 1)``,
        one step toward ``bad``.
    """
    if feasible(bad):
        return bad
    while abs(bad - good) > 1:
        mid = (good + bad) // 2
        if feasible(mid):
            good = mid
        else:
            bad = mid
    return good


# ------------------------------------------------------------------------------------------------------------
# keep counts
# ------------------------------------------------------------------------------------------------------------


class BudgetTarget(Protocol):
    """What :func:`solve_budget` reads of a pruning problem (``agents.baselines.PruningTarget`` is one)."""

    @property
    def channels(self) -> np.ndarray:
        """Full output channels per unit, int64 ``(L,)``."""
        ...

    @property
    def min_counts(self) -> np.ndarray:
        """Fewest channels an allocation may keep per unit, int64 ``(L,)``."""
        ...

    @property
    def min_keep(self) -> float:
        """The smallest keep ratio (for messages)."""
        ...

    @property
    def param_budget(self) -> float | None:
        """The parameter budget (fraction of the base model's backbone parameters), or ``None``."""
        ...

    def fits(self, counts: np.ndarray, budget: float | None) -> bool:
        """Whether keep ``counts`` meet the MAC ``budget`` (``None``: none) and :attr:`param_budget`."""
        ...

    def macs_fraction(self, counts: np.ndarray) -> float:
        """MAC fraction of the base model at keep ``counts``."""
        ...

    def params_fraction(self, counts: np.ndarray) -> float:
        """Parameter fraction of the base model at keep ``counts``."""
        ...


#: Halvings of :func:`solve_budget`: enough to resolve any count step of a float parameter.
SOLVE_STEPS = 60


def solve_budget(
    target: BudgetTarget, counts_at: Callable[[float], np.ndarray], lo: float, hi: float, budget: float | None
) -> np.ndarray:
    """Keep counts ``counts_at(s)`` for the largest ``s`` in ``[lo, hi]`` that meets every budget.

    The budgets are the MAC ``budget`` (``None``: none) and the target's parameter budget
    (:attr:`BudgetTarget.param_budget`, the static env's ``param_budget``); both are costed exactly
    (:meth:`BudgetTarget.fits`). ``counts_at`` must be non-decreasing in ``s`` (a larger ``s`` never keeps
    fewer channels); it is clipped to ``[min_counts, channels]``. MACs and parameters both grow with every
    count, so bisection on ``s`` (:func:`bisect_monotone`, :data:`SOLVE_STEPS` = 60 halvings) finds the
    answer: it meets both budgets, and the smallest larger ``s`` that changes any count breaks at least one.

    Args:
        target: The problem: channels, floors, the parameter budget and the exact costing.
        counts_at: The family of allocations, one float parameter ``s`` to int counts ``(L,)``.
        lo: Smallest ``s`` (the allocation at the floor).
        hi: Largest ``s``; returned at once when ``counts_at(hi)`` fits.
        budget: The MAC budget, a fraction of the base model's MACs, or ``None``.

    Returns:
        int64 keep counts ``(L,)`` within ``[min_counts, channels]`` that meet the budgets.

    Raises:
        ValueError: even ``counts_at(lo)`` (at the ``min_keep`` floor) exceeds a budget.
    """

    def counts(s: float) -> np.ndarray:
        return np.clip(np.asarray(counts_at(s), dtype=np.int64), target.min_counts, target.channels)

    floor = counts(lo)
    if not target.fits(floor, budget):
        macs, params = target.macs_fraction(floor), target.params_fraction(floor)
        raise ValueError(
            f"the budgets (MACs {budget}, params {target.param_budget}) cannot be met: the smallest allocation "
            f"keeps {macs:.4f} of the MACs and {params:.4f} of the parameters (min_keep={target.min_keep}; layers "
            "that are not units are never pruned). Raise the budget or lower min_keep"
        )
    return counts(bisect_monotone(lambda s: target.fits(counts(s), budget), lo, hi, steps=SOLVE_STEPS))


# ------------------------------------------------------------------------------------------------------------
# the action wall
# ------------------------------------------------------------------------------------------------------------


def unit_feasible(
    cost_model: CostModel,
    effective: np.ndarray,
    stored: np.ndarray,
    unit: int,
    unit_effective: np.ndarray,
    unit_stored: np.ndarray,
    *,
    budget: float | None,
    param_budget: float | None,
) -> np.ndarray:
    """For each candidate count of one unit, with every other unit fixed: do the budgets still fit?

    With the other units' counts fixed, MACs are affine in the unit's effective (computed) count and stored
    parameters affine in its stored count, so two costings (the unit at 1 and at 2 channels) give the cost of
    every candidate exactly. A cost fits when it is at most ``budget`` (resp. ``param_budget``) times the base
    model's, with a relative tolerance of ``1e-12``.

    Args:
        cost_model: The model's exact cost model.
        effective: Effective counts of every unit, int64 ``(L,)`` (entry ``unit`` is ignored).
        stored: Stored counts of every unit, int64 ``(L,)`` (entry ``unit`` is ignored).
        unit: Index of the unit whose candidates are priced.
        unit_effective: The candidates' effective counts, int64 ``(K,)``.
        unit_stored: The candidates' stored counts, int64 ``(K,)``.
        budget: MAC budget (fraction of the base MACs per image), or ``None``.
        param_budget: Parameter budget (fraction of the base backbone parameters), or ``None``.

    Returns:
        bool ``(K,)``: whether each candidate meets both budgets.
    """
    probes = []
    for value in (1, 2):
        e, s = effective.copy(), stored.copy()
        e[unit], s[unit] = value, value
        probes.append(cost_model.from_counts(torch.from_numpy(e)[None], torch.from_numpy(s)))
    ok = np.ones(len(unit_effective), dtype=bool)
    if budget is not None:
        m1, m2 = int(probes[0].macs[0]), int(probes[1].macs[0])
        macs = m1 + (unit_effective - 1) * (m2 - m1)
        ok &= macs <= budget * cost_model.base_macs * (1 + 1e-12)
    if param_budget is not None:
        p1, p2 = probes[0].params, probes[1].params
        params = p1 + (unit_stored - 1) * (p2 - p1)
        ok &= params <= param_budget * cost_model.base_params * (1 + 1e-12)
    return ok


def action_wall(
    feasible: Callable[[np.ndarray, float], np.ndarray],
    min_count: int,
    channels: int,
    requested: int,
    tradeoffs: Sequence[float],
) -> tuple[int, float, int] | None:
    """Clamp a requested keep count of one unit to the largest count that keeps the budgets reachable.

    The tradeoffs are tried in order (the requested R_r first, then lower ones); the first at which the floor
    ``min_count`` is feasible is used.

    Args:
        feasible: ``feasible(counts, tradeoff)``: bool per candidate keep count (e.g. :func:`unit_feasible`
            on the counts the tradeoff implies).
        min_count: The unit's fewest keepable channels.
        channels: The unit's channels.
        requested: The requested keep count.
        tradeoffs: R_r values to try, in order.

    Returns:
        ``(count, tradeoff, wall)``: ``min(requested, wall)``, the tradeoff used and the wall (the largest
        feasible count at that tradeoff); ``None`` when no tradeoff makes even ``min_count`` feasible.
    """
    counts = np.arange(min_count, channels + 1)
    for tradeoff in tradeoffs:
        ok = feasible(counts, tradeoff)
        if ok[0]:
            wall = int(counts[ok].max())
            return min(requested, wall), tradeoff, wall
    return None
