"""Physical removal of statically pruned channels, and the deployable dynamic model (docs/architecture.md, "Export").

:func:`export_static` slices every unit's conv output channels, BN statistics and importance vectors, and its
consumer's input channels, to the channels the plan *stores* (see :mod:`pruning.gating`). What comes out:

* from a plain model (or one gated with ``predictor=False``): a plain model of the same class with thinner
  convs and BNs (``γ·u_s`` folded into the BN weight) — torchvision-style, nothing PruneGym-specific inside;
* from a gated model with predictors: the same gated model with sliced units. Each unit keeps its predictor
  (rows for kept outputs, columns for kept inputs), ``u_s``, and its fixed static structure (which of the
  stored channels the static side would still prune, and their ``u_s`` ranks), so runtime ratios applied
  later select exactly the channels the masked model selects.

Its logits equal the masked model's (runtime off) and its parameter count equals
:class:`pruning.accounting.Cost.total_params`. :func:`save_exported` / :func:`load_exported` store it as plain
tensors (``torch.load(weights_only=True)``).

:class:`DynamicModel` = exported model + a runtime ratio source. At batch 1 it computes only the kept channels
(``index_select`` of the weights of each unit, of its predictor and of its consumer), so runtime pruning gives
a real latency gain; at larger batches each unit computes the masked model's keep masks and then only the channels
some image of the batch keeps (the longest kept prefix in prefix order, the union in ``u_r`` order), the others'
zeroed per image. Its logits equal the masked model's either way.
"""

from __future__ import annotations

import copy
import math
import operator
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .gating import GatedConv, gate_model, gated_units, is_gated, rank_desc, set_plan, stored_masks
from .models import PlainConvNet, ResNetCifar, get_model
from .models.weights import input_normalization, load_checkpoint_file
from .plan import RATIO_EPS, PruningPlan, RuntimeSource
from .units import get_units

__all__ = [
    "DynamicModel",
    "export_static",
    "fold_dropped_constants",
    "folded_unit",
    "last_kept_count",
    "load_exported",
    "prefix_count",
    "runtime_count",
    "save_exported",
]


def _slice_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Conv2d:
    w = conv.weight.detach()
    if out_idx is not None:
        w = w.index_select(0, out_idx)
    if in_idx is not None:
        w = w.index_select(1, in_idx)
    new = nn.Conv2d(
        w.shape[1] * conv.groups,
        w.shape[0],
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=w.device,
        dtype=w.dtype,
    )
    new.weight.data.copy_(w)
    if conv.bias is not None:
        b = conv.bias.detach()
        new.bias.data.copy_(b if out_idx is None else b.index_select(0, out_idx))  # type: ignore[union-attr]
    return new


def _slice_param(p: torch.Tensor | None, idx: torch.Tensor, dim: int = 0) -> nn.Parameter | None:
    return None if p is None else nn.Parameter(p.detach().index_select(dim, idx).clone())


