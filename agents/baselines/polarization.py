"""Polarization pruning (Zhuang et al., NeurIPS 2020) as a training-based baseline: sparsity-train, threshold, slice.

:meth:`PolarizationBaseline.build` trains a copy of the base model with cross-entropy plus the polarization
regulariser on the BN scale factors of the prunable units (:mod:`pruning.methods.polarization`; factors clamped
to ``[0, 1]`` after every step) for ``context.epochs`` passes, thresholds the factors at the first valley of
their histogram (bin width 0.01), keeps in every unit the channels above the threshold (at least one), and
slices them out with :func:`pruning.export.export_static`. No fine-tuning follows (the paper fine-tunes; the
shared budget of ``context.epochs`` goes to the sparsity training).

**Meeting the budget** (``meet_budget=True``, the default; :func:`budget_plan`; a rule of ours, the paper
only searches (λ, t)). The band is ``[budget − tolerance, budget + overshoot]``, defaults 0.02 and 0: like
every other baseline the plan never costs more than the budget unless ``overshoot`` allows it (the protocol
accepts ``budget + agents.schedule.BUDGET_TOLERANCE`` = 0.005). The rule that fired is ``info["budget_rule"]``:

* ``"valley"``: the first-valley plan, when its MAC fraction is in the band.
* ``"nearest"``: otherwise every unit channel is ranked by ``|γ|`` (ties, e.g. the many factors clamped to
  exactly 0, by the L2 norm of the channel's filter) and the plan keeps the ``n`` best-ranked (at least one per
  unit), ``n`` the largest whose plan costs at most the budget (bisection over ``n``,
  :func:`pruning.budget.bisect_monotone_int`): the channels nearest the valley by ``|γ|`` are pruned (valley too
  generous) or kept (valley too strict).
* ``"nearest+fill"``: when one more channel overshoots and the plan is still below the band (a coarse net:
  one channel of ``tiny_cnn`` is up to 0.046 of its MACs), the later channels in rank order are added while
  they fit, skipping a unit from its first channel that does not; if that cannot reach the band either, a
  second such pass with the cap ``budget + overshoot`` (with ``overshoot=0`` the plan then stays below).

``info`` also reports ``valley_macs_fraction``, the achieved ``macs_fraction`` (measured on the exported
model) and ``budget_hit`` (in the band). ``meet_budget=False`` keeps the valley whatever it costs.

**The (λ, t) search** (``search=True``; :func:`search_budget`): the paper's Algorithm 1 as
:func:`pruning.methods.polarization.search_lambda_t` reads it (λ bisected from ``lam_range`` at fixed ``t``;
after 4 misses ``t`` moves by 0.1 toward the target and the λ bracket restarts), stopping at the first trial
whose valley lands in that band. When none does, the trial handed to the completion rule is the one
closest to the budget among those that pruned *too little* (the completion then removes upper-mode channels
by their ``|γ|``, a meaningful ranking), and only when every trial pruned too much the closest one (the
completion then keeps channels whose ``|γ|`` is about 0: they cost MACs and, until a fine-tune, add nothing).

**Slicing keeps the constant output of the pruned channels** (``fold=True``, the default). A pruned channel
is the masked model's channel with its ``γ`` set to 0 (:func:`zero_dropped_scales`), whose output after
BN and ReLU is the constant ``v_c = ReLU(β_c)``. Slicing it out alone would lose what it fed the consumer; so
:func:`pruning.export.fold_dropped_constants` first adds ``Σ_c v_c·Σ_ij W[o, c, i, j]`` to the consumer's BN
running mean (or conv bias): exact wherever the consumer's window lies inside the input. Where it does not
(the border pixels of a zero-padded consumer, which saw zeros instead of ``v_c`` there), the difference is a
fixed map per output channel: with ``border=True`` (default) :func:`fold_border` replaces the sliced
consumer by a :class:`ConstantBorderConv`, which adds that map, so the exported model's logits equal the
masked model's (test: within 1e-4). Without it the interior fold alone is an approximation at the borders.

:func:`static_result` is the costing every plan-producing training-based baseline shares: MACs per image from
:func:`pruning.accounting.model_cost` of the returned model over the base model's, parameters counted.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruning.accounting import CostModel, model_cost
from pruning.budget import bisect_monotone_int
from pruning.data import ImageDataset
from pruning.export import export_static, fold_dropped_constants
from pruning.gating import gate_model, set_plan, stored_masks
from pruning.methods.polarization import SearchTrial, lambda_t_trials, scale_factors, sparsity_train, threshold_plan
from pruning.plan import PruningPlan
from pruning.train import TrainConfig, fractional_epochs
from pruning.units import get_units

from .base import BuiltModel, TrainContext, TrainedBaseline, register_baseline

__all__ = [
    "ConstantBorderConv",
    "PolarizationBaseline",
    "budget_plan",
    "channel_ranking",
    "fold_border",
    "search_budget",
    "static_result",
    "zero_dropped_scales",
]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _set(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _dropped(model: nn.Module, plan: PruningPlan) -> list[torch.Tensor]:
    """Per unit, the bool mask of the channels ``plan`` does not store (what :func:`export_static` removes)."""
    gated = gate_model(model, predictor=False)  # a copy
    set_plan(gated, plan)
    return [~m.cpu() for m in stored_masks(gated)]


# ------------------------------------------------------------------------------------------------------------
# slicing with the constants folded
# ------------------------------------------------------------------------------------------------------------


def zero_dropped_scales(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy of a plain ``model`` with the BN scale ``γ`` of every channel ``plan`` drops set to 0 (the masked model).

    Such a channel outputs the constant ``ReLU(β_c)`` after its BN and ReLU, which :func:`static_result` with
    ``fold=True`` moves into the consumer.
    """
    out = copy.deepcopy(model)
    with torch.no_grad():
        for g, drop in zip(scale_factors(out), _dropped(out, plan), strict=True):
            g[drop.to(g.device)] = 0.0
    return out


