"""Channel Gating (pruning.methods.channel_gating, agents.baselines.channel_gating): gate, STE, MACs, baseline."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch
import torch.nn.functional as F
from _nets import images, randomize_
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pruning.methods.channel_gating as cg_module
from agents.baselines import TrainContext, get_baseline
from agents.baselines.channel_gating import ChannelGatingBaseline
from pruning.accounting import CostModel
from pruning.data import get_dataset
from pruning.methods.channel_gating import (
    CGConv,
    calibrate_gates,
    cg_convs,
    channel_gate,
    mac_floor,
    measure_gating,
    set_thresholds,
    threshold_loss,
)
from pruning.models import get_model
from pruning.train import TrainConfig, train


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_module_doctest() -> None:
    result = doctest.testmod(cg_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _small_cg(*, use_group: bool = False, sparse_bp: bool = True, seed: int = 0) -> CGConv:
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(8, 6 if not use_group else 8, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    cg = CGConv(conv, partitions=4, use_group=use_group, sparse_bp=sparse_bp, alpha=2.0)
    with torch.no_grad():
        c = conv.out_channels
        cg.bn.running_mean.copy_(torch.randn(c, generator=g))  # type: ignore[union-attr]
        cg.bn.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.5)  # type: ignore[union-attr]
        cg.threshold.copy_(torch.randn(c, generator=g) * 0.5)
    return cg.eval()


@pytest.mark.parametrize("use_group", [False, True])
def test_gate_output_rate_and_macs_equal_a_hand_count(use_group: bool) -> None:
    cg = _small_cg(use_group=use_group)
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(9))
    out = cg(x)
    w = cg.conv.weight.detach()
    mask = torch.zeros_like(w)
    if use_group:  # output group i reads input group i (2 channels each)
        for i in range(4):
            mask[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = 1
    else:  # every output reads the first C_in / p = 2 inputs
        mask[:, :2] = 1
    partial = F.conv2d(x, w * mask, padding=1)
    full = F.conv2d(x, w, padding=1)
    bn = cg.bn
    z = (partial - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    d = z > cg.threshold.detach().view(1, -1, 1, 1)
    assert 0 < int(d.sum()) < d.numel()  # a real mixture of open and closed gates
    assert torch.allclose(out, torch.where(d, full, partial), atol=1e-5)
    rate = d.flatten(1).double().mean(1)
    assert cg.last_rate is not None and cg.last_macs is not None
    assert torch.allclose(cg.last_rate.double(), rate)
    # MACs: the base path always (1/p of the conv), the rest only where d = 1
    with FlopCounterMode(display=False) as counter:
        cg.conv(x[:1])
    full_macs = counter.get_total_flops() // 2
    assert full_macs == 9 * 25 * 8 * cg.conv.out_channels
    assert torch.allclose(cg.last_macs, full_macs / 4 + full_macs * 3 / 4 * rate)


@pytest.mark.parametrize("sparse_bp", [False, True])
def test_straight_through_estimator_passes_gradients_to_the_thresholds(sparse_bp: bool) -> None:
    cg = _small_cg(sparse_bp=sparse_bp)
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(9))
    cg(x).sum().backward()
    grad = cg.threshold.grad
    assert grad is not None and bool((grad != 0).any())
    # d(out)/dΔ = (Y_full − Y_p)·dd/dΔ with dd/dΔ = −α·σ'(α·(BN(Y_p) − Δ)) (only where d = 1 with sparse_bp)
    with torch.no_grad():
        w = cg.conv.weight
        partial = F.conv2d(x, w * cg.mask, padding=1)
        full = F.conv2d(x, w, padding=1)
        u = cg.bn(partial) - cg.threshold.view(1, -1, 1, 1)
        s = torch.sigmoid(cg.alpha * u)
        local = -cg.alpha * s * (1 - s) * (full - partial)
        if sparse_bp:
            local = local * (u > 0)
    assert torch.allclose(grad, local.sum(dim=(0, 2, 3)), atol=1e-4)


def _gated_resnet(threshold: float = 0.0) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    base = randomize_(get_model("resnet8"), seed=0)
    cg = channel_gate(base, threshold=threshold)
    x = images(16, seed=1)
    calibrate_gates(cg, x)
    return base, cg, x


def test_macs_per_image_fall_as_the_gate_threshold_rises() -> None:
    base, cg, x = _gated_resnet()
    base_macs = CostModel(base).base_macs
    floor = mac_floor(cg, base_macs=base_macs)
    fractions, rates = [], []
    for delta in (-100.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 100.0):
        set_thresholds(cg, delta)
        report = measure_gating(cg, x, base_macs=base_macs)
        fractions.append(report.macs_fraction)
        rates.append(report.gate_rates)
    assert all(a > b for a, b in zip(fractions, fractions[1:], strict=False))
    assert fractions[0] == pytest.approx(1.0) and fractions[-1] == pytest.approx(floor)
    # resnet8: 3 gated block conv1s, together about half the MACs, 3/4 of them skippable
    gated_macs = sum(u.macs for u in CostModel(base).units)
    assert floor == pytest.approx(1.0 - 0.75 * gated_macs / base_macs)
    assert rates[0] == [1.0, 1.0, 1.0] and rates[-1] == [0.0, 0.0, 0.0]
    # the mean MAC fraction is the base MACs less the skipped ones, from the measured per-layer rates
    set_thresholds(cg, 0.5)
    report = measure_gating(cg, x, base_macs=base_macs)
    skipped = sum(0.75 * u.macs * (1 - r) for u, r in zip(CostModel(base).units, report.gate_rates, strict=True))
    assert report.macs_fraction == pytest.approx(1.0 - skipped / base_macs)


def test_the_threshold_loss_pulls_thresholds_to_a_higher_target_and_cuts_macs() -> None:
    base, cg, _ = _gated_resnet()
    data = get_dataset("synthetic", split="train", size=64)
    x = data.normalize(data.images[:32])
    base_macs = CostModel(base).base_macs
    results = {}
    for target in (0.0, 1.5):
        model = copy.deepcopy(cg)
        assert float(threshold_loss(model, target).detach()) == pytest.approx(1e-4 * (16 + 32 + 64) * target**2)
        train(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.05), progress=False,
              extra_loss=lambda m, t=target: threshold_loss(m, t, weight=1.0))  # fmt: skip
        mean_delta = torch.cat([g.threshold.detach() for g in cg_convs(model)]).mean()
        results[target] = (float(mean_delta), measure_gating(model, x, base_macs=base_macs).macs_fraction)
    assert results[0.0][0] < results[1.5][0]
    assert results[1.5][0] > 0.2
    assert results[0.0][1] > results[1.5][1]


def test_conversion_skips_image_convs_and_can_gate_consumers() -> None:
    tiny = get_model("tiny_cnn")
    cg = channel_gate(tiny)
    assert len(cg_convs(cg)) == 2  # the 3-channel image conv has no base path with p = 4
    assert not cg_convs(tiny)  # converted a copy
    assert isinstance(cg.get_submodule("features.0"), nn.Conv2d) and isinstance(cg.get_submodule("features.3"), CGConv)
    assert len(cg_convs(channel_gate(get_model("resnet8"), consumers=True))) == 6
    with pytest.raises(ValueError, match="use_group"):
        channel_gate(get_model("resnet8"), partitions=3, use_group=True)


def test_baseline_builds_a_gated_model_with_costs_as_defined_and_leaves_base_alone() -> None:
    base = randomize_(get_model("tiny_cnn"), seed=0)
    before = copy.deepcopy(base.state_dict())
    val = get_dataset("synthetic", split="val", size=64)
    context = TrainContext(train_set=get_dataset("synthetic", split="train", size=128), val_set=val, budget=0.8,
                           epochs=1.0, seed=0)  # fmt: skip
    policy = get_baseline("channel_gating", calibration_images=32)
    assert isinstance(policy, ChannelGatingBaseline)
    built = policy.build(base, context)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    model = built.model
    assert len(cg_convs(model)) == 2 and built.keep_ratios is None
    base_macs = CostModel(base).base_macs
    # MACs: the measured mean over the val split, as the paper defines them
    report = measure_gating(model, val, base_macs=base_macs)
    assert built.macs_fraction == pytest.approx(report.macs_fraction)
    assert built.info["mac_floor"] <= built.macs_fraction <= 1.0
    assert built.info["calibration_macs_fraction"] <= 0.8
    # params: nothing removed, one threshold per gated channel added
    n_base = sum(p.numel() for p in base.parameters())
    assert built.params_fraction == pytest.approx((n_base + 16 + 16) / n_base)
    with torch.no_grad():
        assert model(images(2)).shape == (2, 10)
    with pytest.raises(ValueError, match="below what channel gating can reach"):
        policy.build(base, TrainContext(train_set=context.train_set, val_set=val, budget=0.3, epochs=0.0))
