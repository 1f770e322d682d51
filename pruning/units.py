"""Prunable units: which convs' output channels can be removed, and what reads those channels.

A *unit* is a conv whose output channels can be removed without changing any other layer's output shape
(``docs/architecture.md``, "Units"). CIFAR ResNets: ``conv1`` of every basic block (its outputs feed only the block's
``conv2``; the stem and the residual-coupled ``conv2`` outputs are not units). Plain nets (VGG, M-CifarNet): every conv
but the last, each read by the next conv, so a unit's kept outputs are the next unit's inputs.

Rules are a registry keyed by model class (:func:`register_unit_rule`); a new architecture adds one rule and
nothing else changes. :func:`get_units` adds the shapes by tracing one 32×32 forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .models import BasicBlock, PlainConvNet, ResNetCifar

__all__ = ["Unit", "UnitRule", "get_units", "register_unit_rule", "trace_shapes", "unit_conv"]


@dataclass(frozen=True)
class UnitRule:
    """Where a unit sits in a model: module paths of its conv, its BN and the conv that reads its outputs.

    ``consumer_bn``: the BatchNorm applied to the consumer's output and to nothing else, if any (deployment folds
    it into the consumer's weights); ``None`` where the rule does not say.
    """

    conv: str
    bn: str
    consumer: str
    consumer_bn: str | None = None


@dataclass(frozen=True)
class Unit:
    """One prunable conv with its shapes (at the traced input size) and its neighbours.

    Attributes:
        index: Position in the model's unit order (forward order).
        conv: Module path of the conv (in a gated model, the ``GatedConv`` at the same path).
        bn: Module path of its BatchNorm (``Identity`` once gated).
        consumer: Module path of the conv that reads this unit's output channels.
        consumer_bn: Module path of the BatchNorm that only the consumer's output goes through, or ``None``.
        producer: Index of the unit whose output channels are this unit's input channels, or ``None`` when the
            input is not prunable (image, residual stream).
        in_channels: C_in of the unpruned conv.
        out_channels: C_out of the unpruned conv.
        kernel_size: Square kernel side k.
        stride: Conv stride.
        in_hw: Input height and width.
        out_hw: Output height and width.
        macs: MACs of the unpruned conv for one sample, ``k²·H_out·W_out·C_in·C_out``.
        params: Weights of the unpruned conv, ``k²·C_in·C_out``.
    """

    index: int
    conv: str
    bn: str
    consumer: str
    producer: int | None
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    macs: int
    params: int
    consumer_bn: str | None = None


RuleFn = Callable[[nn.Module], list[UnitRule]]
_RULES: dict[type, RuleFn] = {}


def register_unit_rule(model_cls: type) -> Callable[[RuleFn], RuleFn]:
    """Register the function that lists the units of ``model_cls`` (and its subclasses).

    Raises:
        ValueError: a rule for this class exists already.
    """

    def wrapper(fn: RuleFn) -> RuleFn:
        if model_cls in _RULES:
            raise ValueError(f"a unit rule for {model_cls.__name__} is already registered")
        _RULES[model_cls] = fn
        return fn

    return wrapper


@register_unit_rule(ResNetCifar)
def _resnet_units(model: nn.Module) -> list[UnitRule]:
    rules = []
    for name, mod in model.named_modules():
        if isinstance(mod, BasicBlock):
            rules.append(UnitRule(f"{name}.conv1", f"{name}.bn1", f"{name}.conv2", f"{name}.bn2"))
    return rules


@register_unit_rule(PlainConvNet)
def _plain_units(model: nn.Module) -> list[UnitRule]:
    feats = model.get_submodule("features")
    convs = [i for i, m in enumerate(feats.children()) if _is_conv_like(m)]
    pairs = zip(convs[:-1], convs[1:], strict=True)
    return [UnitRule(f"features.{a}", f"features.{a + 1}", f"features.{b}", f"features.{b + 1}") for a, b in pairs]


def _is_conv_like(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) or isinstance(getattr(m, "conv", None), nn.Conv2d)


def unit_conv(module: nn.Module) -> nn.Conv2d:
    """Return the ``nn.Conv2d`` of a unit's module: the module itself, or its ``.conv`` when gated."""
    conv = module if isinstance(module, nn.Conv2d) else getattr(module, "conv", None)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected a Conv2d or a gated conv, got {type(module).__name__}")
    return conv


def _rules_for(model: nn.Module) -> list[UnitRule]:
    for cls in type(model).__mro__:
        if cls in _RULES:
            return _RULES[cls](model)
    known = ", ".join(c.__name__ for c in _RULES)
    raise TypeError(
        f"no unit rule for {type(model).__name__}; known architectures: {known}. "
        "Register one with pruning.units.register_unit_rule."
    )


def get_units(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> list[Unit]:
    """List the prunable units of ``model`` (plain or gated) in forward order, with traced shapes.

    Args:
        model: A model from :mod:`pruning.models` (or of a class with a registered rule).
        input_size: ``(C, H, W)`` of one input; CIFAR is ``(3, 32, 32)``.

    Returns:
        One :class:`Unit` per prunable conv.
    """
    rules = _rules_for(model)
    mods = dict(model.named_modules())
    traced = trace_shapes(model, [r.conv for r in rules], input_size)
    shapes = {k: (v[0], v[1]) for k, v in traced.items()}
    consumer_of = {r.consumer: i for i, r in enumerate(rules)}
    units = []
    for i, r in enumerate(rules):
        conv = unit_conv(mods[r.conv])
        (_, _, hi, wi), (_, _, ho, wo) = shapes[r.conv]
        k = conv.kernel_size[0]
        c_in, c_out = conv.in_channels, conv.out_channels
        if conv.groups != 1:
            raise TypeError(f"unit {r.conv} is a grouped conv; grouped units are not supported")
        units.append(
            Unit(
                index=i,
                conv=r.conv,
                bn=r.bn,
                consumer=r.consumer,
                producer=consumer_of.get(r.conv),
                in_channels=c_in,
                out_channels=c_out,
                kernel_size=k,
                stride=conv.stride[0],
                in_hw=(hi, wi),
                out_hw=(ho, wo),
                macs=k * k * ho * wo * c_in * c_out,
                params=k * k * c_in * c_out,
                consumer_bn=r.consumer_bn,
            )
        )
    return units


def trace_shapes(
    model: nn.Module, names: list[str], input_size: tuple[int, int, int] = (3, 32, 32)
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input and output shapes of the named modules in one batch-1 forward pass (eval mode, no gradient).

    Runtime ratios of gated units are suspended for the pass (they may be sized for another batch) and
    restored afterwards, as are their last applied masks (``last_keep``) and the model's training mode.
    """
    mods = dict(model.named_modules())
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name in names:
        def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, key: str = name) -> None:
            shapes[key] = (tuple(inp[0].shape), tuple(out.shape))

        hooks.append(mods[name].register_forward_hook(hook))
    # duck-typed so this module need not import pruning.gating (which imports it)
    # the masks of the last real forward pass (``last_keep``) are restored too: the trace must not replace them
    saved: list[tuple[nn.Module, object, object]] = [
        (m, m.runtime, getattr(m, "last_keep", None))
        for m in model.modules()
        if hasattr(m, "runtime") and hasattr(m, "keep_mask")
    ]
    was_training = model.training
    try:
        for m, _, _ in saved:
            setattr(m, "runtime", None)  # noqa: B010
        model.eval()
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_size, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for m, r, keep in saved:
            setattr(m, "runtime", r)  # noqa: B010
            setattr(m, "last_keep", keep)  # noqa: B010
        for h in hooks:
            h.remove()
    return shapes
