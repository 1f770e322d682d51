"""Channel criteria: registry, scores, determinism, and the static env using them."""

from __future__ import annotations

import doctest

import pytest
import torch
from _nets import randomize_, randomize_gates_
from torch import nn

import pruning.criteria as criteria
from envs.static import StaticPruningEnv
from pruning.criteria import get_criterion, list_criteria, register_criterion
from pruning.gating import gate_model, gated_units
from pruning.models import get_model
from pruning.units import get_units, unit_conv


def _net(name: str = "tiny_cnn") -> nn.Module:
    return randomize_(get_model(name), seed=0)


def test_module_doctest() -> None:
    result = doctest.testmod(criteria, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_registry() -> None:
    assert list_criteria() == ["bn_scale", "l1", "l2", "pfp_sensitivity", "random", "u_s"]
    assert get_criterion("l1") is criteria.l1_criterion
    with pytest.raises(ValueError, match=r"unknown criterion 'l11'\. Did you mean l1"):
        get_criterion("l11")
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("l1")(criteria.l2_criterion)


@pytest.mark.parametrize("name", ["l1", "l2", "bn_scale"])
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("model", ["tiny_cnn", "resnet8"])
def test_zeroed_channel_ranks_lowest(name: str, gated: bool, model: str) -> None:
    net = _net(model)
    if gated:
        net = randomize_gates_(gate_model(net))
    units = get_units(net)
    unit = units[-1]
    with torch.no_grad():
        if name == "bn_scale":
            if gated:
                g = gated_units(net)[unit.index]
                assert g.predictor is not None
                g.predictor.bias[3] = 0.0
            else:
                bn = net.get_submodule(unit.bn)
                assert isinstance(bn, nn.BatchNorm2d)
                bn.weight[3] = 0.0
        else:
            unit_conv(net.get_submodule(unit.conv)).weight[3] = 0.0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = get_criterion(name)(net, unit)
    assert scores.shape == (unit.out_channels,)
    assert int(scores.argmin()) == 3 and float(scores[3]) == 0.0
    assert bool((scores[torch.arange(unit.out_channels) != 3] > 0).all())
    # scoring never changes the model, and returns a tensor the caller may modify
    scores.fill_(-1.0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_l1_l2_match_their_definitions() -> None:
    net = _net()
    unit = get_units(net)[1]
    w = unit_conv(net.get_submodule(unit.conv)).weight
    assert torch.equal(get_criterion("l1")(net, unit), w.abs().sum(dim=(1, 2, 3)))
    assert torch.allclose(get_criterion("l2")(net, unit), w.flatten(1).norm(dim=1))


def test_bn_scale_of_a_gated_unit_without_predictor_reads_gamma() -> None:
    net = _net()
    gated = gate_model(net, predictor=False)
    for unit, g in zip(get_units(gated), gated_units(gated), strict=True):
        assert g.gamma is not None
        assert torch.equal(get_criterion("bn_scale")(gated, unit), g.gamma.detach().abs())
        # and γ is the plain BN's weight
        bn = net.get_submodule(unit.bn)
        assert isinstance(bn, nn.BatchNorm2d)
        assert torch.equal(get_criterion("bn_scale")(net, unit), bn.weight.detach().abs())


def test_random_is_deterministic_per_seed_and_differs_across_seeds_and_units() -> None:
    net = _net("resnet8")
    u0, u1 = get_units(net)[:2]
    a = get_criterion("random", seed=5)
    assert torch.equal(a(net, u0), get_criterion("random", seed=5)(net, u0))
    assert not torch.equal(a(net, u0), get_criterion("random", seed=6)(net, u0))
    assert not torch.equal(a(net, u0)[: u1.out_channels], a(net, u1)[: u0.out_channels])
    assert torch.equal(get_criterion("random")(net, u0), get_criterion("random", seed=0)(net, u0))
    assert bool(((a(net, u0) >= 0) & (a(net, u0) < 1)).all())


def test_u_s_needs_a_gated_model() -> None:
    net = _net()
    unit = get_units(net)[0]
    with pytest.raises(ValueError, match="gated model"):
        get_criterion("u_s")(net, unit)
    gated = randomize_gates_(gate_model(net))
    g = gated_units(gated)[0]
    assert g.static_importance is not None
    assert torch.equal(get_criterion("u_s")(gated, unit), g.static_importance.detach())


@pytest.mark.parametrize("name", ["bn_scale", "random"])
def test_static_env_takes_registered_names(name: str) -> None:
    net = _net()
    env = StaticPruningEnv(model=net, num_val=16, criterion=name)
    assert env.criterion_name == name
    for unit, scores in zip(env.units, env.static_scores, strict=True):
        assert torch.equal(scores, get_criterion(name)(env.model, unit).float())
    with pytest.raises(ValueError, match="Did you mean bn_scale"):
        StaticPruningEnv(model=net, num_val=16, criterion="bn_scal")
