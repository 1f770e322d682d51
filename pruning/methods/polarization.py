r"""Polarization regularizer (Zhuang et al., NeurIPS 2020): sparsity training that splits BN scales into two modes.

`Neuron-level Structured Pruning using Polarization Regularizer <https://proceedings.neurips.cc/paper/2020/hash/
703957b6dd9e3a7980e040bee50ded65-Abstract.html>`_ trains the network with cross-entropy plus

    λ · R_s(γ),    R_s(γ) = Σ_i ( t·|γ_i| − |γ_i − γ̄| ),    γ_i ∈ [0, a],  a = 1,

on the BatchNorm scale factors ``γ`` of the prunable channels, ``γ̄`` their mean over **all** of them (one
global mean, as in the released ``cifar/main.py``; the gradient flows through ``γ̄`` too). ``t|γ|`` pulls every
factor to 0 as L1 does; ``−|γ − γ̄|`` pushes each factor away from the mean, so instead of shrinking all factors
together (network slimming's L1) the factors split: about ``ρ = 1/2 − t/4`` of them end at ``a`` and the rest
at 0 (the paper's Theorem 3.2, for ``−2 ≤ t ≤ 2``). After every optimizer step the factors are clamped to
``[0, a]`` as the released code does (so a pretrained model's negative ``γ`` become 0 at the first step).

The pruning threshold is the **first valley** of the histogram of the factors with bins of width 0.01 on
``[0, 1]`` (:func:`first_valley`; the released code's ``--pruning-strategy grad``): scanning the bin counts
left to right, the first bin whose count is no larger than its left neighbour's and no larger than its right
neighbour's; the threshold is that bin's left edge and channels with ``γ`` above it are kept
(:func:`threshold_plan`). The released code computes the threshold per layer; :func:`threshold_plan` uses one
global histogram by default (the paper's figures show the global one), ``per_unit=True`` gives the per-layer
variant.

What comes out of the regularised training is therefore a *ratio per unit decided by the threshold*, not a
budget: to hit a MAC target the paper searches ``(λ, t)`` (its Algorithm 1), which :func:`search_lambda_t`
implements as described under that function.

| name           | regulariser of the factors ``γ`` (one concatenated vector)    |
|----------------|---------------------------------------------------------------|
| `polarization` | ``Σ t|γ_i| − |γ_i − γ̄|``                                     |
| `l1`           | ``Σ |γ_i|`` (network slimming, Liu et al. ICCV 2017; ``t`` unused) |

Example:
    >>> from pruning.data import get_dataset
    >>> from pruning.models import get_model
    >>> from pruning.train import TrainConfig, dataset_for_model
    >>> model = get_model("tiny_cnn")
    >>> data = dataset_for_model(get_dataset("synthetic", split="train", size=64), model)
    >>> _ = sparsity_train(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.05), lam=1e-3, t=1.2,
    ...                    progress=False)
    >>> bool(torch.cat([g.detach() for g in scale_factors(model)]).le(1).all())
    True
    >>> plan, thresholds = threshold_plan(model)
    >>> len(plan.static_keep) == len(thresholds) == 3
    True
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..accounting import model_cost
from ..data import ImageDataset
from ..gating import is_gated
from ..plan import PruningPlan
from ..registry import Registry
from ..train import ExtraLoss, StepHook, TrainConfig, train
from ..units import get_units
from .search import SearchResult

__all__ = [
    "SearchResult",
    "SearchTrial",
    "clamp_scale_factors",
    "first_valley",
    "get_regularizer",
    "lambda_t_trials",
    "list_regularizers",
    "polarization_penalty",
    "register_regularizer",
    "scale_factors",
    "search_lambda_t",
    "sparsity_loss",
    "sparsity_train",
    "threshold_plan",
]

log = logging.getLogger(__name__)

#: A regulariser of the concatenated scale factors: ``fn(gammas (N,), t) -> scalar`` (not yet times λ).
Regularizer = Callable[[torch.Tensor, float], torch.Tensor]

_REGULARIZERS: Registry[Regularizer] = Registry("sparsity regularizer")


def register_regularizer(name: str) -> Callable[[Regularizer], Regularizer]:
    """Register ``fn(gammas, t) -> scalar`` under ``name`` (a decorator).

    Raises:
        ValueError: a regulariser named ``name`` is already registered.
    """
    return _REGULARIZERS.register(name)


def list_regularizers() -> list[str]:
    """Names of the registered regularisers, sorted."""
    return _REGULARIZERS.names()


def get_regularizer(name: str) -> Regularizer:
    """The regulariser registered as ``name``.

    Raises:
        ValueError: ``name`` is unknown; the message suggests close matches and lists every registered name.
    """
    return _REGULARIZERS.get(name)


@register_regularizer("polarization")
def polarization_penalty(gammas: torch.Tensor, t: float) -> torch.Tensor:
    """``Σ_i t|γ_i| − |γ_i − γ̄|`` with ``γ̄`` the mean of ``gammas`` (gradient through ``γ̄`` included)."""
    return t * gammas.abs().sum() - (gammas - gammas.mean()).abs().sum()


@register_regularizer("l1")
def l1_penalty(gammas: torch.Tensor, t: float) -> torch.Tensor:
    """``Σ_i |γ_i|``: network slimming's L1 on the scale factors (``t`` is ignored)."""
    del t
    return gammas.abs().sum()