def _slice_units(model: nn.Module, idx: Sequence[torch.Tensor], *, plain: bool) -> nn.Module:
    """Cut a gated model to the channels ``idx[t]`` of every unit (in place on ``model``, returned).

    With ``plain=True`` each unit becomes ``Conv2d`` + ``BatchNorm2d`` again (``γ·u_s`` folded into BN).
    """
    units = get_units(model)
    gunits = gated_units(model)
    for u, g in zip(units, gunits, strict=True):
        out_idx = idx[u.index]
        in_idx = None if u.producer is None else idx[u.producer]
        # static structure of the stored channels, in stored index space (order preserved)
        sets = g.static_sets()
        conv = _slice_conv(g.conv, out_idx, in_idx)
        bn = g.bn
        rm = bn.running_mean.index_select(0, out_idx)  # type: ignore[union-attr]
        rv = bn.running_var.index_select(0, out_idx)  # type: ignore[union-attr]
        if plain:
            assert g.gamma is not None or g.predictor is not None
            gamma = g.gamma if g.gamma is not None else g.predictor.bias  # type: ignore[union-attr]
            scale = gamma.detach() if g.static_importance is None else gamma.detach() * g.static_importance.detach()
            new_bn = nn.BatchNorm2d(len(out_idx), eps=bn.eps, momentum=bn.momentum).to(rm)
            new_bn.running_mean.copy_(rm)  # type: ignore[union-attr]
            new_bn.running_var.copy_(rv)  # type: ignore[union-attr]
            new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)  # type: ignore[union-attr,arg-type]
            new_bn.weight.data.copy_(scale.index_select(0, out_idx))
            new_bn.bias.data.copy_(g.beta.detach().index_select(0, out_idx))
            _set(model, u.conv, conv)
            _set(model, u.bn, new_bn)
        else:
            g.conv = conv
            new_bn = nn.BatchNorm2d(len(out_idx), eps=bn.eps, momentum=bn.momentum, affine=False).to(rm)
            new_bn.running_mean.copy_(rm)  # type: ignore[union-attr]
            new_bn.running_var.copy_(rv)  # type: ignore[union-attr]
            new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)  # type: ignore[union-attr,arg-type]
            g.bn = new_bn
            g.beta = _slice_param(g.beta, out_idx)  # type: ignore[assignment]
            if g.predictor is not None:
                lin = g.predictor
                w = lin.weight.detach().index_select(0, out_idx)
                if in_idx is not None:
                    w = w.index_select(1, in_idx)
                new_lin = nn.Linear(w.shape[1], w.shape[0]).to(w)
                new_lin.weight.data.copy_(w)
                new_lin.bias.data.copy_(lin.bias.detach().index_select(0, out_idx))
                g.predictor = new_lin
            g.gamma = _slice_param(g.gamma, out_idx)  # type: ignore[assignment]
            g.static_importance = _slice_param(g.static_importance, out_idx)  # type: ignore[assignment]
            if sets is None:
                pruned = torch.zeros(len(out_idx), dtype=torch.bool, device=out_idx.device)
                rank = torch.arange(len(out_idx), device=out_idx.device)
            else:
                pruned = sets[1].index_select(0, out_idx)
                rank = rank_desc(-sets[2].index_select(0, out_idx).double())
            g.static_keep, g.runtime, g.static_scores = None, None, None
            g.freeze_static(pruned, rank, out_idx, in_idx)
        consumer = model.get_submodule(u.consumer)
        if isinstance(consumer, nn.Conv2d):
            _set(model, u.consumer, _slice_conv(consumer, None, out_idx))
    return model


def _set(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, new)


#: Model classes whose units feed their consumer through ``BN → ReLU`` (what :func:`fold_dropped_constants` needs).
_RELU_AFTER_BN = (ResNetCifar, PlainConvNet)


