"""Neuron Merging (pruning.methods.merge_pruned): exact restoration, lower error than pruning, same shapes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from _nets import images, randomize_
from torch import nn

from pruning.accounting import model_cost
from pruning.budget import bisect_bracket
from pruning.data import get_dataset
from pruning.export import export_static
from pruning.methods import MergeReport, merge_pruned, merge_scales
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.train import dataset_for_model, evaluate
from pruning.units import get_units, unit_conv


def _l1(model: nn.Module) -> list[torch.Tensor]:
    mods = dict(model.named_modules())
    return [unit_conv(mods[u.conv]).weight.detach().abs().sum(dim=(1, 2, 3)) for u in get_units(model)]


def _make_scaled_duplicate(model: nn.Module, unit: int, n: int, m: int, s: float) -> None:
    """Make channel ``n`` of ``unit`` compute exactly ``z·a_m`` (w_n = s·w_m and a BN that lines up)."""
    mods = dict(model.named_modules())
    u = get_units(model)[unit]
    conv, bn = unit_conv(mods[u.conv]), mods[u.bn]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        conv.weight[n] = s * conv.weight[m]
        rm, rv = bn.running_mean, bn.running_var
        assert rm is not None and rv is not None
        bn.weight[n] = 0.7 * bn.weight[m]
        rv[n] = 1.9 * rv[m]
        rm[n] = -0.3
        sig = torch.sqrt(rv + bn.eps)
        z = s * (bn.weight[n] / bn.weight[m]) * (sig[m] / sig[n])
        b_m = bn.bias[m] - bn.weight[m] * rm[m] / sig[m]
        bn.bias[n] = z * b_m + bn.weight[n] * rm[n] / sig[n]  # b_n = z·b_m


@pytest.mark.parametrize(("arch", "unit"), [("tiny_cnn", 0), ("tiny_cnn", 1), ("resnet8", 1)])
def test_scaled_duplicate_is_restored_exactly(arch: str, unit: int) -> None:
    model = randomize_(get_model(arch), seed=3).double()
    n, m = 5, 2
    _make_scaled_duplicate(model, unit, n, m, 2.5)
    units = get_units(model)
    keep = [1.0] * len(units)
    keep[unit] = (units[unit].out_channels - 1) / units[unit].out_channels
    scores = _l1(model)
    scores[unit][n] = -1.0  # n is the one pruned channel
    plan = PruningPlan(static_keep=keep, static_scores=scores)
    report = MergeReport()
    merged = merge_pruned(model, plan, report=report)
    assert report.pruned[unit] == 1 and report.merged[unit] == 1
    assert report.pairs[unit][0, :2].tolist() == [n, m]
    x = images(16).double()
    with torch.no_grad():
        ref, out, pruned = model(x), merged(x), export_static(model, plan)(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert (pruned - ref).abs().max() > 1e-3  # plain pruning does lose the channel


def _near_duplicate_net(seed: int) -> nn.Module:
    """tiny_cnn whose every unit has its second half of filters = scaled, noisy copies of the first half."""
    g = torch.Generator().manual_seed(seed)
    model = get_model("tiny_cnn")
    mods = dict(model.named_modules())
    units = get_units(model)
    scale: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for conv in [mod for mod in model.modules() if isinstance(mod, nn.Conv2d)]:  # He init, seeded
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / conv.weight[0].numel()) ** 0.5)
        for u in units:
            w = unit_conv(mods[u.conv]).weight
            h = w.shape[0] // 2
            s = torch.rand(h, generator=g) * 1.5 + 0.5
            noise = torch.randn(w[:h].shape, generator=g) * w[:h].std() * 0.1
            w[h : 2 * h] = s.view(-1, 1, 1, 1) * (w[:h] + noise)
            scale[u.index] = s
    randomize_(model, seed=seed)
    with torch.no_grad():  # duplicates get the BN of their original, rescaled: a_n ≈ a_m
        for u in units:
            bn = mods[u.bn]
            assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
            s = scale[u.index]
            h = len(s)
            bn.weight[h : 2 * h] = bn.weight[:h]
            bn.bias[h : 2 * h] = bn.bias[:h]
            bn.running_mean[h : 2 * h] = s * bn.running_mean[:h]
            bn.running_var[h : 2 * h] = s**2 * bn.running_var[:h]
    return model.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merging_beats_pruning_on_near_duplicates(seed: int) -> None:
    model = _near_duplicate_net(seed)
    plan = PruningPlan(static_keep=[0.5] * len(get_units(model)), static_scores=_l1(model))
    report = MergeReport()
    merged = merge_pruned(model, plan, report=report)
    pruned = export_static(model, plan)
    x = images(64, seed=seed)
    with torch.no_grad():
        ref = model(x)
        err_merge = (merged(x) - ref).pow(2).mean().item()
        err_prune = (pruned(x) - ref).pow(2).mean().item()
    assert sum(report.merged) > 0
    assert err_merge < 0.5 * err_prune, f"merged MSE {err_merge:.4g} vs pruned MSE {err_prune:.4g}"


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet8"])
def test_merged_model_has_the_exported_shapes(arch: str) -> None:
    model = randomize_(get_model(arch), seed=1)
    n = len(get_units(model))
    plan = PruningPlan(static_keep=torch.linspace(0.3, 0.8, n).tolist())
    merged = merge_pruned(model, plan)
    exported = export_static(model, PruningPlan(static_keep=plan.static_keep, static_scores=_l1(model)))
    assert type(merged) is type(model)
    assert {k: v.shape for k, v in merged.state_dict().items()} == {
        k: v.shape for k, v in exported.state_dict().items()
    }
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in exported.parameters())
    assert model_cost(merged).total_params == model_cost(exported).total_params
    # nothing merges above a cosine similarity of 1: exactly plain pruning
    none_merged = merge_pruned(model, plan, threshold=1.1)
    x = images(8)
    with torch.no_grad():
        torch.testing.assert_close(none_merged(x), exported(x))


def test_merge_scales_rejects_opposite_signs_and_checks_arguments() -> None:
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -1.0, 1.0]))
    w = torch.randn(3, 4, 3, 3)
    w[1] = 2.0 * w[0]
    w[2] = 3.0 * w[0]
    keep = torch.tensor([True, False, False])
    n, m, z = merge_scales(w, bn, keep)
    assert n.tolist() == [2] and m.tolist() == [0]  # channel 1 has γ of the other sign: dropped
    torch.testing.assert_close(z, torch.tensor([3.0]))
    with pytest.raises(ValueError, match="lam"):
        merge_scales(w, bn, keep, lam=1.5)
    with pytest.raises(ValueError, match="keep"):
        merge_scales(w, bn, torch.zeros(3, dtype=torch.bool))


def _uniform_plan_at(model: nn.Module, mac_fraction: float) -> PruningPlan:
    n = len(get_units(model))

    def reaches(ratio: float) -> bool:
        return float(model_cost(model, PruningPlan(static_keep=[ratio] * n)).macs_fraction[0]) >= mac_fraction

    ratio, _ = bisect_bracket(reaches, 1.0, 0.0, steps=30)  # the smallest uniform ratio at the MAC fraction
    return PruningPlan(static_keep=[ratio] * n, static_scores=_l1(model))


@pytest.mark.realdata
@pytest.mark.slow
def test_merging_beats_l1_pruning_on_resnet20(shared_models_dir: Path, cifar10_dir: Path) -> None:
    path = shared_models_dir / "resnet20_cifar10jpeg.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    t0 = time.perf_counter()
    model = get_model("resnet20", weights=path).eval()
    plan = _uniform_plan_at(model, 0.7)
    frac = float(model_cost(model, plan).macs_fraction[0])
    assert 0.65 <= frac <= 0.75
    test = get_dataset("cifar10", split="test", root=cifar10_dir.parent)
    test = dataset_for_model(test.subset(range(0, len(test), 2)), model)  # class-balanced half (file is in class order)
    merged = merge_pruned(model, plan)
    acc_merge = evaluate(merged, test)["top1"]
    acc_prune = evaluate(export_static(model, plan), test)["top1"]
    msg = f"at {frac:.3f} of the MACs: Neuron Merging {acc_merge:.2f}% vs L1 pruning {acc_prune:.2f}% top-1"
    print(msg, f"({time.perf_counter() - t0:.1f} s)")
    assert acc_merge > acc_prune, msg
