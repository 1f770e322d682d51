"""gRDA directional pruning (Chao et al., NeurIPS 2020) as a training-based baseline: unstructured, then filters.

:meth:`GRDABaseline.build` trains a copy of the base model with the gRDA optimizer
(:class:`pruning.methods.grda.GRDA`, constant learning rate, every parameter as in the released code) for
``context.epochs`` passes, starting the dual average at the base weights. gRDA's result is **unstructured**
sparsity, reported in ``info`` (``conv_sparsity``: the fraction of exactly-zero conv weights, all convs; and
``unit_conv_sparsity``: the units' convs only). The model that is scored is the channel plan that sparsity
implies: every unit filter whose weights are all zero (``max |w| <= zero_tol``, default 1e-8) is removed with
:func:`pruning.export.export_static`, and ``macs_fraction`` / ``params_fraction`` are those of the exported
model. A filter with a single non-zero weight stays, so the structured saving is usually far below the
unstructured sparsity.

**The budget is used only with ``search=True``.** gRDA has no sparsity target: by default one run with the
given ``c`` decides the MACs, and ``context.budget`` is ignored. With ``search=True``,
:func:`pruning.methods.grda.search_c` trains up to ``max_trials`` runs of ``context.epochs`` each, searching
``c`` on a log scale until the zero-filter plan's MAC fraction is within ``tolerance`` of the budget (a
search of ours, for comparisons at a fixed budget; ``train_seconds`` covers every trial).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from pruning.accounting import model_cost
from pruning.criteria import l1_criterion
from pruning.methods.grda import conv_sparsity, grda_builder, search_c, zero_filter_plan
from pruning.methods.search import threshold_to_budget
from pruning.train import TrainConfig, fractional_epochs, train
from pruning.units import get_units

from .base import BuiltModel, TrainContext, TrainedBaseline, register_baseline
from .polarization import static_result

__all__ = ["GRDABaseline"]


def _relative_l1(model: nn.Module) -> list[torch.Tensor]:
    """Each unit filter's L1 norm over its unit's mean filter L1 norm (0 for an all-zero filter)."""
    norms = [l1_criterion(model, unit) for unit in get_units(model)]
    return [n / n.mean().clamp_min(1e-12) for n in norms]


@register_baseline("grda")
class GRDABaseline(TrainedBaseline):
    """Train with gRDA, report its unstructured sparsity, prune the all-zero filters (training-based).

    Args:
        budget: MAC target of ``search=True``; ``None`` (default) uses ``context.budget``. Without the
            search it is not used (gRDA has no sparsity target).
        lr: gRDA learning rate (constant). Default 0.02, the learning rate the shared CIFAR-10 ResNets were
            fine-tuned with.
        c: Sparsity strength. Default 0.5: the paper's 5e-4 to 5e-3 act over hundreds of epochs; after ~70 steps
            at lr 0.02 the threshold ``c·lr^(1/2+μ)·n^μ`` is ``0.17·c``, so ``c = 0.5`` zeroes weights below
            ~0.085 (about 70% of ResNet-20's conv weights) while a larger ``c`` soon destroys the model.
        mu: Threshold growth exponent. Default 0.51 (the paper's recommendation).
        batch_size: Images per step. Default 128.
        zero_tol: Largest ``|w|`` counted as zero when dropping filters. Default 1e-8.
        search: Search ``c`` (starting at ``c``) for the budget instead of one run with ``c``.
        tolerance: The search's tolerance, absolute in MAC fraction. Default 0.05.
        max_trials: Most training runs of the search. Default 6.
        fold: Move the dropped filters' constant output into their consumers before slicing (default).
        meet_budget: Use gRDA as a channel method at the budget: its zero-filter plan completed by one rule,
            a global threshold on each filter's L1 norm over its unit's mean filter L1 norm (all-zero filters
            score 0 and go first; :func:`pruning.methods.search.threshold_to_budget`), set where the plan costs
            at most the budget. ``info["zero_filter_macs_fraction"]`` keeps what the zero filters alone
            removed. Default ``False`` (the zero filters decide).

    Raises:
        ValueError: non-positive ``lr`` or ``batch_size``, negative ``c``, ``mu`` or ``zero_tol``, ``c = 0``
            with ``search``.
    """

    def __init__(
        self,
        *,
        budget: float | None = None,
        lr: float = 0.02,
        c: float = 0.5,
        mu: float = 0.51,
        batch_size: int = 128,
        zero_tol: float = 1e-8,
        search: bool = False,
        tolerance: float = 0.05,
        max_trials: int = 6,
        fold: bool = True,
        meet_budget: bool = False,
    ) -> None:
        super().__init__(budget=budget)
        if not (lr > 0 and batch_size > 0):
            raise ValueError(f"lr and batch_size must be positive, got {lr} and {batch_size}")
        if not (c >= 0 and mu >= 0 and zero_tol >= 0):
            raise ValueError(f"c, mu and zero_tol must be >= 0, got {c}, {mu} and {zero_tol}")
        self.lr, self.c, self.mu = float(lr), float(c), float(mu)
        if search and not c > 0:
            raise ValueError(f"the search starts at c and scales it, so c must be > 0, got {c}")
        self.batch_size, self.zero_tol = int(batch_size), float(zero_tol)
        self.search, self.tolerance, self.max_trials = bool(search), float(tolerance), int(max_trials)
        self.fold, self.meet_budget = bool(fold), bool(meet_budget)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lr={self.lr}, c={self.c}, mu={self.mu}, zero_tol={self.zero_tol}, "
            f"search={self.search}, fold={self.fold}, meet_budget={self.meet_budget}, budget={self.budget})"
        )

    def train_copy(self, base: nn.Module, context: TrainContext) -> tuple[nn.Module, dict[str, Any], float]:
        """Train a copy of ``base`` with gRDA for ``context.epochs`` (with ``search``, the search's best run).

        The unstructured result, before any filter is dropped: what gRDA's paper reports (sparsity at an
        accuracy), and what :meth:`build` slices.

        Returns:
            ``(model, info, seconds)``: the trained copy (``base`` unchanged), ``info`` with ``conv_sparsity``,
            ``unit_conv_sparsity``, ``lr``, ``c`` (the chosen one with the search), ``mu``, ``epochs``,
            ``steps`` and ``images`` (of the returned run), with the search ``trials`` and ``search_hit``,
            and the training's wall time.
        """
        data, whole = fractional_epochs(context.train_set, context.epochs, seed=context.seed)
        config = TrainConfig(
            epochs=whole, batch_size=self.batch_size, lr=self.lr, schedule="constant", weight_decay=0.0,
            seed=context.seed, device=context.device, distill=context.distill_weight,
            distill_temperature=context.distill_temperature,
        )  # fmt: skip
        target = self.budget if self.budget is not None else context.budget
        extra: dict[str, Any] = {}
        t0 = time.perf_counter()
        if self.search:
            result = search_c(
                base, data, config, target=target, c0=self.c, mu=self.mu, tolerance=self.tolerance,
                max_trials=self.max_trials, zero_tol=self.zero_tol, progress=context.progress, desc="grda",
                teacher=context.teacher,
            )  # fmt: skip
            work, c = result.model, result.best.c
            extra = {"trials": [vars(tr).copy() for tr in result.trials], "search_hit": result.hit}
        else:
            work, c = copy.deepcopy(base), self.c
            train(work, data, config, make_optimizer=grda_builder(c=c, mu=self.mu), progress=context.progress,
                  desc="grda", teacher=context.teacher)  # fmt: skip
        seconds = time.perf_counter() - t0
        info: dict[str, Any] = {
            "conv_sparsity": conv_sparsity(work, tol=self.zero_tol),
            "unit_conv_sparsity": conv_sparsity(work, tol=self.zero_tol, units_only=True),
            "lr": self.lr,
            "c": c,
            "mu": self.mu,
            "epochs": float(context.epochs),
            "steps": whole * -(-len(data) // self.batch_size),
            "images": whole * len(data),
            **extra,
        }
        return work, info, seconds

    def build(self, base: nn.Module, context: TrainContext) -> BuiltModel:
        """Train a copy of ``base`` with gRDA for ``context.epochs`` and drop its all-zero filters (``base`` unchanged).

        Returns:
            The exported model and its costs; ``info`` holds what :meth:`train_copy` reports plus
            ``zero_filters`` (per unit), ``zero_tol`` and ``fold``, with ``meet_budget`` the
            ``zero_filter_macs_fraction`` and the ``score_threshold``.
        """
        work, info, seconds = self.train_copy(base, context)
        target = self.budget if self.budget is not None else context.budget
        plan, zeros = zero_filter_plan(work, tol=self.zero_tol)
        info.update(zero_filters=zeros, zero_tol=self.zero_tol, fold=self.fold)
        if self.meet_budget:
            info["zero_filter_macs_fraction"] = float(model_cost(work, plan).macs_fraction[0])
            plan, info["score_threshold"] = threshold_to_budget(work, _relative_l1(work), target)
        return static_result(base, work, plan, train_seconds=seconds, info=info, fold=self.fold)
