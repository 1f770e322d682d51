"""Exact MAC and parameter accounting, checked on physically exported models and per-sample dynamic forwards."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _nets import images, randomize_, randomize_gates_
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruning.accounting import CostModel, model_cost, sparsity_to_mac_fraction
from pruning.export import DynamicModel, export_static, fold_dropped_constants, load_exported, save_exported
from pruning.gating import applied_masks, clear_plan, gate_model, gated_units, is_gated, set_plan, stored_masks
from pruning.models import IMAGENET_NORMALIZATION, get_model, input_normalization
from pruning.plan import PruningPlan, keep_count
from pruning.units import get_units

FAST = ["tiny_cnn", "resnet8"]
BIG = ["resnet20", "resnet56", "vgg16_bn", "m_cifarnet"]
ALL_MODELS = FAST + BIG
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward pass as FlopCounterMode counts them (2 FLOPs per multiply-accumulate)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _static_plans(num_units: int, seed: int) -> list[list[float]]:
    """Seeded random static keep ratios, plus the extremes 0 (one channel) and 1 mixed in."""
    g = torch.Generator().manual_seed(seed)
    plans = [torch.rand(num_units, generator=g).tolist() for _ in range(2)]
    extreme = torch.rand(num_units, generator=g)
    extreme[::3] = 0.0
    extreme[1::3] = 1.0
    return [*plans, extreme.tolist()]


@pytest.fixture(scope="module", params=ALL_MODELS)
def model(request):
    """(name, plain model with realistic random weights, its gated copy with random predictors and u_s)."""
    name = request.param
    with torch.random.fork_rng():  # the conv weights too: the same model whatever ran before
        torch.manual_seed(21)
        base = randomize_(get_model(name), seed=21)
    gated = randomize_gates_(gate_model(base), seed=21).eval()
    return name, base, gated


# ---------------------------------------------------------------------------------------------------------
# Static plans: accounting == FlopCounterMode on the exported model; exported logits == masked logits
# ---------------------------------------------------------------------------------------------------------


def test_static_plans_plain_model(model):
    name, base, _ = model
    units = get_units(base)
    x = images(3, seed=2)
    for ratios in _static_plans(len(units), seed=len(name)):
        plan = PruningPlan(static_keep=ratios)
        cost = model_cost(base, plan)
        exported = export_static(base, plan)
        assert not is_gated(exported) and type(exported) is type(base)
        # a static-only plan keeps exactly k_s channels per unit, physically
        for u, r in zip(get_units(exported), ratios, strict=True):
            assert u.out_channels == int(keep_count(r, units[u.index].out_channels))
        assert cost.macs.shape == (1,)
        assert int(cost.predictor_macs[0]) == 0 and cost.predictor_params == 0
        assert int(cost.total_macs[0]) == _macs(exported, x[:1])
        assert cost.total_params == cost.params == _n_params(exported)
        masked = gate_model(base, predictor=False)
        set_plan(masked, plan)
        torch.testing.assert_close(_logits(exported, x), _logits(masked, x), **TOL)


@pytest.mark.parametrize("name", FAST)
def test_maskable_model_with_learned_us_exports_plain(name):
    # gated without predictors, u_s trained away from 1: the plain export folds γ·u_s into BN
    masked = randomize_gates_(gate_model(randomize_(get_model(name), seed=41), predictor=False), seed=41)
    plan = PruningPlan(static_keep=[0.4] * len(gated_units(masked)))
    exported = export_static(masked, plan)
    assert not is_gated(exported)
    cost = model_cost(masked, plan)
    assert cost.total_params == _n_params(exported) and int(cost.macs[0]) == _macs(exported, images(1))
    set_plan(masked, plan)
    x = images(3, seed=8)
    torch.testing.assert_close(_logits(exported, x), _logits(masked, x), **TOL)


def test_static_plans_gated_model_half_tradeoff(model):
    name, _, gated = model
    units = get_units(gated)
    x = images(3, seed=3)
    for ratios in _static_plans(len(units), seed=len(name) + 1):
        plan = PruningPlan(static_keep=ratios, tradeoff=0.5)
        cost = model_cost(gated, plan)
        exported = export_static(gated, plan)
        assert is_gated(exported)
        # R_r = 0.5 stores all but floor(0.5·(C - k_s)) channels of each unit
        for u, r in zip(get_units(exported), ratios, strict=True):
            c = units[u.index].out_channels
            assert u.out_channels == c - math.floor(0.5 * (c - int(keep_count(r, c))) + 1e-9)
        assert int(cost.predictor_macs[0]) > 0 and cost.predictor_params > 0
        assert int(cost.total_macs[0]) == _macs(exported, x[:1])
        assert cost.total_params == _n_params(exported)
        # the masked model: the gated model under the same plan, runtime off
        set_plan(gated, plan)
        try:
            torch.testing.assert_close(_logits(exported, x), _logits(gated, x), **TOL)
        finally:
            clear_plan(gated)


def test_unpruned_costs_base_exactly(model):
    _, base, gated = model
    x = images(1)
    base_macs = _macs(base, x)
    cm = CostModel(base)
    assert cm.base_macs == base_macs and cm.base_params == _n_params(base)
    for plan in (None, PruningPlan(), PruningPlan(static_keep=[1.0] * len(get_units(base)))):
        cost = model_cost(base, plan)
        assert int(cost.macs[0]) == base_macs and float(cost.macs_fraction[0]) == 1.0
        assert cost.params == _n_params(base) and cost.params_fraction == 1.0
    # gated: the backbone is the base model; predictors (weights, u_s) are the overhead
    g_cost = model_cost(gated)
    assert int(g_cost.macs[0]) == base_macs and g_cost.params == _n_params(base)
    assert g_cost.total_params == _n_params(gated)
    assert int(g_cost.total_macs[0]) == _macs(gated, x)


def test_pruning_reduces_macs_and_static_reduces_params(model):
    _, base, gated = model
    n_units = len(get_units(base))
    static = PruningPlan(static_keep=[0.5] * n_units)
    s_cost = model_cost(base, static)
    assert float(s_cost.macs_fraction[0]) < 1.0 and s_cost.params < s_cost.base_params
    # runtime masks change MACs per sample, never the stored parameters
    x = images(4, seed=4)
    rt = model_cost(gated, PruningPlan(runtime_keep=0.3), inputs=x)
    full = model_cost(gated)
    assert rt.macs.shape == (4,)
    assert torch.all(rt.macs_fraction < 1.0)
    assert rt.params == full.params and rt.predictor_params == full.predictor_params
    both = model_cost(gated, PruningPlan(static_keep=[0.5] * n_units, runtime_keep=0.3, tradeoff=0.5), inputs=x)
    st_only = model_cost(gated, PruningPlan(static_keep=[0.5] * n_units, tradeoff=0.5))
    assert both.params == st_only.params < full.params
    assert torch.all(both.macs <= st_only.macs)
    with pytest.raises(ValueError, match="needs inputs"):
        model_cost(gated, PruningPlan(runtime_keep=0.3))


# ---------------------------------------------------------------------------------------------------------
# Per-sample runtime plans: CostModel.from_masks == FlopCounterMode on DynamicModel at batch 1
# ---------------------------------------------------------------------------------------------------------


def test_runtime_plans_per_sample(model):
    name, _, gated = model
    n_units = len(get_units(gated))
    n = 4
    g = torch.Generator().manual_seed(len(name) + 5)
    static = torch.rand(n_units, generator=g).tolist()
    runtime = torch.rand(n, n_units, generator=g)
    runtime[0, ::2] = 1.0
    runtime[1, ::2] = 0.0
    plan = PruningPlan(static_keep=static, runtime_keep=runtime, tradeoff=0.5)
    x = images(n, seed=5)
    set_plan(gated, plan)
    try:
        masked = _logits(gated, x)
        masks = applied_masks(gated)
        stored = stored_masks(gated)
        # building the cost model traces a forward pass: it must not replace the batch's masks
        cost = CostModel(gated).from_masks(applied_masks(gated), stored_masks(gated))
        assert all(torch.equal(a, b) for a, b in zip(masks, applied_masks(gated), strict=True))
        assert cost.macs.shape == (n,)
        again = model_cost(gated, plan, inputs=x)
        assert torch.equal(again.macs, cost.macs) and torch.equal(again.predictor_macs, cost.predictor_macs)
        exported = export_static(gated)
    finally:
        clear_plan(gated)
    assert cost.total_params == _n_params(exported)
    assert len(set(cost.total_macs.tolist())) > 1  # samples cost differently
    for i in range(n):
        dyn = DynamicModel(exported, runtime=runtime[i].tolist()).eval()
        assert int(cost.total_macs[i]) == _macs(dyn, x[i : i + 1])
        torch.testing.assert_close(_logits(dyn, x[i : i + 1]), masked[i : i + 1], **TOL)
        # it kept, among the stored channels, exactly the channels the masked model kept
        for kept, mask, st in zip(dyn.kept_channels(), masks, stored, strict=True):
            assert torch.equal(kept[0], mask[i][st])
    # batch N: the dense path with per-sample ratios gives the same logits
    dyn = DynamicModel(exported, runtime=runtime).eval()
    torch.testing.assert_close(_logits(dyn, x), masked, **TOL)
    # and so does a runtime source giving the same ratios
    dyn.set_runtime(lambda unit, gap, u_r: runtime[: gap.shape[0], unit])
    torch.testing.assert_close(_logits(dyn, x), masked, **TOL)


# ---------------------------------------------------------------------------------------------------------
# Saving and loading exported models
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_save_load_exported_round_trip(tmp_path, name, gated):
    base = randomize_(get_model(name), seed=31)
    base.normalization = IMAGENET_NORMALIZATION  # type: ignore[assignment]
    n_units = len(get_units(base))
    source = randomize_gates_(gate_model(base), seed=31) if gated else base
    plan = PruningPlan(static_keep=torch.linspace(0.2, 0.9, n_units).tolist(), tradeoff=0.5 if gated else None)
    exported = export_static(source, plan)
    path = tmp_path / "exported.pt"
    save_exported(path, exported, arch=name, num_classes=10, top1=12.5)
    assert torch.load(path, weights_only=True)["top1"] == 12.5  # plain tensors and metadata only
    loaded = load_exported(path)
    assert is_gated(loaded) == gated and not loaded.training
    assert input_normalization(loaded) == IMAGENET_NORMALIZATION
    assert _n_params(loaded) == _n_params(exported)
    x = images(3, seed=6)
    torch.testing.assert_close(_logits(loaded, x), _logits(exported, x), rtol=0, atol=0)
    if gated:
        rt = [0.3, 0.6, 0.9][:n_units]
        for i in range(2):
            a, b = DynamicModel(loaded, runtime=rt), DynamicModel(exported, runtime=rt)
            torch.testing.assert_close(_logits(a, x[i : i + 1]), _logits(b, x[i : i + 1]), rtol=0, atol=0)
            assert [int(k.sum()) for k in a.kept_channels()] == [int(k.sum()) for k in b.kept_channels()]


def test_load_exported_refuses_other_files(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": get_model("tiny_cnn").state_dict()}, plain)
    with pytest.raises(ValueError, match="not an exported PruneGym model"):
        load_exported(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="weights_only"):
        load_exported(garbage)


def test_load_exported_wrong_shapes(tmp_path):
    exported = export_static(get_model("tiny_cnn"), PruningPlan(static_keep=[0.5, 0.5, 0.5]))
    path = tmp_path / "exported.pt"
    save_exported(path, exported, arch="tiny_cnn", num_classes=10)
    obj = torch.load(path, weights_only=True)
    obj["channels"] = [8, 16, 16]  # claims the unpruned widths
    torch.save(obj, path)
    with pytest.raises(ValueError, match="do not fit the recorded shapes"):
        load_exported(path)


# ---------------------------------------------------------------------------------------------------------
# Sparsity b ↔ MAC fraction
# ---------------------------------------------------------------------------------------------------------


def test_sparsity_to_mac_fraction():
    m = get_model("m_cifarnet")
    assert sparsity_to_mac_fraction(m, 1.0) == 1.0
    values = [sparsity_to_mac_fraction(m, b) for b in (0.9, 0.7, 0.5, 0.3, 0.1)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    # every conv but the first scales its input and output widths by b: between b² and b of the MACs
    for b, f in zip((0.9, 0.7, 0.5, 0.3, 0.1), values, strict=True):
        assert b * b < f < b
    # M-CifarNet at b = 0.5 is close to b² (Chen et al.: 3.92× fewer MACs)
    assert 1 / values[2] > 3.5
    # gated or plain: same answer
    assert sparsity_to_mac_fraction(gate_model(m), 0.5) == values[2]
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"sparsity b must be in \(0, 1\]"):
            sparsity_to_mac_fraction(m, bad)


# ---------------------------------------------------------------------------------------------------------
# Known MACs, from the architecture definitions
# ---------------------------------------------------------------------------------------------------------


def _conv(k: int, hw: int, c_in: int, c_out: int) -> int:
    return k * k * hw * hw * c_in * c_out


def _resnet_macs_by_hand(depth: int) -> int:
    """He et al., Sec. 4.2: 3×3 stem at 32×32, stages of n blocks at 32/16/8 with 16/32/64 channels, FC 64→10."""
    n = (depth - 2) // 6
    total = _conv(3, 32, 3, 16)
    c_in = 16
    for width, hw in ((16, 32), (32, 16), (64, 8)):
        for _ in range(n):
            total += _conv(3, hw, c_in, width) + _conv(3, hw, width, width)
            c_in = width
    return total + 64 * 10


def _vgg16_macs_by_hand() -> int:
    total, c_in, hw = 0, 3, 32
    for spec in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if spec == "M":
            hw //= 2
            continue
        total += _conv(3, hw, c_in, spec)
        c_in = spec
    return total + 512 * 10


def _m_cifarnet_macs_by_hand() -> int:
    total, c_in, hw = 0, 3, 32
    for width, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (192, 2), (192, 1), (192, 1)]:
        hw //= stride
        total += _conv(3, hw, c_in, width)
        c_in = width
    return total + 192 * 10


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet20", 40_551_040),  # 40.55M: 40,550,400 in convs + 640 in the FC
        ("resnet56", 125_485_696),  # 125.49M
        ("resnet8", None),
        ("vgg16_bn", 313_201_664),  # 313.2M
        ("m_cifarnet", None),
    ],
)
def test_known_base_macs(name, expected):
    by_hand = {
        "resnet20": _resnet_macs_by_hand(20),
        "resnet56": _resnet_macs_by_hand(56),
        "resnet8": _resnet_macs_by_hand(8),
        "vgg16_bn": _vgg16_macs_by_hand(),
        "m_cifarnet": _m_cifarnet_macs_by_hand(),
    }[name]
    if expected is not None:
        assert by_hand == expected
    model = get_model(name)
    assert int(model_cost(model).macs[0]) == CostModel(model).base_macs == by_hand
    assert _macs(model, images(1)) == by_hand


def test_resnet20_unit_macs_by_hand():
    # a unit's MACs: conv1 of each block; pruning k of its channels removes k/C of conv1 and of conv2
    model = get_model("resnet20")
    units = get_units(model)
    assert [u.macs for u in units] == [_conv(3, 32, 16, 16)] * 3 + [_conv(3, 16, 16, 32)] + [
        _conv(3, 16, 32, 32)
    ] * 2 + [_conv(3, 8, 32, 64)] + [_conv(3, 8, 64, 64)] * 2
    plan = PruningPlan(static_keep=[0.5] * 9)
    saved = sum(u.macs // 2 for u in units) + sum(
        _conv(3, hw, c, c) // 2 for c, hw in [(16, 32)] * 3 + [(32, 16)] * 3 + [(64, 8)] * 3
    )
    assert int(model_cost(model, plan).macs[0]) == 40_551_040 - saved


def test_gated_unit_bookkeeping():
    # predictor overhead per unit: MACs C_in·C_out (linear on the pooled input), params C_in·C_out + C_out (u_s)
    gated = gate_model(get_model("resnet8"))
    cost = model_cost(gated)
    units = gated_units(gated)
    assert int(cost.predictor_macs[0]) == sum(g.predictor.in_features * g.full_channels for g in units)
    assert cost.predictor_params == sum(g.predictor.in_features * g.full_channels + g.full_channels for g in units)


@pytest.mark.parametrize("name", ["tiny_cnn", "m_cifarnet", "resnet8"])
def test_runtime_source_sees_the_same_inputs_after_export(name):
    """A callable runtime source that reads positions and widths decides the same in the masked model, the
    exported model (dense, batch > 1) and DynamicModel (compact, batch 1): it always sees original widths."""
    base = randomize_(get_model(name), seed=5)
    gated = randomize_gates_(gate_model(base), seed=5).eval()
    n_units = len(gated_units(gated))
    seen: list[tuple[int, int, int]] = []

    def source(unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        seen.append((unit, gap.shape[1], u_r.shape[1]))
        # depends on positions and on zeros: first-half mass vs total, squashed into [0.1, 1]
        half = u_r[:, : u_r.shape[1] // 2].clamp(min=0).sum(1) + gap[:, : gap.shape[1] // 2].abs().sum(1)
        total = u_r.clamp(min=0).sum(1) + gap.abs().sum(1) + 1e-6
        return (0.1 + 0.9 * half / total).clamp(0.1, 1.0)

    static = [0.4 + 0.5 * (i % 3) / 2 for i in range(n_units)]
    set_plan(gated, PruningPlan(static_keep=static, runtime_keep=source, tradeoff=0.5))
    x = images(3, seed=11)
    with torch.no_grad():
        masked = gated(x)
    masked_keep = [m.clone() for m in applied_masks(gated)]
    widths_masked = sorted(set(seen))
    stored = stored_masks(gated)
    exported = export_static(gated)
    for g in gated_units(exported):
        g.runtime = source
    seen.clear()
    with torch.no_grad():
        dense = exported(x)
    assert sorted(set(seen)) == widths_masked
    torch.testing.assert_close(dense, masked, rtol=1e-4, atol=1e-5)
    for keep_full, keep_exp, st in zip(masked_keep, applied_masks(exported), stored, strict=True):
        assert torch.equal(keep_full[:, st], keep_exp)
    dyn = DynamicModel(exported, runtime=source).eval()
    for i in range(3):
        with torch.no_grad():
            torch.testing.assert_close(dyn(x[i : i + 1]), masked[i : i + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet8", "tiny_cnn"])
@pytest.mark.parametrize("constant_by", ["zero_scale", "zero_filter"])
def test_fold_keeps_the_constant_output_of_dropped_channels(name: str, constant_by: str) -> None:
    """Channels made constant (BN scale 0, as Polarization leaves them, or an all-zero filter, as gRDA does)
    still feed ReLU(BN(0)) to the consumer in the unpruned model: sliced with the fold, the first consumer's
    BN output equals the unpruned model's away from the padded border, and the logits are far closer than
    plain slicing's."""
    torch.manual_seed(0)
    model = randomize_(get_model(name, num_classes=10), seed=3)
    units = get_units(model)
    scores = [torch.arange(u.out_channels, dtype=torch.float32) for u in units]  # keep the upper half
    plan = PruningPlan(static_keep=[0.5] * len(units), static_scores=scores)
    with torch.no_grad():
        for u in units:
            dropped = torch.arange(u.out_channels // 2)
            bn = model.get_submodule(u.bn)
            bn.bias[dropped] = 0.3 + torch.rand(len(dropped))  # a clearly positive constant after the ReLU
            if constant_by == "zero_scale":
                bn.weight[dropped] = 0.0
            else:
                model.get_submodule(u.conv).weight[dropped] = 0.0
    x = images(4)
    first = units[0].consumer_bn
    assert first is not None

    def run(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        handle = m.get_submodule(first).register_forward_hook(lambda _m, _i, out: seen.append(out))
        with torch.no_grad():
            logits = m(x)
        handle.remove()
        return logits, seen[0]

    ref_logits, ref_bn = run(model.eval())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_dropped_constants(model, plan)
    fold_logits, fold_bn = run(export_static(folded, plan))
    plain_logits, plain_bn = run(export_static(model, plan))
    inner = (..., slice(1, -1), slice(1, -1))
    ref_bn = ref_bn[:, ref_bn.shape[1] - fold_bn.shape[1] :]  # a plain net's consumer BN is the next unit's: sliced
    assert torch.allclose(fold_bn[inner], ref_bn[inner], atol=1e-4)
    assert not torch.allclose(plain_bn[inner], ref_bn[inner], atol=1e-2)  # what plain slicing loses
    assert (fold_logits - ref_logits).abs().max() < 0.5 * (plain_logits - ref_logits).abs().max()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input is not modified
    with pytest.raises(TypeError, match="plain model"):
        fold_dropped_constants(gate_model(copy.deepcopy(model)), plan)
