"""A pruning plan: static keep ratios, runtime keep ratios and the trade-off rate R_r, validated.

A plan says *how many* channels each unit keeps; *which* ones is decided by importance (``u_s`` for static,
``u_r`` for runtime, or a criterion's scores). Ratios are **keep** ratios: unit ``t`` with ``C`` channels and
ratio ``a`` keeps ``k = clamp(ceil(a·C), 1, C)`` channels (:func:`keep_count`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["PruningPlan", "RuntimeSource", "keep_count", "RATIO_EPS", "RUNTIME_ORDERS"]

#: Tolerance used when turning ratios into counts, so ``0.7 * 10`` (= 7.000000000000001) keeps 7, not 8.
RATIO_EPS = 1e-9

#: A runtime keep-ratio source called per unit during the forward pass:
#: ``fn(unit_index, gap_of_input (N, C_in), u_r (N, C_out)) -> ratios (N,)``.
RuntimeSource = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def keep_count(ratio: torch.Tensor | float, channels: int) -> torch.Tensor:
    """Channels kept for a keep ratio: ``clamp(ceil(ratio·C), 1, C)`` (ratios within 1e-9 of a step round down).

    The released code of Chen, Chen & Pan ("Storage Efficient and Dynamic Flexible Runtime Channel Pruning via Deep
    Reinforcement Learning", NeurIPS 2020) keeps ``floor(a·C) + 1`` channels (its rank test uses ``<=``); we keep
    ``ceil(a·C)``, so ``a = 0.5`` of 16 channels keeps 8, not 9.

    Args:
        ratio: Keep ratio(s) in [0, 1]; a tensor gives one count per element.
        channels: C, the channels of the unpruned layer.
    """
    r = torch.as_tensor(ratio, dtype=torch.float64)
    return torch.ceil(r * channels - RATIO_EPS).clamp(1, channels).long()


def _check_ratios(values: torch.Tensor, what: str) -> None:
    if not torch.isfinite(values).all():
        if values.ndim == 0:
            raise ValueError(f"{what} is {values.item()}; keep ratios must be finite numbers in [0, 1]")
        bad = int((~torch.isfinite(values)).nonzero()[0, -1])
        raise ValueError(f"{what} of unit {bad} is {values.flatten()[0] if values.numel() == 1 else 'not finite'}; "
                         "keep ratios must be finite numbers in [0, 1]")
    if (values < 0).any() or (values > 1).any():
        bad_val = values[(values < 0) | (values > 1)].flatten()[0].item()
        raise ValueError(
            f"{what} contains {bad_val:g}; keep ratios must lie in [0, 1] "
            "(0 keeps one channel, 1 keeps all). Clip or rescale your actions before building the plan."
        )


#: How a runtime keep count picks channels (:attr:`PruningPlan.runtime_order`).
RUNTIME_ORDERS = ("u_r", "prefix")


@dataclass
class PruningPlan:
    """Static ratios, runtime ratios and the trade-off rate for every unit of a model.

    Attributes:
        static_keep: One keep ratio per unit, ranked by static importance ``u_s`` (or ``static_scores``);
            ``None`` keeps every channel statically.
        runtime_keep: ``None`` (runtime pruning off), one ratio for all units and samples, one ratio per unit
            (shape ``(L,)``), one per sample and unit (shape ``(N, L)``, N = the batch of the next forward), or
            a :data:`RuntimeSource` callable asked per unit during the forward pass.
        tradeoff: R_r of Chen et al. (Eqs. 3-5): 1 = pure runtime, 0 = pure static. ``None`` is allowed only when
            one side is absent: 0 for a static-only plan, 1 for a runtime-only plan.
        static_scores: Optional per-unit channel scores that replace ``u_s`` for the static ranking (a
            criterion such as L1 magnitude); higher = more important.
        runtime_order: Which channels a runtime keep count keeps (:data:`RUNTIME_ORDERS`). ``"u_r"`` (default,
            Chen et al. and FBS): each image its own top-k by the runtime importance ``u_r(x)``. ``"prefix"``: every
            image the first k of one fixed order per unit, the static ranking (``static_scores``, else ``u_s``;
            ties to the lower index), as in slimmable and dynamic-slimmable networks. Only the count then
            depends on the image, so an export that stores the channels in that order computes a runtime
            keep count as a contiguous slice of the weights (:class:`pruning.export.DynamicModel`).

    Channels that the plan can never keep, whatever the input, are the ``floor((1 - R_r)·(C - k_s))`` with the
    lowest static importance (``k_s`` = static keep count). They are *stored-pruned*: removed by
    :func:`pruning.export.export_static`. With runtime off, a unit computes exactly its stored channels.
    """

    static_keep: Sequence[float] | torch.Tensor | None = None
    runtime_keep: float | Sequence[float] | torch.Tensor | RuntimeSource | None = None
    tradeoff: float | None = None
    static_scores: Sequence[torch.Tensor] | None = None
    runtime_order: str = "u_r"

    def resolved_tradeoff(self) -> float:
        """R_r after applying the defaults (see ``tradeoff``)."""
        if self.tradeoff is not None:
            return float(self.tradeoff)
        if self.static_keep is not None and self.runtime_keep is not None:
            raise ValueError(
                "a plan with both static and runtime ratios needs tradeoff=R_r in [0, 1] "
                "(Chen et al. use 0.5; 1 = runtime only, 0 = static only)"
            )
        return 0.0 if self.runtime_keep is None else 1.0

    def validate(self, num_units: int, channels: Sequence[int] | None = None) -> None:
        """Check the plan against a model with ``num_units`` units (of ``channels`` output channels).

        Raises:
            ValueError: a ratio is NaN, infinite or outside [0, 1]; a length or shape does not match the
                number of units; R_r is outside [0, 1]; a score vector has the wrong size.
        """
        if self.runtime_order not in RUNTIME_ORDERS:
            raise ValueError(f"runtime_order must be one of {RUNTIME_ORDERS}, got {self.runtime_order!r}")
        r = self.resolved_tradeoff()
        if not (math.isfinite(r) and 0.0 <= r <= 1.0):
            raise ValueError(f"tradeoff R_r must be in [0, 1], got {r}")
        if self.static_keep is not None:
            s = torch.as_tensor(self.static_keep, dtype=torch.float64).flatten()
            if s.numel() != num_units:
                raise ValueError(
                    f"static_keep has {s.numel()} ratios but the model has {num_units} prunable units; "
                    "give one keep ratio per unit (pruning.units.get_units lists them)"
                )
            _check_ratios(s, "static keep ratio")
        rk = self.runtime_keep
        if rk is not None and not callable(rk):
            t = torch.as_tensor(rk, dtype=torch.float64)
            if t.ndim > 2 or (t.ndim >= 1 and t.shape[-1] != num_units):
                raise ValueError(
                    f"runtime_keep has shape {tuple(t.shape)}; expected a scalar, ({num_units},) or "
                    f"(batch, {num_units}) for a model with {num_units} prunable units"
                )
            _check_ratios(t, "runtime keep ratio")
        if self.static_scores is not None:
            if len(self.static_scores) != num_units:
                raise ValueError(f"static_scores has {len(self.static_scores)} entries, expected {num_units}")
            if channels is not None:
                for i, (sc, c) in enumerate(zip(self.static_scores, channels, strict=True)):
                    if tuple(sc.shape) != (c,):
                        raise ValueError(f"static_scores[{i}] has shape {tuple(sc.shape)}, expected ({c},)")
                    if not torch.isfinite(sc).all():
                        raise ValueError(f"static_scores[{i}] contains NaN or inf")

    def runtime_for_unit(self, index: int, num_units: int) -> torch.Tensor | RuntimeSource | None:
        """The runtime ratio(s) unit ``index`` uses: ``None``, a callable, a scalar or an ``(N,)`` tensor.

        Ratios stay in float64, as static ratios do: in float32, 0.1 is 0.10000000149 and would keep 2 of 10
        channels instead of 1 (:func:`keep_count` only forgives 1e-9).
        """
        rk = self.runtime_keep
        if rk is None or callable(rk):
            return rk
        t = torch.as_tensor(rk, dtype=torch.float64)
        if t.ndim == 0:
            return t
        if t.ndim == 1:
            return t[index]
        return t[:, index]
