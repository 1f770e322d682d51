"""GatedConv, the trade-off pruner and plans for whole models.

The mechanism of Sec. 3.1-3.2 of Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel Pruning
via Deep Reinforcement Learning", NeurIPS 2020; ``docs/architecture.md`` ("GatedConv and the trade-off pruner")
describes PruneGym's version of it.

A gated unit computes ::

    y = relu( BN_noaffine(conv(x)) * (u_r(x) ⊙ u_s ⊙ m) + β ⊙ m )

* ``u_r(x) = W_r · GAP(x) + b_r`` — the runtime importance (one ``nn.Linear(C_in, C_out)``, no activation),
  initialised ``W_r = 0``, ``b_r = γ_BN`` so a freshly gated net computes exactly the base net;
* ``u_s`` — the static importance, one learnable scalar per channel, initialised 1;
* ``m`` — the combined keep mask: static (per layer) × runtime (per sample), from :func:`tradeoff_pruned`.

Channel choice: a keep ratio ``a`` keeps ``k = clamp(ceil(a·C), 1, C)`` channels, the top-k by importance,
ties broken by the lower channel index (:func:`rank_desc`). The runtime importance is ``u_r(x)`` per image, or,
with a plan's ``runtime_order="prefix"``, the unit's fixed static ranking (every image keeps a prefix of one
order; the trade-off pruner then keeps a prefix too, since both of its rankings are that order).

**Stored channels.** With static keep count ``k_s`` and rate R_r, the ``floor((1 - R_r)·(C - k_s))`` channels
of lowest ``u_s`` are *stored-pruned*: they are ranked last for the runtime choice too (and the runtime keep
count is capped at the stored count), so they are always in the overlap ``M_o`` of Eq. 3 and never computed,
whatever the input. This makes exact the paper's statement that such channels "can never be selected" and can
be removed physically (:func:`pruning.export.export_static`); the expected pruned count ``o + R_r(n_r - o) +
(1 - R_r)(n_s - o) = R_r·n_r + (1 - R_r)·n_s`` of Eqs. 3-5 does not depend on the overlap ``o``, so this
changes no budget. R_r = 0 is pure static (stored = the top ``k_s``), R_r = 1 pure runtime.

A plain model can be gated without predictors (``predictor=False``): ``u_r`` is then the constant BN γ, and
the module is just a maskable conv + BN + ReLU. That is how static plans are applied to ungated models.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from .plan import RATIO_EPS, PruningPlan, RuntimeSource, keep_count
from .units import Unit, get_units

__all__ = [
    "GatedConv",
    "StaticSets",
    "applied_masks",
    "clear_plan",
    "gate_model",
    "gated_units",
    "is_gated",
    "rank_desc",
    "set_plan",
    "stored_masks",
    "tradeoff_pruned",
]


def rank_desc(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last dim, 0 = most important; ties go to the lower index.

    Example: ``rank_desc(tensor([0.2, 0.9, 0.2]))`` is ``tensor([1, 0, 2])``.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    ar = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return rank.scatter_(-1, order, ar)


def _lowest(member: torch.Tensor, rank: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Of the ``member`` channels of each row, the ``count`` with the largest rank (least important)."""
    key = torch.where(member, rank, torch.full_like(rank, -1))
    order = torch.argsort(key, dim=-1, descending=True)
    pos = torch.empty_like(order)
    pos.scatter_(-1, order, torch.arange(key.shape[-1], device=key.device).expand_as(order))
    return member & (pos < count.unsqueeze(-1))


def tradeoff_pruned(
    static_pruned: torch.Tensor,
    runtime_pruned: torch.Tensor,
    static_rank: torch.Tensor,
    runtime_rank: torch.Tensor,
    tradeoff: float,
) -> torch.Tensor:
    """Chen et al.'s trade-off pruner (Eqs. 3-5): which channels the combined mask prunes.

    1. ``M_o = M_s ∧ M_r`` is pruned;
    2. of the runtime-only channels ``M_r - M_o``, the ``floor(R_r·|M_r - M_o|)`` with the lowest ``u_r``;
    3. of the static-only channels ``M_s - M_o``, the ``floor((1 - R_r)·|M_s - M_o|)`` with the lowest ``u_s``.

    Args:
        static_pruned: ``M_s``, bool ``(C,)`` or ``(N, C)``.
        runtime_pruned: ``M_r``, bool ``(N, C)``.
        static_rank: Rank by ``u_s`` (0 = most important), ``(C,)`` or ``(N, C)``.
        runtime_rank: Rank by ``u_r``, ``(N, C)``.
        tradeoff: R_r in [0, 1].

    Returns:
        Bool ``(N, C)``, True = pruned.
    """
    s = static_pruned.expand_as(runtime_pruned)
    r = runtime_pruned
    only_r = r & ~s
    only_s = s & ~r
    c_r = torch.floor(tradeoff * only_r.sum(-1).double() + RATIO_EPS).long()
    c_s = torch.floor((1.0 - tradeoff) * only_s.sum(-1).double() + RATIO_EPS).long()
    return (s & r) | _lowest(only_r, runtime_rank, c_r) | _lowest(only_s, static_rank.expand_as(r), c_s)


