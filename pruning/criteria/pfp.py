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

**The sampled channel set as a ranking.** PFP keeps the channels drawn at least once in ``m`` i.i.d. draws from
``p``. :func:`first_draws` draws the index of the draw at which each channel *first* appears in an endless
sequence of such draws (exactly: after ``i`` distinct channels have appeared, the wait for a new one is
geometric with success probability ``q_i`` = the mass of the unseen channels, and the new channel is drawn
from the unseen ones in proportion to ``p``). The channels drawn in the first ``m`` draws are then exactly
those with ``first ≤ m``, for every ``m`` at once. Ranking channels by ``first`` (earliest first) therefore
makes PFP's sampled set the top-``k`` of a criterion, ``k = #{first ≤ m}``: that is ``pfp_sampled``
(:func:`pfp_sampled_criterion`), which lets an env that keeps the top-k of its criterion keep PFP's draw.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..units import Unit, unit_conv

__all__ = [
    "consumer_contributions",
    "draw_generator",
    "first_draws",
    "pfp_sampled_criterion",
    "pfp_sensitivity_criterion",
    "sampled_order_scores",
    "unit_activations",
]

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


def draw_generator(seed: int, unit_index: int) -> np.random.Generator:
    """The generator of unit ``unit_index``'s PFP draw for ``seed`` (criterion and baseline share it)."""
    return np.random.default_rng([int(seed), int(unit_index)])


def first_draws(p: np.ndarray | torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """When each channel first appears in an endless sequence of i.i.d. draws from ``p`` (see the module).

    Args:
        p: Non-negative sampling weights ``(C,)`` (normalised here; PFP's sensitivities can be passed as is).
        rng: The generator (:func:`draw_generator` for PFP's seeded draw).

    Returns:
        float64 ``(C,)``: the 1-based index of the draw at which channel ``j`` is first drawn; ``inf`` for
        channels of zero weight (never drawn). The channels of ``m`` draws are those with ``first ≤ m``.
    """
    w = np.asarray(torch.as_tensor(p, dtype=torch.float64).cpu(), dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("sampling weights must be finite and non-negative")
    first = np.full(w.shape, math.inf)
    total = w.sum()
    if total <= 0:
        return first
    probs = w / total
    unseen = probs > 0
    t = 0.0
    while unseen.any():
        idx = np.flatnonzero(unseen)
        q = float(probs[idx].sum())  # mass of the unseen channels (summed directly: no 1 - x cancellation)
        u = 1.0 - rng.random()  # in (0, 1]
        gap = 1.0 if q >= 1.0 else 1.0 + math.floor(math.log(u) / math.log1p(-q))
        t += gap
        j = int(rng.choice(idx, p=probs[idx] / q))
        first[j] = t
        unseen[j] = False
    return first


def pfp_sampled_criterion(
    model: nn.Module,
    unit: Unit,
    *,
    inputs: torch.Tensor | None = None,
    seed: int = 0,
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """PFP's seeded importance-sampling order as scores: the top-k channels are the channels of a PFP draw.

    Registered as ``"pfp_sampled"``: ``get_criterion("pfp_sampled", inputs=x, seed=s)``. The sensitivities
    (:func:`pfp_sensitivity_criterion` on ``inputs``) are the sampling weights; :func:`first_draws` with
    :func:`draw_generator` ``(seed, unit.index)`` orders the channels by first appearance, and the score of the
    ``i``-th channel to appear is ``C − i`` (never-drawn channels, of zero sensitivity, come last by index).
    For any sample size ``m``, keeping the top ``#{first ≤ m}`` channels keeps exactly the channels drawn at
    least once in ``m`` draws; :class:`agents.baselines.PFPBaseline` (``deterministic=False``) solves those
    counts with the same generator.

    Args:
        model: The model (plain or gated); not modified.
        unit: The unit to score.
        inputs: The calibration batch (as for ``pfp_sensitivity``).
        seed: Seed of the draw.
        max_chunk_elements: As for ``pfp_sensitivity``.

    Returns:
        Distinct integer-valued scores ``(C_out,)`` in ``[1, C]``, float32.

    Raises:
        ValueError: no calibration batch was given.
    """
    s = pfp_sensitivity_criterion(model, unit, inputs=inputs, max_chunk_elements=max_chunk_elements)
    return sampled_order_scores(s, seed, unit.index)


def sampled_order_scores(sensitivities: torch.Tensor, seed: int, unit_index: int) -> torch.Tensor:
    """``pfp_sampled``'s scores from a unit's sensitivities: ``C − i`` for the ``i``-th channel to be drawn.

    The draw is :func:`first_draws` with :func:`draw_generator` ``(seed, unit_index)``; ties (never-drawn
    channels) are broken by channel index.
    """
    first = first_draws(sensitivities, draw_generator(seed, unit_index))
    order = np.argsort(first, kind="stable")
    scores = np.empty(len(first), dtype=np.float32)
    scores[order] = np.arange(len(first), 0, -1, dtype=np.float32)
    return torch.from_numpy(scores)
