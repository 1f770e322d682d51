"""UnitStepper: the forward pass cut at the units reproduces model(x) exactly."""

from __future__ import annotations

import doctest

import pytest
import torch
from _nets import images, randomize_, randomize_gates_
from torch import nn

import pruning.stepper
from pruning.gating import applied_masks, gate_model, gated_units, set_plan
from pruning.models import PlainConvNet, get_model
from pruning.plan import PruningPlan
from pruning.stepper import UnitStepper, register_segmenter
from pruning.units import get_units

MODELS = ["resnet8", "resnet20", "tiny_cnn", "m_cifarnet", "vgg16_bn"]


def _model(name: str, variant: str) -> nn.Module:
    torch.manual_seed(0)
    model = randomize_(get_model(name))
    if variant == "plain":
        return model
    gated = gate_model(model, predictor=variant == "gated")
    return randomize_gates_(gated).eval()


def _plan(num_units: int, seed: int) -> PruningPlan:
    g = torch.Generator().manual_seed(seed)
    return PruningPlan(
        static_keep=(torch.rand(num_units, generator=g) * 0.8 + 0.2).tolist(),
        runtime_keep=torch.rand(3, num_units, generator=g, dtype=torch.float64) * 0.9 + 0.1,
        tradeoff=0.5,
    )


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("variant", ["plain", "gated", "maskable"])
def test_prefix_and_steps_equal_forward(name: str, variant: str) -> None:
    model = _model(name, variant)
    stepper = UnitStepper(model)
    assert stepper.num_units == len(get_units(model))
    x = images(3, seed=1)
    plans = [None] if variant == "plain" else [None, _plan(stepper.num_units, 2)]
    for plan in plans:
        if plan is not None:
            set_plan(model, plan)
        with torch.no_grad():
            ref = model(x)
            ref_masks = [m.clone() for m in applied_masks(model)] if variant != "plain" else []
            h = stepper.prefix(x)
            for t in range(stepper.num_units):
                h = stepper.step(t, h)
        assert torch.equal(h, ref)
        if plan is not None:
            # the masks applied step by step are the forward pass's, and the plan prunes something
            masks = applied_masks(model)
            assert all(torch.equal(a, b) for a, b in zip(masks, ref_masks, strict=True))
            assert any(not bool(m.all()) for m in masks)


def test_step_runs_only_its_unit() -> None:
    """Step t runs unit t and no other unit; a ratio set between steps applies to the next unit only."""
    model = _model("resnet8", "gated")
    stepper = UnitStepper(model)
    units = gated_units(model)
    calls: list[int] = []
    for g in units:
        g.register_forward_hook(lambda m, i, o: calls.append(m.unit_index))
    x = images(2)
    with torch.no_grad():
        h = stepper.prefix(x)
        assert calls == []
        for t, g in enumerate(units):
            g.runtime, g.tradeoff = torch.tensor([0.25, 1.0], dtype=torch.float64), 1.0
            h = stepper.step(t, h)
            assert calls == list(range(t + 1))
            assert g.last_keep is not None
            assert g.last_keep.sum(1).tolist() == [max(1, round(0.25 * g.full_channels)), g.full_channels]
    assert h.shape == (2, 10)


def test_step_index_out_of_range() -> None:
    stepper = UnitStepper(get_model("tiny_cnn").eval())
    with pytest.raises(IndexError, match="out of range"):
        stepper.step(stepper.num_units, torch.zeros(1, 3, 32, 32))


def test_check_catches_a_different_forward() -> None:
    class Doubled(PlainConvNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    model = randomize_(Doubled([(8, 1), (8, 1), (8, 1)]))
    with pytest.raises(ValueError, match="do not reproduce"):
        UnitStepper(model)


def test_unknown_architecture_and_duplicate_registration() -> None:
    with pytest.raises(TypeError, match="no segmenter for Sequential"):
        UnitStepper(nn.Sequential(nn.Conv2d(3, 8, 3)))
    with pytest.raises(ValueError, match="already registered"):
        register_segmenter(PlainConvNet)(lambda m: None)  # type: ignore[arg-type,return-value]


def test_check_leaves_plan_state_alone() -> None:
    model = _model("tiny_cnn", "gated")
    set_plan(model, PruningPlan(runtime_keep=0.5))
    with torch.no_grad():
        model(images(2))
    before = [g.last_keep.clone() for g in gated_units(model)]  # type: ignore[union-attr]
    UnitStepper(model)
    assert all(isinstance(g.runtime, torch.Tensor) for g in gated_units(model))
    assert all(torch.equal(g.last_keep, b) for g, b in zip(gated_units(model), before, strict=True))  # type: ignore[arg-type]


def test_module_doctest() -> None:
    result = doctest.testmod(pruning.stepper, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