def scale_factors(model: nn.Module) -> list[nn.Parameter]:
    """The BatchNorm scale parameters ``γ`` of ``model``'s prunable units, in unit order.

    Args:
        model: A plain model (:mod:`pruning.models`); each unit's conv must be followed by an affine BatchNorm.

    Returns:
        One ``(C_t,)`` parameter per unit (the BN's ``weight``, shared with the model, not a copy).

    Raises:
        TypeError: ``model`` is gated (its γ lives in the gated units; regularise the plain model before gating),
            or a unit's BN has no affine scale.
    """
    if is_gated(model):
        raise TypeError(
            "polarization regularises the BatchNorm scales of a plain model, but this model is gated (BN folded "
            "into GatedConv); sparsity-train the plain model first and gate it afterwards"
        )
    params = []
    for unit in get_units(model):
        bn = model.get_submodule(unit.bn)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.weight is None:
            raise TypeError(
                f"unit {unit.index} ({unit.conv!r}) has no affine BatchNorm at {unit.bn!r} "
                f"({type(bn).__name__}); the polarization regulariser needs BN scale factors"
            )
        params.append(bn.weight)
    return params


def sparsity_loss(model: nn.Module, *, lam: float, t: float, kind: str = "polarization") -> ExtraLoss:
    """The loss term ``λ·R(γ)`` on ``model``'s unit scale factors, as a ``fn(model) -> scalar`` for ``train``.

    The factors are looked up once, here; the returned function reads them on every call (it ignores its
    argument, which :func:`pruning.train.train` passes as the model being trained).

    Args:
        model: The plain model whose factors are regularised.
        lam: λ, the coefficient (``>= 0``).
        t: The polarization's ``t`` (ignored by ``l1``).
        kind: A registered regulariser (:func:`list_regularizers`).

    Raises:
        ValueError: ``lam`` is negative or not finite, or ``kind`` is unknown.
    """
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam (λ) must be a finite number >= 0, got {lam}")
    fn = get_regularizer(kind)
    gammas = scale_factors(model)

    def loss(_: nn.Module) -> torch.Tensor:
        return lam * fn(torch.cat([g.view(-1) for g in gammas]), t)

    return loss


def clamp_scale_factors(model: nn.Module, low: float = 0.0, high: float = 1.0) -> StepHook:
    """A ``fn(model)`` that clamps ``model``'s unit scale factors into ``[low, high]`` (the paper's ``[0, a]``).

    Raises:
        ValueError: ``low > high``.
    """
    if low > high:
        raise ValueError(f"clamp range [{low}, {high}] is empty; give low <= high")
    gammas = scale_factors(model)

    def clamp(_: nn.Module) -> None:
        with torch.no_grad():
            for g in gammas:
                g.clamp_(low, high)

    return clamp


