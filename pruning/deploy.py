"""Deployable exports of pruned models: TorchScript and ONNX, static and (TorchScript) dynamic.

Three conversions, each to plain, scriptable PyTorch modules (no PruneGym object is needed to run the files):

* :func:`static_deployable` — an :func:`pruning.export.export_static` model with runtime pruning off (every
  stored channel computed): a plain export is used as it is; in a gated export each unit becomes
  ``relu((conv_{W·a}(x) + (b - mean)·a) · u_r(x) + β)`` with ``a = u_s / sqrt(var + eps)`` (BN and ``u_s``
  folded; ``u_r`` still scales the channels per image). Any batch size; traceable, so it exports to ONNX too.
* :func:`dynamic_deployable` — a :class:`pruning.export.DynamicModel` as TorchScript-compatible modules that
  compute, per image, only the kept channels, exactly as the eager batch-1 path does (same keep sets; logits
  within float rounding). Units tell their consumers (and the next unit of a plain net) which channels they
  kept through small shared index tensors, written in place: TorchScript copies submodules but shares
  tensors. The runtime ratios are constants or come from a source that can be compiled: one with a
  ``scriptable()`` method returning a module with ``ratio(unit, gap, u_r) -> float`` and ``record(unit, kept)``
  (``agents.fused.FusedRuntimeSource``: the agent inside the file; for prefix-order units also
  ``prefix_keep(unit, gap, u_r) -> int``, the count itself). The fast form computes a batch at once where every
  keep set follows from a count (``batched``); otherwise inputs of more than one image run one image at a time.
* :func:`dynamic_onnx_deployable` — a prefix-order dynamic model as one traceable module: the keep counts are
  tensors computed in the graph and read as data-dependent sizes, so :func:`save_dynamic_onnx` exports the
  slices ``W[:n]`` with dynamic ends (ONNX ``Slice``); one image per call, outputs ``logits`` and ``kept``. The
  ``u_r`` order (top-k per image) has no ONNX form here.
* :func:`to_torchscript`, :func:`save_torchscript`, :func:`save_onnx`, :func:`save_dynamic_onnx` — compile,
  freeze, write atomically and check the file against the PyTorch module before it replaces anything.

Measured in ``bench/runtime_latency.py`` (the per-unit candidates) and ``bench/deploy_latency.py`` (every deployable
form of the fair protocol's trained rows, batch 1 and 128, with their test top-1).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .export import DynamicModel, _CompactConsumer, _CompactUnit, _set, folded_unit, prefix_count, runtime_count
from .gating import GatedConv, gated_units, is_gated, rank_desc
from .plan import RATIO_EPS
from .units import get_units

__all__ = [
    "dynamic_deployable",
    "dynamic_onnx_deployable",
    "save_dynamic_onnx",
    "save_onnx",
    "save_torchscript",
    "static_deployable",
    "to_torchscript",
]

log = logging.getLogger(__name__)


class _StaticUnit(nn.Module):
    """An exported gated unit with runtime pruning off: BN and ``u_s`` folded, ``u_r`` from the predictor."""

    if TYPE_CHECKING:
        weight: torch.Tensor
        shift: torch.Tensor
        beta: torch.Tensor
        pred_weight: torch.Tensor
        pred_bias: torch.Tensor

    def __init__(self, unit: GatedConv) -> None:
        super().__init__()
        w, affine = folded_unit(unit)
        self.register_buffer("weight", w)
        self.register_buffer("beta", affine[0].clone())
        self.register_buffer("shift", affine[1].clone())
        _register_predictor(self, unit)
        self.stride, self.padding, self.dilation = _geometry(unit.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        u = F.linear(_gap(x), self.pred_weight, self.pred_bias)[:, :, None, None]
        z = F.conv2d(x, self.weight, self.shift, self.stride, self.padding, self.dilation)
        return torch.addcmul(self.beta[None, :, None, None], z, u).relu()


def _gap(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(dim=(2, 3))``, bit for bit (``mean`` is this sum and division).

    Two kernels instead of a composite: about 9 µs less per call at batch 1 in TorchScript on CPU (measured).
    """
    return torch.sum(x, (2, 3)).div_(x.shape[2] * x.shape[3])


def _conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    direct: bool,
) -> torch.Tensor:
    """``F.conv2d`` (groups 1) for the dynamic units and their consumers.

    ``direct`` (CPU, dilation 1) and one image: call the kernel ``F.conv2d`` dispatches to for one image on CPU
    here (``thnn_conv2d``, the same results bit for bit) without the dispatch through ``convolution``, which picks
    the backend anew on every call: about 20 µs less per conv of ResNet-20's 32- and 64-channel stages at batch 1
    in TorchScript (measured), where a unit and its consumer are two of the ~10 operations per unit. A batch goes
    through ``F.conv2d`` (oneDNN for more than one image).
    """
    if direct and x.shape[0] == 1:
        return torch._C._nn.thnn_conv2d(x, weight, weight.shape[2:], bias, stride, padding)  # type: ignore[attr-defined]
    return F.conv2d(x, weight, bias, stride, padding, dilation)


def _direct(weight: torch.Tensor, dilation: list[int], groups: int) -> bool:
    """Whether :func:`_conv` may call the CPU kernel directly for this conv."""
    return weight.device.type == "cpu" and dilation == [1, 1] and groups == 1


def _geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int]]:
    """``(stride, padding, dilation)`` of a conv as int lists (what TorchScript's ``F.conv2d`` takes)."""
    if isinstance(conv.padding, str):
        raise ValueError(f"padding={conv.padding!r} convs cannot be folded; use explicit padding")
    return [int(v) for v in conv.stride], [int(v) for v in conv.padding], [int(v) for v in conv.dilation]


