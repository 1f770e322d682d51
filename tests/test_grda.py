"""gRDA (pruning.methods.grda, baseline ``grda``): the update by hand, growing sparsity, zero-filter plans, build."""

from __future__ import annotations

import doctest
from typing import Any

import pytest
import torch
from _nets import images, randomize_
from torch import nn

import pruning.methods.grda as grda
from agents.baselines import GRDABaseline, TrainContext, get_baseline
from pruning.accounting import model_cost
from pruning.data import get_dataset
from pruning.export import export_static
from pruning.methods.grda import GRDA, conv_sparsity, grda_builder, zero_filter_plan
from pruning.models import get_model
from pruning.train import TrainConfig, dataset_for_model, train
from pruning.units import get_units, unit_conv


def _soft(a: torch.Tensor, thr: float) -> torch.Tensor:
    return a.sign() * (a.abs() - thr).clamp(min=0)


def test_module_doctest() -> None:
    result = doctest.testmod(grda, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_two_updates_equal_a_hand_computation_with_a_changing_learning_rate() -> None:
    w0 = torch.tensor([0.5, -0.02, 0.1, -0.3], dtype=torch.float64)
    w = nn.Parameter(w0.clone())
    c, mu = 0.2, 0.6
    opt = GRDA([w], lr=0.1, c=c, mu=mu)
    g1 = torch.tensor([1.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    w.grad = g1.clone()
    opt.step()
    a1 = w0 - 0.1 * g1  # the accumulator starts at the starting weights
    thr1 = c * 0.1 ** (0.5 + mu) * 1**mu
    assert torch.allclose(w.detach(), _soft(a1, thr1), atol=1e-15)
    assert torch.allclose(w.detach(), torch.tensor([0.384113, -0.104113, 0.284113, -0.334113], dtype=torch.float64),
                          atol=1e-6)  # fmt: skip
    # second step at lr 0.05: A accumulates the gradient at the new rate, the threshold its increment
    opt.param_groups[0]["lr"] = 0.05
    g2 = torch.tensor([-0.5, 3.0, 0.0, -1.0], dtype=torch.float64)
    w.grad = g2.clone()
    opt.step()
    a2 = a1 - 0.05 * g2
    thr2 = thr1 + c * 0.05 ** (0.5 + mu) * (2**mu - 1)
    assert torch.allclose(w.detach(), _soft(a2, thr2), atol=1e-15)
    state = opt.state[w]
    assert state["step"] == 2 and state["threshold"] == pytest.approx(thr2)
    assert torch.allclose(state["accumulator"], a2, atol=1e-15)


def test_constant_rate_threshold_is_c_lr_pow_half_plus_mu_times_n_pow_mu() -> None:
    """With zero gradients A_n = w_0, so w_n = soft(w_0, c·lr^(1/2+μ)·n^μ): sparsity never falls."""
    w0 = torch.linspace(-1, 1, 201, dtype=torch.float64)
    w = nn.Parameter(w0.clone())
    lr, c, mu = 0.1, 0.05, 0.51
    opt = GRDA([w], lr=lr, c=c, mu=mu)
    zeros = []
    for n in range(1, 51):
        w.grad = torch.zeros_like(w)
        opt.step()
        assert torch.allclose(w.detach(), _soft(w0, c * lr ** (0.5 + mu) * n**mu), atol=1e-12)
        zeros.append(int((w == 0).sum()))
    assert zeros == sorted(zeros) and zeros[-1] > zeros[0]


def test_parameters_without_gradient_are_skipped_and_groups_keep_their_own_c() -> None:
    a = nn.Parameter(torch.tensor([0.01, 0.5]))
    b = nn.Parameter(torch.tensor([0.01, 0.5]))
    frozen = nn.Parameter(torch.tensor([0.01]))
    opt = GRDA([{"params": [a, frozen]}, {"params": [b], "c": 0.0}], lr=0.1, c=1.0, mu=0.5)
    a.grad, b.grad = torch.zeros(2), torch.zeros(2)
    opt.step()
    assert a.tolist() == pytest.approx([0.0, 0.4])  # threshold 1.0 · 0.1^1 · 1 = 0.1
    assert b.tolist() == pytest.approx([0.01, 0.5])  # c = 0: plain dual averaging
    assert frozen.tolist() == pytest.approx([0.01]) and frozen not in opt.state


def test_invalid_hyperparameters_and_weight_decay_are_refused() -> None:
    w = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="lr"):
        GRDA([w], lr=0.0)
    with pytest.raises(ValueError, match="c="):
        GRDA([w], lr=0.1, c=-1.0)
    model = get_model("tiny_cnn")
    data = dataset_for_model(get_dataset("synthetic", split="train", size=32), model)
    with pytest.raises(ValueError, match="weight_decay"):
        train(model, data, TrainConfig(epochs=1, batch_size=32), make_optimizer=grda_builder(c=0.1, mu=0.51),
              progress=False)  # fmt: skip


def test_sparsity_rises_with_training_steps() -> None:
    torch.manual_seed(0)
    model = get_model("tiny_cnn")
    data = dataset_for_model(get_dataset("synthetic", split="train", size=256), model)
    config = TrainConfig(epochs=8, batch_size=64, lr=0.1, schedule="constant", weight_decay=0.0)
    sparsity: list[float] = []

    def record(epoch: int, rec: dict[str, Any], opt: torch.optim.Optimizer) -> None:
        assert isinstance(opt, GRDA)
        sparsity.append(conv_sparsity(model))

    train(model, data, config, make_optimizer=grda_builder(c=0.05, mu=0.51), on_epoch_end=record, progress=False)
    assert sparsity[0] > 0.0
    assert sparsity[0] < sparsity[3] < sparsity[7], sparsity
    assert conv_sparsity(model, units_only=True) > 0.0


def test_zero_filter_plan_drops_exactly_the_all_zero_filters() -> None:
    model = randomize_(get_model("tiny_cnn"), seed=1)
    units = get_units(model)
    mods = dict(model.named_modules())
    with torch.no_grad():
        w0 = unit_conv(mods[units[0].conv]).weight
        w0[[1, 4, 6]] = 0.0
        w0[2] = 0.0
        w0[2, 0, 0, 0] = 1e-3  # one non-zero weight: the filter stays
        unit_conv(mods[units[2].conv]).weight.zero_()  # all filters zero: one is kept
    plan, zeros = zero_filter_plan(model)
    assert zeros == [3, 0, units[2].out_channels]
    assert plan.static_keep is not None
    assert list(plan.static_keep) == [5 / 8, 1.0, 1 / units[2].out_channels]
    pruned = export_static(model, plan)
    kept = unit_conv(pruned.get_submodule(units[0].conv)).weight
    expected = unit_conv(mods[units[0].conv]).weight[[0, 2, 3, 5, 7]]
    assert torch.equal(kept, expected)  # the survivors, in order
    assert zero_filter_plan(model, tol=1e-2)[1][0] == 4  # a looser tolerance also drops the 1e-3 filter


def test_build_trains_with_grda_and_slices_zero_filters_without_touching_base() -> None:
    base = randomize_(get_model("tiny_cnn"), seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    train_set = dataset_for_model(get_dataset("synthetic", split="train", size=128), base)
    val_set = dataset_for_model(get_dataset("synthetic", split="val", size=32), base)
    context = TrainContext(train_set=train_set, val_set=val_set, budget=0.5, epochs=2)
    built = GRDABaseline(lr=0.1, c=1.5, batch_size=32).build(base, context)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), f"base changed at {k}"
    assert built.model(images(4)).shape == (4, 10)
    macs = int(model_cost(built.model).macs[0]) / int(model_cost(base).macs[0])
    assert built.macs_fraction == pytest.approx(macs, abs=1e-12)
    params = sum(p.numel() for p in built.model.parameters()) / sum(p.numel() for p in base.parameters())
    assert built.params_fraction == pytest.approx(params, abs=1e-12)
    info = built.info
    assert info["steps"] == 8 and info["c"] == 1.5 and info["mu"] == 0.51
    assert 0.0 < info["unit_conv_sparsity"] <= 1.0 and 0.0 < info["conv_sparsity"] <= 1.0
    # every unit lost exactly its all-zero filters (at least one kept), and something was removed
    units = get_units(base)
    widths = [unit_conv(built.model.get_submodule(u.conv)).out_channels for u in units]
    assert widths == [max(1, u.out_channels - z) for u, z in zip(units, info["zero_filters"], strict=True)]
    assert sum(info["zero_filters"]) > 0 and built.macs_fraction < 1.0
    assert built.keep_ratios == [w / u.out_channels for w, u in zip(widths, units, strict=True)]
    assert isinstance(get_baseline("grda"), GRDABaseline)


def test_train_copy_is_the_unstructured_model_that_build_slices() -> None:
    base = randomize_(get_model("tiny_cnn"), seed=0)
    train_set = dataset_for_model(get_dataset("synthetic", split="train", size=128), base)
    val_set = dataset_for_model(get_dataset("synthetic", split="val", size=32), base)
    context = TrainContext(train_set=train_set, val_set=val_set, budget=0.5, epochs=2)
    method = GRDABaseline(lr=0.1, c=1.5, batch_size=32)
    work, info, seconds = method.train_copy(base, context)
    # nothing sliced: the base's shapes, exact zeros where gRDA's threshold cut, the sparsity it reports
    assert [p.shape for p in work.parameters()] == [p.shape for p in base.parameters()]
    assert info["conv_sparsity"] == conv_sparsity(work) > 0.0 and seconds > 0.0
    assert info["steps"] == 8 and info["images"] == 256
    # the same seed trains the same weights, and build slices exactly its all-zero filters
    built = method.build(base, context)
    _, zeros = zero_filter_plan(work)
    assert built.info["zero_filters"] == zeros and built.info["conv_sparsity"] == info["conv_sparsity"]


def test_search_c_brackets_the_target_on_a_log_scale_and_returns_the_closest_run() -> None:
    # the zero-filter MACs fall steeply over a narrow range of c (a filter drops only when its last weight does),
    # and multi-threaded CPU training is not bit-exact, so the assertions hold for whatever each run measures
    base = randomize_(get_model("tiny_cnn"), seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    data = dataset_for_model(get_dataset("synthetic", split="train", size=128), base)
    config = TrainConfig(epochs=2, batch_size=32, lr=0.1, schedule="constant", weight_decay=0.0)
    target, tol, most = 0.5, 0.2, 10
    result = grda.search_c(base, data, config, target=target, c0=0.05, tolerance=tol, max_trials=most, progress=False)
    cs, fracs = [tr.c for tr in result.trials], [tr.macs_fraction for tr in result.trials]
    assert fracs[0] == 1.0  # c0 = 0.05 zeroes no whole filter in 8 steps
    # c grows by the factor while every run prunes too little, then each new c is the bracket's geometric middle
    first_below = next(i for i, f in enumerate(fracs) if f <= target)
    assert cs[: first_below + 1] == pytest.approx([0.05 * 4**i for i in range(first_below + 1)])
    for i in range(first_below + 1, len(cs)):
        low = max(c for c, f in zip(cs[:i], fracs[:i], strict=True) if f > target)
        high = min(c for c, f in zip(cs[:i], fracs[:i], strict=True) if f <= target)
        assert low < cs[i] < high and cs[i] == pytest.approx((low * high) ** 0.5)
    assert result.hit and abs(result.best.macs_fraction - target) <= tol
    assert result.best is result.trials[-1]  # it stops at the first run within the tolerance
    assert all(abs(f - target) > tol for f in fracs[:-1])
    plan, _ = zero_filter_plan(result.model)
    assert float(model_cost(result.model, plan).macs_fraction[0]) == pytest.approx(result.best.macs_fraction)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), f"base changed at {k}"
    with pytest.raises(ValueError, match="target"):
        grda.search_c(base, data, config, target=0.0)
    with pytest.raises(ValueError, match="c0"):
        grda.search_c(base, data, config, target=0.5, c0=0.0)


def test_build_with_search_meets_the_budget_and_reports_every_trial() -> None:
    base = randomize_(get_model("tiny_cnn"), seed=0)
    train_set = dataset_for_model(get_dataset("synthetic", split="train", size=128), base)
    val_set = dataset_for_model(get_dataset("synthetic", split="val", size=32), base)
    context = TrainContext(train_set=train_set, val_set=val_set, budget=0.5, epochs=2)
    baseline = GRDABaseline(lr=0.1, c=0.05, batch_size=32, search=True, tolerance=0.2, max_trials=10)
    built = baseline.build(base, context)
    info = built.info
    assert info["search_hit"] and abs(built.macs_fraction - 0.5) <= 0.2
    assert len(info["trials"]) >= 2 and info["trials"][-1]["c"] == info["c"]
    assert built.macs_fraction == pytest.approx(info["trials"][-1]["macs_fraction"])
    assert info["steps"] == 8
    with pytest.raises(ValueError, match="c must be > 0"):
        GRDABaseline(c=0.0, search=True)