def sparsity_train(
    model: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    *,
    lam: float,
    t: float = 1.2,
    kind: str = "polarization",
    clamp: tuple[float, float] | None = (0.0, 1.0),
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Sparsity-train ``model`` in place: cross-entropy + ``λ·R(γ)``, factors clamped after every step.

    The factors are clamped once before the first step too, so the range holds throughout. Everything else is
    :func:`pruning.train.train` (optimizer, schedule, augmentation, determinism).

    Args:
        model: A plain model.
        train_set: Training split, normalised for the model.
        config: Optimizer, learning rate, epochs, seed, device.
        lam: λ.
        t: The polarization's ``t`` (the paper: 1.4 for ResNet-56, 1.5 for VGG-16 on CIFAR-10; 1.2 is where
            its Algorithm 1 starts).
        kind: ``"polarization"`` or ``"l1"`` (or another registered regulariser).
        clamp: ``(low, high)`` range of the factors, or ``None`` not to clamp. Default ``(0, 1)``, the paper's.
        **train_kwargs: Passed on to :func:`pruning.train.train` (``val_set``, ``writer``, ``progress``, ...).

    Returns:
        :func:`pruning.train.train`'s history; ``train_loss`` includes the regulariser.
    """
    after = clamp_scale_factors(model, *clamp) if clamp is not None else None
    if after is not None:
        after(model)
    return train(
        model, train_set, config, extra_loss=sparsity_loss(model, lam=lam, t=t, kind=kind), after_step=after,
        **train_kwargs,
    )  # fmt: skip


def first_valley(
    values: torch.Tensor | np.ndarray | Sequence[float],
    *,
    bin_width: float = 0.01,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> float | None:
    """The left edge of the first valley of the histogram of ``values`` (the released code's ``grad`` strategy).

    The histogram has ``round((hi - lo) / bin_width)`` equal bins on ``value_range`` (numpy's: the last bin is
    closed, values outside the range are not counted). With counts ``h`` and ``d = diff(h)``, the valley is the
    first bin ``i + 1`` with ``d[i] <= 0 <= d[i + 1]``: a count no larger than the one before it and no larger
    than the one after it. An empty stretch counts as a valley, so a factor distribution with a gap right
    above its low mode gets a threshold at the start of the gap.

    Args:
        values: The factors (any shape; flattened).
        bin_width: Width of a bin. Default 0.01, the paper's.
        value_range: ``(lo, hi)`` of the histogram. Default ``(0, 1)``, the clamp range.

    Returns:
        The threshold (channels with a factor above it are kept), or ``None`` when the counts have no valley
        (e.g. they never stop rising).

    Raises:
        ValueError: ``bin_width`` or the range is not positive.
    """
    lo, hi = value_range
    if not (bin_width > 0 and hi > lo):
        raise ValueError(f"need bin_width > 0 and hi > lo, got bin_width={bin_width}, value_range={value_range}")
    bins = max(1, round((hi - lo) / bin_width))
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    counts, edges = np.histogram(arr.astype(np.float64).ravel(), bins=bins, range=(lo, hi))
    d = np.diff(counts)
    for i in range(len(d) - 1):
        if d[i] <= 0 <= d[i + 1]:
            return float(edges[i + 1])
    return None


def threshold_plan(
    model: nn.Module,
    threshold: float | None = None,
    *,
    per_unit: bool = False,
    bin_width: float = 0.01,
    fallback: float = 0.0,
) -> tuple[PruningPlan, list[float]]:
    """The static plan that keeps, in every unit, the channels whose ``|γ|`` is above the threshold.

    Each unit keeps ``k = #{c : |γ_c| > threshold}`` channels, at least one (the largest ``|γ|``); the plan
    carries ``|γ|`` as its scores, so the kept channels are exactly those above the threshold.

    Args:
        model: A plain model (usually after :func:`sparsity_train`).
        threshold: The threshold to use; ``None`` (default) finds it with :func:`first_valley`.
        per_unit: With ``threshold=None``: one histogram per unit (the released code) instead of one over all
            factors (default).
        bin_width: Histogram bin width for :func:`first_valley`.
        fallback: The threshold used when a histogram has no valley (a warning is logged). Default 0: keep
            every channel with a non-zero factor.

    Returns:
        ``(plan, thresholds)``: the plan (``static_keep`` = ``k/C`` per unit, ``static_scores`` = ``|γ|``) and
        the threshold applied in each unit.
    """
    gammas = [g.detach().abs().clone() for g in scale_factors(model)]

    def valley(values: torch.Tensor) -> float:
        found = first_valley(values, bin_width=bin_width)
        if found is None:
            log.warning("no valley in the histogram of the BN scale factors; threshold falls back to %g", fallback)
            return fallback
        return found

    if threshold is not None:
        thresholds = [float(threshold)] * len(gammas)
    elif per_unit:
        thresholds = [valley(g) for g in gammas]
    else:
        thresholds = [valley(torch.cat(gammas))] * len(gammas)
    keep = [max(1, int((g > thr).sum())) / g.numel() for g, thr in zip(gammas, thresholds, strict=True)]
    return PruningPlan(static_keep=keep, static_scores=gammas), thresholds


# ----------------------------------------------------------------------------------------------------
# Algorithm 1: search (λ, t) for a MAC target
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchTrial:
    """One sparsity-training run of :func:`search_lambda_t`."""

    lam: float
    """λ of the run."""
    t: float
    """t of the run."""
    threshold: float
    """The global first-valley threshold (or the fallback)."""
    macs_fraction: float
    """MACs of the thresholded plan over the unpruned model's."""


def _plan_macs_fraction(model: nn.Module, plan: PruningPlan) -> float:
    return float(model_cost(model, plan).macs_fraction[0])


def lambda_t_trials(
    model: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    *,
    target: float,
    lam_range: tuple[float, float] = (0.0, 2e-4),
    t0: float = 1.2,
    t_step: float = 0.1,
    max_trials: int = 8,
    lam_steps: int = 4,
    per_unit: bool = False,
    **train_kwargs: Any,
) -> Iterator[tuple[SearchTrial, nn.Module]]:
    """The trials of Algorithm 1's (λ, t) search, one at a time: ``(trial, its sparsity-trained copy)``.

    Each trial trains a fresh copy of ``model`` (:func:`sparsity_train`), thresholds it at the first valley
    (:func:`threshold_plan`, ``per_unit`` as there) and costs the plan; then λ and ``t`` move as
    :func:`search_lambda_t` describes (λ bisected at fixed ``t``; after ``lam_steps`` trials ``t`` moves by
    ``t_step`` toward the target and the λ bracket restarts, its upper end doubled if every trial so far pruned
    too little). The caller decides when to stop (``break``) and which trial to keep: :func:`search_lambda_t`
    the closest to the target, ``agents.baselines.polarization.search_budget`` its own rule.

    Raises:
        ValueError: ``target`` is outside ``(0, 1]``, the λ bracket is invalid or ``max_trials`` /
            ``lam_steps`` < 1 (at the first trial).
    """
    if not (0.0 < target <= 1.0):
        raise ValueError(f"target must be a MAC fraction in (0, 1], got {target}")
    lo0, hi0 = lam_range
    if not (0.0 <= lo0 < hi0):
        raise ValueError(f"lam_range must satisfy 0 <= lo < hi, got {lam_range}")
    if max_trials < 1 or lam_steps < 1:
        raise ValueError(f"max_trials and lam_steps must be >= 1, got {max_trials} and {lam_steps}")
    lo, hi, t, at_t = lo0, hi0, t0, 0
    trials: list[SearchTrial] = []
    for _ in range(max_trials):
        lam = 0.5 * (lo + hi)
        work = copy.deepcopy(model)
        sparsity_train(work, train_set, config, lam=lam, t=t, **train_kwargs)
        plan, thresholds = threshold_plan(work, per_unit=per_unit)
        frac = _plan_macs_fraction(work, plan)
        trial = SearchTrial(lam=lam, t=t, threshold=thresholds[0], macs_fraction=frac)
        trials.append(trial)
        log.info("polarization search: λ=%.3g t=%.2f threshold=%.3f → MAC fraction %.4f (target %.4f)",
                 lam, t, trial.threshold, frac, target)  # fmt: skip
        yield trial, work
        too_little = frac > target
        if too_little:
            lo = lam
        else:
            hi = lam
        at_t += 1
        if at_t >= lam_steps:
            all_too_little = all(tr.macs_fraction > target for tr in trials)
            t += t_step if too_little else -t_step
            lo, hi = lo0, (2.0 * hi0 if all_too_little else hi0)
            lo0, hi0 = lo, hi
            at_t = 0


def search_lambda_t(
    model: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    *,
    target: float,
    lam_range: tuple[float, float] = (0.0, 2e-4),
    t0: float = 1.2,
    t_step: float = 0.1,
    tolerance: float = 0.05,
    max_trials: int = 8,
    lam_steps: int = 4,
    **train_kwargs: Any,
) -> SearchResult[SearchTrial]:
    """Find ``(λ, t)`` whose thresholded plan meets a MAC target: the paper's Algorithm 1, as we implement it.

    Algorithm 1 is a binary search of λ starting from ``[0, 2e-4]`` and steps of ±0.1 in ``t`` from 1.2,
    until the FLOPs are within δ = 5% of the target. This function follows that outline; the paper's exact
    stopping and range-extension rules are not reproduced, so this function fixes them as follows. Every trial
    sparsity-trains a fresh copy of ``model`` (:func:`sparsity_train`), thresholds it at the global first
    valley (:func:`threshold_plan`) and costs the plan (MAC fraction of the unpruned model, exact):

    1. λ is bisected in ``[lo, hi]`` (start: ``lam_range``) at fixed ``t``: too few MACs removed → ``lo = λ``
       (more regularisation), too many → ``hi = λ``.
    2. After ``lam_steps`` trials at one ``t`` without a hit, ``t`` moves by ``t_step`` toward the target
       (larger ``t`` prunes more: ``ρ = 1/2 − t/4`` of the factors stay up) and λ restarts from
       ``lam_range``, with its upper end doubled if every trial so far pruned too little.
    3. The search stops when ``|MAC fraction − target| <= tolerance`` (absolute, in MAC fraction) or after
       ``max_trials``; the trial closest to the target is returned.

    Args:
        model: A plain model; not modified (each trial trains a deep copy).
        train_set: Training split, normalised for the model.
        config: Training configuration of every trial.
        target: MAC fraction to reach, in ``(0, 1]``.
        lam_range: Initial λ bracket. Default ``(0, 2e-4)``, the paper's (for its 200-epoch runs; short runs
            need a larger λ for the factors to move).
        t0: Initial ``t``. Default 1.2.
        t_step: Step of ``t``. Default 0.1.
        tolerance: δ, absolute in MAC fraction. Default 0.05.
        max_trials: Most training runs. Default 8.
        lam_steps: λ bisection steps per ``t``. Default 4.
        **train_kwargs: Passed on to :func:`sparsity_train` (``progress``, ``kind``, ``clamp``, ...).

    Returns:
        A :class:`SearchResult` (its ``hit`` says whether the tolerance was met).

    Raises:
        ValueError: ``target`` is outside ``(0, 1]``, the λ bracket is invalid or ``max_trials < 1``.
    """
    trials: list[SearchTrial] = []
    best: tuple[float, SearchTrial, nn.Module] | None = None
    for trial, work in lambda_t_trials(
        model, train_set, config, target=target, lam_range=lam_range, t0=t0, t_step=t_step, max_trials=max_trials,
        lam_steps=lam_steps, **train_kwargs,
    ):  # fmt: skip
        trials.append(trial)
        err = abs(trial.macs_fraction - target)
        if best is None or err < best[0]:
            best = (err, trial, work)
        if err <= tolerance:
            break
    assert best is not None
    return SearchResult(model=best[2], best=best[1], trials=trials, hit=best[0] <= tolerance)