def _zero_padded(conv: nn.Conv2d) -> bool:
    if conv.padding_mode != "zeros":
        return False  # reflect / replicate / circular padding of a constant map is that constant: no border
    if isinstance(conv.padding, str):
        return conv.padding != "valid"
    return any(int(p) > 0 for p in conv.padding)


class ConstantBorderConv(nn.Conv2d):
    """A ``Conv2d`` plus the border correction of a constant input that was sliced away (:func:`fold_border`).

    The removed input channels were constant, ``v_c`` at every pixel; inside the input their contribution to
    output channel ``o`` is the constant ``Σ_c v_c·Σ_ij W[o, c, i, j]`` (already folded into a bias or BN
    running mean), but a zero-padded window at the border sees fewer of them. This module adds the difference,
    ``conv(1_{H×W}, K) − Σ_ij K[o, i, j]`` with ``K[o] = Σ_c v_c·W[o, c]`` (the buffer ``border_kernel``,
    ``(O, 1, kh, kw)``): zero in the interior, exact at the border, for any input size. The map is computed
    once per input size, device and dtype and cached, so a forward costs one extra addition.

    The module is a ``Conv2d`` (accounting and unit rules see the conv); :func:`pruning.export.save_exported`
    and :func:`pruning.export.export_static` know only plain convs and would drop the correction.

    Args:
        conv: The consumer conv to copy (weights, bias, geometry); ``groups`` must be 1.
        kernel: ``K``, ``(O, kh, kw)`` or ``(O, 1, kh, kw)``.
    """

    border_kernel: torch.Tensor

    def __init__(self, conv: nn.Conv2d, kernel: torch.Tensor) -> None:
        if conv.groups != 1:
            raise ValueError(f"ConstantBorderConv needs groups=1, got {conv.groups}")
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
            conv.padding, conv.dilation, conv.groups, bias=conv.bias is not None,  # type: ignore[arg-type]
            padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None and self.bias is not None:
                self.bias.copy_(conv.bias)
        k = kernel.detach().to(conv.weight).reshape(conv.out_channels, 1, *conv.kernel_size).clone()
        self.register_buffer("border_kernel", k)
        self._maps: dict[tuple[Any, ...], torch.Tensor] = {}

    def border_map(self, height: int, width: int) -> torch.Tensor:
        """The correction for an ``height × width`` input, ``(1, O, H_out, W_out)``, zero away from the border."""
        k = self.border_kernel
        key = (height, width, k.device, k.dtype, k.data_ptr(), getattr(k, "_version", 0))
        found = self._maps.get(key)
        if found is None:
            with torch.no_grad():
                ones = k.new_ones(1, 1, height, width)
                full = F.conv2d(ones, k, None, self.stride, self.padding, self.dilation)  # type: ignore[arg-type]
                found = full - k.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
            self._maps = {key: found}
        return found

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(input) + self.border_map(int(input.shape[-2]), int(input.shape[-1]))


