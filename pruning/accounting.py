"""Exact MACs per sample and stored parameters for any plan (``docs/architecture.md``, "Accounting").

MACs of a conv = ``k_h·k_w·H_out·W_out·C_in·C_out / groups``; of a linear = ``in·out`` (biases, BN, ReLU and
pooling are not counted). This is exactly what ``torch.utils.flop_counter.FlopCounterMode`` reports divided by
two, which the tests check on physically exported models (static plans) and on per-sample gathered forwards
(runtime plans, :class:`pruning.export.DynamicModel` at batch 1).

* Runtime masks change MACs per sample; only static (stored) masks change stored parameters.
* The predictor of a gated unit is **overhead**, reported apart: its MACs (``C_in_kept · C_out_stored``, the
  linear on the pooled input) and its weight plus ``u_s``. Its bias plays the role of BN's γ and is counted in
  the backbone, so an unpruned gated model has exactly the base model's backbone parameters.
* Budgets are fractions of the base model's total backbone MACs (0.5 = half the MACs).

The "sparsity b" of Chen, Chen & Pan ("Storage Efficient and Dynamic Flexible Runtime Channel Pruning via Deep
Reinforcement Learning", NeurIPS 2020) is a uniform keep ratio per layer, about ``b²`` of the MACs in a plain net: use
:func:`sparsity_to_mac_fraction`, never the two interchangeably.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .gating import GatedConv, gate_model, gated_units, is_gated, set_plan
from .plan import PruningPlan
from .units import Unit, get_units, trace_shapes

__all__ = ["Cost", "CostModel", "MacCoefficients", "model_cost", "sparsity_to_mac_fraction"]


@dataclass(frozen=True)
class Cost:
    """Cost of a model under a plan.

    Attributes:
        macs: Backbone MACs per sample, int64 ``(N,)`` (``N = 1`` for a static plan).
        predictor_macs: Predictor MACs per sample (overhead), int64 ``(N,)``.
        params: Stored backbone parameters.
        predictor_params: Stored predictor parameters (overhead: predictor weights and ``u_s``).
        base_macs: Backbone MACs of the unpruned model.
        base_params: Backbone parameters of the unpruned model.
    """

    macs: torch.Tensor
    predictor_macs: torch.Tensor
    params: int
    predictor_params: int
    base_macs: int
    base_params: int

    @property
    def macs_fraction(self) -> torch.Tensor:
        """Backbone MACs per sample as a fraction of the base model's (the budget's unit), float64 ``(N,)``."""
        return self.macs.double() / self.base_macs

    @property
    def params_fraction(self) -> float:
        """Stored backbone parameters as a fraction of the base model's."""
        return self.params / self.base_params

    @property
    def total_macs(self) -> torch.Tensor:
        """Backbone + predictor MACs per sample."""
        return self.macs + self.predictor_macs

    @property
    def total_params(self) -> int:
        """Backbone + predictor parameters: the parameter count of the exported model."""
        return self.params + self.predictor_params


