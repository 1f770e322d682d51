"""Reward functions of the static environment: registry, hand-computed values, finiteness."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import envs.rewards as rewards
from envs.rewards import (
    LOSS_SCALE_FLOOR,
    BudgetTerm,
    EpisodeResult,
    RunningLossScale,
    budget_term,
    get_reward,
    list_rewards,
    register_reward,
)


def _result(**overrides: object) -> EpisodeResult:
    fields: dict[str, object] = {
        "top1": 80.0,
        "loss": 0.6,
        "macs_fraction": 0.4,
        "params_fraction": 0.5,
        "macs": 1.6e7,
        "params": 2.0e5,
        "budget": 0.5,
        "param_budget": None,
        "loss_scale": 0.5,
    }
    fields.update(overrides)
    return EpisodeResult(**fields)  # type: ignore[arg-type]


def test_builtin_rewards_are_registered() -> None:
    assert {"paper", "accuracy", "acc_log_macs"} <= set(list_rewards())


def test_paper_reward_under_budget_by_hand() -> None:
    reward, parts = get_reward("paper")(_result())
    # -CE / β_b + 0.1·(cap - B)
    assert parts == {"accuracy": pytest.approx(-0.6 / 0.5), "budget_macs": pytest.approx(0.1 * (0.5 - 0.4))}
    assert reward == pytest.approx(-1.2 + 0.01)


def test_paper_reward_over_budget_by_hand() -> None:
    reward, parts = get_reward("paper")(_result(macs_fraction=0.56))
    penalty = -1.2 * (math.exp((0.56 - 0.5) / 0.03) - 1.0)
    assert parts["budget_macs"] == pytest.approx(penalty)
    assert reward == pytest.approx(-1.2 + penalty)


def test_paper_reward_param_term_has_no_bonus() -> None:
    _, under = get_reward("paper")(_result(param_budget=0.8))
    assert under["budget_params"] == 0.0
    _, over = get_reward("paper")(_result(params_fraction=0.9, param_budget=0.8))
    assert over["budget_params"] == pytest.approx(-1.2 * math.expm1(0.1 / 0.03))


def test_paper_reward_uses_the_bound_coefficients() -> None:
    term = BudgetTerm(scale=2.0, temperature=0.1, bonus=0.5)
    _, parts = get_reward("paper")(_result(macs_fraction=0.6, params_fraction=0.7, param_budget=0.6, budget_term=term))
    assert parts["budget_macs"] == pytest.approx(-2.0 * math.expm1(1.0))
    assert parts["budget_params"] == pytest.approx(-2.0 * math.expm1(1.0))


def test_paper_reward_without_mac_budget() -> None:
    _, parts = get_reward("paper")(_result(budget=None, param_budget=0.5))
    assert set(parts) == {"accuracy", "budget_params"}


def test_amc_rewards_by_hand() -> None:
    assert get_reward("accuracy")(_result(top1=91.5))[0] == pytest.approx(0.915)
    reward, parts = get_reward("acc_log_macs")(_result(top1=91.5, macs=2.0e7))
    assert reward == pytest.approx(-0.085 * math.log(2.0e7))
    assert parts == {"acc_log_macs": reward}


def test_episode_result_rejects_non_finite() -> None:
    for name in ("top1", "loss", "macs_fraction", "loss_scale"):
        with pytest.raises(ValueError, match=name):
            _result(**{name: math.nan})
    with pytest.raises(ValueError, match="macs"):
        _result(macs=math.inf)


@settings(max_examples=200, deadline=None)
@given(
    top1=st.floats(0, 100),
    loss=st.floats(0, 1e4),
    macs_fraction=st.floats(0, 1e3),
    params_fraction=st.floats(0, 1e3),
    macs=st.floats(0, 1e12),
    budget=st.none() | st.floats(1e-3, 1),
    param_budget=st.none() | st.floats(1e-3, 1),
    loss_scale=st.floats(0, 1e4),
)
def test_builtin_rewards_are_always_finite(
    top1: float,
    loss: float,
    macs_fraction: float,
    params_fraction: float,
    macs: float,
    budget: float | None,
    param_budget: float | None,
    loss_scale: float,
) -> None:
    result = EpisodeResult(
        top1=top1, loss=loss, macs_fraction=macs_fraction, params_fraction=params_fraction, macs=macs,
        params=1.0, budget=budget, param_budget=param_budget, loss_scale=loss_scale,
    )  # fmt: skip
    for name in ("paper", "accuracy", "acc_log_macs"):
        reward, parts = get_reward(name)(result)
        assert math.isfinite(reward), (name, result)
        assert all(math.isfinite(v) for v in parts.values())
        assert reward == pytest.approx(sum(parts.values()))


def test_zero_loss_scale_is_floored() -> None:
    reward, _ = get_reward("paper")(_result(loss=0.0, loss_scale=0.0))
    assert reward == pytest.approx(0.01)
    _, parts = get_reward("paper")(_result(loss=1e-9, loss_scale=0.0))
    assert parts["accuracy"] == pytest.approx(-1e-9 / LOSS_SCALE_FLOOR)


def test_registry_rejects_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rewards, "_REWARDS", rewards._REWARDS.copy())
    with pytest.raises(ValueError, match="already registered"):
        register_reward("paper")(lambda r: (0.0, {}))
    register_reward("mine")(lambda r: (1.0, {"one": 1.0}))
    with pytest.raises(ValueError, match="already registered"):
        register_reward("mine")(lambda r: (2.0, {}))
    assert get_reward("mine")(_result()) == (1.0, {"one": 1.0})


def test_registry_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="Did you mean paper") as err:
        get_reward("papr")
    assert "acc_log_macs" in str(err.value)  # lists what is registered
    with pytest.raises(ValueError, match="Did you mean acc_log_macs"):
        get_reward("acc_log_mac")


def test_budget_term_matches_the_released_code() -> None:
    assert budget_term(0.4, 0.5) == pytest.approx(0.01)
    assert budget_term(0.53, 0.5) == pytest.approx(-1.2 * math.expm1(1.0))
    assert math.isfinite(budget_term(1e9, 0.5))
    t = budget_term(torch.tensor([0.4, 0.53]), 0.5)
    assert torch.allclose(t, torch.tensor([0.01, -1.2 * math.expm1(1.0)]))


def test_running_loss_scale_warmup_then_ema() -> None:
    scale = RunningLossScale(warmup=3, decay=0.5)
    assert scale.value == 1.0
    assert scale.update(2.0) == 2.0
    assert scale.update(4.0) == pytest.approx(3.0)
    assert scale.update(6.0) == pytest.approx(4.0)
    assert scale.update(8.0) == pytest.approx(6.0)  # EMA after the warm-up
    with pytest.raises(ValueError, match="finite"):
        scale.update(math.nan)


def test_module_doctest() -> None:
    result = doctest.testmod(rewards, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_mean_budget_term_moves_its_multiplier_by_dual_ascent() -> None:
    import torch

    from envs.rewards import MeanBudgetTerm

    term = MeanBudgetTerm(multiplier=2.0, lr=10.0)
    frac = torch.tensor([0.3, 0.5, 0.9], dtype=torch.float64)  # mean 0.5667 > cap 0.5
    r = term(frac, 0.5)
    assert torch.allclose(r, -2.0 * (frac - 0.5))  # linear in each image's fraction, with the old multiplier
    assert term.multiplier == pytest.approx(2.0 + 10.0 * (float(frac.mean()) - 0.5))  # over budget: λ rises
    for _ in range(100):  # far under the budget: λ falls to 0 and stays there (never negative)
        term(torch.full((4,), 0.1, dtype=torch.float64), 0.5)
    assert term.multiplier == 0.0
    with pytest.raises(ValueError, match="lr"):
        MeanBudgetTerm(lr=-1.0)


def test_runtime_env_with_a_mean_budget_lets_images_differ() -> None:
    import numpy as np

    from envs.rewards import MeanBudgetTerm
    from envs.runtime import RuntimePruningVecEnv

    term = MeanBudgetTerm(multiplier=3.0, lr=0.0)
    env = RuntimePruningVecEnv(4, budget=0.5, budget_term=term)
    env.reset()
    actions = np.array([[-1.0], [-0.5], [0.5], [1.0]], dtype=np.float32)  # four images, four spends
    while True:
        _, rewards, dones, infos = env.step(actions)
        if dones.all():
            break
    for info in infos:  # the budget part is -λ (B - cap): no steep penalty for the image over the cap
        assert info["reward_budget"] == pytest.approx(-3.0 * (info["macs_fraction"] - 0.5))
    assert max(i["macs_fraction"] for i in infos) > 0.5 > min(i["macs_fraction"] for i in infos)
