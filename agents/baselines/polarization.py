"""Polarization pruning (Zhuang et al., NeurIPS 2020) as a training-based baseline: sparsity-train, threshold, slice.

:meth:`PolarizationBaseline.build` trains a copy of the base model with cross-entropy plus the polarization
regulariser on the BN scale factors of the prunable units (:mod:`pruning.methods.polarization`; factors clamped
to ``[0, 1]`` after every step) for ``context.epochs`` passes, thresholds the factors at the first valley of
their histogram (bin width 0.01), keeps in every unit the channels above the threshold (at least one), and
slices them out with :func:`pruning.export.export_static`. No fine-tuning follows (the paper fine-tunes; the
shared budget of ``context.epochs`` goes to the sparsity training). A channel whose factor reached 0 still
feeds the constant ``ReLU(β)`` of its BN to the consumer; slicing alone would remove it (after a short
sparsity run that, more than the regulariser, was what the exported model lost), so by default
(``fold=True``) :func:`pruning.export.fold_dropped_constants` first moves it into the consumer's BatchNorm.

**The budget is a target, not a constraint.** The keep ratios are whatever the threshold leaves, so the MAC
fraction reported is the measured one and may miss ``context.budget``. With ``search=True`` the paper's
(λ, t) search (:func:`pruning.methods.polarization.search_lambda_t`, several training runs of
``context.epochs`` each) looks for the pair whose threshold lands within ``tolerance`` of the budget.

:func:`static_result` is the costing every plan-producing training-based baseline shares: MACs per image from
:func:`pruning.accounting.model_cost` of the returned model over the base model's, parameters counted.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from torch import nn

from pruning.accounting import model_cost
from pruning.export import export_static, fold_dropped_constants
from pruning.methods.polarization import scale_factors, search_lambda_t, sparsity_train, threshold_plan
from pruning.methods.search import threshold_to_budget
from pruning.plan import PruningPlan
from pruning.train import TrainConfig, fractional_epochs

from .base import BuiltModel, TrainContext, TrainedBaseline, register_baseline

__all__ = ["PolarizationBaseline", "static_result"]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def static_result(
    base: nn.Module,
    trained: nn.Module,
    plan: PruningPlan,
    *,
    train_seconds: float,
    info: dict[str, Any],
    fold: bool = False,
) -> BuiltModel:
    """Slice ``plan``'s channels out of ``trained`` and cost the result against ``base``.

    Args:
        base: The unpruned base model (the cost reference; not modified).
        trained: The trained, still unpruned model the plan applies to.
        plan: A static plan (keep ratios and scores).
        train_seconds: Wall time of the training, reported as is.
        info: Method-specific values to report.
        fold: Fold the constant output of the dropped channels into their consumers first
            (:func:`pruning.export.fold_dropped_constants`; for methods that make channels constant).

    Returns:
        A :class:`BuiltModel` whose ``model`` is ``export_static(trained, plan)`` (eval mode), with
        ``macs_fraction`` = its MACs per image (:func:`pruning.accounting.model_cost`) over ``base``'s,
        ``params_fraction`` = its parameter count over ``base``'s, and the per-unit keep ratios of the plan.
    """
    pruned = export_static(fold_dropped_constants(trained, plan) if fold else trained, plan)
    macs = int(model_cost(pruned).macs[0])
    base_macs = int(model_cost(base).macs[0])
    keep = [float(k) for k in (plan.static_keep if plan.static_keep is not None else [])]
    return BuiltModel(
        model=pruned,
        macs_fraction=macs / base_macs,
        params_fraction=_params(pruned) / _params(base),
        keep_ratios=keep or None,
        train_seconds=train_seconds,
        info=dict(info),
    )


@register_baseline("polarization")
class PolarizationBaseline(TrainedBaseline):
    """Sparsity training with the polarization regulariser, then the first-valley threshold (training-based).

    Args:
        budget: MAC target for ``search=True`` (fraction of the base MACs); ``None`` (default) uses
            ``context.budget``. Without the search it is not used: the threshold decides the ratios.
        lam: λ. Default 0.05: the paper's 5e-5 (ResNet-56, 200 epochs of ~390 steps) barely moves the factors
            in a run of a fraction of an epoch. A factor below the mean moves by about ``lr·λ·(t + 1)`` per
            step, so 0.05 at lr 0.02 takes it from ~0.5 to 0 in ~70 steps (0.2 epochs of CIFAR-10 at batch
            128); a larger λ shrinks the upper mode too and costs accuracy without pruning more.
        t: The regulariser's ``t``. Default 1.2 (where the paper's search starts; it reports 1.4 for ResNet-56
            after 200 epochs, which in short runs pulls the kept factors down as well).
        lr: SGD learning rate of the sparsity training (Nesterov momentum 0.9, weight decay 1e-4 on conv and
            linear weights, constant schedule). Default 0.02, the learning rate the shared CIFAR-10 ResNets
            were fine-tuned with: a larger one disturbs a trained model within a few dozen steps.
        batch_size: Images per step. Default 128.
        per_unit: Threshold each unit's histogram separately (the released code) instead of one global
            histogram (default).
        search: Run the (λ, t) search for the budget instead of training once with ``lam`` and ``t``.
        lam_range: Initial λ bracket of the search. Default ``(0, 2·lam)``.
        tolerance: The search's δ, absolute in MAC fraction. Default 0.05 (the paper's 5%).
        max_trials: Most training runs of the search. Default 6.
        fold: Move the constant ``ReLU(β)`` of the dropped channels into their consumers before slicing
            (default; ``False``: slice them out with their output, as before).
        meet_budget: Prune at the budget instead of at the valley: after the training (and the search, if
            any), one global threshold on ``|γ|`` is set where the plan costs at most the budget
            (:func:`pruning.methods.search.threshold_to_budget`, network slimming's rule), so the row meets
            its budget whatever the valley gave; ``info["valley_macs_fraction"]`` keeps what the valley
            would have cost. Default ``False`` (the valley decides).

    Raises:
        ValueError: a negative ``lam``, a non-positive ``lr`` or ``batch_size``.
    """

    def __init__(
        self,
        *,
        budget: float | None = None,
        lam: float = 0.05,
        t: float = 1.2,
        lr: float = 0.02,
        batch_size: int = 128,
        per_unit: bool = False,
        search: bool = False,
        lam_range: tuple[float, float] | None = None,
        tolerance: float = 0.05,
        max_trials: int = 6,
        fold: bool = True,
        meet_budget: bool = False,
    ) -> None:
        super().__init__(budget=budget)
        if not lam >= 0:
            raise ValueError(f"lam (λ) must be >= 0, got {lam}")
        if not (lr > 0 and batch_size > 0):
            raise ValueError(f"lr and batch_size must be positive, got {lr} and {batch_size}")
        self.lam, self.t, self.lr, self.batch_size = float(lam), float(t), float(lr), int(batch_size)
        self.per_unit, self.search = bool(per_unit), bool(search)
        self.lam_range = lam_range if lam_range is not None else (0.0, 2.0 * self.lam)
        self.tolerance, self.max_trials, self.fold = float(tolerance), int(max_trials), bool(fold)
        self.meet_budget = bool(meet_budget)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lam={self.lam}, t={self.t}, lr={self.lr}, per_unit={self.per_unit}, "
            f"search={self.search}, fold={self.fold}, meet_budget={self.meet_budget}, budget={self.budget})"
        )

    def build(self, base: nn.Module, context: TrainContext) -> BuiltModel:
        """Sparsity-train a copy of ``base`` for ``context.epochs``, threshold it and slice it (``base`` unchanged).

        Returns:
            The exported model and its measured costs; ``info`` holds ``threshold`` (per unit with
            ``per_unit``), ``lam``, ``t``, ``epochs``, ``steps``, with the search ``trials`` (λ, t,
            threshold, MAC fraction of each run) and ``search_hit``, with ``meet_budget`` the
            ``valley_macs_fraction``.
        """
        data, whole = fractional_epochs(context.train_set, context.epochs, seed=context.seed)
        config = TrainConfig(
            epochs=whole, batch_size=self.batch_size, lr=self.lr, schedule="constant", seed=context.seed,
            device=context.device, distill=context.distill_weight,
            distill_temperature=context.distill_temperature,
        )  # fmt: skip
        info: dict[str, Any] = {"epochs": float(context.epochs), "steps": whole * -(-len(data) // self.batch_size)}
        target = self.budget if self.budget is not None else context.budget
        t0 = time.perf_counter()
        if self.search:
            result = search_lambda_t(
                base, data, config, target=target, lam_range=self.lam_range, t0=self.t, tolerance=self.tolerance,
                max_trials=self.max_trials, progress=context.progress, teacher=context.teacher,
            )  # fmt: skip
            work, lam, t = result.model, result.best.lam, result.best.t
            info["trials"] = [vars(tr).copy() for tr in result.trials]
            info["search_hit"] = result.hit
        else:
            work, lam, t = copy.deepcopy(base), self.lam, self.t
            sparsity_train(work, data, config, lam=lam, t=t, progress=context.progress, teacher=context.teacher)
        seconds = time.perf_counter() - t0
        plan, thresholds = threshold_plan(work, per_unit=self.per_unit)
        info.update(threshold=thresholds if self.per_unit else thresholds[0], lam=lam, t=t, fold=self.fold)
        if self.meet_budget:
            info["valley_macs_fraction"] = float(model_cost(work, plan).macs_fraction[0])
            plan, info["threshold"] = threshold_to_budget(work, [g.detach().abs() for g in scale_factors(work)], target)
        return static_result(base, work, plan, train_seconds=seconds, info=info, fold=self.fold)
