"""Polarization (pruning.methods.polarization, baseline ``polarization``): bimodal factors, valley, search, build."""

from __future__ import annotations

import copy
import doctest

import numpy as np
import pytest
import torch
from _nets import images, randomize_
from torch import nn

import pruning.methods.polarization as polarization
from agents.baselines import BuiltModel, PolarizationBaseline, TrainContext, get_baseline
from agents.baselines.polarization import (
    ConstantBorderConv,
    budget_plan,
    search_budget,
    static_result,
    zero_dropped_scales,
)
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


def _context(model: nn.Module, epochs: float, budget: float = 0.5) -> TrainContext:
    train_set = dataset_for_model(get_dataset("synthetic", split="train", size=128), model)
    val_set = dataset_for_model(get_dataset("synthetic", split="val", size=32), model)
    return TrainContext(train_set=train_set, val_set=val_set, budget=budget, epochs=epochs)


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
    assert isinstance(built.info["search_hit"], bool)
    assert built.info["lam"] in [tr["lam"] for tr in trials]
    # the completion rule brings the plan into the band [budget − 0.02, budget] whatever the trials gave
    assert built.info["budget_rule"] in ("valley", "nearest", "nearest+fill")
    assert 0.5 - 0.02 <= built.macs_fraction <= 0.5 and built.info["budget_hit"]
    assert built.info["macs_fraction"] == built.macs_fraction


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


# ----------------------------------------------------------------------------------------------------
# meeting the budget: the valley, the completion rule, the search
# ----------------------------------------------------------------------------------------------------


