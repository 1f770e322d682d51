r"""Directional pruning with gRDA (Chao, Wang, Xing & Cheng, NeurIPS 2020): ℓ1 dual averaging, sparse as it trains.

`Directional Pruning of Deep Neural Networks <https://proceedings.neurips.cc/paper/2020/hash/
a09e75c5c86a7bf6582d2b4d75aad615-Abstract.html>`_ trains with the *generalized regularized dual averaging*
(gRDA) optimizer, which keeps for every parameter the dual average (the accumulator)

    A_n = w_0 − Σ_{k=1..n} γ_k g_k          (A_0 = w_0, the starting weights)

and sets the weights to its soft-thresholded value

    w_n = sign(A_n) · max(|A_n| − g_n, 0),   g_n = Σ_{k=1..n} c · γ_k^{1/2+μ} · (k^μ − (k−1)^μ),

with ``γ_k`` the learning rate of step ``k``. With a constant learning rate ``γ`` the threshold is exactly
``c · γ^{1/2+μ} · n^μ``; a changing rate is accumulated increment by increment, as the released
``grda_pytorch.py`` does (its ``l1_accumulation``). Because the accumulator starts at the starting weights, a
pretrained model is where the search starts; because the threshold grows as ``n^μ``, sparsity grows with the
number of steps, with no preset sparsity level and no retraining. The sparsity is **unstructured**: a weight is
exactly 0 when ``|A_n| <= g_n``. A whole conv filter becomes 0 only when all its weights do, which is what
:func:`zero_filter_plan` turns into a channel plan.

Hyperparameters (as the authors' code and scripts use them): ``lr`` as for plain SGD (no momentum, no weight decay: the
ℓ1 term takes its place); ``μ ∈ (0.5, 1)``, with 0.501, 0.51, 0.55 recommended; ``c`` small (5e-4 to 5e-3 in the paper's
runs of hundreds of epochs; a short run needs a larger ``c`` for the threshold to reach the weights).

Example:
    >>> w = torch.nn.Parameter(torch.tensor([0.5, -0.02, 0.1]))
    >>> opt = GRDA([w], lr=0.1, c=0.2, mu=0.6)
    >>> w.grad = torch.tensor([1.0, 1.0, -2.0])
    >>> opt.step()
    >>> w.detach()  # A = w0 - 0.1 g = [0.4, -0.12, 0.3], threshold 0.2 * 0.1**1.1 = 0.0159
    tensor([ 0.3841, -0.1041,  0.2841])
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..accounting import model_cost
from ..data import ImageDataset
from ..plan import PruningPlan
from ..train import OptimizerBuilder, TrainConfig, train
from ..units import get_units, unit_conv
from .search import SearchResult

__all__ = ["GRDA", "CTrial", "conv_sparsity", "grda_builder", "search_c", "zero_filter_plan"]

log = logging.getLogger(__name__)


class GRDA(torch.optim.Optimizer):
    """The gRDA optimizer: soft thresholding of the dual average, threshold ``c·lr^(1/2+μ)·n^μ``.

    Per parameter the state holds ``step`` (n), ``accumulator`` (``A_n``, initialised to the parameter's value
    at its first step) and ``threshold`` (``g_n``, accumulated as described in the module docstring). A
    parameter whose ``grad`` is ``None`` is skipped and its state does not advance (as in the released code).
    Parameter groups may set their own ``lr``, ``c`` and ``mu`` (e.g. ``c = 0`` for parameters that should
    not be sparsified, which then follow plain SGD: ``w_n = A_n``).

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate γ. Default 0.01 (the released code's).
        c: Sparsity strength. Default 0.0 (the released code's: plain dual averaging = SGD).
        mu: Growth exponent μ of the threshold. Default 0.7 (the released code's; the paper recommends
            0.501 to 0.55).

    Raises:
        ValueError: ``lr <= 0``, ``c < 0`` or ``mu < 0`` (or not finite).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, c: float = 0.0, mu: float = 0.7) -> None:
        for name, value, ok in (("lr", lr, lr > 0), ("c", c, c >= 0), ("mu", mu, mu >= 0)):
            if not (math.isfinite(value) and ok):
                raise ValueError(f"gRDA needs lr > 0, c >= 0 and mu >= 0; got {name}={value}")
        super().__init__(params, {"lr": lr, "c": c, "mu": mu})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One gRDA update of every parameter that has a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss (optional, as for any torch optimizer).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c, mu = float(group["lr"]), float(group["c"]), float(group["mu"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["accumulator"] = p.detach().clone()
                    state["threshold"] = 0.0
                n = state["step"] + 1
                state["step"] = n
                acc: torch.Tensor = state["accumulator"]
                acc.add_(p.grad, alpha=-lr)
                state["threshold"] += c * lr ** (0.5 + mu) * (n**mu - (n - 1) ** mu)
                p.copy_(acc.sign() * (acc.abs() - state["threshold"]).clamp_(min=0))
        return loss


def grda_builder(*, c: float, mu: float) -> OptimizerBuilder:
    """A ``make_optimizer`` for :func:`pruning.train.train` that builds :class:`GRDA` with ``config.lr``.

    ``train`` passes parameter groups split for weight decay; gRDA has no weight decay (set
    ``TrainConfig.weight_decay=0``: it is refused otherwise, so the config says what is run).

    Raises:
        ValueError: (when ``train`` calls it) ``config.weight_decay`` is not 0.
    """

    def build(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
        if config.weight_decay != 0:
            raise ValueError(
                f"gRDA has no weight decay (its ℓ1 threshold replaces it), but weight_decay={config.weight_decay}; "
                "set TrainConfig(weight_decay=0.0)"
            )
        return GRDA([{"params": g["params"]} for g in groups], lr=config.lr, c=c, mu=mu)

    return build


def conv_sparsity(model: nn.Module, *, tol: float = 0.0, units_only: bool = False) -> float:
    """Fraction of conv weights with ``|w| <= tol``: the unstructured sparsity.

    Args:
        model: A plain or gated model.
        tol: Largest ``|w|`` counted as zero. Default 0 (exact zeros, what gRDA produces).
        units_only: Count only the prunable units' convs (:func:`pruning.units.get_units`) instead of every
            ``Conv2d`` of the model (default).

    Raises:
        ValueError: the model has no conv.
    """
    if units_only:
        mods = dict(model.named_modules())
        convs = [unit_conv(mods[u.conv]) for u in get_units(model)]
    else:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d; conv sparsity is undefined")
    zeros = sum(int((m.weight.detach().abs() <= tol).sum()) for m in convs)
    return zeros / sum(m.weight.numel() for m in convs)


def zero_filter_plan(model: nn.Module, *, tol: float = 1e-8) -> tuple[PruningPlan, list[int]]:
    """The static plan that drops every unit filter whose weights are all (nearly) zero.

    A filter (output channel ``c`` of a unit's conv) is dropped when ``max |W[c]| <= tol``. gRDA's soft
    threshold produces exact zeros, so ``tol`` (default 1e-8, far below the 1e-3 to 1e-1 of trained CIFAR
    ResNet weights) only absorbs floating-point noise. Each unit keeps at least one filter.

    A dropped filter is not always a no-op: its conv output is 0, so the channel carries the constant
    ``ReLU(β − γ·μ_run/σ)`` of its BN into the consumer, which slicing removes. gRDA's plan is therefore the
    zero-filter structure, scored as exported.

    Args:
        model: A plain model (usually after gRDA training).
        tol: Largest ``|w|`` counted as zero.

    Returns:
        ``(plan, zero_filters)``: the plan (``static_keep`` = kept / C per unit, ``static_scores`` = ``max |W[c]|``,
        so the kept channels are exactly the non-zero filters) and the number of all-zero filters per unit.
    """
    scores, keep, zeros = [], [], []
    mods = dict(model.named_modules())
    for unit in get_units(model):
        w = unit_conv(mods[unit.conv]).weight.detach()
        s = w.abs().amax(dim=(1, 2, 3))
        nonzero = int((s > tol).sum())
        scores.append(s.clone())
        zeros.append(unit.out_channels - nonzero)
        keep.append(max(1, nonzero) / unit.out_channels)
    return PruningPlan(static_keep=keep, static_scores=scores), zeros


# ----------------------------------------------------------------------------------------------------------
# A MAC target: search c
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTrial:
    """One gRDA training run of :func:`search_c`."""

    c: float
    """The sparsity strength of the run."""
    macs_fraction: float
    """MACs of the zero-filter plan (:func:`zero_filter_plan`) over the unpruned model's."""
    conv_sparsity: float
    """Unstructured sparsity of all conv weights after the run."""


def search_c(
    model: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    *,
    target: float,
    c0: float = 0.5,
    mu: float = 0.51,
    factor: float = 4.0,
    tolerance: float = 0.05,
    max_trials: int = 6,
    zero_tol: float = 1e-8,
    **train_kwargs: Any,
) -> SearchResult[CTrial]:
    """Find the gRDA strength ``c`` whose all-zero filters leave a MAC target: a search of ours, not the paper's.

    gRDA has no sparsity target (the paper reports whatever sparsity its ``c`` and schedule give), so a
    comparison at a fixed MAC budget needs ``c`` chosen for it. Every trial trains a fresh copy of ``model``
    with gRDA (``config``; :func:`pruning.train.train`) and costs the zero-filter plan exactly
    (:func:`zero_filter_plan`, :func:`pruning.accounting.model_cost`). A larger ``c`` zeroes more, so ``c``
    is searched on a log scale: multiplied (divided) by ``factor`` from ``c0`` until the target is bracketed,
    then bisected geometrically. The search stops when ``|MAC fraction − target| <= tolerance`` (absolute)
    or after ``max_trials`` runs and returns the trial closest to the target.

    Args:
        model: A plain model; not modified (each trial trains a deep copy).
        train_set: Training split, normalised for the model.
        config: Training configuration of every trial (``weight_decay`` must be 0, see :func:`grda_builder`).
        target: MAC fraction to reach, in ``(0, 1]``.
        c0: First ``c``. Default 0.5.
        mu: μ of every run. Default 0.51.
        factor: Step of ``c`` while the target is not bracketed. Default 4.
        tolerance: Absolute tolerance in MAC fraction. Default 0.05.
        max_trials: Most training runs. Default 6.
        zero_tol: Largest ``|w|`` counted as zero (:func:`zero_filter_plan`).
        **train_kwargs: Passed on to :func:`pruning.train.train` (``progress``, ``desc``, ...).

    Returns:
        A :class:`~pruning.methods.search.SearchResult` of :class:`CTrial` (its ``hit`` says whether the
        tolerance was met; its ``model`` is the gRDA-trained copy of the best trial).

    Raises:
        ValueError: ``target`` outside ``(0, 1]``, ``c0 <= 0``, ``factor <= 1`` or ``max_trials < 1``.
    """
    if not (0.0 < target <= 1.0):
        raise ValueError(f"target must be a MAC fraction in (0, 1], got {target}")
    if not (c0 > 0 and factor > 1):
        raise ValueError(f"c0 must be > 0 and factor > 1, got {c0} and {factor}")
    if max_trials < 1:
        raise ValueError(f"max_trials must be >= 1, got {max_trials}")
    low: float | None = None  # largest c that pruned too little
    high: float | None = None  # smallest c that pruned too much
    c = c0
    trials: list[CTrial] = []
    best: tuple[float, CTrial, nn.Module] | None = None
    for _ in range(max_trials):
        work = copy.deepcopy(model)
        train(work, train_set, config, make_optimizer=grda_builder(c=c, mu=mu), **train_kwargs)
        plan, _ = zero_filter_plan(work, tol=zero_tol)
        trial = CTrial(
            c=c, macs_fraction=float(model_cost(work, plan).macs_fraction[0]),
            conv_sparsity=conv_sparsity(work, tol=zero_tol),
        )  # fmt: skip
        trials.append(trial)
        log.info("gRDA search: c=%.4g → conv sparsity %.3f, MAC fraction %.4f (target %.4f)",
                 c, trial.conv_sparsity, trial.macs_fraction, target)  # fmt: skip
        err = abs(trial.macs_fraction - target)
        if best is None or err < best[0]:
            best = (err, trial, work)
        if err <= tolerance:
            break
        if trial.macs_fraction > target:
            low = c if low is None else max(low, c)
        else:
            high = c if high is None else min(high, c)
        if low is not None and high is not None:
            c = math.sqrt(low * high)
        else:
            c = c * factor if high is None else c / factor
    assert best is not None
    return SearchResult(model=best[2], best=best[1], trials=trials, hit=best[0] <= tolerance)