def _register_predictor(module: nn.Module, unit: GatedConv) -> None:
    """``pred_weight``, ``pred_bias``: the unit's predictor, or zeros and γ (``u_r = γ``) without one."""
    if unit.predictor is not None:
        weight, bias = unit.predictor.weight.detach(), unit.predictor.bias.detach()
    else:
        assert unit.gamma is not None
        bias = unit.gamma.detach()
        weight = bias.new_zeros(bias.shape[0], unit.conv.in_channels)
    module.register_buffer("pred_weight", weight.clone())
    module.register_buffer("pred_bias", bias.clone())


def _register_compact(module: nn.Module, unit: _CompactUnit) -> tuple[Any, torch.Tensor | None]:
    """Register the buffers every dynamic unit form holds of an exported unit.

    The folded conv + BN (``weight``, ``beta``, ``shift``), the predictor, and the stored-to-original channel
    maps ``out_index`` / ``in_index`` (identities where the export kept every channel). Returns the unit's
    ``frozen_static`` and its ``frozen_in_index`` (``None``: the input is not widened).
    """
    w, affine = folded_unit(unit)
    module.register_buffer("weight", w)
    module.register_buffer("beta", affine[0].clone())
    module.register_buffer("shift", affine[1].clone())
    _register_predictor(module, unit)
    frozen = unit.frozen_static
    assert frozen is not None
    c = unit.conv.out_channels
    out_index = getattr(unit, "frozen_out_index", None)
    in_index = getattr(unit, "frozen_in_index", None)
    module.register_buffer("out_index", torch.arange(c) if out_index is None else out_index.clone())
    module.register_buffer("in_index", torch.arange(unit.conv.in_channels) if in_index is None else in_index.clone())
    return frozen, in_index


def static_deployable(exported: nn.Module) -> nn.Module:
    """The exported model with runtime pruning off, as plain modules that script, trace and export to ONNX.

    Args:
        exported: An :func:`pruning.export.export_static` model (plain, or gated with fixed static structure).

    Returns:
        A new model in eval mode: a deep copy of a plain export, or the gated export with its units folded
        (every stored channel computed, scaled by its ``u_r``). Its logits equal the exported model's with no
        runtime ratio set, within float rounding.

    Raises:
        ValueError: ``exported`` is gated but not exported (its static plan is not fixed yet).
    """
    model = copy.deepcopy(exported).eval()
    if not is_gated(model):
        return model
    units = gated_units(model)
    if any(g.frozen_static is None for g in units):
        raise ValueError("static_deployable takes an exported model (pruning.export.export_static(model))")
    with torch.no_grad():
        for u in get_units(model):
            _set(model, u.conv, _StaticUnit(model.get_submodule(u.conv)))  # type: ignore[arg-type]
    return model.eval()


# -----------------------------------------------------------------------------------------------------------
# the dynamic model
# -----------------------------------------------------------------------------------------------------------


class _Record(nn.Module):
    """Which channels a unit kept for the current image: ``idx[:count]`` (tensors shared with its readers)."""

    if TYPE_CHECKING:
        idx: torch.Tensor
        count: torch.Tensor

    def __init__(self, channels: int, prefix: bool = False) -> None:
        super().__init__()
        # a prefix-order unit keeps idx = 0, 1, ...: its first count channels
        self.register_buffer("idx", torch.arange(channels) if prefix else torch.zeros(channels, dtype=torch.long),
                             persistent=False)  # fmt: skip
        self.register_buffer("count", torch.zeros(1, dtype=torch.long), persistent=False)
        self.prefix = prefix

    def shared(self) -> _Record:
        """Another record module holding the same tensors (what a reader keeps)."""
        other = _Record(0, self.prefix)
        other.idx, other.count = self.idx, self.count
        return other

    def forward(self) -> torch.Tensor:  # noqa: D102
        return self.idx[: int(self.count[0])]


