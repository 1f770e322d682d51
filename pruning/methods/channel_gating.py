r"""Channel Gating (Hua, Zhou, De Sa, Zhang & Suh, NeurIPS 2019): skip most of a conv where a cheap partial sum says so.

**The layer** (:class:`CGConv`; released code ``utils/cg_utils.py``, ``CGConv2d``). A conv's weights ``W`` are
split by a fixed binary mask into a *base path* ``W_p = W ⊙ mask`` that reads only ``C_in/p`` of the input
channels (the first ``C_in/p``; with ``use_group`` a block-diagonal pattern: output group ``i`` reads input
group ``i``) and the rest. For every output activation (sample, channel, pixel):

    Y_p  = conv(x, W_p)                                 (partial sum, always computed)
    d    = 1[ BN(Y_p) > Δ ]                             (gate; BN without affine, Δ a learned threshold per channel)
    out  = Y_full · d + Y_p · (1 − d)                   (Y_full = conv(x, W): the full sum, needed only where d = 1)

Backward pass: the straight-through estimator of the released code. ``d`` is computed as
``1[σ(α·(BN(Y_p) − Δ)) > 0.5]`` (the same set: ``σ(0) = 0.5``) and the step's gradient is taken as that of
``σ(α·(BN(Y_p) − Δ))``, so ``Δ`` receives ``−α·σ'(·)·(Y_full − Y_p)·∂L/∂out`` per activation. With
``sparse_bp`` (the ResNet-20 script's ``--sparse_bp``) the gradient is passed only where ``d = 1``.

**The loss**: ``L = CE + 1e-4 · Σ (Δ − Δ_target)²`` over every threshold of every gated conv
(:func:`threshold_loss`): the target pulls the thresholds, and with them the fraction of activations that
run the full sum. The released ResNet-20 script uses ``p = 4``, ``α = 2``, thresholds initialised to 0 and
``Δ_target = 1`` (``-pt 4 -gi 0.0 -gt 1.0 --alpha 2.0 --sparse_bp --use_group``), trained from scratch for
250 epochs.

**MACs** (the paper's "FLOPs", :func:`measure_gating`). The base path always runs; the remaining MACs run only
at the activations where ``d = 1``. Per image, a gated conv with full MACs ``M = k²·H·W·C_in·C_out`` and
base-path MACs ``M_p = k²·H·W·nnz(mask)`` (``= M/p``) costs ``M_p + (M − M_p)·r`` where ``r`` is the image's
*gate rate*: the fraction of its output activations with ``d = 1``, measured in the forward pass. Every other
layer costs what it costs in the base model, so

    MACs(image) = MACs_base − Σ_gated (M − M_p)·(1 − r).

The gate (BN on ``Y_p`` and one comparison per activation) is not counted, as BN and ReLU are not counted
anywhere in :mod:`pruning.accounting`. The lowest reachable MAC fraction (every gate closed) is
``1 − Σ_gated (M − M_p) / MACs_base`` (:func:`mac_floor`).

**What it is not.** The gating is per activation, not per channel: nothing is removed from the stored model
(params grow by one threshold per gated channel), and in PyTorch the layer computes both sums densely, so
there is no wall-clock gain without the paper's accelerator. Which convs are gated: the prunable units of
:mod:`pruning.units` (``conv1`` of every ResNet basic block, as in the paper's non-post-activation
ResNet-20), optionally also their consumers (``consumers=True``: the block's ``conv2`` too, as in the paper's
post-activation ResNet-20 that gates every conv but the stem). Convs with fewer input channels than ``p``
(e.g. a conv on the RGB image) would have an empty base path and are left as they are.

Example:
    >>> import torch
    >>> from pruning.accounting import CostModel
    >>> from pruning.models import get_model
    >>> base = get_model("resnet8").eval()
    >>> cg = channel_gate(base, threshold=0.5)
    >>> len(cg_convs(cg))
    3
    >>> x = torch.randn(4, 3, 32, 32)
    >>> calibrate_gates(cg, x)
    >>> report = measure_gating(cg, x, base_macs=CostModel(base).base_macs)
    >>> mac_floor(cg, base_macs=CostModel(base).base_macs) <= report.macs_fraction <= 1.0
    True
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..budget import bisect_bracket
from ..data import ImageDataset, iterate_batches
from ..units import get_units, trace_shapes

__all__ = [
    "CGConv",
    "GatingReport",
    "THRESHOLD_LOSS_WEIGHT",
    "calibrate_gates",
    "cg_convs",
    "channel_gate",
    "mac_floor",
    "measure_gating",
    "set_thresholds",
    "solve_target",
    "threshold_loss",
]

log = logging.getLogger(__name__)

#: The weight of ``Σ (Δ − Δ_target)²`` in the loss (released code ``cg-cifar10.py``: ``0.0001``).
THRESHOLD_LOSS_WEIGHT = 1e-4


class CGConv(nn.Module):
    """A conv with channel gating: full sum only where the base path's normalised partial sum exceeds ``Δ``.

    See the module docstring for the equations. The wrapped conv's weights are shared, not copied.

    Args:
        conv: The conv to gate (``groups == 1``); its weights become this layer's ``W``.
        partitions: p: the base path reads ``C_in // p`` input channels. Default 4 (paper).
        use_group: Block-diagonal base path (output group ``i`` reads input group ``i``; ``C_in`` and
            ``C_out`` must be divisible by ``p``) instead of the first ``C_in // p`` inputs. Default ``False``.
        threshold: Initial ``Δ`` of every channel. Default 0.0 (the ResNet-20 script's ``-gi 0.0``).
        alpha: α, the slope of the sigmoid whose gradient the straight-through estimator uses. Default 2.0.
        sparse_bp: Pass the gate's gradient only where ``d = 1`` (the script's ``--sparse_bp``). Default ``True``.

    Attributes:
        conv: The wrapped conv.
        bn: The non-affine BatchNorm on the partial sum (its running statistics are the gate's calibration).
        threshold: Δ, one learned threshold per output channel, shape ``(C_out,)``.
        mask: The base-path mask, float ``(C_out, C_in, 1, 1)`` buffer.
        last_rate: After a forward pass, the gate rate of each sample: the fraction of its output activations
            with ``d = 1``, float ``(N,)`` (detached).
        last_macs: After a forward pass, this conv's MACs for each sample, ``M_p + (M − M_p)·r``, float64 ``(N,)``.
        last_out_hw: Output height and width of the last forward pass.

    Raises:
        ValueError: ``groups != 1``, ``partitions < 1``, fewer input channels than ``partitions``, or
            ``use_group`` with channel counts not divisible by ``partitions``.
    """

    mask: torch.Tensor

    def __init__(
        self,
        conv: nn.Conv2d,
        *,
        partitions: int = 4,
        use_group: bool = False,
        threshold: float = 0.0,
        alpha: float = 2.0,
        sparse_bp: bool = True,
    ) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"channel gating splits the input channels of a dense conv; got groups={conv.groups}")
        c_in, c_out = conv.in_channels, conv.out_channels
        if partitions < 1 or c_in // partitions == 0:
            raise ValueError(
                f"partitions p={partitions} leaves no input channel for the base path of a conv with C_in={c_in}; "
                "use 1 <= p <= C_in (convs on the image are not gated)"
            )
        mask = torch.zeros(c_out, c_in, dtype=torch.bool)
        if use_group:
            if c_in % partitions or c_out % partitions:
                raise ValueError(
                    f"use_group needs C_in={c_in} and C_out={c_out} divisible by p={partitions}; "
                    "use the default base path (first C_in/p inputs) or another p"
                )
            ci, co = c_in // partitions, c_out // partitions
            for g in range(partitions):
                mask[g * co : (g + 1) * co, g * ci : (g + 1) * ci] = True
        else:
            mask[:, : c_in // partitions] = True
        self.conv = conv
        self.partitions = int(partitions)
        self.use_group = bool(use_group)
        self.alpha = float(alpha)
        self.sparse_bp = bool(sparse_bp)
        w = conv.weight
        self.register_buffer("mask", mask[:, :, None, None].to(dtype=w.dtype, device=w.device))
        self.bn = nn.BatchNorm2d(c_out, affine=False).to(w.device)
        self.threshold = nn.Parameter(torch.full((c_out,), float(threshold), dtype=w.dtype, device=w.device))
        self.last_rate: torch.Tensor | None = None
        self.last_macs: torch.Tensor | None = None
        self.last_out_hw: tuple[int, int] = (0, 0)

    def macs(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        """``(M, M_p)``: full and base-path MACs per image at output size ``out_hw``."""
        k = self.conv.kernel_size[0] * self.conv.kernel_size[1] * out_hw[0] * out_hw[1]
        return k * self.conv.in_channels * self.conv.out_channels, k * int(self.mask.count_nonzero())

    def gate(self, partial: torch.Tensor) -> torch.Tensor:
        """The gate ``d`` (0/1 values) of a partial sum, with the straight-through gradient of the module docstring."""
        u = self.bn(partial) - self.threshold.view(1, -1, 1, 1)
        hard = (u > 0).to(partial.dtype)
        soft = torch.sigmoid(self.alpha * u)
        ste = soft - soft.detach()  # value 0, gradient of σ(α·u)
        return hard + (ste * hard if self.sparse_bp else ste)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        partial = self.conv._conv_forward(x, self.conv.weight * self.mask, self.conv.bias)
        d = self.gate(partial)
        full = self.conv(x)
        with torch.no_grad():
            rate = (d.detach() > 0.5).flatten(1).double().mean(1)
            self.last_out_hw = (int(full.shape[2]), int(full.shape[3]))
            m, m_p = self.macs(self.last_out_hw)
            self.last_rate = rate.float()
            self.last_macs = m_p + (m - m_p) * rate
        return full * d + partial * (1 - d)

    def extra_repr(self) -> str:  # noqa: D102
        return f"p={self.partitions}, use_group={self.use_group}, alpha={self.alpha}, sparse_bp={self.sparse_bp}"


def cg_convs(model: nn.Module) -> list[CGConv]:
    """The gated convs of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, CGConv)]


