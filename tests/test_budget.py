"""pruning.budget: the monotone bisections, the keep-count solver and the static env's action wall."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from _nets import randomize_

import pruning.budget as budget_module
from agents.baselines import PruningTarget
from envs.static import StaticPruningEnv
from pruning.accounting import CostModel
from pruning.budget import (
    action_wall,
    bisect_bracket,
    bisect_monotone,
    bisect_monotone_int,
    solve_budget,
    unit_feasible,
)
from pruning.models import get_model


def test_module_doctest() -> None:
    result = doctest.testmod(budget_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0


@pytest.mark.parametrize("boundary", [0.1234567, 0.5, 0.9])
@pytest.mark.parametrize("steps", [1, 7, 30])
def test_bisect_monotone_finds_the_boundary_from_the_feasible_side_in_both_directions(
    boundary: float, steps: int
) -> None:
    width = 2.0 / 2**steps
    calls: list[float] = []

    def below(x: float) -> bool:  # feasible up to the boundary: the largest feasible x is wanted
        calls.append(x)
        return x <= boundary

    x = bisect_monotone(below, -0.5, 1.5, steps=steps)
    assert below(x) and boundary - x <= width
    assert len(calls) == steps + 2  # bad end, the halvings, the check above

    def above(x: float) -> bool:  # feasible from the boundary up: the smallest feasible x is wanted
        return x >= boundary

    y = bisect_monotone(above, 1.5, -0.5, steps=steps)
    assert above(y) and y - boundary <= width


def test_bisect_monotone_returns_the_bad_end_when_it_is_feasible_without_halving() -> None:
    calls: list[float] = []

    def feasible(x: float) -> bool:
        calls.append(x)
        return True

    assert bisect_monotone(feasible, 0.1, 1.0, steps=12) == 1.0
    assert calls == [1.0]


def test_bisect_bracket_tries_no_end_and_keeps_the_boundary_inside() -> None:
    calls: list[float] = []

    def feasible(x: float) -> bool:
        calls.append(x)
        return x >= 0.3

    good, bad = bisect_bracket(feasible, 1.0, 0.0, steps=10)
    assert bad < 0.3 <= good and good - bad == pytest.approx(2**-10)
    assert len(calls) == 10 and 0.0 not in calls and 1.0 not in calls


@pytest.mark.parametrize("boundary", [0, 1, 17, 98, 99])
def test_bisect_monotone_int_returns_the_last_feasible_integer_and_one_more_step_breaks_it(boundary: int) -> None:
    def at_most(n: int) -> bool:
        return n <= boundary

    largest = bisect_monotone_int(at_most, 0, 100)
    assert largest == boundary and not at_most(largest + 1)

    def at_least(n: int) -> bool:
        return n >= boundary

    smallest = bisect_monotone_int(at_least, 100, 0)
    assert smallest == boundary and at_least(smallest)
    if smallest > 0:
        assert not at_least(smallest - 1)


def test_bisect_monotone_int_returns_the_bad_end_when_everything_fits() -> None:
    assert bisect_monotone_int(lambda n: n <= 500, 0, 100) == 100
    assert bisect_monotone_int(lambda n: n >= -5, 100, 0) == 0


@pytest.mark.parametrize("budget", [0.3, 0.55, 0.8])
def test_solve_budget_meets_the_budget_and_the_next_allocation_of_the_family_breaks_it(budget: float) -> None:
    env = StaticPruningEnv(model=randomize_(get_model("resnet8")), num_val=16, budget=budget)
    target = PruningTarget.of(env)

    def counts_at(ratio: float) -> np.ndarray:  # exact: the channels are powers of two
        return np.ceil(ratio * target.channels).astype(np.int64)

    counts = solve_budget(target, counts_at, 0.0, 1.0, budget)
    assert ((counts >= target.min_counts) & (counts <= target.channels)).all()
    assert target.macs_fraction(counts) <= budget + 1e-12
    # every allocation of the family, in order (the channels are 16/32/64: a 1/4096 grid meets every one)
    family: list[np.ndarray] = []
    for ratio in np.linspace(0.0, 1.0, 4097):
        clipped = np.clip(counts_at(float(ratio)), target.min_counts, target.channels)
        if not family or not np.array_equal(clipped, family[-1]):
            family.append(clipped)
    index = next(i for i, f in enumerate(family) if np.array_equal(f, counts))
    assert index + 1 < len(family) and target.macs_fraction(family[index + 1]) > budget


def test_solve_budget_refuses_a_budget_below_the_floor() -> None:
    env = StaticPruningEnv(model=randomize_(get_model("tiny_cnn")), num_val=16, budget=0.5)
    target = PruningTarget.of(env)
    with pytest.raises(ValueError, match="cannot be met"):
        solve_budget(target, lambda s: target.channels * 0, 0.0, 1.0, 1e-4)


@pytest.mark.parametrize("model", ["tiny_cnn", "resnet8"])
def test_unit_feasible_agrees_with_exact_costing_of_every_candidate(model: str) -> None:
    cost_model = CostModel(get_model(model))
    channels = cost_model.channels.numpy().astype(np.int64)
    rng = np.random.default_rng(0)
    effective = np.array([rng.integers(1, c + 1) for c in channels], dtype=np.int64)
    stored = np.maximum(effective, [rng.integers(1, c + 1) for c in channels]).astype(np.int64)
    for unit, c in enumerate(channels):
        cand_stored = np.arange(1, c + 1, dtype=np.int64)
        cand_effective = np.maximum(1, cand_stored - 1)
        costs = []
        for e, s in zip(cand_effective, cand_stored, strict=True):
            eff, sto = effective.copy(), stored.copy()
            eff[unit], sto[unit] = e, s
            costs.append(cost_model.from_counts(torch.from_numpy(eff)[None], torch.from_numpy(sto)))
        macs = np.array([float(cost.macs_fraction[0]) for cost in costs])
        params = np.array([cost.params_fraction for cost in costs])
        mac_budget = float(np.median(macs))
        param_budget = float(np.quantile(params, 0.75))
        ok = unit_feasible(cost_model, effective, stored, unit, cand_effective, cand_stored,
                           budget=mac_budget, param_budget=param_budget)  # fmt: skip
        np.testing.assert_array_equal(ok, (macs <= mac_budget + 1e-12) & (params <= param_budget + 1e-12))
        assert ok.any() and not ok.all()
        only_macs = unit_feasible(cost_model, effective, stored, unit, cand_effective, cand_stored,
                                  budget=mac_budget, param_budget=None)  # fmt: skip
        np.testing.assert_array_equal(only_macs, macs <= mac_budget + 1e-12)
        only_params = unit_feasible(cost_model, effective, stored, unit, cand_effective, cand_stored,
                                    budget=None, param_budget=param_budget)  # fmt: skip
        np.testing.assert_array_equal(only_params, params <= param_budget + 1e-12)


def test_action_wall_clamps_to_the_largest_feasible_count_and_lowers_the_tradeoff_when_needed() -> None:
    limits = {1.0: None, 0.5: 12}  # largest feasible count per tradeoff (none at 1.0)

    def feasible(counts: np.ndarray, tradeoff: float) -> np.ndarray:
        limit = limits[tradeoff]
        return np.zeros(len(counts), dtype=bool) if limit is None else counts <= limit

    assert action_wall(feasible, 3, 20, 15, [1.0, 0.5]) == (12, 0.5, 12)
    assert action_wall(feasible, 3, 20, 5, [1.0, 0.5]) == (5, 0.5, 12)
    limits[1.0] = 20
    assert action_wall(feasible, 3, 20, 15, [1.0, 0.5]) == (15, 1.0, 20)
    limits[1.0], limits[0.5] = None, 2  # the floor (3) fits nowhere
    assert action_wall(feasible, 3, 20, 15, [1.0, 0.5]) is None


def test_static_env_wall_keeps_the_requested_ratio_only_while_the_budget_can_be_met() -> None:
    budget = 0.4
    env = StaticPruningEnv(model=randomize_(get_model("resnet8")), num_val=16, budget=budget)
    env.reset(seed=0)
    terminated, info = False, {}
    while not terminated:  # ask to keep everything: the wall cuts what the budget cannot afford
        _, _, terminated, _, info = env.step(np.ones(1, dtype=np.float32))
        assert info["keep_count"] == round(info["wall_keep"] * env.channels[info["unit"]])
    assert info["macs_fraction"] <= budget + 1e-12
