"""Provable Filter Pruning's empirical sensitivity (Liebenwein, Baykal, Lang, Feldman & Rus, ICLR 2020).

The sensitivity of output channel ``j`` of a unit is the largest relative contribution its activation makes to
any pre-activation of the conv that reads it (the unit's *consumer*), over a calibration batch:

    s_j = max over images x, consumer channels i and positions p of
          max( (W⁺_ij ⋆ a_j)(x, p) / z⁺_i(x, p),  (W⁻_ij ⋆ a_j)(x, p) / z⁻_i(x, p) ),
    z±_i = Σ_j W±_ij ⋆ a_j,

where ``a`` is the unit's output as the consumer reads it (after BN and ReLU, and after any pooling in
between), ``W`` the consumer's weights, ``W⁺ = max(W, 0)`` and ``W⁻ = max(−W, 0)`` (PFP's positive and negative
parts), and ``⋆`` the consumer's convolution. A ratio with a zero denominator counts 0. With ``a ≥ 0`` (a
ReLU output) every ratio is a share of a sum of non-negative terms, so ``s_j ∈ [0, 1]``; PFP samples channel
``j`` with probability ``p_j = s_j / Σ s`` (see :mod:`agents.baselines.pfp`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..units import Unit, unit_conv

__all__ = ["consumer_contributions", "pfp_sensitivity_criterion", "unit_activations"]

#: Most elements of one chunk's contribution tensor ``(n, C, C_next, H', W')`` (bounds the memory used).
MAX_CHUNK_ELEMENTS = 1 << 24


def unit_activations(model: nn.Module, unit: Unit, inputs: torch.Tensor) -> torch.Tensor:
    """The unit's output channels as its consumer conv reads them, for ``inputs``: ``(N, C, H, W)``.

    A forward pre-hook on the consumer's ``nn.Conv2d`` captures its input, so this works for plain and gated
    models (and sees any pooling between the unit and its consumer). The model runs in ``torch.no_grad``, in
    its current mode.
    """
    consumer = unit_conv(model.get_submodule(unit.consumer))
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach())

    handle = consumer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"consumer {unit.consumer!r} of unit {unit.index} ran {len(captured)} times, expected 1")
    return captured[0]


def consumer_contributions(a: torch.Tensor, consumer: nn.Conv2d, weight: torch.Tensor) -> torch.Tensor:
    """Per-channel contributions ``weight[i, j] ⋆ a_j`` to the consumer's outputs: ``(N, C, C_next, H', W')``.

    Args:
        a: The consumer's input ``(N, C, H, W)``.
        consumer: The consumer conv (its stride, padding and dilation are used; ``groups`` must be 1).
        weight: Weights shaped like ``consumer.weight`` ``(C_next, C, k, k)`` (e.g. its positive part).
    """
    if consumer.groups != 1:
        raise ValueError(f"PFP sensitivities need a dense consumer conv (groups=1), got groups={consumer.groups}")
    c_next, c = weight.shape[:2]
    # depthwise conv: group j convolves a_j with W[:, j] (C_next filters), giving output channels j·C_next + i
    w = weight.transpose(0, 1).reshape(c * c_next, 1, *weight.shape[2:])
    out = F.conv2d(a, w, None, consumer.stride, consumer.padding, consumer.dilation, groups=c)
    return out.view(a.shape[0], c, c_next, *out.shape[2:])


def _chunk_sensitivity(a: torch.Tensor, consumer: nn.Conv2d, weight: torch.Tensor) -> torch.Tensor:
    best = torch.zeros(a.shape[1], dtype=a.dtype, device=a.device)
    for part in (weight.clamp(min=0), (-weight).clamp(min=0)):
        contrib = consumer_contributions(a, consumer, part)  # (n, C, C_next, H', W')
        z = contrib.sum(dim=1, keepdim=True)
        ratio = torch.where(z > 0, contrib / z.clamp_min(torch.finfo(z.dtype).tiny), torch.zeros_like(contrib))
        best = torch.maximum(best, ratio.transpose(0, 1).reshape(a.shape[1], -1).amax(dim=1))
    return best


def pfp_sensitivity_criterion(
    model: nn.Module, unit: Unit, *, inputs: torch.Tensor | None = None, max_chunk_elements: int = MAX_CHUNK_ELEMENTS
) -> torch.Tensor:
    """PFP's empirical sensitivity of each output channel of ``unit`` w.r.t. its consumer conv (see the module).

    Registered as ``"pfp_sensitivity"``; bind the calibration batch by name:
    ``get_criterion("pfp_sensitivity", inputs=x)``.

    Args:
        model: The model (plain or gated); it is not modified (one forward pass in its current mode).
        unit: The unit to score.
        inputs: The calibration batch, normalised as the model expects ``(N, 3, H, W)`` (PFP uses a small
            one: 64 images are plenty).
        max_chunk_elements: Most elements of one chunk's contribution tensor; the batch is processed in
            chunks of images to stay under it (at least one image per chunk).

    Returns:
        Sensitivities ``(C_out,)`` in ``[0, 1]`` for ReLU outputs, float32 on the CPU.

    Raises:
        ValueError: no calibration batch was given.
    """
    if inputs is None:
        raise ValueError(
            "criterion 'pfp_sensitivity' needs a calibration batch: bind one with "
            "get_criterion('pfp_sensitivity', inputs=x), x a normalised image batch (N, 3, H, W)"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    a = unit_activations(model, unit, inputs.to(device))
    consumer = unit_conv(model.get_submodule(unit.consumer))
    weight = consumer.weight.detach().to(a.dtype)
    c_next = weight.shape[0]
    per_image = a.shape[1] * c_next * a.shape[2] * a.shape[3]
    chunk = max(1, int(max_chunk_elements) // max(1, per_image))
    best = torch.zeros(a.shape[1], dtype=a.dtype, device=a.device)
    with torch.no_grad():
        for start in range(0, a.shape[0], chunk):
            best = torch.maximum(best, _chunk_sensitivity(a[start : start + chunk], consumer, weight))
    return best.float().cpu()
