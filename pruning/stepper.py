"""Run a model one prunable unit at a time: the forward pass cut into L + 1 segments.

A runtime-pruning agent decides unit ``t``'s keep ratio after seeing unit ``t``'s input, so the forward pass
must stop at every unit. :class:`UnitStepper` cuts it into a *prefix* (everything before unit 0) and one
*step* per unit (unit ``t`` and everything up to the input of unit ``t + 1``; the last step runs up to the
logits)::

    >>> import torch
    >>> from pruning.models import get_model
    >>> from pruning.stepper import UnitStepper
    >>> model = get_model("resnet8").eval()
    >>> stepper = UnitStepper(model)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> h = stepper.prefix(x)
    >>> for t in range(stepper.num_units):
    ...     h = stepper.step(t, h)   # set unit t's runtime ratio before this call to prune it
    >>> torch.equal(h, model(x))
    True

The segments call the model's own submodules in the order its ``forward`` does, so ``prefix`` followed by all
steps gives exactly (bit for bit on the CPU) ``model(x)``, for plain and gated models, with or without a plan.
(Skipping the model's ReLU after a gated unit, which ``GatedConv`` has applied already, changes no value but
measured slower on the CPU: the different order of large allocations makes glibc return and re-map memory.)
Whatever a gated unit is told (``GatedConv.runtime``: ``None``, a scalar or ``(N,)`` tensor, a callable) applies
when its step runs.

How a model is cut is a registry keyed by model class (:func:`register_segmenter`), like the unit rules of
:mod:`pruning.units`:

* **CIFAR ResNets**: the prefix is the stem (``conv1``, ``bn1``, ReLU); step ``t`` is the whole basic block
  whose ``conv1`` is unit ``t``; the last step also runs the global average pool and ``linear``.
* **Plain nets**: with ``a_t`` the position of unit ``t``'s conv in ``features``, the prefix is
  ``features[:a_0]``, step ``t`` is ``features[a_t:a_{t+1}]``, and the last step is ``features[a_{L-1}:]``,
  the global average pool and ``classifier``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .gating import GatedConv
from .models import BasicBlock, PlainConvNet, ResNetCifar
from .units import get_units

__all__ = ["Segmentation", "SegmenterFn", "UnitStepper", "register_segmenter"]

Segment = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Segmentation:
    """A model's forward pass cut at its units.

    Attributes:
        prefix: Input batch → input of unit 0.
        steps: One callable per unit: input of unit ``t`` → input of unit ``t + 1`` (logits for the last).
        unit_paths: Module path of the unit each step starts with (checked against
            :func:`pruning.units.get_units`).
    """

    prefix: Segment
    steps: tuple[Segment, ...]
    unit_paths: tuple[str, ...]


SegmenterFn = Callable[[nn.Module], Segmentation]
_SEGMENTERS: dict[type, SegmenterFn] = {}


def register_segmenter(model_cls: type) -> Callable[[SegmenterFn], SegmenterFn]:
    """Register the function that cuts models of ``model_cls`` (and its subclasses) at their units.

    The function returns a :class:`Segmentation` whose segments, run in order, compute what the model's
    ``forward`` computes.

    Raises:
        ValueError: a segmenter for this class exists already.
    """

    def wrapper(fn: SegmenterFn) -> SegmenterFn:
        if model_cls in _SEGMENTERS:
            raise ValueError(f"a segmenter for {model_cls.__name__} is already registered")
        _SEGMENTERS[model_cls] = fn
        return fn

    return wrapper


def _segmenter_for(model: nn.Module) -> SegmenterFn:
    for cls in type(model).__mro__:
        if cls in _SEGMENTERS:
            return _SEGMENTERS[cls]
    known = ", ".join(c.__name__ for c in _SEGMENTERS)
    raise TypeError(
        f"no segmenter for {type(model).__name__}; known architectures: {known}. "
        "Register one with pruning.stepper.register_segmenter."
    )


@register_segmenter(ResNetCifar)
def _resnet_segments(model: nn.Module) -> Segmentation:
    assert isinstance(model, ResNetCifar)
    blocks = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, BasicBlock)]
    if not blocks:
        raise ValueError("a ResNetCifar without basic blocks has no units")

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return F.relu(model.bn1(model.conv1(x)))

    def head(h: torch.Tensor) -> torch.Tensor:
        return model.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))

    def last(h: torch.Tensor, block: nn.Module = blocks[-1][1]) -> torch.Tensor:
        return head(block(h))

    steps: list[Segment] = [block for _, block in blocks[:-1]]
    steps.append(last)
    return Segmentation(prefix, tuple(steps), tuple(f"{name}.conv1" for name, _ in blocks))


@register_segmenter(PlainConvNet)
def _plain_segments(model: nn.Module) -> Segmentation:
    assert isinstance(model, PlainConvNet)
    feats = list(model.features.children())
    convs = [i for i, m in enumerate(feats) if isinstance(getattr(m, "conv", m), nn.Conv2d)]
    starts = convs[:-1]  # every conv but the last is a unit (pruning.units)
    if not starts:
        raise ValueError("a PlainConvNet with fewer than two convs has no units")

    def run(mods: Sequence[nn.Module]) -> Segment:
        def seg(h: torch.Tensor) -> torch.Tensor:
            for m in mods:
                h = m(h)
            return h

        return seg

    tail = run(feats[starts[-1] :])

    def last(h: torch.Tensor) -> torch.Tensor:
        h = tail(h)
        return model.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    steps: list[Segment] = [run(feats[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    steps.append(last)
    return Segmentation(run(feats[: starts[0]]), tuple(steps), tuple(f"features.{a}" for a in starts))


class UnitStepper:
    """Run ``model`` unit by unit: ``prefix(x)``, then ``step(t, h)`` for ``t = 0 .. num_units - 1``.

    The stepper holds no activations and changes nothing in the model: it only calls the model's submodules.
    Gradients flow through it like through ``model(x)``; wrap the calls in ``torch.inference_mode()`` when none
    are needed.

    Args:
        model: A plain or gated model of a class with a registered segmenter (every model of
            :mod:`pruning.models`).
        check: Run one batch-1 forward at construction and verify that the segments reproduce ``model(x)``
            (runtime ratios suspended for the check, last applied masks restored). Catches a subclass whose
            ``forward`` differs from its registered base class's.
        input_size: ``(C, H, W)`` of one input, for the unit trace and the check.

    A stepper pickles (and deep-copies) with its model: the segments are rebuilt from the unpickled model by
    its registered segmenter.

    Raises:
        TypeError: no segmenter is registered for the model's class.
        ValueError: the segments do not start at the model's units, or do not reproduce its forward pass.
    """

    def __init__(self, model: nn.Module, *, check: bool = True, input_size: tuple[int, int, int] = (3, 32, 32)) -> None:
        self.model = model
        seg = _segmenter_for(model)(model)
        units = [u.conv for u in get_units(model, input_size)]
        if list(seg.unit_paths) != units:
            raise ValueError(
                f"the segmenter of {type(model).__name__} starts its steps at {list(seg.unit_paths)}, but the "
                f"model's units are {units}; fix the segmenter or the unit rule"
            )
        self._prefix = seg.prefix
        self._steps = seg.steps
        if check:
            self._check(input_size)

    def __getstate__(self) -> dict[str, Any]:
        # the segments are closures over the model's submodules (they do not pickle): rebuilt on unpickling
        state = self.__dict__.copy()
        del state["_prefix"], state["_steps"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        seg = _segmenter_for(self.model)(self.model)
        self._prefix = seg.prefix
        self._steps = seg.steps

    @property
    def num_units(self) -> int:
        """L, the number of units (and of steps)."""
        return len(self._steps)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Run everything before unit 0: returns unit 0's input."""
        return self._prefix(x)

    def step(self, t: int, h: torch.Tensor) -> torch.Tensor:
        """Run unit ``t`` (with the runtime ratio set on it) and everything up to unit ``t + 1``'s input.

        Args:
            t: Unit index, ``0 <= t < num_units``.
            h: Unit ``t``'s input (from :meth:`prefix` or the previous step).

        Returns:
            Unit ``t + 1``'s input; the logits when ``t`` is the last unit.

        Raises:
            IndexError: ``t`` is out of range.
        """
        if not 0 <= t < len(self._steps):
            raise IndexError(f"unit index {t} out of range: the model has {len(self._steps)} units")
        return self._steps[t](h)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """``prefix`` followed by every step: the logits, equal to ``model(x)``."""
        h = self._prefix(x)
        for step in self._steps:
            h = step(h)
        return h

    def _check(self, input_size: tuple[int, int, int]) -> None:
        saved = [(m, m.runtime, m.last_keep) for m in self.model.modules() if isinstance(m, GatedConv)]
        was_training = self.model.training
        p = next(self.model.parameters())
        x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
        try:
            for m, _, _ in saved:
                m.runtime = None
            self.model.eval()
            with torch.no_grad():
                ref, out = self.model(x), self.run(x)
        finally:
            self.model.train(was_training)
            for m, r, keep in saved:
                m.runtime, m.last_keep = r, keep
        if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-4, atol=1e-5, equal_nan=True):
            raise ValueError(
                f"the segments of {type(self.model).__name__} do not reproduce its forward pass (max abs "
                f"difference {(out - ref).abs().max().item() if out.shape == ref.shape else 'n/a'}); its forward "
                "differs from the registered architecture's: register a segmenter for its class"
            )