class CostModel:
    """Precomputed cost coefficients of a model, for fast accounting of many plans (e.g. every env step).

    Built once by tracing one forward pass; :meth:`from_counts` is then a few tensor ops.

    Args:
        model: A plain or gated model (exported models too: their current shapes are the "unpruned" ones).
        input_size: ``(C, H, W)`` of one input.
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> None:
        gated = model if is_gated(model) else gate_model(model, predictor=False)
        self.units: list[Unit] = get_units(gated, input_size)
        gunits = gated_units(gated)
        self.has_predictor = [g.predictor is not None for g in gunits]
        self.has_us = [g.static_importance is not None for g in gunits]
        L = len(self.units)
        self.channels = torch.tensor([u.out_channels for u in self.units])
        self.in_channels = torch.tensor([u.in_channels for u in self.units])
        self.producer = [u.producer for u in self.units]
        unit_paths = {u.conv: u for u in self.units}
        consumer_paths = {u.consumer: u for u in self.units if u.consumer not in unit_paths}
        # MACs: trace every conv / linear.
        coef: dict[str, int] = {}
        dims: dict[str, tuple[int, int]] = {}
        lin = {n: m for n, m in gated.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
        for name, (_, out) in trace_shapes(gated, list(lin), input_size).items():
            m = lin[name]
            if isinstance(m, nn.Conv2d):
                coef[name] = m.kernel_size[0] * m.kernel_size[1] * out[2] * out[3] // m.groups
                dims[name] = (m.in_channels, m.out_channels)
            else:
                coef[name] = int(math.prod(out[1:-1]))
                dims[name] = (m.in_features, m.out_features)
        self.unit_coef = torch.zeros(L, dtype=torch.long)
        self.consumer_coef = torch.zeros(L, dtype=torch.long)  # per kept channel of unit t, non-unit consumer
        fixed_macs = 0
        for name, c in coef.items():
            owner, _, leaf = name.rpartition(".")
            if owner in unit_paths and leaf == "conv":
                self.unit_coef[unit_paths[owner].index] = c
            elif owner in unit_paths and leaf == "predictor":
                pass
            elif name in consumer_paths:
                u = consumer_paths[name]
                self.consumer_coef[u.index] = c * dims[name][1]
            else:
                fixed_macs += c * dims[name][0] * dims[name][1]
        self.fixed_macs = fixed_macs
        # Params.
        fixed_params = 0
        self.consumer_param_coef = torch.zeros(L, dtype=torch.long)
        self.unit_bias = torch.zeros(L, dtype=torch.long)
        for name, prm in gated.named_parameters():
            unit = next((u for path, u in unit_paths.items() if name.startswith(path + ".")), None)
            if unit is not None:
                if name == unit.conv + ".conv.bias":
                    self.unit_bias[unit.index] = 1
                continue
            mod_path = name.rpartition(".")[0]
            if mod_path in consumer_paths and name.endswith(".weight"):
                u = consumer_paths[mod_path]
                self.consumer_param_coef[u.index] = prm.numel() // u.out_channels
                continue
            fixed_params += prm.numel()
        self.fixed_params = fixed_params
        self.kernel_area = torch.tensor([u.kernel_size**2 for u in self.units])
        full = self.channels.unsqueeze(0)
        base = self.from_counts(full, self.channels)
        self.base_macs = int(base.macs[0])
        self.base_params = base.params

    def _cin(self, keep: torch.Tensor) -> torch.Tensor:
        """Input channels of every unit given the kept outputs ``keep`` ``(N, L)``."""
        cin = self.in_channels.unsqueeze(0).expand_as(keep).clone()
        for t, p in enumerate(self.producer):
            if p is not None:
                cin[:, t] = keep[:, p]
        return cin

    def from_counts(self, keep: torch.Tensor, stored: torch.Tensor) -> Cost:
        """Cost from per-sample kept counts ``keep`` ``(N, L)`` and stored counts ``stored`` ``(L,)``."""
        keep = torch.as_tensor(keep, dtype=torch.long)
        if keep.ndim == 1:
            keep = keep.unsqueeze(0)
        stored = torch.as_tensor(stored, dtype=torch.long)
        cin = self._cin(keep)
        macs = self.fixed_macs + (self.unit_coef * cin * keep).sum(1) + (self.consumer_coef * keep).sum(1)
        pred_on = torch.tensor(self.has_predictor, dtype=torch.long)
        pred_macs = (pred_on * cin * stored).sum(1)
        cin_s = self._cin(stored.unsqueeze(0))[0]
        # backbone per unit: conv weight (+bias) + beta + (gamma or predictor bias)
        unit_params = self.kernel_area * cin_s * stored + self.unit_bias * stored + 2 * stored
        params = self.fixed_params + int(unit_params.sum()) + int((self.consumer_param_coef * stored).sum())
        us_on = torch.tensor(self.has_us, dtype=torch.long)
        pred_params = int((pred_on * (cin_s * stored + us_on * stored)).sum())
        base_macs = getattr(self, "base_macs", 0)
        base_params = getattr(self, "base_params", 0)
        return Cost(macs, pred_macs, params, pred_params, base_macs, base_params)

    def from_masks(self, masks: Sequence[torch.Tensor], stored: Sequence[torch.Tensor] | None = None) -> Cost:
        """Cost from applied keep masks (bool ``(N, C)`` per unit, :func:`pruning.gating.applied_masks`).

        Args:
            masks: Per-unit keep masks of one batch.
            stored: Per-unit stored masks (bool ``(C,)``); default: the union of ``masks`` is not a safe
                guess, so pass :func:`pruning.gating.stored_masks` of the model; ``None`` means all stored.
        """
        keep = torch.stack([m.sum(-1).cpu() for m in masks], dim=-1)
        st = self.channels if stored is None else torch.tensor([int(s.sum()) for s in stored])
        return self.from_counts(keep, st)

    def mac_coefficients(self) -> MacCoefficients:
        """The MAC part of this cost model as plain integers (:class:`MacCoefficients`)."""
        return MacCoefficients(
            base_macs=int(self.base_macs), fixed_macs=int(self.fixed_macs),
            channels=tuple(int(c) for c in self.channels), in_channels=tuple(int(c) for c in self.in_channels),
            unit_coef=tuple(int(c) for c in self.unit_coef), consumer_coef=tuple(int(c) for c in self.consumer_coef),
            producer=tuple(self.producer),
        )  # fmt: skip


@dataclass(frozen=True)
class MacCoefficients:
    """A model's MACs per sample as a function of its units' kept channel counts, in plain integers.

    Unit ``t`` keeping ``k_t`` output channels costs ``(unit_coef[t] · c_t + consumer_coef[t]) · k_t`` MACs, where
    ``c_t`` is its input width: the kept count of its producer unit (``producer[t]``), or ``in_channels[t]`` when
    its input is not a unit's output. Everything else (the stem, the classifier's fixed part, layers that are not
    units) is ``fixed_macs``. These are the MAC terms of :meth:`CostModel.from_counts`, without the model and
    without torch: they pickle and compare by value, so they travel to other processes (an environment's
    ``pruning_target()``) and into a scripted runtime source.

    Attributes:
        base_macs: MACs per sample of the unpruned model (every unit keeps ``channels``).
        fixed_macs: MACs that no unit's count changes.
        channels: Full output channels per unit.
        in_channels: Full input channels per unit.
        unit_coef: Per unit, the conv's MACs per kept input and output channel pair (kernel area × output
            pixels / groups).
        consumer_coef: Per unit, the MACs per kept output channel of its consumer when that is not a unit (the
            classifier or a projection that reads the unit's output).
        producer: Per unit, the index of the unit whose output is its input, or ``None``.
    """

    base_macs: int
    fixed_macs: int
    channels: tuple[int, ...]
    in_channels: tuple[int, ...]
    unit_coef: tuple[int, ...]
    consumer_coef: tuple[int, ...]
    producer: tuple[int | None, ...]

    def macs(self, keep: np.ndarray | Sequence[int]) -> np.ndarray:
        """MACs per sample, int64 ``(N,)``, for kept counts ``keep`` ``(L,)`` or ``(N, L)``.

        The same integers as ``CostModel.from_counts(keep, stored).macs`` (MACs do not depend on the stored
        counts).
        """
        kept = np.atleast_2d(np.asarray(keep, dtype=np.int64))
        total = np.full(len(kept), self.fixed_macs, dtype=np.int64)
        for t in range(len(self.unit_coef)):
            total += self.unit_macs(t, kept[:, t], kept.T)
        return total

    def unit_macs(self, t: int, kept: Any, kept_by_unit: Any) -> Any:
        """MACs of unit ``t`` keeping ``kept`` output channels: its conv and its consumer that is not a unit.

        The conv's input width is the kept count of its producer unit, read as ``kept_by_unit[producer[t]]``
        (a list of counts per unit, or the transpose of an ``(N, L)`` count array), or ``in_channels[t]`` when
        the unit reads no unit. ``kept`` may be an int, an array or a tensor (the result follows it): the
        running sum of a forward pass that charges each unit once it has run.
        """
        p = self.producer[t]
        cin = kept_by_unit[p] if p is not None else self.in_channels[t]
        return (self.unit_coef[t] * cin + self.consumer_coef[t]) * kept


def model_cost(
    model: nn.Module,
    plan: PruningPlan | None = None,
    *,
    inputs: torch.Tensor | None = None,
    input_size: tuple[int, int, int] = (3, 32, 32),
) -> Cost:
    """Cost of ``model`` under ``plan`` (``None``: its current plan, or unpruned).

    A plan with runtime ratios needs ``inputs``: which channels each sample keeps depends on its predictor
    output, so the masked model runs once on ``inputs`` (no gradient) and each sample is costed from its masks.

    Args:
        model: Plain or gated model; it is not modified.
        plan: Plan to cost.
        inputs: A batch, for runtime plans.
        input_size: ``(C, H, W)`` of one input.

    Raises:
        ValueError: a runtime plan without ``inputs``.
    """
    import copy

    from .gating import applied_masks, stored_masks

    work = copy.deepcopy(model) if is_gated(model) else gate_model(model, predictor=False)
    if plan is not None:
        set_plan(work, plan)
    cm = CostModel(work, input_size)
    has_runtime = any(g.runtime is not None for g in gated_units(work))
    stored = stored_masks(work)
    if not has_runtime:
        counts = torch.tensor([int(s.sum()) for s in stored])
        return cm.from_counts(counts, counts)
    if inputs is None:
        raise ValueError("a plan with runtime ratios needs inputs=<batch> to cost: masks depend on each input")
    work.eval()
    with torch.no_grad():
        work(inputs)
    return cm.from_masks(applied_masks(work), stored)


def sparsity_to_mac_fraction(
    model: nn.Module, sparsity: float, input_size: tuple[int, int, int] = (3, 32, 32)
) -> float:
    """MAC fraction of Chen et al.'s "sparsity b": every unit keeps ``b·C`` channels (real-valued, not rounded).

    Chen et al.'s released code (``--budget``) scales every gated conv's input and output widths by ``b`` except the
    image input, so its MAC cap is ≈ ``b²`` for M-CifarNet (sparsity 0.5 → 3.92× fewer MACs, Table 1). Here the same
    rule is applied to this model's units; in a ResNet only ``conv1`` of each block is a unit, so the fraction is about
    ``(1 + b) / 2`` of the block MACs.

    Args:
        model: Plain or gated model.
        sparsity: The uniform keep ratio b in (0, 1].
        input_size: ``(C, H, W)`` of one input.
    """
    if not (0.0 < sparsity <= 1.0):
        raise ValueError(f"sparsity b must be in (0, 1], got {sparsity}")
    cm = CostModel(model, input_size)
    keep = cm.channels.double() * sparsity
    cin = cm.in_channels.double().clone()
    for t, p in enumerate(cm.producer):
        if p is not None:
            cin[t] = keep[p]
    macs = cm.fixed_macs + float((cm.unit_coef * cin * keep).sum() + (cm.consumer_coef * keep).sum())
    return macs / cm.base_macs


def _unused(_: GatedConv) -> None:  # keeps the import used for type checkers
    return None
