r"""Neuron Merging (Kim, Kim, Park & Jeon, NeurIPS 2020): compensate pruned channels without data or training.

Plain pruning deletes a unit's channel ``n`` and with it the consumer's input column ``W_next[:, n]``. Neuron
Merging decomposes the unit's weights as ``W ≈ Y·Z``: ``Y`` holds the kept filters, and ``Z`` (one non-negative
entry per pruned filter) says which kept filter ``m`` approximates filter ``n`` and by what factor ``z``. If the
pruned channel's activation is ``a_n ≈ z·a_m``, the consumer computes the same output from ``a_m`` alone with

    W_next[:, m] += z · W_next[:, n]

and ``W_next[:, n]`` can then be dropped. No data, no fine-tuning.

**The scale for conv + BN + ReLU.** With ``σ = sqrt(running_var + eps)`` and the conv bias ``c`` (0 if none),
channel ``n`` computes ``a_n = ReLU(g_n·(w_n·x) + b_n)`` with slope ``g_n = γ_n/σ_n`` and BN-implied bias
``b_n = β_n + γ_n (c_n − μ_n)/σ_n``. Let ``w_n = s·w_m`` with ``s = ‖w_n‖/‖w_m‖ > 0``. For any ``z > 0``,
positive homogeneity of ReLU gives ``z·a_m = ReLU(z g_m (w_m·x) + z b_m)``, which equals ``a_n`` for all ``x``
exactly when ``z g_m = s g_n`` and ``z b_m = b_n``. Hence

    z = s · (γ_n/γ_m) · (σ_m/σ_n),        valid only if z > 0 (γ_n and γ_m of the same sign),

and the remaining error is the bias mismatch ``|b_n − z·b_m|``. ``decompose.py`` of the authors' code
(``s * (gamma_2/gamma_1) * (sigma_1/sigma_2)`` with 1 = pruned, 2 = kept) writes
``s·(γ_m/γ_n)·(σ_n/σ_m)``: the BN ratio inverted, and with ``sigma`` the running *variance*. That form is exact
only when ``γ_n/σ_n = γ_m/σ_m``; e.g. ``w_n = w_m``, equal statistics, zero biases and ``γ_n = 2γ_m`` give
``a_n = 2·a_m`` while it yields ``z = 1/2``. This module implements the derived form above (the unit tests
check that a scaled duplicate is restored exactly).

**Which kept channel.** For every pruned ``n`` and kept ``m`` of a unit (vectorised as ``(P, K)`` matrices):

    score(n, m) = λ·(1 − cos(w_n, w_m)) + (1 − λ)·minmax_m(|b_n − z_{nm}·b_m|)

where ``minmax_m`` rescales the bias mismatches of row ``n`` to ``[0, 1]`` over its candidates (the paper's
normalisation; all zero when they are equal). Candidates with ``z ≤ 0`` (opposite-sign γ: no positive scaling
can match) are excluded before the ``argmin``; the chosen pair is merged only if ``cos(w_n, w_m) ≥
threshold``, otherwise ``n`` is just dropped. Defaults ``λ = 0.85``, ``threshold = 0.1`` are the paper's
settings for VGG-16 and ResNet-56 on CIFAR-10 (its ``scripts/``).

**Order.** Units are processed in forward order. A unit's similarities use its *effective* filters: its conv
weights after the merge of its producer (a plain net's previous unit, whose consumer it is) and restricted to
the producer's kept input channels. In ResNets the units are the block ``conv1`` s and their consumers the
``conv2`` s, which are not units. The adjusted model is finally sliced by :func:`pruning.export.export_static`
with the same plan and channel scores, so shapes and parameter counts are exactly those of plain pruning.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..export import export_static
from ..gating import gate_model, is_gated, set_plan, stored_masks
from ..plan import PruningPlan
from ..units import get_units, unit_conv

__all__ = ["MergeReport", "merge_pruned", "merge_scales"]


@dataclass
class MergeReport:
    """What :func:`merge_pruned` did, one entry per unit (filled when a report object is passed in).

    Attributes:
        pruned: Number of pruned channels per unit.
        merged: How many of them were merged into a kept channel (the rest were dropped).
        pairs: Per unit, a ``(P', 3)`` float tensor of ``(pruned index, kept index, z)`` rows for the merges, in
            the unit's full channel indexing.
    """

    pruned: list[int] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)
    pairs: list[torch.Tensor] = field(default_factory=list)


def merge_scales(
    weight: torch.Tensor,
    bn: nn.BatchNorm2d,
    keep: torch.Tensor,
    *,
    conv_bias: torch.Tensor | None = None,
    lam: float = 0.85,
    threshold: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match every pruned channel of one conv + BN + ReLU unit to a kept channel and its merge scale.

    Args:
        weight: The unit's conv weights, ``(C, ...)`` (any trailing shape; flattened per filter).
        bn: The BatchNorm after the conv (eval statistics are used; non-affine means ``γ = 1, β = 0``).
        keep: Bool ``(C,)``: the channels that stay.
        conv_bias: The conv bias ``(C,)``, if any.
        lam: λ, the weight of the cosine distance against the normalised bias mismatch. Default 0.85.
        threshold: Minimum cosine similarity for a merge. Default 0.1.

    Returns:
        ``(pruned, kept, z)``: 1-D tensors of equal length ``P'`` (only the merged pairs) holding the pruned
        channel, the kept channel it merges into (both in full ``0..C-1`` indexing) and the scale ``z > 0``
        with ``a_pruned ≈ z·a_kept`` (see the module docstring for the derivation).

    Raises:
        ValueError: ``lam`` is outside ``[0, 1]`` or ``keep`` has the wrong shape or keeps nothing.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam (λ) must be in [0, 1], got {lam}")
    c = weight.shape[0]
    if keep.shape != (c,) or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor of shape ({c},), got {keep.dtype} {tuple(keep.shape)}")
    if not bool(keep.any()):
        raise ValueError("keep selects no channel; there is nothing to merge into")
    empty = torch.empty(0, dtype=torch.long, device=weight.device)
    kept_idx, pruned_idx = keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)
    if pruned_idx.numel() == 0:
        return empty, empty.clone(), weight.new_empty(0)
    w = weight.detach().double().flatten(1)
    rm, rv = bn.running_mean, bn.running_var
    if rm is None or rv is None:
        raise ValueError("merging needs the BatchNorm's running statistics (track_running_stats=True)")
    sigma = torch.sqrt(rv.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(sigma)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(sigma)
    cb = torch.zeros_like(sigma) if conv_bias is None else conv_bias.detach().double()
    slope = gamma / sigma  # g = γ/σ
    bias = beta + slope * (cb - rm.detach().double())  # b = β + γ(c − μ)/σ

    norm = w.norm(dim=1)
    tiny = torch.finfo(torch.float64).tiny
    wp, wk = w[pruned_idx], w[kept_idx]
    np_, nk = norm[pruned_idx], norm[kept_idx]
    cos = (wp @ wk.T) / (np_[:, None] * nk[None, :]).clamp_min(tiny)  # (P, K); 0 for zero filters
    s = np_[:, None] / nk[None, :].clamp_min(tiny)
    z = s * slope[pruned_idx][:, None] / slope[kept_idx][None, :]  # z = s·(γ_n/γ_m)·(σ_m/σ_n)
    valid = torch.isfinite(z) & (z > 0) & (nk[None, :] > 0)
    mismatch = (bias[pruned_idx][:, None] - z * bias[kept_idx][None, :]).abs()
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=w.device)
    lo = torch.where(valid, mismatch, inf).amin(dim=1, keepdim=True)
    hi = torch.where(valid, mismatch, -inf).amax(dim=1, keepdim=True)
    span = hi - lo
    norm_mis = torch.where(span > 0, (mismatch - lo) / torch.where(span > 0, span, 1.0), 0.0)
    score = lam * (1.0 - cos) + (1.0 - lam) * norm_mis
    score = torch.where(valid, score, inf)
    best = score.argmin(dim=1)  # (P,)
    rows = torch.arange(len(pruned_idx), device=w.device)
    ok = valid[rows, best] & (cos[rows, best] >= threshold)
    return pruned_idx[ok], kept_idx[best[ok]], z[rows, best][ok].to(weight.dtype)


def _criterion_scores(
    model: nn.Module, plan: PruningPlan, criterion_scores: Sequence[torch.Tensor] | None
) -> list[torch.Tensor]:
    """The channel scores that rank kept channels: explicit ones, the plan's, or L1 filter norms (default)."""
    if criterion_scores is not None:
        return [torch.as_tensor(t).detach().clone() for t in criterion_scores]
    if plan.static_scores is not None:
        return [torch.as_tensor(t).detach().clone() for t in plan.static_scores]
    mods = dict(model.named_modules())
    return [unit_conv(mods[u.conv]).weight.detach().abs().sum(dim=(1, 2, 3)) for u in get_units(model)]


def merge_pruned(
    model: nn.Module,
    plan: PruningPlan,
    *,
    criterion_scores: Sequence[torch.Tensor] | None = None,
    lam: float = 0.85,
    threshold: float = 0.1,
    report: MergeReport | None = None,
) -> nn.Module:
    """Prune ``model`` by ``plan`` and fold every pruned channel into its most similar kept one (Neuron Merging).

    Data-free and without fine-tuning (Kim et al., NeurIPS 2020; code ``friendshipkim/neuron-merging``). For
    each unit, each channel the plan removes is matched to a kept channel ``m`` of the same unit by
    :func:`merge_scales` (cosine distance of the filters and BN-bias mismatch, weighted by ``lam``), and the
    consumer conv absorbs it: ``W_next[:, m] += z·W_next[:, n]`` with ``z = s·(γ_n/γ_m)·(σ_m/σ_n)``, ``s =
    ‖w_n‖/‖w_m‖`` (derivation and the comparison with the paper's formula: module docstring). Pairs with
    cosine similarity below ``threshold`` or opposite-sign BN scales are dropped as in plain pruning.

    Args:
        model: A plain (not gated) model from :mod:`pruning.models` (``ResNetCifar``, ``PlainConvNet``, ...).
            It is not modified.
        plan: The static plan; which channels are removed is what :func:`pruning.gating.stored_masks` reports
            for it (for a static-only plan: all but the ``keep_count(static_keep[t], C_t)`` best-scored).
        criterion_scores: Per-unit channel scores (higher = kept first) that choose the kept channels. Default:
            ``plan.static_scores`` if set, else the L1 norm of each filter (Li et al., ICLR 2017), as in the
            paper's ``l1-norm`` criterion.
        lam: λ of the similarity score. Default 0.85 (paper, VGG-16 / ResNet-56 CIFAR-10).
        threshold: Minimum cosine similarity for a merge. Default 0.1 (paper).
        report: If given, filled with the per-unit counts and merged pairs.

    Returns:
        A plain model of the same class, in eval mode, with exactly the shapes and parameter count of
        ``export_static(model, plan)`` with the same channel scores.

    Raises:
        ValueError: ``model`` is gated, the plan does not fit it, or a unit's BN lacks running statistics.
        TypeError: a unit's consumer is not an ``nn.Conv2d``.
    """
    if is_gated(model):
        raise ValueError("merge_pruned takes a plain model; pass the model before pruning.gating.gate_model")
    scores = _criterion_scores(model, plan, criterion_scores)
    scored = copy.copy(plan)
    scored.static_scores = scores
    masked = gate_model(model, predictor=False)
    set_plan(masked, scored)
    keeps = stored_masks(masked)
    del masked

    work = copy.deepcopy(model)
    mods = dict(work.named_modules())
    if report is not None:
        report.pruned, report.merged, report.pairs = [], [], []
    for u in get_units(work):  # forward order: a unit's conv is updated by its producer's merge first
        conv = unit_conv(mods[u.conv])
        bn = mods[u.bn]
        consumer = mods[u.consumer]
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"unit {u.conv}: expected a BatchNorm2d at {u.bn}, got {type(bn).__name__}")
        if not isinstance(consumer, nn.Conv2d):
            raise TypeError(f"unit {u.conv}: its consumer {u.consumer} is a {type(consumer).__name__}, not a Conv2d")
        keep = keeps[u.index].to(conv.weight.device)
        w = conv.weight.detach()
        if u.producer is not None:  # the effective filters: only the producer's kept input channels remain
            w = w.index_select(1, keeps[u.producer].to(w.device).nonzero().squeeze(1))
        n_idx, m_idx, z = merge_scales(w, bn, keep, conv_bias=conv.bias, lam=lam, threshold=threshold)
        if n_idx.numel():
            with torch.no_grad():
                src = consumer.weight.index_select(1, n_idx) * z.view(1, -1, *([1] * (consumer.weight.ndim - 2)))
                consumer.weight.index_add_(1, m_idx, src)
        if report is not None:
            report.pruned.append(int((~keep).sum()))
            report.merged.append(int(n_idx.numel()))
            report.pairs.append(torch.stack([n_idx.double(), m_idx.double(), z.double()], dim=1).cpu())
    return export_static(work, scored)
