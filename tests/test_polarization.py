"""Polarization (pruning.methods.polarization, baseline ``polarization``): bimodal factors, valley, search, build."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from _nets import images, randomize_
from torch import nn

import pruning.methods.polarization as polarization
from agents.baselines import BuiltModel, PolarizationBaseline, TrainContext, get_baseline
from pruning.accounting import model_cost
from pruning.data import get_dataset
from pruning.methods.polarization import (
    first_valley,
    polarization_penalty,
    scale_factors,
    search_lambda_t,
    sparsity_train,
    threshold_plan,
)
from pruning.methods.search import threshold_to_budget
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.train import TrainConfig, dataset_for_model, fractional_epochs
from pruning.units import get_units, unit_conv


def _spread_factors(model: nn.Module, seed: int) -> nn.Module:
    """Unit BN scales ~ U[0.2, 0.8]: a unimodal start with no gap."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in scale_factors(model):
            p.copy_(torch.rand(p.shape, generator=g) * 0.6 + 0.2)
    return model


def _factors_after(kind: str, *, lam: float, t: float) -> torch.Tensor:
    torch.manual_seed(1)
    model = _spread_factors(get_model("tiny_cnn"), seed=1)
    data = dataset_for_model(get_dataset("synthetic", split="train", size=256), model)
    config = TrainConfig(epochs=40, batch_size=64, lr=0.1, schedule="constant", seed=1)
    sparsity_train(model, data, config, lam=lam, t=t, kind=kind, progress=False)
    return torch.cat([p.detach() for p in scale_factors(model)])


def test_module_doctest() -> None:
    result = doctest.testmod(polarization, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_penalty_value_and_subgradient_match_a_hand_computation() -> None:
    g = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    value = polarization_penalty(g, 1.2)
    mean = (0.2 + 0.5 + 0.9) / 3
    assert float(value.detach()) == pytest.approx(1.2 * 1.6 - (abs(0.2 - mean) + abs(0.5 - mean) + abs(0.9 - mean)))
    value.backward()
    # d/dγ_i = t·sign(γ_i) − sign(γ_i − γ̄) + (1/N)·Σ_j sign(γ_j − γ̄); signs of γ − γ̄ are (−, −, +)
    expected = [1.2 + 1 - 1 / 3, 1.2 + 1 - 1 / 3, 1.2 - 1 - 1 / 3]
    assert g.grad is not None
    assert g.grad.tolist() == pytest.approx(expected)


def test_polarization_splits_the_factors_and_l1_at_the_same_lambda_does_not() -> None:
    """Theorem 3.2: the factors end at 0 or at the top (a = 1) with a gap between; L1 only shifts them down."""
    lam, t = 0.015, 0.8
    polar = _factors_after("polarization", lam=lam, t=t)
    l1 = _factors_after("l1", lam=lam, t=t)
    for g in (polar, l1):
        assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0  # clamped to [0, a] throughout

    def shares(g: torch.Tensor) -> tuple[float, float, float]:  # counted, so a share of exactly 5% reads 0.05
        n = g.numel()
        low, high = int((g <= 0.05).sum()), int((g >= 0.75).sum())
        return low / n, (n - low - high) / n, high / n

    low, middle, high = shares(polar)
    assert low >= 0.3 and high >= 0.3, (low, high)  # both modes populated
    assert middle <= 0.05, polar  # and almost nothing in between
    assert shares(l1)[1] >= 0.15, l1  # L1 leaves a continuum between 0 and the top
    # the first valley falls in the gap: every factor is either at most the threshold or far above it
    thr = first_valley(polar)
    assert thr is not None and thr <= 0.05
    assert bool(((polar <= thr) | (polar >= thr + 0.5)).all())


def _values_for_counts(counts: list[int], width: float = 0.01) -> np.ndarray:
    """Values whose histogram (bins of ``width`` on [0, 1]) has exactly ``counts`` in its first bins."""
    return np.concatenate([np.full(c, (i + 0.5) * width) for i, c in enumerate(counts)])


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([10, 4, 1, 3, 6] + [0] * 90 + [0, 0, 0, 2, 8], 0.02),  # falls to bin 2, rises after: valley at bin 2
        ([10, 0, 0, 0, 5] + [0] * 95, 0.01),  # an empty stretch is a valley at its first bin
        ([0, 5, 3, 4] + [0] * 96, 0.02),  # rising first: the first fall-then-rise is at bin 2
        ([7, 7, 9] + [0] * 97, 0.01),  # a flat step counts (d[0] = 0 <= 0 <= d[1])
    ],
)
def test_first_valley_on_hand_made_histograms(counts: list[int], expected: float) -> None:
    assert first_valley(_values_for_counts(counts)) == pytest.approx(expected)