def _require_gated(model: nn.Module) -> list[CGConv]:
    gated = cg_convs(model)
    if not gated:
        raise ValueError("the model has no CGConv; convert it with pruning.methods.channel_gate first")
    return gated


def channel_gate(
    model: nn.Module,
    *,
    partitions: int = 4,
    use_group: bool = False,
    threshold: float = 0.0,
    alpha: float = 2.0,
    sparse_bp: bool = True,
    consumers: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """Replace the prunable convs of ``model`` (:func:`pruning.units.get_units`) by :class:`CGConv`.

    A fresh gated model computes ``Y_p`` where its gates are closed, so it is *not* the base model: calibrate
    the gates (:func:`calibrate_gates`) and train it (with :func:`threshold_loss`) before use.

    Args:
        model: A plain model with registered unit rules.
        partitions: p (default 4), see :class:`CGConv`.
        use_group: Block-diagonal base path (default ``False``).
        threshold: Initial Δ (default 0.0).
        alpha: α of the straight-through gradient (default 2.0).
        sparse_bp: Gradient only where the gate is open (default ``True``).
        consumers: Also gate each unit's consumer conv (the block's ``conv2`` in a CIFAR ResNet, as the
            paper's post-activation ResNet-20 does). Default ``False``: units only.
        inplace: Convert ``model`` itself; default ``False`` converts a deep copy.

    Returns:
        The converted model (same class; its type, units and forward are unchanged apart from the convs).

    Raises:
        ValueError: no conv could be gated (all have fewer input channels than ``partitions``).
    """
    work = model if inplace else copy.deepcopy(model)
    units = get_units(work)
    paths = list(dict.fromkeys([u.conv for u in units] + ([u.consumer for u in units] if consumers else [])))
    done = 0
    for path in paths:
        conv = work.get_submodule(path)
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.in_channels // partitions == 0:
            log.info("channel gating: %s has C_in=%d < p=%d, left ungated", path, conv.in_channels, partitions)
            continue
        gated = CGConv(
            conv, partitions=partitions, use_group=use_group, threshold=threshold, alpha=alpha, sparse_bp=sparse_bp
        )
        parent, _, name = path.rpartition(".")
        setattr(work.get_submodule(parent) if parent else work, name, gated)
        done += 1
    if done == 0:
        raise ValueError(f"no conv of {type(model).__name__} has at least p={partitions} input channels to gate")
    return work


def set_thresholds(model: nn.Module, value: float) -> None:
    """Set every threshold Δ of every gated conv to ``value`` (in place)."""
    with torch.no_grad():
        for g in _require_gated(model):
            g.threshold.fill_(float(value))


def threshold_loss(model: nn.Module, target: float, weight: float = THRESHOLD_LOSS_WEIGHT) -> torch.Tensor:
    """The sparsity term ``weight · Σ (Δ − Δ_target)²`` over all thresholds (add it to the cross-entropy).

    Args:
        model: A model converted with :func:`channel_gate`.
        target: Δ_target.
        weight: Default 1e-4 (released code).
    """
    gated = _require_gated(model)
    return weight * sum(((g.threshold - target) ** 2).sum() for g in gated)  # type: ignore[return-value]


@torch.no_grad()
def calibrate_gates(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor]) -> None:
    """Set the running statistics of every gate's BN from ``images`` (the model's own BNs are not touched).

    The gate compares ``BN(Y_p)`` with Δ, so a freshly converted model needs the statistics of its partial
    sums before a threshold means anything (a fresh BN has mean 0, variance 1). The model runs in eval mode
    with only the gates' BNs in training mode, accumulating an exact average over all given batches.

    Args:
        model: A model converted with :func:`channel_gate`.
        images: One normalised batch ``(N, 3, H, W)`` or an iterable of batches.
    """
    gated = _require_gated(model)
    batches = [images] if isinstance(images, torch.Tensor) else images
    was_training = model.training
    momenta = [g.bn.momentum for g in gated]
    model.eval()
    try:
        for g in gated:
            g.bn.reset_running_stats()
            g.bn.momentum = None  # cumulative average over the calibration batches
            g.bn.train()
        for x in batches:
            model(x)
    finally:
        for g, m in zip(gated, momenta, strict=True):
            g.bn.momentum = m
        model.train(was_training)