def _bimodal(model: nn.Module, seed: int, share_zero: float = 0.5) -> nn.Module:
    """Unit BN scales as polarization leaves them: ``share_zero`` of each unit at exactly 0, the rest in [0.6, 1]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in scale_factors(model):
            up = torch.rand(p.shape, generator=g) >= share_zero
            p.copy_(up.float() * (0.6 + 0.4 * torch.rand(p.shape, generator=g)))
    return model


def _kept(model: nn.Module, plan: PruningPlan) -> list[torch.Tensor]:
    from pruning.gating import gate_model, set_plan, stored_masks

    gated = gate_model(model, predictor=False)
    set_plan(gated, plan)
    return stored_masks(gated)


def _macs(model: nn.Module, plan: PruningPlan) -> float:
    return float(model_cost(model, plan).macs_fraction[0])


def test_budget_plan_takes_the_valley_in_the_band_and_completes_it_by_gamma_otherwise() -> None:
    torch.manual_seed(0)
    model = _bimodal(randomize_(get_model("resnet8"), seed=1), seed=1)
    valley, _ = threshold_plan(model)
    v = _macs(model, valley)
    # in the band [budget − 0.02, budget]: the valley as is
    plan, info = budget_plan(model, v + 0.01, valley=valley)
    assert info["budget_rule"] == "valley" and plan is valley and info["valley_macs_fraction"] == v
    gam = torch.cat([g.detach().abs() for g in scale_factors(model)])
    norms = torch.cat([model.get_submodule(u.conv).weight.detach().flatten(1).norm(dim=1) for u in get_units(model)])
    rules: list[str] = []
    for budget in (v - 0.15, v + 0.15):  # the valley keeps too much / too little
        plan, info = budget_plan(model, budget, valley=valley)
        frac = _macs(model, plan)
        assert info["budget_rule"] in ("nearest", "nearest+fill")  # one channel of unit 0 is 0.024 of the MACs
        assert info["plan_macs_fraction"] == pytest.approx(frac)
        assert budget - 0.02 <= frac <= budget, (budget, frac)
        keep = torch.cat(_kept(model, plan))
        rules.append(info["budget_rule"])
        if info["budget_rule"] == "nearest":
            # the kept channels are the best by |γ|, ties (the zeros) by filter norm: none dropped ranks above them
            key = torch.stack([gam, norms], 1).double()
            worst_kept = min(tuple(k) for k in key[keep].tolist())
            assert all(tuple(k) <= worst_kept for k in key[~keep].tolist())
        if budget > v:  # every upper-mode channel stays, and some zeros are kept back
            assert bool(keep[gam > 0].all()) and bool(keep[gam == 0].any())
        else:
            assert not bool(keep[gam == 0].any())
    assert "nearest" in rules
    with pytest.raises(ValueError, match="budget"):
        budget_plan(model, 0.01)


def test_budget_plan_fills_a_coarse_net_and_overshoots_only_when_allowed() -> None:
    """tiny_cnn: one channel is up to 0.046 of the MACs, so a band of 0.02 needs the fill (and at times overshoot)."""
    torch.manual_seed(0)
    model = randomize_(get_model("tiny_cnn"), seed=0)
    rules: set[str] = set()
    for seed in range(2):
        _bimodal(model, seed)
        for budget in (0.3, 0.5, 0.7, 0.9):
            strict, info = budget_plan(model, budget)
            assert _macs(model, strict) <= budget  # never above the budget with overshoot=0
            plan, info = budget_plan(model, budget, overshoot=0.02)
            frac = _macs(model, plan)
            assert budget - 0.02 <= frac <= budget + 0.02, (seed, budget, frac, info)
            rules.add(info["budget_rule"])
    assert "nearest+fill" in rules


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_search_lands_within_002_of_three_budgets_on_a_small_net(budget: float) -> None:
    """The (λ, t) search and the completion rule: the exported model's measured MACs in [budget − 0.02, budget]."""
    torch.manual_seed(0)
    base = randomize_(get_model("resnet8"), seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    baseline = PolarizationBaseline(search=True, lam_range=(0.0, 0.6), lr=0.1, batch_size=32, max_trials=3)
    built = baseline.build(base, _context(base, epochs=1.0, budget=budget))
    _check_built(built, base, before)
    info = built.info
    assert budget - 0.02 <= built.macs_fraction <= budget, (budget, built.macs_fraction, info["budget_rule"])
    assert info["budget_hit"] and info["macs_fraction"] == built.macs_fraction and info["budget"] == budget
    assert info["budget_rule"] in ("valley", "nearest", "nearest+fill")
    assert info["search_hit"] == (info["budget_rule"] == "valley")
    assert 1 <= len(info["trials"]) <= 3


def test_search_hands_the_closest_trial_that_pruned_too_little_to_the_completion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trial that kept too much is completed by pruning upper-mode channels; one that kept too little is not chosen
    even when it is closer."""
    import pruning.methods.polarization as module

    share_by_lam = {0.3: 0.15, 0.45: 0.75}  # share of each unit's factors at 0, per trial's λ

    def fake_train(model: nn.Module, *args: object, lam: float, **kwargs: object) -> dict[str, object]:
        with torch.no_grad():
            for p in scale_factors(model):
                p.fill_(0.8)
                p[: round(share_by_lam[round(lam, 6)] * p.numel())] = 0.0
        return {}

    monkeypatch.setattr(module, "sparsity_train", fake_train)
    model = randomize_(get_model("resnet8"), seed=0)
    data = dataset_for_model(get_dataset("synthetic", split="train", size=32), model)
    work, chosen, trials, hit = search_budget(
        model, data, TrainConfig(epochs=1), target=0.5, lam_range=(0.0, 0.6), max_trials=2
    )
    first, second = trials
    assert first.macs_fraction > 0.5 + 0.02 and second.macs_fraction < 0.5 - 0.02  # both miss
    assert abs(second.macs_fraction - 0.5) < abs(first.macs_fraction - 0.5)  # the second is closer...
    assert chosen == first and not hit  # ...but the first pruned too little: it is the one completed
    assert float(torch.cat([g.detach() for g in scale_factors(work)]).eq(0).double().mean()) < 0.2
    with pytest.raises(ValueError, match="target"):
        search_budget(model, data, TrainConfig(epochs=1), target=0.0, lam_range=(0.0, 0.6))


# ----------------------------------------------------------------------------------------------------
# slicing: the constant ReLU(β) of the zeroed channels is folded, borders included
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
def test_sliced_logits_equal_the_masked_models(name: str) -> None:
    """Channels pruned by γ = 0 output ReLU(β) everywhere: the exported model (interior fold + border map) has the
    masked model's logits within 1e-4; plain slicing, and the interior fold alone, do not."""
    torch.manual_seed(0)
    model = randomize_(get_model(name), seed=3)
    units = get_units(model)
    g = torch.Generator().manual_seed(0)
    plan = PruningPlan(
        static_keep=[0.5] * len(units), static_scores=[torch.rand(u.out_channels, generator=g) for u in units]
    )
    with torch.no_grad():
        for u in units:
            model.get_submodule(u.bn).bias.add_(0.5)  # clearly positive constants after the ReLU
    masked = zero_dropped_scales(model, plan).eval()
    for keep, g_ in zip(_kept(model, plan), scale_factors(masked), strict=True):
        assert bool((g_.detach()[~keep] == 0).all()) and bool((g_.detach()[keep] != 0).all())

    def run(m: nn.Module, size: int) -> torch.Tensor:
        with torch.no_grad():
            return m.eval()(images(4)[..., :size, :size])

    def built(fold: bool, border: bool) -> BuiltModel:
        return static_result(model, masked, plan, train_seconds=1.0, info={}, fold=fold, border=border)

    exact, interior, plain = built(True, True), built(True, False), built(False, False)
    assert any(isinstance(m, ConstantBorderConv) for m in exact.model.modules())
    assert not any(isinstance(m, ConstantBorderConv) for m in interior.model.modules())
    assert exact.macs_fraction == plain.macs_fraction and exact.params_fraction == plain.params_fraction
    for size in (32, 24):  # the border map follows the input size
        ref = run(masked, size)
        assert (run(exact.model, size) - ref).abs().max() < 1e-4
        assert (run(interior.model, size) - ref).abs().max() > 1e-3  # the zero-padded borders
        assert (run(plain.model, size) - ref).abs().max() > 1e-2  # the constants dropped
    for m in exact.model.modules():  # the map corrects the border only
        if isinstance(m, ConstantBorderConv):
            assert m.border_map(16, 16)[..., 1:-1, 1:-1].abs().max() < 1e-5
            assert m.border_map(16, 16).abs().max() > 1e-3


def test_build_exports_the_masked_model_exactly() -> None:
    """build slices the masked model with the fold: its logits are those of the trained copy with the dropped γ at 0."""
    base = randomize_(get_model("tiny_cnn"), seed=0)
    context = _context(base, epochs=1.0)
    captured: dict[str, nn.Module] = {}
    import agents.baselines.polarization as module

    real = module.static_result

    def spy(base_: nn.Module, trained: nn.Module, plan: PruningPlan, **kwargs: object) -> BuiltModel:
        captured["masked"] = copy.deepcopy(trained)
        return real(base_, trained, plan, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "static_result", spy)
        built = PolarizationBaseline(lam=0.3, lr=0.1, batch_size=32).build(base, context)
    x = images(4)
    with torch.no_grad():
        assert (built.model(x) - captured["masked"].eval()(x)).abs().max() < 1e-4
    assert built.info["border"] and built.info["fold"]
