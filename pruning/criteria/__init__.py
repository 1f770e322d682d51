"""Channel criteria: which output channels of a unit to keep (Torch-Pruning's *importance*).

A criterion is ``fn(model, unit) -> scores``: one float per output channel of the unit's conv, shape
``(C_out,)``, **higher = more important** (kept first). It only scores; how many channels a unit keeps is
the plan's business (:class:`pruning.plan.PruningPlan`), and only :mod:`pruning.export` edits weights.
Criteria work on plain and on gated models (:mod:`pruning.gating`), and never modify the model.

Criteria are looked up by name (:func:`get_criterion`); a new one is a function and a decorator:

    >>> import torch
    >>> from pruning.criteria import get_criterion, list_criteria, register_criterion
    >>> list_criteria()
    ['bn_scale', 'l1', 'l2', 'l2_gm', 'pfp_sampled', 'pfp_sensitivity', 'random', 'u_s']
    >>> from pruning.models import get_model
    >>> from pruning.units import get_units
    >>> model = get_model("tiny_cnn")
    >>> unit = get_units(model)[0]
    >>> get_criterion("l1")(model, unit).shape
    torch.Size([8])
    >>> a = get_criterion("random", seed=3)(model, unit)
    >>> torch.equal(a, get_criterion("random", seed=3)(model, unit))
    True

| name       | score of output channel c                                   | source                              |
|------------|-------------------------------------------------------------|-------------------------------------|
| `l1`       | `Σ|W[c]|` of the unit's conv                                | Li et al., ICLR 2017                |
| `l2`       | `‖W[c]‖₂` of the unit's conv                                | (the L2 variant of the above)       |
| `bn_scale` | `|γ[c]|` of the unit's BatchNorm                            | Liu et al., ICCV 2017 (slimming)    |
| `random`   | `U[0, 1)`, seeded per (seed, unit index)                    | a control                           |
| `u_s`      | Chen et al.'s learned static importance (gated units only)  | Chen, Chen & Pan, NeurIPS 2020      |
| `pfp_sensitivity` | PFP's sensitivity w.r.t. the consumer, on a batch `inputs=` | Liebenwein et al., ICLR 2020 |
| `pfp_sampled` | PFP's seeded sampling order (`inputs=`, `seed=`): top-k = a draw | Liebenwein et al., ICLR 2020 |
| `l2_gm`    | `Σ_j ‖W[c] − W[j]‖₂`: low = near the geometric median = redundant | He et al., CVPR 2019 (FPGM)   |
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..gating import GatedConv
from ..registry import Registry
from ..units import Unit, unit_conv

__all__ = [
    "Criterion",
    "bn_scale_criterion",
    "get_criterion",
    "l1_criterion",
    "l2_criterion",
    "list_criteria",
    "random_criterion",
    "register_criterion",
    "us_criterion",
]

#: A channel criterion: ``fn(model, unit) -> scores (C_out,)``, higher = more important (kept first).
Criterion = Callable[[nn.Module, Unit], torch.Tensor]

C = Callable[..., torch.Tensor]

_CRITERIA: Registry[C] = Registry("criterion")


def register_criterion(name: str) -> Callable[[C], C]:
    """Register a criterion ``fn(model, unit, **options) -> scores (C_out,)`` under ``name`` (a decorator).

    Keyword-only options (such as ``random``'s ``seed``) are bound by :func:`get_criterion`.

    Raises:
        ValueError: a criterion named ``name`` is already registered.
    """
    return _CRITERIA.register(name)


def list_criteria() -> list[str]:
    """Names of the registered criteria, sorted."""
    return _CRITERIA.names()


def get_criterion(name: str, **options: Any) -> Criterion:
    """The criterion registered as ``name``, with ``options`` bound (e.g. ``get_criterion("random", seed=1)``).

    Raises:
        ValueError: ``name`` is unknown; the message suggests close matches and lists every registered name.
    """
    try:
        fn = _CRITERIA.get(name)
    except ValueError as err:
        raise ValueError(f"{err}; or pass a callable fn(model, unit) -> scores") from None
    if not options:
        return fn
    bound = functools.partial(fn, **options)
    functools.update_wrapper(bound, fn)
    return bound


def _unit_weight(model: nn.Module, unit: Unit) -> torch.Tensor:
    return unit_conv(model.get_submodule(unit.conv)).weight.detach()


@register_criterion("l1")
def l1_criterion(model: nn.Module, unit: Unit) -> torch.Tensor:
    """L1 norm of each output filter of the unit's conv (Li et al., ICLR 2017): ``Σ|W[c]|``."""
    return _unit_weight(model, unit).abs().sum(dim=(1, 2, 3))


@register_criterion("l2")
def l2_criterion(model: nn.Module, unit: Unit) -> torch.Tensor:
    """L2 norm of each output filter of the unit's conv: ``‖W[c]‖₂``."""
    return _unit_weight(model, unit).pow(2).sum(dim=(1, 2, 3)).sqrt()


@register_criterion("bn_scale")
def bn_scale_criterion(model: nn.Module, unit: Unit) -> torch.Tensor:
    """``|γ|`` of the unit's BatchNorm: network slimming's channel scale (Liu et al., ICCV 2017).

    In a gated unit (:class:`pruning.gating.GatedConv`) γ lives in ``gamma`` (no predictor) or in the
    predictor's bias (the predictor computes ``u_r = W·GAP(x) + b`` with ``b`` initialised to γ, and ``b`` is
    what stays of γ when the predictor is trained): that is the score then.

    Raises:
        TypeError: the unit's BatchNorm has no affine scale (``affine=False``) or is not a BatchNorm.
    """
    mod = model.get_submodule(unit.conv)
    if isinstance(mod, GatedConv):
        gamma = mod.gamma if mod.gamma is not None else (None if mod.predictor is None else mod.predictor.bias)
        if gamma is None:
            raise TypeError(f"gated unit {unit.index} at {unit.conv!r} has neither gamma nor a predictor bias")
        return gamma.detach().abs().clone()
    bn = model.get_submodule(unit.bn)
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.weight is None:
        raise TypeError(
            f"criterion 'bn_scale' needs an affine BatchNorm after unit {unit.index}; {unit.bn!r} is "
            f"{type(bn).__name__} without a scale. Use criterion 'l1' instead"
        )
    return bn.weight.detach().abs().clone()


@register_criterion("random")
def random_criterion(model: nn.Module, unit: Unit, *, seed: int = 0) -> torch.Tensor:
    """Uniform random scores in ``[0, 1)``, a control: the same for the same ``seed`` and unit index.

    Args:
        model: Unused (the scores depend only on ``seed`` and the unit).
        unit: The unit to score.
        seed: Seed of the draw; each unit draws from its own generator seeded with ``(seed, unit.index)``.
    """
    del model
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + unit.index)
    return torch.rand(unit.out_channels, generator=g)


@register_criterion("u_s")
def us_criterion(model: nn.Module, unit: Unit) -> torch.Tensor:
    """Chen et al.'s learned static importance ``u_s`` of a gated unit.

    Raises:
        ValueError: the unit is not gated (a plain model has no ``u_s``; use ``"l1"`` or gate and train it).
    """
    mod = model.get_submodule(unit.conv)
    if not isinstance(mod, GatedConv) or mod.static_importance is None:
        raise ValueError(
            f"criterion 'u_s' needs a gated model (unit {unit.index} at {unit.conv!r} is not gated); "
            "use criterion='l1' for plain models, or gate the model (pruning.gating.gate_model) and train u_s"
        )
    return mod.static_importance.detach().clone()


from .fpgm import l2_gm_criterion  # noqa: E402  (registered after the registry exists)
from .pfp import pfp_sampled_criterion, pfp_sensitivity_criterion  # noqa: E402

register_criterion("pfp_sensitivity")(pfp_sensitivity_criterion)
register_criterion("pfp_sampled")(pfp_sampled_criterion)
register_criterion("l2_gm")(l2_gm_criterion)
__all__ += ["l2_gm_criterion", "pfp_sampled_criterion", "pfp_sensitivity_criterion"]
