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
    assert {"bn_scale", "l1", "l2", "l2_gm", "pfp_sampled", "pfp_sensitivity", "random", "u_s"} <= set(list_criteria())
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


def _set_filters(net: nn.Module, unit_index: int, filters: torch.Tensor) -> None:
    unit = get_units(net)[unit_index]
    with torch.no_grad():
        unit_conv(net.get_submodule(unit.conv)).weight.copy_(filters.view_as(unit_conv(net.get_submodule(unit.conv)).weight))


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("model", ["tiny_cnn", "resnet8"])
def test_l2_gm_ranks_the_geometric_median_filter_lowest(model: str, gated: bool) -> None:
    """Filters c ± d_i around a centre filter c: the centre is the geometric median and must be pruned first."""
    net = _net(model)
    unit = get_units(net)[-1]
    w = unit_conv(net.get_submodule(unit.conv)).weight
    c_out, d = w.shape[0], w[0].numel()
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(d, generator=g)
    offsets = torch.randn((c_out - 1) // 2, d, generator=g)
    filters = torch.cat([centre[None], centre + offsets, centre - offsets])
    if len(filters) < c_out:  # an even count: one more filter, far out
        filters = torch.cat([filters, centre[None] + 10 * torch.randn(1, d, generator=g)])
    perm = torch.randperm(c_out, generator=g)
    _set_filters(net, unit.index, filters[perm])
    if gated:
        net = gate_model(net)
    scores = get_criterion("l2_gm")(net, unit)
    assert scores.shape == (c_out,) and scores.dtype == torch.float32
    assert int(scores.argmin()) == int((perm == 0).nonzero())  # where the centre went
    # the definition: the sum of L2 distances to every filter of the unit
    flat = unit_conv(net.get_submodule(unit.conv)).weight.detach().double().flatten(1)
    brute = torch.stack([(flat - f).pow(2).sum(dim=1).sqrt().sum() for f in flat]).float()
    torch.testing.assert_close(scores, brute)


def test_l2_gm_duplicates_and_zeroed_filters() -> None:
    """A filter equal to the mean of a symmetric cloud ranks lowest; a zeroed filter is not pruned first (FPGM
    ranks by redundancy, not magnitude), unlike l1/l2, and scores depend only on the filters' geometry."""
    net = _net("resnet8")
    unit = get_units(net)[0]
    c_out, d = unit.out_channels, unit_conv(net.get_submodule(unit.conv)).weight[0].numel()
    g = torch.Generator().manual_seed(2)
    filters = torch.randn(c_out, d, generator=g) + 5.0  # a cloud far from the origin
    filters[3] = 0.0
    _set_filters(net, unit.index, filters)
    scores = get_criterion("l2_gm")(net, unit)
    assert int(scores.argmax()) == 3  # the zero filter is the outlier here: kept first
    assert float(scores[3]) == pytest.approx(float(filters.norm(dim=1).sum()), rel=1e-5)
    assert int(get_criterion("l1")(net, unit).argmin()) == 3
    # translating every filter by the same vector changes nothing: only distances count
    _set_filters(net, unit.index, filters + 7.0)
    torch.testing.assert_close(get_criterion("l2_gm")(net, unit), scores)
    # a duplicated central filter: both copies rank below every other filter
    filters = torch.randn(c_out, d, generator=g)
    filters[5] = filters.mean(dim=0)
    filters[9] = filters[5]
    _set_filters(net, unit.index, filters)
    scores = get_criterion("l2_gm")(net, unit)
    assert set(torch.argsort(scores)[:2].tolist()) == {5, 9}


def test_static_env_ranks_by_l2_gm() -> None:
    env = StaticPruningEnv(model=_net(), num_val=16, criterion="l2_gm")
    assert env.criterion_name == "l2_gm"
    assert torch.equal(env.static_scores[0], get_criterion("l2_gm")(env.model, env.units[0]))