def fold_border(pruned: nn.Module, masked: nn.Module, plan: PruningPlan) -> nn.Module:
    """Give each zero-padded consumer of ``pruned`` the border correction of its sliced constant inputs (in place).

    ``pruned`` is ``export_static(fold_dropped_constants(masked, plan), plan)``; ``masked`` the plain model it
    came from (BN eval statistics used). For every unit with dropped channels whose consumer zero-pads, the
    consumer (sliced to its kept outputs when it is a unit itself) becomes a :class:`ConstantBorderConv` with
    ``K[o] = Σ_{c dropped} v_c·W[o, c]``, ``v_c = ReLU(β_c − γ_c·μ_c/√(σ_c² + ε))`` (the value
    :func:`pruning.export.fold_dropped_constants` folded). Consumers without padding (or with a non-zero
    padding mode) are exact with the interior fold and stay plain.

    Returns:
        ``pruned``.
    """
    units = get_units(masked)
    dropped = _dropped(masked, plan)
    unit_of_conv = {u.conv: u.index for u in units}
    for u, drop in zip(units, dropped, strict=True):
        consumer = masked.get_submodule(u.consumer)
        if not bool(drop.any()) or not isinstance(consumer, nn.Conv2d) or not _zero_padded(consumer):
            continue
        bn = masked.get_submodule(u.bn)
        assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
        assert bn.weight is not None and bn.bias is not None
        with torch.no_grad():
            std = (bn.running_var + bn.eps).sqrt()
            v = F.relu(bn.bias - bn.weight * bn.running_mean / std) * drop.to(std)
            kernel = torch.einsum("ocij,c->oij", consumer.weight, v.to(consumer.weight))
        j = unit_of_conv.get(u.consumer)
        if j is not None:  # the consumer is a unit: its outputs were sliced too
            kernel = kernel[~dropped[j].to(kernel.device)]
        target = pruned.get_submodule(u.consumer)
        if not isinstance(target, nn.Conv2d) or target.out_channels != kernel.shape[0]:
            raise ValueError(f"{u.consumer}: the pruned model does not match the plan ({type(target).__name__})")
        _set(pruned, u.consumer, ConstantBorderConv(target, kernel).train(target.training))
    return pruned