@dataclass
class GatingReport:
    """What :func:`measure_gating` measured.

    Attributes:
        macs_fraction: Mean MACs per image over the base model's (the paper's definition; module docstring).
        macs_fraction_max: The largest per-image fraction.
        gate_rates: Per gated conv, the mean fraction of output activations computed in full.
        n: Images measured.
    """

    macs_fraction: float
    macs_fraction_max: float
    gate_rates: list[float] = field(default_factory=list)
    n: int = 0


@torch.no_grad()
def measure_gating(
    model: nn.Module,
    data: ImageDataset | torch.Tensor,
    *,
    base_macs: int,
    batch_size: int = 500,
    max_batches: int | None = None,
) -> GatingReport:
    """MACs per image of a gated model, from the gate rates its forward passes measure (eval mode).

    Args:
        model: A model converted with :func:`channel_gate`.
        data: A dataset (normalised for the model; scored in order, no augmentation) or one normalised batch.
        base_macs: MACs per image of the base model (``pruning.accounting.CostModel(base).base_macs``).
        batch_size: Images per forward pass (datasets). Default 500.
        max_batches: Measure only the first batches of a dataset; ``None`` (default) measures all.

    Returns:
        The mean and largest MAC fraction per image and the mean gate rate of every gated conv.
    """
    gated = _require_gated(model)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    saved = torch.zeros(0, dtype=torch.float64)
    rate_sums = torch.zeros(len(gated), dtype=torch.float64)
    try:
        if isinstance(data, torch.Tensor):
            batches: Iterable[torch.Tensor] = [data.to(dev)]
        else:
            batches = (x for x, _ in iterate_batches(data, batch_size, shuffle=False, augment=False, device=dev))
        per_batch = []
        for i, x in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model(x)
            full_minus_used = torch.zeros(x.shape[0], dtype=torch.float64)
            for j, g in enumerate(gated):
                assert g.last_macs is not None and g.last_rate is not None
                m, _ = g.macs(g.last_out_hw)
                full_minus_used += m - g.last_macs.cpu()
                rate_sums[j] += float(g.last_rate.double().sum())
            per_batch.append(full_minus_used)
        saved = torch.cat(per_batch)
    finally:
        model.train(was_training)
    n = int(saved.numel())
    if n == 0:
        raise ValueError("no images to measure")
    fractions = 1.0 - saved / base_macs
    return GatingReport(
        macs_fraction=float(fractions.mean()), macs_fraction_max=float(fractions.max()),
        gate_rates=[float(r) / n for r in rate_sums], n=n,
    )  # fmt: skip