class StaticSets(tuple):
    """``(stored, static_pruned, static_rank)`` of a unit: bool ``(C,)``, bool ``(C,)``, long ``(C,)``."""

    __slots__ = ()


class GatedConv(nn.Module):
    """A prunable conv + BN + ReLU with runtime and static channel importance (Chen et al., Sec. 3.1).

    Args:
        conv: The unit's convolution (copied).
        bn: Its BatchNorm2d (running statistics copied; γ becomes the predictor bias, β becomes ``beta``).
        predictor: Build the runtime predictor ``u_r = Linear(C_in, C_out)(GAP(x))``. Without it ``u_r`` is the
            constant γ (for applying plans to plain models).

    Plan state (set through :func:`set_plan`): ``static_keep`` (ratio or None), ``tradeoff`` (R_r),
    ``runtime`` (None, scalar/(N,) tensor, or a :data:`~pruning.plan.RuntimeSource`), ``static_scores``
    (criterion scores replacing ``u_s`` for the static ranking), ``runtime_order`` (``"u_r"`` or ``"prefix"``,
    :attr:`pruning.plan.PruningPlan.runtime_order`; an exported unit keeps the order it was exported with).
    After each forward ``last_keep`` holds the applied keep mask, bool ``(N, C)``.
    """

    predictor: nn.Linear | None
    gamma: nn.Parameter | None
    static_importance: nn.Parameter | None

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, *, predictor: bool = True) -> None:
        super().__init__()
        c_out = conv.out_channels
        self.conv = copy.deepcopy(conv)
        self.bn = nn.BatchNorm2d(c_out, eps=bn.eps, momentum=bn.momentum, affine=False)
        self.bn.load_state_dict(
            {k: v for k, v in bn.state_dict().items() if k in ("running_mean", "running_var", "num_batches_tracked")},
            strict=False,
        )
        gamma = bn.weight.detach().clone() if bn.affine else torch.ones(c_out)
        beta = bn.bias.detach().clone() if bn.affine else torch.zeros(c_out)
        self.beta = nn.Parameter(beta)
        if predictor:
            self.predictor = nn.Linear(conv.in_channels, c_out)
            with torch.no_grad():
                self.predictor.weight.zero_()
                self.predictor.bias.copy_(gamma)
            self.register_parameter("gamma", None)
        else:
            self.predictor = None
            self.gamma = nn.Parameter(gamma)
        self.static_importance = nn.Parameter(torch.ones(c_out))
        self.full_channels = c_out
        self.full_in_channels = conv.in_channels
        self.unit_index = -1
        self.static_keep: float | None = None
        self.tradeoff = 0.0
        self.runtime: torch.Tensor | RuntimeSource | None = None
        self.static_scores: torch.Tensor | None = None
        self.runtime_order = "u_r"
        self.last_keep: torch.Tensor | None = None

    @property
    def frozen_static(self) -> StaticSets | None:
        """Fixed ``(stored, static_pruned, static_rank)`` of an exported unit (buffers), else ``None``."""
        pruned = getattr(self, "frozen_static_pruned", None)
        if pruned is None:
            return None
        stored = torch.ones_like(pruned)
        return StaticSets((stored, pruned, self.frozen_static_rank))

    def freeze_static(
        self,
        static_pruned: torch.Tensor,
        static_rank: torch.Tensor,
        out_index: torch.Tensor,
        in_index: torch.Tensor | None = None,
    ) -> None:
        """Fix the static structure (used by export: every remaining channel is stored).

        Args:
            static_pruned: Which remaining channels the static side would still prune (``M_s``), bool.
            static_rank: Their ranks by ``u_s``.
            out_index: Positions of the remaining output channels in the original width.
            in_index: Positions of the remaining input channels in the original input width (``None``: the
                input was not sliced).
        """
        self.register_buffer("frozen_static_pruned", static_pruned.clone().bool())
        self.register_buffer("frozen_static_rank", static_rank.clone().long())
        self.register_buffer("frozen_out_index", out_index.clone().long())
        self.register_buffer("frozen_in_index", None if in_index is None else in_index.clone().long())
        self.static_keep = None

    def source_view(self, gap: torch.Tensor, u_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What a :data:`~pruning.plan.RuntimeSource` sees: ``(GAP, u_r)`` at the unit's original widths.

        Channels that are not stored read 0 in ``u_r`` (an exported unit no longer has them), and input
        channels removed upstream read 0 in the GAP (as they do in the masked model). So a source decides the
        same in the masked model, in the exported model and in :class:`pruning.export.DynamicModel`.
        """
        out_index = getattr(self, "frozen_out_index", None)
        if out_index is None:
            static = self.static_sets()
            return gap, (u_r if static is None else u_r.masked_fill(~static[0], 0.0))
        in_index = getattr(self, "frozen_in_index", None)
        if in_index is not None:
            gap = gap.new_zeros(gap.shape[0], self.full_in_channels).index_copy(1, in_index, gap)
        u_full = u_r.new_zeros(u_r.shape[0], self.full_channels).index_copy(1, out_index, u_r)
        return gap, u_full

    # -- importance -------------------------------------------------------------------------------------------
    def runtime_importance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(GAP(x), u_r(x))``, shapes ``(N, C_in)`` and ``(N, C_out)``."""
        gap = x.mean(dim=(2, 3))
        if self.predictor is not None:
            return gap, self.predictor(gap)
        assert self.gamma is not None
        return gap, self.gamma.unsqueeze(0).expand(x.shape[0], -1)

    def static_rank(self) -> torch.Tensor:
        """Rank of each channel in the static order (0 = most important); the prefix runtime order too.

        By ``static_scores`` if set, else by ``u_s`` (ties to the lower index); an exported unit's fixed ranks.
        """
        frozen = self.frozen_static
        if frozen is not None:
            return frozen[2]
        if self.static_scores is not None:
            scores = self.static_scores.to(self.beta.device)
        else:
            assert self.static_importance is not None
            scores = self.static_importance.detach()
        return rank_desc(scores)

    def static_sets(self) -> StaticSets | None:
        """``(stored, static_pruned, static_rank)`` under the current plan, or ``None`` without a static plan."""
        if self.frozen_static is not None:
            return self.frozen_static
        if self.static_keep is None:
            return None
        c = self.conv.out_channels
        rank = self.static_rank()
        k_s = int(keep_count(self.static_keep, c))
        n_removed = math.floor((1.0 - self.tradeoff) * (c - k_s) + RATIO_EPS)
        return StaticSets((rank < c - n_removed, rank >= k_s, rank))

    def keep_mask(self, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor | None:
        """The combined keep mask for a batch: ``None`` (keep all), bool ``(C,)`` (static) or ``(N, C)``."""
        static = self.static_sets()
        runtime = self.runtime
        if runtime is None:
            return None if static is None else static[0]
        n, c = u_r.shape
        if callable(runtime):
            ratios = runtime(self.unit_index, *self.source_view(gap, u_r))
        else:
            ratios = runtime
        ratios = torch.as_tensor(ratios, dtype=torch.float64, device=u_r.device).flatten()
        if ratios.numel() not in (1, n):
            raise ValueError(
                f"unit {self.unit_index}: runtime ratios given for {ratios.numel()} samples, batch has {n}"
            )
        if not torch.isfinite(ratios).all() or (ratios < 0).any() or (ratios > 1).any():
            raise ValueError(f"unit {self.unit_index}: runtime keep ratios must be finite and in [0, 1]")
        prefix = self.runtime_order == "prefix"
        if static is None:
            dev = u_r.device
            stored = torch.ones(c, dtype=torch.bool, device=dev)
            s_pruned = torch.zeros(c, dtype=torch.bool, device=dev)
            s_rank = self.static_rank() if prefix else torch.arange(c, device=dev)
        else:
            stored, s_pruned, s_rank = static
        k_r = keep_count(ratios, self.full_channels).to(u_r.device).clamp(max=int(stored.sum()))
        if prefix:  # stored channels are the first of the static order, so a prefix of it is stored
            r_rank = s_rank.expand(n, c)
        else:
            r_rank = rank_desc(u_r.detach().masked_fill(~stored, float("-inf")))
        r_pruned = r_rank >= k_r.expand(n).unsqueeze(1)
        return ~tradeoff_pruned(s_pruned, r_pruned, s_rank, r_rank, self.tradeoff)

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        gap, u_r = self.runtime_importance(x)
        z = self.bn(self.conv(x))
        u = u_r if self.static_importance is None else u_r * self.static_importance
        keep = self.keep_mask(gap, u_r)
        beta = self.beta.unsqueeze(0)
        if keep is None:
            self.last_keep = torch.ones_like(u, dtype=torch.bool)
        else:
            self.last_keep = keep.expand_as(u).detach()
            m = keep.to(u.dtype)
            u = u * m
            beta = beta * m
        # one pass for z·u + β, ReLU in place (the epilogue dominates a gated unit's cost beside its conv)
        return torch.addcmul(beta[:, :, None, None], z, u[:, :, None, None]).relu_()

    def extra_repr(self) -> str:  # noqa: D102
        return f"predictor={self.predictor is not None}, unit={self.unit_index}"


def is_gated(model: nn.Module) -> bool:
    """Whether ``model`` contains gated units."""
    return any(isinstance(m, GatedConv) for m in model.modules())


def gate_model(model: nn.Module, *, predictor: bool = True, inplace: bool = False) -> nn.Module:
    """Replace every prunable unit's conv + BN by a :class:`GatedConv` (BN → ``Identity``).

    A freshly gated model computes the same logits as ``model`` (eval mode; BN statistics are kept).

    Args:
        model: A model with a registered unit rule (every model of :mod:`pruning.models`).
        predictor: Build runtime predictors (``False``: a maskable model without ``u_r``).
        inplace: Modify ``model`` itself instead of a deep copy.

    Raises:
        ValueError: ``model`` is gated already.
    """
    if is_gated(model):
        raise ValueError("model is gated already; gate_model takes a plain model")
    out = model if inplace else copy.deepcopy(model)
    mods = dict(out.named_modules())
    for u in get_units(out):
        conv, bn = mods[u.conv], mods[u.bn]
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"unit {u.conv} must be Conv2d followed by BatchNorm2d")
        g = GatedConv(conv, bn, predictor=predictor)
        g.unit_index = u.index
        g.to(device=conv.weight.device, dtype=conv.weight.dtype)
        _set_module(out, u.conv, g)
        _set_module(out, u.bn, nn.Identity())
    return out


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def gated_units(model: nn.Module) -> list[GatedConv]:
    """The gated units of ``model`` in unit order.

    Raises:
        ValueError: ``model`` is not gated (call :func:`gate_model` first).
    """
    units = [m for m in model.modules() if isinstance(m, GatedConv)]
    if not units:
        raise ValueError("model has no gated units; call pruning.gating.gate_model(model) first")
    return sorted(units, key=lambda g: g.unit_index)


def set_plan(model: nn.Module, plan: PruningPlan) -> None:
    """Apply ``plan`` to every gated unit of ``model`` (validated first; nothing changes if it is invalid).

    Raises:
        ValueError: the plan does not fit the model (see :meth:`PruningPlan.validate`) or the model is an
            exported one (its static structure is fixed; only runtime ratios may change, through
            :class:`pruning.export.DynamicModel`).
    """
    units = gated_units(model)
    plan.validate(len(units), [g.conv.out_channels for g in units])
    r = plan.resolved_tradeoff()
    if any(g.frozen_static is not None for g in units) and plan.static_keep is not None:
        raise ValueError("this model is exported: its static plan is fixed; pass static_keep=None")
    for g in units:
        if g.frozen_static is not None and plan.runtime_keep is not None and plan.runtime_order != g.runtime_order:
            raise ValueError(
                f"this model was exported with runtime_order={g.runtime_order!r} (its channels are stored in that "
                f"order); pass a plan with runtime_order={g.runtime_order!r}"
            )
    static = None if plan.static_keep is None else torch.as_tensor(plan.static_keep, dtype=torch.float64)
    for i, g in enumerate(units):
        g.static_keep = None if static is None else float(static[i])
        g.tradeoff = r
        g.runtime = plan.runtime_for_unit(i, len(units))
        g.static_scores = None if plan.static_scores is None else plan.static_scores[i].detach().clone()
        if g.frozen_static is None:
            g.runtime_order = plan.runtime_order


def clear_plan(model: nn.Module) -> None:
    """Remove any plan: every unit keeps all its (stored) channels."""
    for g in gated_units(model):
        g.static_keep, g.tradeoff, g.runtime, g.static_scores = None, 0.0, None, None
        if g.frozen_static is None:
            g.runtime_order = "u_r"


def applied_masks(model: nn.Module) -> list[torch.Tensor]:
    """Keep masks applied by the last forward pass, one bool ``(N, C)`` tensor per unit."""
    out = []
    for g in gated_units(model):
        if g.last_keep is None:
            raise ValueError("no forward pass has run since the model was gated; run one first")
        out.append(g.last_keep)
    return out


def stored_masks(model: nn.Module) -> list[torch.Tensor]:
    """Channels each unit can ever compute under the current plan (bool ``(C,)``): what export keeps."""
    out = []
    for g in gated_units(model):
        s = g.static_sets()
        out.append(torch.ones(g.conv.out_channels, dtype=torch.bool) if s is None else s[0].cpu())
    return out


def units_of(model: nn.Module) -> Sequence[Unit]:
    """Alias of :func:`pruning.units.get_units`, for symmetry with :func:`gated_units`."""
    return get_units(model)