def test_first_valley_is_none_without_a_valley_and_honours_the_bin_width() -> None:
    rising = _values_for_counts(list(range(1, 101)))
    assert first_valley(rising) is None
    # bins of 0.1: counts [5, 1, 4, ...] -> valley at bin 1, left edge 0.1
    values = np.concatenate([np.full(5, 0.05), np.full(1, 0.15), np.full(4, 0.25)])
    assert first_valley(values, bin_width=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="bin_width"):
        first_valley(values, bin_width=0.0)


def test_threshold_plan_keeps_exactly_the_channels_above_the_threshold() -> None:
    model = randomize_(get_model("tiny_cnn"), seed=2)
    factors = scale_factors(model)
    with torch.no_grad():
        factors[0].copy_(torch.linspace(0.0, 0.7, factors[0].numel()))
        factors[1].zero_()  # every channel under the threshold: one is kept anyway
    plan, thresholds = threshold_plan(model, threshold=0.3)
    assert thresholds == [0.3] * len(factors)
    assert plan.static_keep is not None and plan.static_scores is not None
    for keep, scores, g in zip(plan.static_keep, plan.static_scores, factors, strict=True):
        above = int((g.detach().abs() > 0.3).sum())
        assert keep == max(1, above) / g.numel()
        assert torch.equal(scores, g.detach().abs())
    # per_unit thresholds are each unit's own first valley
    plan_u, thr_u = threshold_plan(model, per_unit=True)
    assert thr_u == [first_valley(g.detach()) or 0.0 for g in factors]
    assert plan_u.static_keep is not None


def test_scale_factors_refuse_a_gated_model() -> None:
    from pruning.gating import gate_model

    with pytest.raises(TypeError, match="gated"):
        scale_factors(gate_model(get_model("tiny_cnn"), predictor=False))


def test_search_raises_lambda_when_too_little_is_pruned_then_moves_t() -> None:
    model = randomize_(get_model("tiny_cnn"), seed=0)
    data = dataset_for_model(get_dataset("synthetic", split="train", size=64), model)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.01)
    result = search_lambda_t(
        model, data, config, target=0.3, lam_range=(0.0, 1e-6), lam_steps=2, max_trials=3, progress=False
    )
    first, second, third = result.trials
    assert first.macs_fraction > 0.3 + 0.05  # λ = 5e-7 prunes nothing here
    assert second.lam == pytest.approx(1.5 * first.lam) and second.t == first.t  # bisection upwards
    # after lam_steps misses all on the low side: t + 0.1 and the λ bracket doubled, restarted at its middle
    assert third.t == pytest.approx(first.t + 0.1) and third.lam == pytest.approx(2 * first.lam)
    assert not result.hit
    assert result.best == min(result.trials, key=lambda tr: abs(tr.macs_fraction - 0.3))
    assert not any(p is q for p, q in zip(result.model.parameters(), model.parameters(), strict=True))


def test_fractional_epochs_gives_the_steps_of_the_fraction() -> None:
    data = get_dataset("synthetic", split="train", size=100)
    assert fractional_epochs(data, 2.0)[0] is data and fractional_epochs(data, 2.0)[1] == 2
    sub, whole = fractional_epochs(data, 0.25, seed=3)
    assert (len(sub), whole) == (25, 1)
    sub2, whole2 = fractional_epochs(data, 2.5, seed=3)
    assert (len(sub2), whole2) == (83, 3)  # 3 epochs of 83 images ~ 2.5 epochs of 100
    assert torch.equal(fractional_epochs(data, 0.25, seed=3)[0].labels, sub.labels)  # seeded
    with pytest.raises(ValueError, match="epochs"):
        fractional_epochs(data, -1.0)