class _DynamicUnit(nn.Module):
    """A :class:`pruning.export.DynamicModel` unit at batch 1, TorchScript-compatible (same keep sets)."""

    if TYPE_CHECKING:
        weight: torch.Tensor
        shift: torch.Tensor
        beta: torch.Tensor
        pred_weight: torch.Tensor
        pred_bias: torch.Tensor
        static_pruned: torch.Tensor
        static_rank: torch.Tensor
        positions: torch.Tensor
        out_index: torch.Tensor
        in_index: torch.Tensor
        no_index: torch.Tensor
        prefix_index: torch.Tensor
        lean_weight: torch.Tensor
        lean_bias: torch.Tensor
        source: Any

    def __init__(self, unit: _CompactUnit, record: _Record, source_record: _Record | None, ratio: float,
                 source: nn.Module | None, in_hw: tuple[int, int] = (1, 1)) -> None:  # fmt: skip
        super().__init__()
        frozen, in_index = _register_compact(self, unit)
        c = unit.conv.out_channels
        n_in = unit.conv.in_channels
        self.register_buffer("static_pruned", frozen[1].clone())
        self.register_buffer("static_rank", frozen[2].clone())
        self.register_buffer("positions", torch.arange(c))
        self.register_buffer("no_index", torch.zeros(0, dtype=torch.long))
        self.register_buffer("prefix_index", torch.arange(n_in))
        self.any_static = bool(frozen[1].any())
        self.prefix = unit.runtime_order == "prefix"  # kept channels are the first n (export order)
        self.active = int((~frozen[1]).sum())
        self.source_prefix = source_record is not None and bool(source_record.prefix)
        self.tradeoff = float(unit.tradeoff)
        self.channels = c
        self.full_channels = int(unit.full_channels)
        self.full_in_channels = int(unit.full_in_channels)
        self.widen_out = bool(unit.__dict__["_widen_out"])  # u_r is remapped to the original channel positions
        self.widen_in = in_index is not None
        self.unit_index = int(unit.unit_index)
        self.ratio = float(ratio)  # NaN: runtime pruning off (or a source decides)
        self.eps = RATIO_EPS
        self.record = record
        self.source_record = source_record
        self.source = source
        self.stride, self.padding, self.dilation = _geometry(unit.conv)
        self.direct = _direct(self.weight, self.dilation, unit.conv.groups)
        # the lean path: one addmm on the GAP gives u_r and the source's first layer, folded with this unit's
        # predictor and channel maps (no observation at the original widths); inputs from a prefix producer or none
        tables = None
        lean_tables = getattr(source, "lean_tables", None)
        if lean_tables is not None and (source_record is None or self.source_prefix):
            tables = lean_tables(self.unit_index, self.pred_weight, self.pred_bias, self.in_index, self.out_index)
        self.lean = tables is not None
        lean_weight, lean_bias = torch.zeros(0, 0), torch.zeros(0)
        # [u_r | first layer] = GAP @ [pred_weight.T | W] + [pred_bias | b], the GAP's 1 / (H·W) folded in for the
        # traced input size (the spatial sum is then one kernel; other sizes rescale the sum)
        self.in_area = int(in_hw[0]) * int(in_hw[1])
        if tables is not None:
            lean_weight = (torch.cat([self.pred_weight.t(), tables[0]], 1) / self.in_area).contiguous()
            lean_bias = torch.cat([self.pred_bias, tables[1]])
        self.register_buffer("lean_weight", lean_weight)
        self.register_buffer("lean_bias", lean_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.shape[0] != 1:  # only where dynamic_deployable's batched flag allows it (prefix order, lean source)
            return self._batch_forward(x)
        source = self.source
        if source is not None:
            if self.lean and hasattr(source, "lean_count"):  # one addmm: [u_r | the agent's first layer]
                total = torch.sum(x, (2, 3))
                area = x.shape[2] * x.shape[3]
                if area != self.in_area:
                    total = total.mul_(self.in_area / area)
                lean_weight = self.lean_weight[: x.shape[1]] if self.source_prefix else self.lean_weight
                z = torch.addmm(self.lean_bias, total, lean_weight)
                u_r = z[:, : self.channels]
                n = source.lean_count(self.unit_index, z[:, self.channels :])
                in_idx = self.prefix_index[: x.shape[1]] if self.source_prefix else self.no_index
                if self.prefix:
                    source.record(self.unit_index, n)
                    return self._prefix_forward(x, u_r, n, in_idx)
                return self._gather_forward(x, u_r, self._kept_count(n, u_r[0]), in_idx)
        gap = _gap(x)
        pred_weight = self.pred_weight
        in_idx = self.no_index
        source_record = self.source_record
        if source_record is not None:
            if self.source_prefix:  # the producer's first x.shape[1] channels
                in_idx = self.prefix_index[: x.shape[1]]
                pred_weight = pred_weight[:, : x.shape[1]]
            else:
                in_idx = source_record.forward()
                pred_weight = pred_weight.index_select(1, in_idx)
        u_r = F.linear(gap, pred_weight, self.pred_bias)
        r = self.ratio
        if source is not None:  # the source sees GAP and u_r at the original widths
            g_full = gap
            if source_record is not None:
                g_full = gap.new_zeros(1, self.full_in_channels).index_copy(
                    1, self.in_index.index_select(0, in_idx), gap
                )
            elif self.widen_in:
                g_full = gap.new_zeros(1, self.full_in_channels).index_copy(1, self.in_index, gap)
            u_full = u_r
            if self.widen_out or source_record is not None:  # as _CompactUnit._ratio (GatedConv.source_view)
                u_full = u_r.new_zeros(1, self.full_channels).index_copy(1, self.out_index, u_r)
            if self.prefix and hasattr(source, "prefix_keep"):  # the source counts (and records) itself
                n = source.prefix_keep(self.unit_index, g_full, u_full)
                return self._prefix_forward(x, u_r, n, in_idx)
            r = source.ratio(self.unit_index, g_full, u_full)
            if not (r >= 0.0 and r <= 1.0):
                raise ValueError(f"unit {self.unit_index}: runtime keep ratios must be finite and in [0, 1]")
        if self.prefix:  # readers take the count from their input's width: nothing to record
            n = self._prefix_count(r)
            if source is not None:
                source.record(self.unit_index, n)
            return self._prefix_forward(x, u_r, n, in_idx)
        if r != r:  # runtime off: every stored channel
            return self._gather_forward(x, u_r, (self.positions, u_r[0]), in_idx)
        k_r = runtime_count(r, self.full_channels, self.channels, self.eps)
        return self._gather_forward(x, u_r, self._kept_count(k_r, u_r[0]), in_idx)

    def _batch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """A batch at once: each image's kept channels, computed on the channels some image of the batch keeps.

        Prefix order: the first ``n`` channels, ``n`` the largest count. ``u_r`` order (only where R_r = 1 or no
        stored channel is statically pruned, so each image keeps its top-k by ``u_r``): the union of the images'
        kept channels, gathered and recorded for the readers. With a constant ratio every image keeps the same
        count; with a source (the lean path: ``lean_counts``) each image its own. Each image's other channels are
        zeroed through its ``u_r`` and ``β`` (what :meth:`pruning.export._CompactUnit._batched` computes); ``u_r``
        scales the conv's output per image instead of its weights.
        """
        m = x.shape[1]
        source = self.source
        total = torch.sum(x, (2, 3))
        area = x.shape[2] * x.shape[3]
        in_idx = self.no_index
        source_record = self.source_record
        if source_record is not None and not self.source_prefix:
            in_idx = source_record.forward()
        if source is not None:  # a lean source (the only kind dynamic_deployable batches)
            if area != self.in_area:
                total = total.mul_(self.in_area / area)
            lean_weight = self.lean_weight[:m] if self.source_prefix else self.lean_weight
            z = torch.addmm(self.lean_bias, total, lean_weight)
            u_r = z[:, : self.channels]
            counts = source.lean_counts(self.unit_index, z[:, self.channels :])
        else:
            pred_weight = self.pred_weight
            if source_record is not None:
                pred_weight = pred_weight[:, :m] if self.source_prefix else pred_weight.index_select(1, in_idx)
            u_r = F.linear(total.div_(area), pred_weight, self.pred_bias)
            r = self.ratio
            if self.prefix:
                n_all = self._prefix_count(r)
            else:
                n_all = self.channels if r != r else runtime_count(r, self.full_channels, self.channels, self.eps)
            counts = torch.full([x.shape[0]], n_all, dtype=torch.long, device=x.device)
        if self.prefix:
            n = int(counts.max())
            keep = self.positions[:n].unsqueeze(0) < counts.unsqueeze(1)
            u_r, w, beta, shift = u_r[:, :n], self.weight[:n], self.beta[:n], self.shift[:n]
        else:
            if self.tradeoff != 1.0:  # the trade-off pruner with no static set: the lowest-u_r runtime-pruned go
                counts = self.channels - torch.floor(self.tradeoff * (self.channels - counts) + self.eps).long()
            keep = rank_desc(u_r) < counts.unsqueeze(1)  # each image's top-k, ties to the lower index
            idx = keep.any(0).nonzero().squeeze(1)
            n = idx.shape[0]
            self.record.idx[:n].copy_(idx)
            self.record.count.fill_(n)
            keep, u_r, w = keep.index_select(1, idx), u_r.index_select(1, idx), self.weight.index_select(0, idx)
            beta, shift = self.beta.index_select(0, idx), self.shift.index_select(0, idx)
        if source is not None:
            source.record_counts(self.unit_index, counts)
        if source_record is not None:
            w = w[:, :m] if self.source_prefix else w.index_select(1, in_idx)
        mask = keep.to(u_r.dtype)
        u = u_r * mask
        bias = torch.addcmul(beta * mask, shift, u)
        z = _conv(x, w, None, self.stride, self.padding, self.dilation, self.direct)
        return torch.addcmul(bias[:, :, None, None], z, u[:, :, None, None]).relu_()

    def _gather_forward(
        self, x: torch.Tensor, u_r: torch.Tensor, kept: tuple[torch.Tensor, torch.Tensor], in_idx: torch.Tensor
    ) -> torch.Tensor:
        """The ``kept`` output channels ``(indices, their u_r)``, recorded for the readers and the source."""
        idx, u = kept
        n = idx.shape[0]
        self.record.idx[:n].copy_(idx)
        self.record.count.fill_(n)
        w = self.weight.index_select(0, idx)
        bias = torch.addcmul(self.beta.index_select(0, idx), self.shift.index_select(0, idx), u)
        source = self.source
        if source is not None:
            source.record(self.unit_index, n)
        if self.source_record is not None:
            w = w.index_select(1, in_idx)
        return _conv(x, w * u.view(-1, 1, 1, 1), bias, self.stride, self.padding, self.dilation, self.direct).relu_()

    def _prefix_forward(self, x: torch.Tensor, u_r: torch.Tensor, n: int, in_idx: torch.Tensor) -> torch.Tensor:
        """The first ``n`` output channels (of the first ``x.shape[1]`` inputs after a prefix producer)."""
        u = u_r[0, :n]
        w = self.weight[:n]
        bias = torch.addcmul(self.beta[:n], self.shift[:n], u)
        if self.source_record is not None:
            w = w[:, : x.shape[1]] if self.source_prefix else w.index_select(1, in_idx)
        return _conv(x, w * u.view(-1, 1, 1, 1), bias, self.stride, self.padding, self.dilation, self.direct).relu_()

    def _prefix_count(self, r: float) -> int:
        """``_CompactUnit._prefix_count``: how many of the first channels ratio ``r`` keeps."""
        if r != r:
            return self.channels
        return prefix_count(r, self.full_channels, self.channels, self.active, self.tradeoff, self.eps)

    def _kept_count(self, k_r: int, u_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_CompactUnit._kept`` from ``k_r`` with tensor ops (the trade-off pruner as masks in ``u_r`` order)."""
        c = self.channels
        rho = self.tradeoff
        u_sorted, order = torch.sort(u_r, descending=True, stable=True)
        if rho == 1.0 or not self.any_static:
            n = k_r if rho == 1.0 else c - math.floor(rho * (c - k_r) + self.eps)
            return order[:n], u_sorted[:n]
        static = self.static_pruned.index_select(0, order)
        head = self.positions < k_r
        only_s = head & static  # static-only: pruned by u_s rank
        only_r = ~head & ~static  # runtime-only: pruned by u_r rank (their position)
        n_s, n_r = int(only_s.sum()), int(only_r.sum())
        c_r = math.floor(rho * n_r + self.eps)
        c_s = math.floor((1.0 - rho) * n_s + self.eps)
        keep = (head & ~static) | (only_r & (only_r.cumsum(0) <= n_r - c_r))
        if n_s > c_s:  # of the static-only channels keep the n_s - c_s of smallest static rank
            key = torch.where(only_s, self.static_rank.index_select(0, order), c)
            keep = keep.index_fill(0, torch.topk(key, n_s - c_s, largest=False).indices, True)
        idx = order[keep]
        return idx, u_r.index_select(0, idx)


class _DynamicConsumer(nn.Module):
    """A conv reading a unit's output: only the unit's kept input channels (TorchScript-compatible).

    ``cache`` (the fast form, prefix order): each input width's weight slice ``W[:, :n]`` is copied once, on first
    use, and reused, instead of a copy per call (``W[:, :n]`` is not contiguous, and every conv kernel copies it):
    about 8 µs per consumer at batch 1 on ResNet-20 (``bench/deploy_latency.py``). The slices live in
    ``slices``; at most one per width the unit keeps, so at most about ``C / 2`` times the weight for a
    unit of ``C`` channels, and far less for a trained agent, whose counts vary little between images.
    """

    def __init__(self, conv: nn.Conv2d, record: _Record, cache: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.record = record
        self.prefix = record.prefix
        self.cache = cache and record.prefix
        # slices[n]: W[:, :n], or an empty tensor until first used (a list TorchScript can type and mutate)
        self.slices = [torch.empty(0)] * (conv.in_channels + 1 if self.cache else 1)
        self.direct = not isinstance(conv.padding, str) and _direct(conv.weight, list(conv.dilation), conv.groups)
        # (padding="same" convs keep F.conv2d with the conv's own arguments)
        self.stride, self.padding, self.dilation = _geometry(conv) if self.direct else ([1, 1], [0, 0], [1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        c = self.conv
        if self.prefix:  # a prefix unit's output holds just its kept channels, the first x.shape[1]
            w = self._prefix_weight(x.shape[1])
        else:
            w = c.weight.index_select(1, self.record.forward())
        if self.direct:
            return _conv(x, w, c.bias, self.stride, self.padding, self.dilation, True)
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> _DynamicConsumer:
        # moved or converted (``.to``, ``.half``): the weight changes, so the slices are copied anew
        self.slices = [torch.empty(0)] * len(self.slices)
        return super()._apply(fn, recurse)  # type: ignore[return-value]

    def _prefix_weight(self, n: int) -> torch.Tensor:
        """``W[:, :n]``: a view, or with ``cache`` a dense copy made once (in the weight's memory format)."""
        w = self.conv.weight[:, :n]
        if not self.cache:
            return w
        cached = self.slices[n]
        if cached.numel() == 0:
            cached = w.clone(memory_format=torch.preserve_format)
            self.slices[n] = cached
        return cached


class _OneByOne(nn.Module):
    """Runs the batch-1 dynamic model on every image of a batch in turn, or the whole batch at once.

    ``check``: raise when an image's logits are not all finite (the one finiteness check of a model whose runtime
    source checks nothing per unit). ``batched``: every unit computes a batch itself (prefix order, constant ratios
    or a lean source: ``_DynamicUnit._batch_forward``).
    """

    def __init__(self, model: nn.Module, check: bool = False, batched: bool = False) -> None:
        super().__init__()
        self.model = model
        self.check = check
        self.batched = batched

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.shape[0] == 1 or self.batched:
            out = self.model(x)
        else:
            out = torch.cat([self.model(x[i : i + 1]) for i in range(x.shape[0])])
        if self.check and not bool(torch.isfinite(out).all()):
            raise RuntimeError("the model produced non-finite activations or logits; check its weights and input")
        return out


def dynamic_deployable(dyn: DynamicModel, *, exact: bool = False) -> nn.Module:
    """A :class:`pruning.export.DynamicModel` as TorchScript-compatible modules (one image at a time).

    Args:
        dyn: The dynamic model. Its runtime ratios must be constants per unit (one float, or one per unit)
            or a source with ``scriptable(fold)`` (``agents.fused.FusedRuntimeSource``), bound to ``dyn``.
        exact: Keep every operation of the eager model, bit for bit: the source's exact form
            (``scriptable(fold=False)``: the eager source's own operations) and every BatchNorm. The default is the
            fastest form: the fused agent's first layer folded (the same ratios up to float rounding of that
            layer) and the BatchNorm after each consumer (``Unit.consumer_bn``) folded into its weights.

    Returns:
        A new module in eval mode; its logits equal ``dyn``'s at batch 1 (per image for larger batches) within
        float rounding, with the same kept channels (``exact``: the same logits). Script it with
        :func:`to_torchscript`. In the fast form, with constant ratios or a folded agent on fixed input widths,
        a batch is computed at once (its ``batched`` attribute): every unit on the channels some image keeps (the
        longest kept prefix in prefix order; the union of the images' top-k sets in ``u_r`` order, where R_r = 1
        or no stored channel is statically pruned), each image's others zeroed (the same logits per image,
        within float rounding). Where the images keep similar channels (a trained agent's counts vary little
        between images) a batch then costs about what the static model of those counts costs
        (``bench/deploy_latency.py``, batch 128). Otherwise a batch runs one image at a time.

    Raises:
        TypeError: a runtime source that cannot be compiled (a Python callable, SB3's ``predict``).
        ValueError: per-sample ratios (a runtime plan of shape ``(N, L)``).
    """
    model = copy.deepcopy(dyn.model).eval()
    units = get_units(model)
    by_index = sorted((m for m in model.modules() if isinstance(m, _CompactUnit)), key=lambda g: g.unit_index)
    source_module: nn.Module | None = None
    runtime = dyn.units[0].runtime
    if callable(runtime) and not isinstance(runtime, torch.Tensor):
        scriptable: Callable[[], nn.Module] | None = getattr(runtime, "scriptable", None)
        if scriptable is None or any(g.runtime is not runtime for g in dyn.units):
            raise TypeError(
                f"the runtime source {type(runtime).__name__} cannot be compiled into the model: use constant "
                "ratios or a source with scriptable() (agents.fused.FusedRuntimeSource, for a fused agent)"
            )
        source_module = scriptable(fold=not exact)  # type: ignore[call-arg]
    records = [_Record(g.conv.out_channels, g.runtime_order == "prefix") for g in by_index]
    made: list[_DynamicUnit] = []
    with torch.no_grad():
        for u in units:
            g = by_index[u.index]
            ratio = math.nan
            if source_module is None and g.runtime is not None:
                t = torch.as_tensor(g.runtime, dtype=torch.float64)
                if t.numel() != 1:
                    raise ValueError("per-sample runtime ratios cannot be compiled into the model; give one per unit")
                ratio = float(t)
            reader = None if u.producer is None else records[u.producer].shared()
            source = source_module
            for_unit = getattr(source, "for_unit", None)
            if callable(for_unit):  # a module of its own per unit, so that freezing works
                source = for_unit(g.unit_index)
            made.append(_DynamicUnit(g, records[u.index], reader, ratio, source, u.in_hw))
            _set(model, u.conv, made[-1])
            consumer = model.get_submodule(u.consumer)
            if isinstance(consumer, _CompactConsumer):
                conv = consumer.conv
                bn_path = None if exact else u.consumer_bn
                bn = None if bn_path is None else model.get_submodule(bn_path)
                if bn_path is not None and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                    conv = fuse_conv_bn_eval(conv, bn)  # torch's own fold: a new conv, scaled weight, a bias
                    _set(model, bn_path, nn.Identity())
                _set(model, u.consumer, _DynamicConsumer(conv, records[u.index].shared(), cache=not exact))
    # a batch at once (the fast form): units whose keep sets follow from a count (prefix order, or the u_r order's
    # top-k where R_r = 1 or no stored channel is statically pruned), from constants or a lean source
    batched = (
        not exact
        and all(d.prefix or d.tradeoff == 1.0 or not d.any_static for d in made)
        and (source_module is None or (bool(getattr(source_module, "batchable", False)) and all(d.lean for d in made)))
    )
    return _OneByOne(model, check=source_module is not None, batched=batched).eval()


# -----------------------------------------------------------------------------------------------------------
# the dynamic prefix model as one traceable graph (ONNX)
# -----------------------------------------------------------------------------------------------------------


class _TracedUnit(nn.Module):
    """A prefix-order :class:`pruning.export.DynamicModel` unit at batch 1 as tensor operations (for tracing).

    The keep count is an int64 tensor computed from the ratio (:func:`pruning.export.prefix_count` on tensors)
    and read once as a symbolic size (``.item()``, bounded by ``torch._check``), so an exporter records the weight
    slices ``W[:n]`` with a data-dependent end (ONNX ``Slice``). The unit's reader learns ``n`` from the shape of
    its input, so no state passes between units except the source's bookkeeping and the list of kept counts.
    With a source that offers ``lean_tables`` (the fused agent with a folded first layer on fixed input widths),
    one ``addmm`` on the unit's GAP gives ``u_r`` and the agent's first layer, as in :class:`_DynamicUnit`'s lean
    path, instead of the observation at the original widths.
    """

    if TYPE_CHECKING:
        weight: torch.Tensor
        shift: torch.Tensor
        beta: torch.Tensor
        pred_weight: torch.Tensor
        pred_bias: torch.Tensor
        out_index: torch.Tensor
        in_index: torch.Tensor
        lean_weight: torch.Tensor
        lean_bias: torch.Tensor

    def __init__(self, unit: _CompactUnit, reads_unit: bool, ratio: float, source: nn.Module | None = None) -> None:
        super().__init__()
        frozen, in_index = _register_compact(self, unit)
        c = unit.conv.out_channels
        self.reads_unit = reads_unit  # its input is a prefix unit's kept channels (a plain net's next unit)
        self.widen_in = in_index is not None
        self.widen_out = bool(unit.__dict__["_widen_out"])  # u_r is remapped to the original channel positions
        self.active = int((~frozen[1]).sum())
        self.tradeoff = float(unit.tradeoff)
        self.channels = c
        self.full_channels = int(unit.full_channels)
        self.full_in_channels = int(unit.full_in_channels)
        self.unit_index = int(unit.unit_index)
        self.ratio = float(ratio)  # NaN: runtime pruning off, or the source decides
        self.stride, self.padding, self.dilation = _geometry(unit.conv)
        # the lean path (as _DynamicUnit's): [u_r | the agent's first layer] = GAP @ lean_weight + lean_bias, one
        # matrix product on the stored GAP instead of the observation at the original widths
        lean_tables = getattr(source, "lean_tables", None)
        tables = None if lean_tables is None else lean_tables(
            self.unit_index, self.pred_weight, self.pred_bias, self.in_index, self.out_index
        )  # fmt: skip
        self.lean = tables is not None
        lean_weight, lean_bias = torch.zeros(0, 0), torch.zeros(0)
        if tables is not None:
            lean_weight = torch.cat([self.pred_weight.t(), tables[0]], 1).contiguous()
            lean_bias = torch.cat([self.pred_bias, tables[1]])
        self.register_buffer("lean_weight", lean_weight)
        self.register_buffer("lean_bias", lean_bias)
        # bound by the model's root on every call: the traceable source (registered once, on the root) and the
        # list of this image's kept counts
        self.__dict__["source"], self.__dict__["kept"] = None, []

    def _count(self, r: torch.Tensor) -> torch.Tensor:
        """:func:`pruning.export.prefix_count` of float64 ratios ``r`` as int64 tensor operations."""
        cap = float(min(self.full_channels, self.channels))
        k_r = torch.ceil(r * float(self.full_channels) - RATIO_EPS).clamp(1.0, cap)
        a = float(self.active)
        below = a - torch.floor(self.tradeoff * (a - k_r) + RATIO_EPS)
        above = k_r - torch.floor((1.0 - self.tradeoff) * (k_r - a) + RATIO_EPS)
        # NaN ratios (non-finite features; no error can be raised in a graph) are clamped into range too
        return torch.where(k_r < a, below, above).clamp(1.0, float(self.channels)).long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        gap = x.mean(dim=(2, 3))
        m = x.shape[1]
        source = self.__dict__["source"]
        if self.lean and source is not None:
            z = torch.addmm(self.lean_bias, gap, self.lean_weight[:m] if self.reads_unit else self.lean_weight)
            u_r = z[:, : self.channels]
            count = source.lean_prefix_keep(self.unit_index, z[:, self.channels :])
            n = count[0].item()  # a symbolic size when traced
            torch._check(n >= 1)
            torch._check(n <= self.channels)
            return self._slice_forward(x, u_r, n, count)
        pred_weight = self.pred_weight[:, :m] if self.reads_unit else self.pred_weight
        u_r = F.linear(gap, pred_weight, self.pred_bias)
        if source is not None:
            g_full = gap
            if self.reads_unit or self.widen_in:
                g_full = gap.new_zeros(1, self.full_in_channels).index_copy(1, self.in_index[:m], gap)
            u_full = u_r
            if self.widen_out or self.reads_unit:  # as _CompactUnit._ratio (GatedConv.source_view)
                u_full = u_r.new_zeros(1, self.full_channels).index_copy(1, self.out_index, u_r)
            if hasattr(source, "prefix_keep"):  # the source counts (and records) itself
                count = source.prefix_keep(self.unit_index, g_full, u_full)
            else:
                count = self._count(source.ratio(self.unit_index, g_full, u_full))
                source.record(self.unit_index, count)
            n = count[0].item()  # a symbolic size when traced (int() would specialise it)
            torch._check(n >= 1)
            torch._check(n <= self.channels)
        else:
            r = self.ratio
            n = self.channels if r != r else prefix_count(r, self.full_channels, self.channels, self.active,
                                                         self.tradeoff, RATIO_EPS)  # fmt: skip
            count = torch.full((1,), n, dtype=torch.long)
        return self._slice_forward(x, u_r, n, count)

    def _slice_forward(self, x: torch.Tensor, u_r: torch.Tensor, n: Any, count: torch.Tensor) -> torch.Tensor:
        """The first ``n`` output channels (``count``: ``n`` as a tensor, appended to this image's kept counts)."""
        self.__dict__["kept"].append(count)
        u = u_r[0, :n]
        w = self.weight[:n]
        if self.reads_unit:
            w = w[:, : x.shape[1]]
        bias = torch.addcmul(self.beta[:n], self.shift[:n], u)
        return F.conv2d(x, w * u.view(-1, 1, 1, 1), bias, self.stride, self.padding, self.dilation).relu()


class _TracedConsumer(nn.Module):
    """A conv reading a prefix unit's output: its first input channels, as many as the input has."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        c = self.conv
        return F.conv2d(x, c.weight[:, : x.shape[1]], c.bias, c.stride, c.padding, c.dilation, c.groups)


class _TracedDynamic(nn.Module):
    """One image in, ``(logits (1, classes), kept counts int64 (L,))`` out (the traceable dynamic model)."""

    def __init__(self, model: nn.Module, source: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.source = source

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        if x.shape[0] != 1:
            raise ValueError(f"the traceable dynamic model takes one image, not {x.shape[0]}; run images one by one")
        kept: list[torch.Tensor] = []
        source = self.source
        # the units' links to the list and the source are plain attributes, bound here on every call: exporting
        # copies such attributes, so links made once would point to copies afterwards
        for m in self.model.modules():
            if isinstance(m, _TracedUnit):
                m.__dict__["kept"], m.__dict__["source"] = kept, source
        if source is not None:
            source.reset()  # type: ignore[operator]
        logits = self.model(x)
        return logits, torch.cat(kept)


def dynamic_onnx_deployable(dyn: DynamicModel) -> nn.Module:
    """A prefix-order :class:`pruning.export.DynamicModel` as one traceable module of tensor operations (ONNX).

    Per unit the keep count is a tensor computed in the graph (from a constant ratio or from the source's
    ``traceable()`` module: ``agents.fused.FusedRuntimeSource``, the agent inside), and the kept channels are the
    first ``n`` of the unit's weights and of its reader's input weights: slices with a data-dependent end, which
    :func:`save_dynamic_onnx` exports as ONNX ``Slice`` ops, so ONNX Runtime computes only the kept channels.

    Args:
        dyn: A dynamic model whose units all have the prefix runtime order (``runtime_order="prefix"`` when
            exported), with constant runtime ratios (one, or one per unit) or a source with ``traceable()``.

    Returns:
        A new module in eval mode mapping one image ``(1, 3, H, W)`` to ``(logits, kept)``: the logits of ``dyn``
        at batch 1 (within float rounding) and every unit's kept channel count, int64 ``(L,)``.

    Raises:
        ValueError: a unit with the ``u_r`` (gather) runtime order (its top-k has no ONNX form here; use
            :func:`dynamic_deployable` for TorchScript), or per-sample ratios.
        TypeError: a runtime source without ``traceable()``.
    """
    model = copy.deepcopy(dyn.model).eval()
    units = get_units(model)
    by_index = sorted((m for m in model.modules() if isinstance(m, _CompactUnit)), key=lambda g: g.unit_index)
    if any(g.runtime_order != "prefix" for g in by_index):
        raise ValueError(
            "only prefix-order dynamic models have an ONNX form (their kept channels are weight slices); a u_r-order "
            "model picks its channels by top-k: export it with dynamic_deployable (TorchScript)"
        )
    source_module: nn.Module | None = None
    runtime = dyn.units[0].runtime
    if callable(runtime) and not isinstance(runtime, torch.Tensor):
        traceable: Callable[[], nn.Module] | None = getattr(runtime, "traceable", None)
        if traceable is None or any(g.runtime is not runtime for g in dyn.units):
            raise TypeError(
                f"the runtime source {type(runtime).__name__} cannot be traced into the model: use constant ratios "
                "or a source with traceable() (agents.fused.FusedRuntimeSource, for a fused agent)"
            )
        source_module = traceable()
    with torch.no_grad():
        for u in units:
            g = by_index[u.index]
            ratio = math.nan
            if source_module is None and g.runtime is not None:
                t = torch.as_tensor(g.runtime, dtype=torch.float64)
                if t.numel() != 1:
                    raise ValueError("per-sample runtime ratios cannot be compiled into the model; give one per unit")
                ratio = float(t)
            _set(model, u.conv, _TracedUnit(g, u.producer is not None, ratio, source_module))
            consumer = model.get_submodule(u.consumer)
            if isinstance(consumer, _CompactConsumer):
                _set(model, u.consumer, _TracedConsumer(consumer.conv))
    return _TracedDynamic(model, source_module).eval()


# -----------------------------------------------------------------------------------------------------------
# files
# -----------------------------------------------------------------------------------------------------------


def to_torchscript(
    module: nn.Module, *, freeze: bool = True, optimize_numerics: bool = True, channels_last: bool = False
) -> torch.jit.ScriptModule:
    """Compile ``module`` with ``torch.jit.script`` (eval mode), frozen by default (constants inlined).

    Args:
        module: A scriptable module (:func:`static_deployable`, :func:`dynamic_deployable`, plain models).
        freeze: ``torch.jit.freeze`` the result (parameters become constants: faster at batch 1). A module that
            cannot be frozen (an LSTM's weights are views of one buffer) is returned unfrozen.
        optimize_numerics: Let freezing fold BN into convs and the like (results change by float rounding);
            ``False`` keeps every operation (with ``dynamic_deployable(..., exact=True)``: the eager model's
            logits bit for bit).
        channels_last: Store the 4-d weights channels-last (NHWC), so every convolution runs NHWC kernels and its
            output stays NHWC (inputs may stay NCHW; the logits change by float rounding). A dynamic model's
            weight slices ``W[:n]`` stay NHWC (the output channels are the outermost dimension).
            ``bench/deploy_latency.py`` measures it as the form ``TorchScript CL``. ``module`` itself is not
            changed.

    ``torch.jit`` is deprecated in recent PyTorch but still the way to a file that runs without Python code
    (``torch.jit.load``, or LibTorch in C++); its deprecation warnings are silenced here.
    """
    if channels_last:
        module = copy.deepcopy(module).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        scripted = torch.jit.script(module.eval())
        if not freeze:
            return scripted
        try:
            return torch.jit.freeze(scripted, optimize_numerics=optimize_numerics)
        except RuntimeError as err:  # e.g. "module contains attributes values that overlaps" (nn.LSTM)
            log.info("TorchScript module left unfrozen: %s", str(err).splitlines()[0])
            return scripted


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp)`` beside ``path`` and rename the result over ``path`` (nothing left on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _check(what: str, got: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    diff = float((got - expected).abs().max())
    if not diff <= atol:
        raise RuntimeError(f"the {what} file's logits differ from PyTorch's by {diff:.3g} (> {atol}); nothing written")


def save_torchscript(
    module: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    *,
    atol: float = 1e-4,
    optimize_numerics: bool = True,
    channels_last: bool = False,
) -> Path:
    """Compile ``module`` (:func:`to_torchscript`), check it on ``example`` and write it atomically.

    Args:
        module: A scriptable module (:func:`static_deployable`, :func:`dynamic_deployable`).
        path: Destination (``torch.jit.load`` reads it).
        example: Inputs the reloaded file must map to ``module``'s logits.
        atol: Largest absolute logit difference accepted.
        optimize_numerics: See :func:`to_torchscript`.
        channels_last: See :func:`to_torchscript`.

    Raises:
        RuntimeError: the reloaded file disagrees with ``module`` (nothing is written).
    """
    with torch.no_grad():
        expected = module.eval()(example)
    scripted = to_torchscript(module, optimize_numerics=optimize_numerics, channels_last=channels_last)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.jit.save(scripted, tmp)
            reloaded = torch.jit.load(tmp)
        with torch.no_grad():
            _check("TorchScript", reloaded(example), expected, atol)

    return _atomic(path, write)


def save_onnx(module: nn.Module, path: str | Path, example: torch.Tensor, *, atol: float = 1e-4) -> Path:
    """Export ``module`` to ONNX (any batch size), check it in ONNX Runtime on ``example``, write it atomically.

    Args:
        module: A traceable module (:func:`static_deployable`).
        path: Destination ``.onnx`` file (weights inside it). Input ``images`` ``(N, 3, H, W)``, output
            ``logits``.
        example: Inputs ONNX Runtime must map to ``module``'s logits (also the export's example input).
        atol: Largest absolute logit difference accepted.

    Raises:
        ImportError: ``onnx``, ``onnxscript`` or ``onnxruntime`` is missing (``pip install "prunegym[export]"``).
        RuntimeError: ONNX Runtime's logits disagree with ``module`` (nothing is written).
    """
    ort = _onnxruntime()
    with torch.no_grad():
        expected = module.eval()(example)

    def write(tmp: str) -> None:
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), tmp, dynamo=True, input_names=["images"], output_names=["logits"],
                dynamic_shapes=({0: batch},), external_data=False, verbose=False,
            )  # fmt: skip
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": example.detach().cpu().numpy()})[0]
        _check("ONNX", torch.from_numpy(got), expected.cpu(), atol)

    return _atomic(path, write)


def save_dynamic_onnx(module: nn.Module, path: str | Path, example: torch.Tensor, *, atol: float = 1e-4) -> Path:
    """Export a :func:`dynamic_onnx_deployable` model to ONNX, check it in ONNX Runtime image by image, write it.

    Args:
        module: A :func:`dynamic_onnx_deployable` model.
        path: Destination ``.onnx`` file. Input ``images`` ``(1, 3, H, W)`` (one image), outputs ``logits``
            ``(1, classes)`` and ``kept`` (every unit's kept channel count, int64 ``(L,)``).
        example: Images ``(N, 3, H, W)``; the first is the export's example input, and on every one ONNX Runtime
            must give ``module``'s logits (within ``atol``) and exactly its kept counts.
        atol: Largest absolute logit difference accepted.

    Raises:
        ImportError: ``onnx``, ``onnxscript`` or ``onnxruntime`` is missing (``pip install "prunegym[export]"``).
        RuntimeError: ONNX Runtime disagrees with ``module`` on an image (nothing is written).
    """
    ort = _onnxruntime()
    module = module.eval()
    with torch.no_grad():
        expected = [module(example[i : i + 1]) for i in range(example.shape[0])]

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example[:1],), tmp, dynamo=True, input_names=["images"], output_names=["logits", "kept"],
                external_data=False, verbose=False,
            )  # fmt: skip
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        for i, (logits, kept) in enumerate(expected):
            got, got_kept = session.run(None, {"images": example[i : i + 1].detach().cpu().numpy()})
            if not torch.equal(torch.from_numpy(got_kept), kept.cpu()):
                raise RuntimeError(
                    f"the ONNX file keeps {got_kept.tolist()} channels per unit on image {i}, PyTorch "
                    f"{kept.tolist()}; nothing written"
                )
            _check("ONNX", torch.from_numpy(got), logits.cpu(), atol)

    return _atomic(path, write)


def _onnxruntime() -> Any:
    """``onnxruntime``, after checking that the ONNX exporter's packages are there too."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f'ONNX export needs {", ".join(missing)}: install the export extra (pip install "prunegym[export]")'
        )
    import onnxruntime

    return onnxruntime