def fold_dropped_constants(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy of a plain ``model`` whose consumers absorb the constant output of the channels ``plan`` drops.

    Slicing a channel removes what it fed to the next conv. For a channel whose output is constant that is a
    loss the consumer can take over: a unit channel ``c`` with BN scale ``γ_c = 0`` (what Polarization's
    clamp leaves) or an all-zero filter (gRDA's zero filters) outputs ``v_c = ReLU(β_c − γ_c·μ_c/√(σ_c² + ε))``
    (its ``ReLU(BN(0))``) at every pixel. Its contribution to the consumer's output channel ``o`` away from
    the zero-padded border is ``b_o = Σ_c v_c·Σ_{i,j} W[o, c, i, j]``, which this function adds through the
    consumer: subtracted from the running mean of the consumer's own BatchNorm (``consumer_bn`` of the unit
    rule; ``BN(y + b)`` with mean ``μ`` equals ``BN(y)`` with mean ``μ − b``), else added to the consumer
    conv's bias (created if absent). :func:`export_static` of the copy with the same plan then slices the
    channels out.

    Exact at every output pixel whose receptive field lies inside the input (the border pixels of a padded
    consumer saw zeros there and get a slightly different value: ``agents.baselines.polarization.fold_border`` adds
    that difference as a fixed map per output channel); for a dropped channel that is not constant
    ``v_c`` is its output at zero conv response, an approximation. Channels the plan keeps are untouched.

    Args:
        model: A plain model (eval-mode statistics are used) of a class whose units go through BN then ReLU
            (:class:`~pruning.models.ResNetCifar`, :class:`~pruning.models.PlainConvNet`).
        plan: The static plan to be exported.

    Returns:
        The folded copy (``model`` is not modified), in ``model``'s training mode.

    Raises:
        TypeError: ``model`` is gated, or of a class whose unit activation is not known to be ReLU.
    """
    if is_gated(model):
        raise TypeError("fold_dropped_constants takes a plain model; export a gated model with export_static")
    if not isinstance(model, _RELU_AFTER_BN):
        names = ", ".join(c.__name__ for c in _RELU_AFTER_BN)
        raise TypeError(f"{type(model).__name__}: the fold assumes BN → ReLU after each unit ({names} do)")
    gated = gate_model(copy.deepcopy(model), predictor=False)
    set_plan(gated, plan)
    dropped = [~m for m in stored_masks(gated)]
    out = copy.deepcopy(model)
    for u, drop in zip(get_units(out), dropped, strict=True):
        if not bool(drop.any()):
            continue
        bn = out.get_submodule(u.bn)
        consumer = out.get_submodule(u.consumer)
        assert isinstance(bn, nn.BatchNorm2d) and isinstance(consumer, nn.Conv2d)
        mean, var = bn.running_mean, bn.running_var
        if mean is None or var is None or bn.weight is None or bn.bias is None:
            raise ValueError(f"{u.bn}: the fold needs a BatchNorm with running statistics and an affine scale")
        with torch.no_grad():
            std = (var + bn.eps).sqrt()
            v = F.relu(bn.bias - bn.weight * mean / std) * drop.to(std)
            b = torch.einsum("ocij,c->o", consumer.weight, v.to(consumer.weight))
            cbn = out.get_submodule(u.consumer_bn) if u.consumer_bn is not None else None
            if isinstance(cbn, nn.BatchNorm2d) and cbn.running_mean is not None:
                cbn.running_mean.sub_(b)
            elif consumer.bias is not None:
                consumer.bias.add_(b)
            else:
                consumer.bias = nn.Parameter(b.clone())
    return out


def export_static(model: nn.Module, plan: PruningPlan | None = None) -> nn.Module:
    """Return a physically smaller copy of ``model`` holding only the channels ``plan`` stores.

    Args:
        model: A plain model, or a gated one (its current plan is used when ``plan`` is ``None``).
        plan: The plan; only its static side and R_r matter (runtime ratios are per input and stay with
            :class:`DynamicModel`). With ``tradeoff = R_r`` the unit stores all but the
            ``floor((1 - R_r)·(C - k_s))`` channels of lowest static importance.

    Returns:
        A plain model (input plain, or gated without predictors) or a gated model with fixed static
        structure (input gated with predictors), in eval mode, on the input's device.
    """
    plain_out = not is_gated(model) or all(g.predictor is None for g in gated_units(model))
    work = copy.deepcopy(model) if is_gated(model) else gate_model(model, predictor=False)
    if plan is not None:
        set_plan(work, plan)
    idx = [m.nonzero().squeeze(1).to(next(work.parameters()).device) for m in stored_masks(work)]
    for t, g in enumerate(gated_units(work)):
        g.last_keep = None
        if g.runtime_order == "prefix" and g.frozen_static is None:
            # store the channels in the static order: a runtime keep count is then the first k (a slice)
            rank = g.static_rank().to(idx[t].device)
            idx[t] = idx[t][torch.argsort(rank.index_select(0, idx[t]), stable=True)]
    out = _slice_units(work, idx, plain=plain_out)
    if plain_out:
        for g in [m for m in out.modules() if isinstance(m, GatedConv)]:
            raise AssertionError(f"unit {g.unit_index} left gated in a plain export")
    return out.eval()


def save_exported(path: str | Path, model: nn.Module, *, arch: str, num_classes: int, **extra: Any) -> None:
    """Save an exported model as plain tensors + the shapes needed to rebuild it (atomically).

    Args:
        path: Destination file.
        model: Output of :func:`export_static`.
        arch: Registry name of the base architecture (``pruning.models.list_models``).
        num_classes: Classifier outputs.
        **extra: Plain-typed metadata stored alongside (e.g. the plan's ratios, accuracy).
    """
    gated = is_gated(model)
    units = get_units(model)
    meta: dict[str, Any] = {
        "format": "prunegym.exported.v1",
        "arch": arch,
        "num_classes": num_classes,
        "gated": gated,
        "channels": [u.out_channels for u in units],
        "normalization": {"mean": list(input_normalization(model)[0]), "std": list(input_normalization(model)[1])},
        **extra,
    }
    if gated:
        gus = gated_units(model)
        meta["predictor"] = gus[0].predictor is not None
        meta["full_channels"] = [g.full_channels for g in gus]
        meta["full_in_channels"] = [g.full_in_channels for g in gus]
        meta["tradeoff"] = [g.tradeoff for g in gus]
        meta["runtime_order"] = [g.runtime_order for g in gus]
    obj = {"state_dict": model.state_dict(), **meta}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_exported` (read with ``weights_only=True``).

    Raises:
        ValueError: the file is not an exported PruneGym model, or its tensors do not fit its shapes.
    """
    obj = load_checkpoint_file(path)
    if not isinstance(obj, dict) or obj.get("format") != "prunegym.exported.v1":
        raise ValueError(f"{path} is not an exported PruneGym model (no 'format': 'prunegym.exported.v1')")
    base = get_model(obj["arch"], num_classes=obj["num_classes"])
    if obj["gated"]:
        base = gate_model(base, predictor=obj["predictor"], inplace=True)
        widths = zip(obj["full_channels"], obj["full_in_channels"], obj["tradeoff"], strict=True)
        orders = obj.get("runtime_order") or ["u_r"] * len(obj["full_channels"])
        for g, (full, full_in, r), order in zip(gated_units(base), widths, orders, strict=True):
            g.full_channels, g.full_in_channels, g.tradeoff = int(full), int(full_in), float(r)
            g.runtime_order = str(order)
    else:
        base = gate_model(base, predictor=False, inplace=True)
    idx = [torch.arange(c) for c in obj["channels"]]
    model = _slice_units(base, idx, plain=not obj["gated"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: tensors do not fit the recorded shapes: {e}") from e
    n = obj.get("normalization")
    if n:
        model.normalization = (tuple(n["mean"]), tuple(n["std"]))  # type: ignore[assignment]
    return model.eval()


def last_kept_count(unit: GatedConv) -> int | torch.Tensor:
    """Channels ``unit`` kept in the last forward pass: an ``int`` where the unit knows it as one, else int64 ``(N,)``.

    A :class:`DynamicModel` unit at batch 1 reports a Python integer (no mask is built); any other gated unit
    counts its ``last_keep`` mask. Runtime sources that charge MACs per unit read it.

    Raises:
        RuntimeError: the unit has not run since it was built.
    """
    count = unit.__dict__.get("last_count")
    if count is not None:
        return count  # type: ignore[no-any-return]
    keep = unit.last_keep
    if keep is None:
        raise RuntimeError(f"unit {unit.unit_index} has not run yet; units must run in index order")
    return keep.sum(-1)


def runtime_count(r: float, full: int, stored: int, eps: float) -> int:
    """``k_r``: the channels a runtime keep ratio ``r`` asks of a unit of original width ``full``.

    ``clamp(ceil(r·full - eps), 1, min(full, stored))`` (``stored``: the channels the export kept). What the
    trade-off pruner starts from in every dynamic form; plain Python, so TorchScript compiles it.
    """
    return min(max(math.ceil(r * full - eps), 1), full, stored)


def prefix_count(r: float, full: int, stored: int, active: int, tradeoff: float, eps: float) -> int:
    """Channels a prefix-order unit keeps at runtime ratio ``r`` (the first ones of its stored order).

    ``full``: the unit's original width; ``stored``: its stored channels; ``active``: those the static side keeps
    (the first ``active`` of the stored order); ``tradeoff``: R_r. The trade-off pruner with both rankings the
    stored order: of ``[k_r, active)`` the last ``floor(R_r·(active - k_r))`` go, of ``[active, k_r)`` the last
    ``floor((1 - R_r)·(k_r - active))``. Plain Python, so TorchScript compiles it (:mod:`pruning.deploy`).
    """
    k_r = runtime_count(r, full, stored, eps)
    if k_r < active:
        return active - math.floor(tradeoff * (active - k_r) + eps)
    return k_r - math.floor((1.0 - tradeoff) * (k_r - active) + eps)


class _CompactUnit(GatedConv):
    """A gated unit that, at batch 1, computes only its kept output channels from its producer's kept inputs.

    Batch-1 inference is a handful of small tensor ops, so per-op overhead, not arithmetic, decides its speed
    (candidates measured side by side in ``bench/runtime_latency.py``). Per unit and image:

    * GAP and ``u_r`` (one linear layer); the runtime ratio, a constant or one call of the runtime source (which
      sees ``(GAP, u_r)`` at the original widths, as in the masked model);
    * the kept channels: with no statically pruned stored channel, or R_r = 1, the trade-off pruner keeps the
      top ``n`` channels by ``u_r`` (``n`` from the ratio alone): one stable sort, ties to the lower index;
      otherwise the trade-off pruner of Chen, Chen & Pan ("Storage Efficient and Dynamic Flexible Runtime Channel
      Pruning via Deep Reinforcement Learning", NeurIPS 2020; :func:`pruning.gating.tradeoff_pruned`) on the sorted
      channel list in plain Python (a few dozen integers; cheaper than the dozen tensor ops of the batched version);
    * BN, ``u_s`` and ``u_r`` folded into the sliced conv weights and bias: one ``index_select`` of the folded
      weights, one of the folded BN shift, one conv with ReLU. The input-independent part ``W·u_s/sqrt(var +
      eps)`` is cached while no parameter or statistic changes (and only without autograd, so gradients still
      reach the parameters).

    With the prefix runtime order (exported in that order: :func:`export_static`) the kept channels are the first
    ``n``, where ``n`` follows from the ratio alone, and every gather becomes a slice: ``W[:n]``, the folded BN
    shift ``[:n]``, the consumer's ``W[:, :n]``.

    No keep mask is built: ``last_idx`` (the kept channels) or ``last_prefix`` (their number, prefix order) and
    ``last_count`` are recorded, and ``last_keep`` turns them into a mask only when read.
    """

    source: _CompactUnit | None
    last_idx: torch.Tensor | None  # kept channels of the last batch-1 forward (any order)
    last_prefix: int | None  # or, in prefix order: the kept channels are the first last_prefix
    last_count: int | None  # their number (None after a batched forward: count last_keep)

    def _prepare(self) -> None:
        """Cache what the batch-1 path reads on every call (the fixed static structure as Python values)."""
        frozen = self.frozen_static
        assert frozen is not None, "DynamicModel units are exported (fixed static structure)"
        pruned = frozen[1].tolist()
        d = self.__dict__
        d["_static_pruned"] = pruned
        d["_static_rank"] = frozen[2].tolist()
        d["_any_static"] = any(pruned)
        # a source sees u_r at the original channel positions: remap whenever the stored channels are not the
        # original ones in order (fewer of them, or the prefix order's static order)
        out_index = getattr(self, "frozen_out_index", None)
        d["_widen_out"] = self.conv.out_channels != self.full_channels or (
            out_index is not None
            and not torch.equal(out_index, torch.arange(self.full_channels, device=out_index.device))
        )
        d["_prefix"] = self.runtime_order == "prefix"
        d["_active"] = len(pruned) - sum(pruned)  # stored channels the static side keeps
        in_order = pruned == sorted(pruned) and frozen[2].tolist() == list(range(len(pruned)))
        if d["_prefix"] and not in_order:
            raise ValueError(
                f"unit {self.unit_index}: a prefix-order unit must store its channels in the static order; "
                "export it with pruning.export.export_static under a plan with runtime_order='prefix'"
            )
        d.pop("last_keep", None)  # GatedConv's instance attribute: the property below replaces it
        d["_last_keep"], d["last_idx"], d["last_prefix"], d["last_count"] = None, None, None, None

    @property  # type: ignore[override]
    def last_keep(self) -> torch.Tensor | None:  # noqa: D102 (GatedConv documents it)
        d = self.__dict__
        keep = d["_last_keep"]
        idx, n = d["last_idx"], d["last_prefix"]
        if keep is None and idx is not None:
            keep = torch.zeros(1, self.conv.out_channels, dtype=torch.bool, device=idx.device)
            keep = keep.index_fill_(1, idx, True)
            d["_last_keep"] = keep
        elif keep is None and n is not None:
            keep = torch.zeros(1, self.conv.out_channels, dtype=torch.bool, device=self.beta.device)
            keep[:, :n] = True
            d["_last_keep"] = keep
        return keep  # type: ignore[no-any-return]

    @last_keep.setter
    def last_keep(self, value: torch.Tensor | None) -> None:
        self.__dict__["_last_keep"] = value

    def _ratio(
        self, gap: torch.Tensor, u_r: torch.Tensor, in_idx: torch.Tensor | None, in_n: int | None = None
    ) -> float | None:
        """This image's runtime keep ratio (validated), or ``None`` with runtime pruning off."""
        runtime = self.runtime
        if runtime is None:
            return None
        if isinstance(runtime, torch.Tensor):
            r = float(runtime)
        else:
            if in_idx is not None:  # the producer's kept channels at the stored input width
                gap = gap.new_zeros(1, self.conv.in_channels).index_copy(1, in_idx, gap)
            elif in_n is not None:  # a prefix producer: its first in_n channels
                gap = F.pad(gap, (0, self.conv.in_channels - in_n))
            if in_idx is not None or in_n is not None or self.__dict__["_widen_out"]:
                gap, u_r = self.source_view(gap, u_r)
            single = getattr(runtime, "single", None)  # a source's batch-1 shortcut: a Python float
            ratios = runtime(self.unit_index, gap, u_r) if single is None else single(self.unit_index, gap, u_r)
            if isinstance(ratios, float):
                r = ratios
            else:
                values = torch.as_tensor(ratios, dtype=torch.float64).flatten()
                if values.numel() != 1:
                    raise ValueError(
                        f"unit {self.unit_index}: runtime ratios given for {values.numel()} samples, batch has 1"
                    )
                r = float(values)
        if not 0.0 <= r <= 1.0:  # NaN too
            raise ValueError(f"unit {self.unit_index}: runtime keep ratios must be finite and in [0, 1]")
        return r

    def _prefix_count(self, r: float | None) -> int:
        """How many channels (the first, in prefix order) ratio ``r`` keeps: the masked model's count."""
        c = self.conv.out_channels
        if r is None:
            return c
        return prefix_count(r, self.full_channels, c, self.__dict__["_active"], self.tradeoff, RATIO_EPS)

    def _kept(self, r: float | None, u_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(kept channels, their u_r, count)`` for ratio ``r``: exactly the masked model's keep set."""
        d = self.__dict__
        c = self.conv.out_channels
        if r is None:
            return torch.arange(c, device=u_r.device), u_r, c
        # keep_count(r, full_channels) capped at the stored count, as in GatedConv.keep_mask
        k_r = runtime_count(r, self.full_channels, c, RATIO_EPS)
        rho = self.tradeoff
        # the first k of a stable descending sort are the channels of rank_desc(u_r) < k
        u_sorted, order = torch.sort(u_r, descending=True, stable=True)
        if rho == 1.0 or not d["_any_static"]:
            # R_r = 1 prunes exactly the runtime-pruned set; with no static set the trade-off pruner removes
            # the floor(R_r·(c - k_r)) runtime-pruned channels of lowest u_r
            n = k_r if rho == 1.0 else c - math.floor(rho * (c - k_r) + RATIO_EPS)
            return order[:n], u_sorted[:n], n
        # tradeoff_pruned on channel lists: M_r = order[k_r:], M_s = the fixed static set
        static, srank = d["_static_pruned"], d["_static_rank"]
        ranked = order.tolist()
        head, tail = ranked[:k_r], ranked[k_r:]
        only_s = [i for i in head if static[i]]  # static-only: pruned by u_s rank
        only_r = [i for i in tail if not static[i]]  # runtime-only: pruned by u_r rank (their order in tail)
        c_r = math.floor(rho * len(only_r) + RATIO_EPS)
        c_s = math.floor((1.0 - rho) * len(only_s) + RATIO_EPS)
        dropped = set(sorted(only_s, key=srank.__getitem__)[len(only_s) - c_s :]) if c_s else set()
        kept = [i for i in head if i not in dropped] + only_r[: len(only_r) - c_r]
        idx = torch.tensor(kept, dtype=torch.long, device=u_r.device)
        return idx, u_r.index_select(0, idx), len(kept)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W·a, [β; (b - mean)·a])`` with ``a = u_s / sqrt(var + eps)``: the unit without ``u_r``."""
        conv, bn = self.conv, self.bn
        # dict look-ups instead of nn.Module.__getattr__: this runs once per unit and sample
        parts = (
            conv._parameters["weight"],
            conv._parameters.get("bias"),
            bn._buffers["running_mean"],
            bn._buffers["running_var"],
            self._parameters["beta"],
            self._parameters.get("static_importance"),
        )
        key: tuple[tuple[int, int] | None, ...] | None = None
        if not torch.is_grad_enabled():
            try:  # in-place updates bump _version; .to() / .half() swap .data, which changes data_ptr
                key = tuple(None if t is None else (t._version, t.data_ptr()) for t in parts)
            except RuntimeError:  # inference tensors have no version counter: no cache
                key = None
            cache = self.__dict__.get("_fold_cache")
            if key is not None and cache is not None and cache[1] == key and all(map(operator.is_, cache[0], parts)):
                return cache[2], cache[3]
        w, b, rm, rv, beta, us = parts
        assert w is not None and rm is not None and rv is not None and beta is not None
        a = torch.rsqrt(rv + bn.eps)
        if us is not None:
            a = a * us
        shift = -rm if b is None else b - rm
        folded = (w * a[:, None, None, None], torch.stack([beta, shift * a]))
        if key is not None:
            self.__dict__["_fold_cache"] = (parts, key, *folded)
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        d = self.__dict__
        src = self.source
        in_idx = None if src is None else src.last_idx
        in_n = None if src is None else src.__dict__["last_prefix"]
        runtime = self.runtime
        if (
            x.shape[0] != 1
            or (in_idx is None and in_n is None and src is not None)
            or (isinstance(runtime, torch.Tensor) and runtime.numel() != 1)
        ):  # the batched path; it also reports per-sample ratios given for another batch size
            return self._batched(x, in_n, in_idx)
        gap = x.mean(dim=(2, 3))
        pred = self.predictor
        if pred is not None:
            w = pred.weight
            if in_idx is not None:
                w = w.index_select(1, in_idx)
            elif in_n is not None:
                w = w[:, :in_n]
            u_r = F.linear(gap, w, pred.bias)  # linear, not addmv: FlopCounterMode counts it (accounting tests)
        else:
            assert self.gamma is not None
            u_r = self.gamma.unsqueeze(0)
        r = self._ratio(gap, u_r, in_idx, in_n)
        # relu(BN(conv(x))·u_r·u_s + β) = relu(conv_{W·a·u_r}(x) + β + (b - mean)·a·u_r), a = u_s / sqrt(var + eps)
        w, affine = self._folded()
        # plain attributes, set without nn.Module.__setattr__'s checks (per unit and sample)
        if d["_prefix"]:
            n = self._prefix_count(r)
            u = u_r[0, :n]
            d["last_idx"], d["last_prefix"], d["last_count"], d["_last_keep"] = None, n, n, None
            w, affine = w[:n], affine[:, :n]
        else:
            out_idx, u, n = self._kept(r, u_r[0])
            d["last_idx"], d["last_prefix"], d["last_count"], d["_last_keep"] = out_idx, None, n, None
            w, affine = w.index_select(0, out_idx), affine.index_select(1, out_idx)
        if in_idx is not None:
            w = w.index_select(1, in_idx)
        elif in_n is not None:
            w = w[:, :in_n]
        conv = self.conv
        bias = torch.addcmul(affine[0], affine[1], u)
        return F.conv2d(x, w * u.view(-1, 1, 1, 1), bias, conv.stride, conv.padding, conv.dilation).relu_()

    def _batched(self, x: torch.Tensor, in_n: int | None, in_idx: torch.Tensor | None) -> torch.Tensor:
        """A batch: the masked model's keep masks, computed on the channels some image of the batch keeps.

        The masks are the masked model's own (:meth:`GatedConv.keep_mask`; its runtime source sees the batch).
        The conv computes, for every image, the channels kept by at least one image of the batch: in prefix order
        the longest kept prefix (``last_prefix = n``, the weights sliced), in ``u_r`` order their union
        (``last_idx``, the weights gathered); each image's other channels are zeroed through its mask, so the
        output is the masked model's on those channels (its other channels are zero for every image), and the
        consumer and a next unit read only those. The input is the producer's kept channels (``in_n`` first ones
        or ``in_idx``) or the full width. Where the images of a batch keep similar channels (a trained agent's
        counts vary little between images) the batch costs about what the static model of those counts costs.
        """
        d = self.__dict__
        gap = x.mean(dim=(2, 3))
        c_in = self.conv.in_channels
        if in_idx is not None:  # the producer's dropped channels are zeros in the masked model
            gap = gap.new_zeros(gap.shape[0], c_in).index_copy(1, in_idx, gap)
        elif in_n is not None and in_n < c_in:
            gap = F.pad(gap, (0, c_in - in_n))
        pred = self.predictor
        if pred is not None:
            u_r = pred(gap)
        else:
            assert self.gamma is not None
            u_r = self.gamma.unsqueeze(0).expand(x.shape[0], -1)
        keep = self.keep_mask(gap, u_r)
        c = self.conv.out_channels
        keep = torch.ones_like(u_r, dtype=torch.bool) if keep is None else keep.expand(x.shape[0], c)
        used = keep.any(0)
        if not bool(used.any()):  # nothing kept anywhere: one channel, zeroed by every mask
            used = used.clone()
            used[0] = True
        w, affine = self._folded()
        if d["_prefix"]:
            n = int(used.nonzero().max()) + 1
            out_idx = None
            m, u_r, w, affine = keep[:, :n], u_r[:, :n], w[:n], affine[:, :n]
        else:
            out_idx = used.nonzero().squeeze(1)
            n = int(out_idx.numel())
            m, u_r = keep.index_select(1, out_idx), u_r.index_select(1, out_idx)
            w, affine = w.index_select(0, out_idx), affine.index_select(1, out_idx)
        if in_idx is not None:
            w = w.index_select(1, in_idx)
        elif in_n is not None:
            w = w[:, :in_n]
        mask = m.to(u_r.dtype)
        u = u_r * mask
        bias = torch.addcmul(affine[0] * mask, affine[1], u)
        conv = self.conv
        z = F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation)
        d["last_idx"], d["last_prefix"], d["last_count"] = out_idx, (n if out_idx is None else None), None
        d["_last_keep"] = keep.detach()
        return torch.addcmul(bias[:, :, None, None], z, u[:, :, None, None]).relu_()


def folded_unit(unit: GatedConv) -> tuple[torch.Tensor, torch.Tensor]:
    """A unit's conv with BN and ``u_s`` folded in: ``(W·a, [β; (b - mean)·a])``, ``a = u_s / sqrt(var + eps)``.

    The unit computes ``relu(conv_{W·a}(x)·u_r + β + (b - mean)·a·u_r)`` on its kept channels. Detached
    tensors (:mod:`pruning.deploy` stores them).
    """
    with torch.no_grad():
        w, affine = _CompactUnit._folded(unit)  # type: ignore[arg-type]
    return w.detach(), affine.detach()


class _CompactConsumer(nn.Module):
    """A plain conv reading a unit's output: at batch 1 it uses only the unit's kept input channels."""

    def __init__(self, conv: nn.Conv2d, source: _CompactUnit) -> None:
        super().__init__()
        self.conv = conv
        object.__setattr__(self, "source", source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        src = self.source.__dict__
        idx: torch.Tensor | None = src.get("last_idx")
        n: int | None = src.get("last_prefix")
        c = self.conv
        if idx is not None:
            w = c.weight.index_select(1, idx)
        elif n is not None:
            w = c.weight[:, :n]
        else:
            return c(x)
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


class DynamicModel(nn.Module):
    """A deployable runtime-pruned model: exported static model + predictors + a runtime ratio source.

    Args:
        exported: A gated model from :func:`export_static` (or any gated model: its current static plan is
            exported first).
        runtime: Runtime keep ratio(s): one float for all units, one per unit, one per sample and unit
            (shape ``(N, L)``, for batches of N), or a :data:`~pruning.plan.RuntimeSource`
            ``fn(unit_index, gap (N, C_in), u_r (N, C_out)) -> (N,)`` (an RL agent, a baseline). ``None`` =
            runtime off (all stored channels computed).

    At batch 1 each unit computes only its kept channels; its consumer reads only those. The logits equal those
    of the masked model with the same static plan, R_r and runtime ratios. A runtime source may also offer
    ``single(unit_index, gap (1, C_in), u_r (1, C_out)) -> float``, the ratio of a batch of one as a Python
    float: the batch-1 path calls it instead (``agents.fused.FusedRuntimeSource`` does; it saves building
    and reading a tensor per unit). Kept counts are then Python integers (:func:`last_kept_count`) and keep
    masks are built only when read (``last_keep``, :meth:`kept_channels`).
    """

    def __init__(
        self, exported: nn.Module, runtime: float | Sequence[float] | torch.Tensor | RuntimeSource | None = 0.5
    ) -> None:
        super().__init__()
        if not is_gated(exported):
            raise ValueError(
                "DynamicModel needs a gated model (pruning.gating.gate_model); a plain export has no runtime "
                "importance to choose channels with"
            )
        if any(g.frozen_static is None for g in gated_units(exported)):
            exported = export_static(exported)
        model = copy.deepcopy(exported)
        units = get_units(model)
        compact: list[_CompactUnit] = []
        for g in gated_units(model):
            g.__class__ = _CompactUnit
            assert isinstance(g, _CompactUnit)
            object.__setattr__(g, "source", None)
            g._prepare()
            compact.append(g)
        for u in units:
            g = compact[u.index]
            if u.producer is not None:
                object.__setattr__(g, "source", compact[u.producer])
            consumer = model.get_submodule(u.consumer)
            if isinstance(consumer, nn.Conv2d):
                _set(model, u.consumer, _CompactConsumer(consumer, g))
        self.model = model
        self.units = compact
        self.set_runtime(runtime)
        if hasattr(exported, "normalization"):
            self.normalization = exported.normalization

    def set_runtime(self, runtime: float | Sequence[float] | torch.Tensor | RuntimeSource | None) -> None:
        """Change the runtime ratio source (validated and split per unit like a plan's ``runtime_keep``)."""
        plan = PruningPlan(runtime_keep=runtime, tradeoff=1.0)
        plan.validate(len(self.units))
        for i, g in enumerate(self.units):
            g.runtime = plan.runtime_for_unit(i, len(self.units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.model(x)

    def kept_channels(self) -> list[torch.Tensor]:
        """Keep masks of the last forward pass, bool ``(N, C_stored)`` per unit."""
        return [g.last_keep for g in self.units]  # type: ignore[misc]