def mac_floor(model: nn.Module, *, base_macs: int, input_size: tuple[int, int, int] = (3, 32, 32)) -> float:
    """The lowest MAC fraction a gated model can reach: every gate closed, only the base paths run.

    Args:
        model: A model converted with :func:`channel_gate`.
        base_macs: MACs per image of the base model.
        input_size: ``(C, H, W)`` of one input.
    """
    names = {id(m): n for n, m in model.named_modules()}
    gated = _require_gated(model)
    shapes = trace_shapes(model, [names[id(g)] for g in gated], input_size)
    saved = 0
    for g in gated:
        _, out = shapes[names[id(g)]]
        m, m_p = g.macs((int(out[2]), int(out[3])))
        saved += m - m_p
    return 1.0 - saved / base_macs


def solve_target(
    model: nn.Module,
    images: torch.Tensor,
    budget: float,
    *,
    base_macs: int,
    lo: float = -4.0,
    hi: float = 4.0,
    iters: int = 16,
) -> tuple[float, float]:
    """The smallest uniform threshold Δ whose measured mean MAC fraction on ``images`` meets ``budget``.

    Every threshold is set to the same value and the MAC fraction measured (:func:`measure_gating`); a
    higher Δ closes more gates, so the fraction falls with Δ and bisection (:func:`pruning.budget.bisect_bracket`,
    no end tried) finds where it crosses the budget. The range grows (doubling, up to ±64) until it brackets
    the budget. The model's thresholds are left at
    the answer; calibrate the gates first (:func:`calibrate_gates`).

    Args:
        model: A model converted with :func:`channel_gate`, gates calibrated.
        images: A normalised calibration batch.
        budget: Target MAC fraction.
        base_macs: MACs per image of the base model.
        lo: Lower end of the initial search range. Default -4.
        hi: Upper end of the initial search range. Default 4.
        iters: Bisection steps. Default 16 (a step of 8 / 2¹⁶ in Δ).

    Returns:
        ``(Δ, measured MAC fraction at Δ on images)``.

    Raises:
        ValueError: ``budget`` is below :func:`mac_floor` (unreachable even with every gate closed).
    """
    floor = mac_floor(model, base_macs=base_macs, input_size=tuple(images.shape[1:]))  # type: ignore[arg-type]
    if budget < floor + 1e-9:
        raise ValueError(
            f"MAC budget {budget:g} is below what channel gating can reach on this model ({floor:.4f}: every gate "
            "closed, only the base paths run). Raise the budget, use more partitions (p), or, where only the "
            "units are gated, gate their consumer convs too (consumers=True)"
        )

    def frac(delta: float) -> float:
        set_thresholds(model, delta)
        return measure_gating(model, images, base_macs=base_macs).macs_fraction

    while frac(hi) > budget and hi < 64:
        lo, hi = hi, 2.0 * hi
    while frac(lo) <= budget and lo > -64:
        hi, lo = lo, 2.0 * lo
    delta, _ = bisect_bracket(lambda d: frac(d) <= budget, hi, lo, steps=iters)
    return delta, frac(delta)