def _context(model: nn.Module, epochs: float) -> TrainContext:
    train_set = dataset_for_model(get_dataset("synthetic", split="train", size=128), model)
    val_set = dataset_for_model(get_dataset("synthetic", split="val", size=32), model)
    return TrainContext(train_set=train_set, val_set=val_set, budget=0.5, epochs=epochs)


def _check_built(built: BuiltModel, base: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), f"base changed at {k}"
    x = images(4)
    assert built.model(x).shape == (4, 10)
    macs = int(model_cost(built.model).macs[0]) / int(model_cost(base).macs[0])
    assert built.macs_fraction == pytest.approx(macs, abs=1e-12)
    params = sum(p.numel() for p in built.model.parameters()) / sum(p.numel() for p in base.parameters())
    assert built.params_fraction == pytest.approx(params, abs=1e-12)
    assert built.train_seconds > 0
    # the keep ratios are the exported widths
    widths = [unit_conv(built.model.get_submodule(u.conv)).out_channels for u in get_units(base)]
    assert built.keep_ratios == [w / u.out_channels for w, u in zip(widths, get_units(base), strict=True)]


def test_build_sparsity_trains_thresholds_and_slices_without_touching_base() -> None:
    base = randomize_(get_model("tiny_cnn"), seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    baseline = PolarizationBaseline(lam=0.3, lr=0.1, batch_size=32)
    built = baseline.build(base, _context(base, epochs=2))
    _check_built(built, base, before)
    assert built.macs_fraction < 1.0 and built.params_fraction < 1.0  # the threshold pruned something
    assert built.info["lam"] == 0.3 and built.info["t"] == 1.2 and built.info["steps"] == 8
    assert 0.0 <= built.info["threshold"] <= 1.0


def test_build_with_search_reports_its_trials() -> None:
    base = randomize_(get_model("tiny_cnn"), seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    baseline = PolarizationBaseline(search=True, lam_range=(0.0, 0.6), lr=0.1, batch_size=32, max_trials=2)
    built = baseline.build(base, _context(base, epochs=0.5))
    _check_built(built, base, before)
    trials = built.info["trials"]
    assert 1 <= len(trials) <= 2 and trials[0]["lam"] == pytest.approx(0.3)
    best = min(trials, key=lambda tr: abs(tr["macs_fraction"] - 0.5))
    assert built.macs_fraction == pytest.approx(best["macs_fraction"])
    assert built.info["lam"] == best["lam"] and isinstance(built.info["search_hit"], bool)


def test_baseline_is_registered_and_refuses_env_use() -> None:
    assert isinstance(get_baseline("polarization"), PolarizationBaseline)
    with pytest.raises(TypeError, match="training-based"):
        get_baseline("polarization").allocate(None, 0.5)  # type: ignore[arg-type]



@pytest.mark.parametrize("budget", [0.3, 0.55, 0.9])
def test_threshold_to_budget_is_the_lowest_global_threshold_that_meets_the_budget(budget: float) -> None:
    model = get_model("resnet8")
    units = get_units(model)
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(u.out_channels, generator=g) for u in units]
    plan, tau = threshold_to_budget(model, scores, budget)
    assert plan.static_keep is not None
    keep = [round(k * u.out_channels) for k, u in zip(plan.static_keep, units, strict=True)]
    assert keep == [max(1, int((s > tau).sum())) for s in scores]  # exactly the channels above one threshold
    assert float(model_cost(model, plan).macs_fraction[0]) <= budget
    # the next lower score (one channel more) breaks the budget
    lower = max(float(s[s <= tau].max()) for s in scores if bool((s <= tau).any()))
    more = [max(1, int((s >= lower).sum())) / u.out_channels for s, u in zip(scores, units, strict=True)]
    looser = PruningPlan(static_keep=more, static_scores=scores)
    assert float(model_cost(model, looser).macs_fraction[0]) > budget
    with pytest.raises(ValueError, match="raise the budget"):
        threshold_to_budget(model, scores, 0.01)
    with pytest.raises(ValueError, match="one score per output channel"):
        threshold_to_budget(model, scores[:-1], budget)