def static_result(
    base: nn.Module,
    trained: nn.Module,
    plan: PruningPlan,
    *,
    train_seconds: float,
    info: dict[str, Any],
    fold: bool = False,
    border: bool = False,
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
        border: With ``fold``, also add the border correction of zero-padded consumers (:func:`fold_border`),
            so the result equals ``trained`` with the dropped channels replaced by their constant.

    Returns:
        A :class:`BuiltModel` whose ``model`` is ``export_static(trained, plan)`` (eval mode), with
        ``macs_fraction`` = its MACs per image (:func:`pruning.accounting.model_cost`) over ``base``'s,
        ``params_fraction`` = its parameter count over ``base``'s, and the per-unit keep ratios of the plan.
    """
    pruned = export_static(fold_dropped_constants(trained, plan) if fold else trained, plan)
    if fold and border:
        fold_border(pruned, trained, plan)
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


# ------------------------------------------------------------------------------------------------------------
# meeting the budget
# ------------------------------------------------------------------------------------------------------------


def channel_ranking(model: nn.Module) -> list[torch.Tensor]:
    """Every unit channel's global rank (0 = kept first): by ``|γ|`` descending, ties by filter L2 norm, then order.

    Returns:
        One int64 ``(C_t,)`` tensor per unit; the ranks of all units together are ``0 … N−1``.
    """
    gammas = [g.detach().abs().double().cpu() for g in scale_factors(model)]
    norms = []
    for u in get_units(model):
        conv = model.get_submodule(u.conv)
        assert isinstance(conv, nn.Conv2d)
        norms.append(conv.weight.detach().double().cpu().flatten(1).norm(dim=1))
    gam, norm = torch.cat(gammas), torch.cat(norms)
    order = torch.sort(norm, descending=True, stable=True).indices
    order = order[torch.sort(gam[order], descending=True, stable=True).indices]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return list(rank.split([len(g) for g in gammas]))


def budget_plan(
    model: nn.Module,
    target: float,
    *,
    tolerance: float = 0.02,
    overshoot: float = 0.0,
    valley: PruningPlan | None = None,
) -> tuple[PruningPlan, dict[str, Any]]:
    """The static plan that meets a MAC budget: the valley's plan if close enough, else the completion rule.

    Rules, in order (the module docstring says why):

    ``"valley"``
        ``valley`` (default: :func:`pruning.methods.polarization.threshold_plan` at the global first valley)
        when its MAC fraction is in the band ``[target − tolerance, target + overshoot]``.
    ``"nearest"``
        Keep the first ``n`` channels of :func:`channel_ranking` (at least one per unit), ``n`` the largest
        whose plan costs at most ``target`` (bisection, :func:`pruning.budget.bisect_monotone_int`).
    ``"nearest+fill"``
        When that plan is below the band: go on along the ranking, keeping each
        channel whose plan still costs at most ``target`` and closing a unit at its first channel that does
        not (its later channels cost at least as much), until in the band or the ranking ends; if that
        cannot reach the band (one channel costs more than the band is wide) and ``overshoot > 0``, a second
        pass the same way with the cap ``target + overshoot``.

    Args:
        model: The plain model after the sparsity training (its shapes, factors and filters are read).
        target: The MAC budget, a fraction of ``model``'s MACs per image.
        tolerance: How far below ``target`` the plan may land (absolute, in MAC fraction). Default 0.02.
        overshoot: How far above ``target`` it may land. Default 0: never above the budget.
        valley: The valley's plan, if already computed.

    Returns:
        ``(plan, info)``: the plan (``static_scores`` = ``N − rank`` under the completion rules, so the kept
        channels are exactly the ranked ones) and ``budget_rule``, ``valley_macs_fraction``,
        ``plan_macs_fraction`` and, under the completion rules, ``kept_channels`` and ``cut_gamma`` (the
        ``|γ|`` of the best-ranked channel left out, ``None`` if none).

    Raises:
        ValueError: even one channel per unit costs more than ``target`` (the message says "budget").
    """
    cost = CostModel(model)

    def fraction(counts: torch.Tensor) -> float:
        return float(cost.from_counts(counts, counts).macs[0]) / cost.base_macs

    if valley is None:
        valley, _ = threshold_plan(model)
    valley_frac = float(model_cost(model, valley).macs_fraction[0])
    info: dict[str, Any] = {"valley_macs_fraction": valley_frac}
    if target - tolerance <= valley_frac <= target + overshoot:
        return valley, {**info, "budget_rule": "valley", "plan_macs_fraction": valley_frac}

    ranks = channel_ranking(model)
    num_units = len(ranks)
    unit_at = torch.empty(sum(len(r) for r in ranks), dtype=torch.long)  # unit of the channel at each rank
    pos_at = torch.empty_like(unit_at)  # the channel's place in its unit's own ranking
    for index, unit_ranks in enumerate(ranks):
        unit_at[unit_ranks] = index
        pos_at[torch.sort(unit_ranks).values] = torch.arange(len(unit_ranks))

    def counts_at(n: int) -> torch.Tensor:
        return torch.bincount(unit_at[:n], minlength=num_units).clamp_min(1)

    floor = fraction(counts_at(0))
    if floor > target:
        raise ValueError(
            f"even one channel per unit costs {floor:.4f} of the MACs, above the budget {target}: raise the budget "
            "(layers that are not units are never pruned)"
        )
    n = bisect_monotone_int(lambda k: fraction(counts_at(k)) <= target, 0, len(unit_at))
    counts = counts_at(n)
    rule = "nearest"
    for cap in [target] + ([target + overshoot] if overshoot > 0 else []):  # pass 2 if pass 1 falls short
        if fraction(counts) >= target - tolerance:
            break
        rule, closed = "nearest+fill", torch.zeros(num_units, dtype=torch.bool)
        for r in range(n, len(unit_at)):
            t = int(unit_at[r])
            if closed[t] or pos_at[r] < counts[t]:  # a closed unit, or a channel already kept (e.g. the floor's)
                continue
            trial = counts.clone()
            trial[t] += 1  # pos_at[r] == counts[t]: the unit's next channel in rank order
            if fraction(trial) <= cap:
                counts = trial
                if fraction(counts) >= target - tolerance:
                    break
            else:
                closed[t] = True  # its later channels cost at least as much
    gammas = [g.detach().abs().cpu() for g in scale_factors(model)]
    scores = [(len(unit_at) - r).double() for r in ranks]
    # the best-ranked channel left out, for the report
    out = [g[torch.sort(r).indices[int(k) :]] for g, r, k in zip(gammas, ranks, counts, strict=True)]
    left = [float(o.max()) for o in out if len(o)]
    plan = PruningPlan(static_keep=[int(k) / len(r) for k, r in zip(counts, ranks, strict=True)], static_scores=scores)
    return plan, {
        **info, "budget_rule": rule, "plan_macs_fraction": fraction(counts), "kept_channels": counts.tolist(),
        "cut_gamma": max(left) if left else None,
    }  # fmt: skip


def search_budget(
    model: nn.Module,
    train_set: ImageDataset,
    config: TrainConfig,
    *,
    target: float,
    lam_range: tuple[float, float],
    t0: float = 1.2,
    t_step: float = 0.1,
    tolerance: float = 0.02,
    overshoot: float = 0.0,
    max_trials: int = 6,
    lam_steps: int = 4,
    per_unit: bool = False,
    **train_kwargs: Any,
) -> tuple[nn.Module, SearchTrial, list[SearchTrial], bool]:
    """The (λ, t) search of Algorithm 1, returning the trained copy to hand to :func:`budget_plan`.

    The λ and ``t`` updates are :func:`pruning.methods.polarization.search_lambda_t`'s (λ bisected in the
    bracket at fixed ``t``; after ``lam_steps`` misses ``t`` moves by ``t_step`` toward the target and the
    bracket restarts, its upper end doubled if every trial so far pruned too little); each trial trains a
    fresh copy and costs its valley plan (``per_unit`` as in :func:`threshold_plan`). It stops at the first
    trial in :func:`budget_plan`'s band ``[target − tolerance, target + overshoot]`` (the paper's δ, made
    one-sided above so that the valley is then taken as is). Otherwise the trial returned is the closest to
    ``target`` among those whose valley kept *more* than ``target`` (the completion then prunes upper-mode
    channels by ``|γ|``), or, when every trial kept less, the closest one.

    Returns:
        ``(trained copy, its trial, all trials, hit)``; ``hit``: the returned trial's valley is in the band on
        its own.

    Raises:
        ValueError: ``target`` outside ``(0, 1]``, an invalid λ bracket, ``max_trials`` or ``lam_steps`` < 1.
    """
    trials: list[SearchTrial] = []
    closest: tuple[float, SearchTrial, nn.Module] | None = None
    above: tuple[float, SearchTrial, nn.Module] | None = None  # closest among those that pruned too little
    for trial, work in lambda_t_trials(
        model, train_set, config, target=target, lam_range=lam_range, t0=t0, t_step=t_step, max_trials=max_trials,
        lam_steps=lam_steps, per_unit=per_unit, **train_kwargs,
    ):  # fmt: skip
        trials.append(trial)
        frac = trial.macs_fraction
        err = abs(frac - target)
        if target - tolerance <= frac <= target + overshoot:
            return work, trial, trials, True
        if closest is None or err < closest[0]:
            closest = (err, trial, work)
        if frac > target and (above is None or err < above[0]):
            above = (err, trial, work)
    chosen = above if above is not None else closest
    assert chosen is not None
    return chosen[2], chosen[1], trials, False


@register_baseline("polarization")
class PolarizationBaseline(TrainedBaseline):
    """Sparsity training with the polarization regulariser, then the first-valley threshold (training-based).

    Args:
        budget: MAC target (fraction of the base MACs); ``None`` (default) uses ``context.budget``. Used by the
            search and by ``meet_budget``.
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
        search: Run the (λ, t) search for the budget (:func:`search_budget`) instead of training once.
        lam_range: Initial λ bracket of the search. Default ``(0, 2·lam)``.
        tolerance: Absolute, in MAC fraction: the search's δ (``|valley − budget|``) and how far below the budget
            :func:`budget_plan` may land. Default 0.02.
        overshoot: How far above the budget :func:`budget_plan` may land. Default 0 (never above it).
        max_trials: Most training runs of the search. Default 6.
        fold: Move the constant ``ReLU(β)`` of the dropped channels into their consumers before slicing
            (default; ``False``: slice them out with their output).
        border: With ``fold``, correct the zero-padded borders too (:class:`ConstantBorderConv`), so the
            exported model equals the masked one. Default ``True``; ``False`` leaves plain convs (the interior
            fold alone, approximate at the border pixels).
        meet_budget: Bring the plan to the budget (:func:`budget_plan`: the valley if in the band,
            else the completion rule). Default ``True``; ``False``: the valley decides the MACs.

    Raises:
        ValueError: a negative ``lam`` or ``overshoot``, a non-positive ``lr``, ``batch_size`` or ``tolerance``.
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
        tolerance: float = 0.02,
        overshoot: float = 0.0,
        max_trials: int = 6,
        fold: bool = True,
        border: bool = True,
        meet_budget: bool = True,
    ) -> None:
        super().__init__(budget=budget)
        if not lam >= 0:
            raise ValueError(f"lam (λ) must be >= 0, got {lam}")
        if not (lr > 0 and batch_size > 0):
            raise ValueError(f"lr and batch_size must be positive, got {lr} and {batch_size}")
        if not (tolerance > 0 and overshoot >= 0):
            raise ValueError(f"need tolerance > 0 and overshoot >= 0, got {tolerance} and {overshoot}")
        self.lam, self.t, self.lr, self.batch_size = float(lam), float(t), float(lr), int(batch_size)
        self.per_unit, self.search = bool(per_unit), bool(search)
        self.lam_range = lam_range if lam_range is not None else (0.0, 2.0 * self.lam)
        self.tolerance, self.max_trials, self.fold = float(tolerance), int(max_trials), bool(fold)
        self.border, self.meet_budget, self.overshoot = bool(border), bool(meet_budget), float(overshoot)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lam={self.lam}, t={self.t}, lr={self.lr}, per_unit={self.per_unit}, "
            f"search={self.search}, fold={self.fold}, border={self.border}, meet_budget={self.meet_budget}, "
            f"tolerance={self.tolerance}, overshoot={self.overshoot}, budget={self.budget})"
        )

    def build(self, base: nn.Module, context: TrainContext) -> BuiltModel:
        """Sparsity-train a copy of ``base`` for ``context.epochs``, threshold it and slice it (``base`` unchanged).

        Returns:
            The exported model and its measured costs; ``info`` holds ``threshold`` (the valley's; per unit
            with ``per_unit``), ``lam``, ``t``, ``epochs``, ``steps``, ``fold``, ``border``, ``budget``,
            ``budget_rule`` (``"valley"``, ``"nearest"`` or ``"nearest+fill"``, see :func:`budget_plan`),
            ``valley_macs_fraction``, ``macs_fraction`` (of the exported model) and ``budget_hit`` (in the band
            ``[budget − tolerance, budget + overshoot]``); with the search ``trials`` (λ, t, threshold, MAC
            fraction of each run) and ``search_hit`` (the chosen trial's valley alone was in the band).
        """
        data, whole = fractional_epochs(context.train_set, context.epochs, seed=context.seed)
        config = TrainConfig(
            epochs=whole, batch_size=self.batch_size, lr=self.lr, schedule="constant", seed=context.seed,
            device=context.device, distill=context.distill_weight,
            distill_temperature=context.distill_temperature,
        )  # fmt: skip
        info: dict[str, Any] = {"epochs": float(context.epochs), "steps": whole * -(-len(data) // self.batch_size)}
        target = float(self.budget if self.budget is not None else context.budget)
        t0 = time.perf_counter()
        if self.search:
            work, chosen, trials, hit = search_budget(
                base, data, config, target=target, lam_range=self.lam_range, t0=self.t, tolerance=self.tolerance,
                overshoot=self.overshoot, max_trials=self.max_trials, per_unit=self.per_unit, progress=context.progress,
                teacher=context.teacher,
            )  # fmt: skip
            lam, t = chosen.lam, chosen.t
            info["trials"] = [vars(tr).copy() for tr in trials]
            info["search_hit"] = hit
        else:
            work, lam, t = copy.deepcopy(base), self.lam, self.t
            sparsity_train(work, data, config, lam=lam, t=t, progress=context.progress, teacher=context.teacher)
        seconds = time.perf_counter() - t0
        plan, thresholds = threshold_plan(work, per_unit=self.per_unit)
        info.update(threshold=thresholds if self.per_unit else thresholds[0], lam=lam, t=t, fold=self.fold)
        info.update(border=self.fold and self.border, budget=target)
        if self.meet_budget:
            plan, rule_info = budget_plan(work, target, tolerance=self.tolerance, overshoot=self.overshoot, valley=plan)
            info.update(rule_info)
        else:
            info.update(budget_rule="valley", valley_macs_fraction=float(model_cost(work, plan).macs_fraction[0]))
        masked = zero_dropped_scales(work, plan)
        built = static_result(
            base, masked, plan, train_seconds=seconds, info=info, fold=self.fold, border=self.fold and self.border
        )
        hit = target - self.tolerance <= built.macs_fraction <= target + self.overshoot
        built.info.update(macs_fraction=built.macs_fraction, budget_hit=hit)
        return built
