"""StaticPruningEnv: API checkers, determinism, the action wall, rewards, accounting and learning."""

from __future__ import annotations

import doctest
import importlib
import math
import subprocess
import sys
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from _nets import randomize_, randomize_gates_
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import envs
import envs.rewards as rewards
import envs.static
from envs.rewards import budget_term, register_reward
from envs.static import StaticPruningEnv, _computed_bound
from pruning.accounting import model_cost, sparsity_to_mac_fraction
from pruning.data import get_dataset
from pruning.export import export_static
from pruning.gating import GatedConv, gate_model, gated_units, rank_desc, set_plan
from pruning.models import get_model
from pruning.plan import keep_count
from pruning.train import dataset_for_model, evaluate

NUM_VAL = 48


def _net(name: str = "tiny_cnn", seed: int = 0) -> nn.Module:
    return randomize_(get_model(name), seed=seed)


def _gated(name: str = "tiny_cnn", seed: int = 0) -> nn.Module:
    return randomize_gates_(gate_model(_net(name, seed)), seed=seed)


def _env(model: str | nn.Module = "tiny_cnn", **kwargs: Any) -> StaticPruningEnv:
    net = _net(model) if isinstance(model, str) else model
    kwargs.setdefault("num_val", NUM_VAL)
    return StaticPruningEnv(model=net, **kwargs)


def _episode(env: gym.Env, actions: list[Any], **reset_kwargs: Any) -> tuple[list[np.ndarray], float, dict]:
    obs, _ = env.reset(**reset_kwargs)
    seen = [obs]
    reward, info, terminated, i = 0.0, {}, False, 0
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(actions[i % len(actions)])
        assert not truncated
        seen.append(obs)
        i += 1
    return seen, float(reward), info


def _ratio_action(ratio: float, min_keep: float = 0.2) -> np.ndarray:
    return np.array([2 * (ratio - min_keep) / (1 - min_keep) - 1], dtype=np.float32)


# -----------------------------------------------------------------------------------------------------------
# registration, checkers, determinism
# -----------------------------------------------------------------------------------------------------------


def test_make_with_defaults() -> None:
    env = gym.make("prunegym/StaticPruning-v0", num_val=32)
    _, reward, info = _episode(env, [env.action_space.sample()], seed=0)
    assert math.isfinite(reward) and info["macs_fraction"] <= 0.5 + 1e-12
    assert isinstance(env.unwrapped, StaticPruningEnv)
    assert {"prunegym/StaticPruning-v0", "prunegym/RuntimePruning-v0"} <= set(gym.registry)
    assert gym.registry["prunegym/RuntimePruning-v0"].entry_point == "envs.runtime:RuntimePruningEnv"


def test_import_is_cheap_and_registers_once() -> None:
    code = "import sys, envs; assert 'torch' not in sys.modules and 'envs.static' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs)
    assert envs.StaticPruningEnv is StaticPruningEnv


CONFIGS = {
    "clamp": {},
    "penalty": {"budget_mode": "penalty"},
    "params": {"budget": 0.6, "param_budget": 0.6},
    "learn_split": {"runtime": 0.6, "learn_split": True},
    "resnet8_runtime": {"model": "resnet8", "runtime": 0.5},
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_checkers_pass_without_warnings(config: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    kwargs = dict(CONFIGS[config])
    kwargs["model"] = _net(kwargs.get("model", "tiny_cnn"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make("prunegym/StaticPruning-v0", num_val=NUM_VAL, **kwargs).unwrapped  # with its spec
        check_env(env)
        sb3_check_env(env)
    dim = 2 if config == "learn_split" else 1
    assert env.action_space.shape == (dim,)
    assert env.observation_space.shape == (13 + (dim - 1),)


@pytest.mark.parametrize("config", ["clamp", "learn_split"])
def test_same_seed_gives_identical_rollouts(config: str) -> None:
    runs = []
    for _ in range(2):
        env = gym.make("prunegym/StaticPruning-v0", num_val=32, **CONFIGS[config])
        env.action_space.seed(7)
        actions = [env.action_space.sample() for _ in range(3)]
        episodes = [_episode(env, actions, seed=3) for _ in range(2)]  # the loss scale carries over
        runs.append(episodes)
    for (obs_a, rew_a, info_a), (obs_b, rew_b, info_b) in zip(runs[0], runs[1], strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(obs_a, obs_b, strict=True))
        assert rew_a == rew_b
        assert info_a == info_b


def test_model_by_name_is_initialised_alike() -> None:
    a, b = StaticPruningEnv(num_val=8), StaticPruningEnv(num_val=8)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_module_doctests() -> None:
    for module in (envs.static, envs):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# -----------------------------------------------------------------------------------------------------------
# observations and actions
# -----------------------------------------------------------------------------------------------------------


def test_observation_features() -> None:
    env = _env("resnet8")
    obs, _ = env.reset(seed=0)
    assert obs[0] == 0.0 and obs[8] == 0.0 and obs[12] == 1.0  # unit 0, nothing removed, previous keep 1
    assert obs[10] == pytest.approx(0.5) and obs[11] == 1.0  # MAC budget; no parameter budget
    assert 0 < obs[9] < 1  # removable MACs
    # descriptors are min-max normalised over units: channels of resnet8's units are 16, 32, 64
    assert [env._descriptors[t][2] for t in range(3)] == pytest.approx([0.0, 1 / 3, 1.0])
    seen, _, info = _episode(env, [_ratio_action(0.5)])
    assert seen[1][12] == pytest.approx(0.5)
    assert seen[-1][8] == pytest.approx(1 - info["macs_fraction"], abs=1e-6)  # exact without runtime policy
    assert seen[-1][9] == 0.0
    assert all(o.dtype == np.float32 and env.observation_space.contains(o) for o in seen)


def test_invalid_actions_raise() -> None:
    env = _env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.0]))
    env.reset(seed=0)
    for bad in ([np.nan], [np.inf], [-np.inf], [0.0, 0.0], [[0.0]], "x", []):
        with pytest.raises(ValueError):
            env.step(np.asarray(bad) if not isinstance(bad, str) else bad)
    env.step(np.array([5.0], dtype=np.float32))  # out of range: clipped, documented
    env.step(0.0)  # a scalar is a (1,) action
    env.step(np.array([-1.0]))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.0]))


def test_out_of_range_actions_are_clipped() -> None:
    env = _env(budget_mode="penalty")
    _, _, high = _episode(env, [np.array([9.0])], seed=0)
    _, _, low = _episode(env, [np.array([-9.0])], seed=0)
    assert high["requested_keeps"] == [1.0] * 3
    assert low["requested_keeps"] == [0.2] * 3


# -----------------------------------------------------------------------------------------------------------
# the action wall
# -----------------------------------------------------------------------------------------------------------

CLAMP_ENVS: dict[str, StaticPruningEnv] = {}


def _clamp_env(kind: str) -> StaticPruningEnv:
    if kind not in CLAMP_ENVS:
        kwargs: dict[str, Any] = {
            "tiny_cnn": {},
            "resnet8": {"model": "resnet8"},
            "runtime": {"model": _gated(), "runtime": 0.4, "tradeoff": 0.5},
            "split_callable": {
                "model": _gated("resnet8"),
                "runtime": lambda t, gap, u_r: torch.full((gap.shape[0],), 0.3 + 0.2 * t),
                "learn_split": True,
            },
        }[kind]
        CLAMP_ENVS[kind] = _env(num_val=16, **kwargs)
    return CLAMP_ENVS[kind]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["tiny_cnn", "resnet8", "runtime", "split_callable"]),
    actions=st.lists(st.lists(st.floats(-1.5, 1.5), min_size=2, max_size=2), min_size=3, max_size=3),
    budget_pos=st.floats(0, 1),
    param_pos=st.none() | st.floats(0, 1),
)
def test_clamp_always_meets_the_budget(
    kind: str, actions: list[list[float]], budget_pos: float, param_pos: float | None
) -> None:
    env = _clamp_env(kind)
    budget = env.min_macs_fraction + budget_pos * (1 - env.min_macs_fraction)
    param_budget = None if param_pos is None else env.min_params_fraction + param_pos * (1 - env.min_params_fraction)
    dim = env.action_space.shape[0]
    acts = [np.array(a[:dim], dtype=np.float32) for a in actions]
    _, reward, info = _episode(env, acts, seed=0, options={"budget": budget, "param_budget": param_budget})
    assert info["macs_fraction_max"] <= budget + 1e-9  # every image, not only the mean
    if param_budget is not None:
        assert info["params_fraction"] <= param_budget + 1e-9
    assert all(a <= r for a, r in zip(info["applied_keeps"], info["requested_keeps"], strict=True))
    assert all(0.2 <= a <= 1 for a in info["applied_keeps"])
    assert math.isfinite(reward)


def test_learn_split_lowers_r_r_only_when_needed() -> None:
    env = _clamp_env("split_callable")
    _, _, info = _episode(env, [np.array([1.0, 1.0])], seed=0, options={"budget": 0.9, "param_budget": None})
    assert info["tradeoffs"][0] == 1.0  # unit 0 affordable as requested
    _, _, info = _episode(
        env, [np.array([1.0, 1.0])], seed=0, options={"budget": env.min_macs_fraction + 0.01, "param_budget": None}
    )
    assert min(info["tradeoffs"]) < 1.0  # a callable runtime may keep every stored channel: R_r had to give way
    assert info["macs_fraction_max"] <= env.min_macs_fraction + 0.01 + 1e-9


def test_computed_channel_bound_is_exact_for_fixed_runtime_ratios() -> None:
    """The wall's per-image bound (trade-off pruner, Eqs. 3-5) is never exceeded and is reached by some image."""
    g = torch.Generator().manual_seed(0)
    c = 10
    unit = GatedConv(nn.Conv2d(4, c, 3, padding=1), nn.BatchNorm2d(c))
    with torch.no_grad():
        unit.predictor.weight.normal_(generator=g)
        unit.static_importance.uniform_(0.5, 1.5, generator=g)
    x = torch.randn(1500, 4, 6, 6, generator=g)
    reached = checked = 0
    for tradeoff in (0.0, 0.3, 0.5, 1.0):
        for ratio in (0.1, 0.35, 0.9):
            k_r = int(keep_count(ratio, c))
            bound = _computed_bound(c, np.arange(1, c + 1), tradeoff, k_r)
            for k_s in range(1, c + 1):
                unit.static_keep, unit.tradeoff = k_s / c, tradeoff
                unit.runtime = torch.tensor(ratio, dtype=torch.float64)
                with torch.no_grad():
                    unit(x)
                most = int(unit.last_keep.sum(-1).max())
                assert most <= bound[k_s - 1], (tradeoff, ratio, k_s)
                reached += most == bound[k_s - 1]
                checked += 1
    assert reached >= 0.9 * checked  # tight: not a loose over-estimate


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
def test_uniform_action_at_the_budget_lands_within_a_channel_per_unit(name: str) -> None:
    base = _net(name)
    b = 0.6
    budget = sparsity_to_mac_fraction(base, b)
    env = _env(base, budget=budget)
    _, _, info = _episode(env, [_ratio_action(b)], seed=0)
    counts = np.array(info["keep_counts"])
    assert np.all(counts <= np.ceil(b * env.channels))  # the wall only ever lowers a request
    cm = env.cost_model
    deltas = []
    for t in range(env.num_units):
        plus = counts.copy()
        plus[t] += 1
        deltas.append(int(cm.from_counts(torch.from_numpy(plus), torch.from_numpy(plus)).macs[0]))
    macs = int(cm.from_counts(torch.from_numpy(counts), torch.from_numpy(counts)).macs[0])
    slack = sum(d - macs for d in deltas)
    # at or under the cap, and short of it by less than one more channel in every unit would add
    assert macs <= budget * cm.base_macs + 1e-6
    assert budget * cm.base_macs - macs <= slack
    assert info["macs_fraction"] == pytest.approx(macs / cm.base_macs, abs=1e-12)


def test_infeasible_clamp_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be met"):
        _env(budget=0.01)
    with pytest.raises(ValueError, match="cannot be met"):
        _env(param_budget=0.01)
    _env(budget=0.01, budget_mode="penalty")  # allowed: the penalty says how far off it is
    env = _env()
    with pytest.raises(ValueError, match="cannot be met"):
        env.reset(options={"budget": 0.01})


# -----------------------------------------------------------------------------------------------------------
# rewards
# -----------------------------------------------------------------------------------------------------------


def _independent_eval(env: StaticPruningEnv, base: nn.Module) -> tuple[dict[str, float], float]:
    """Top-1/loss and MAC fraction of the env's plan, computed without the env's code paths."""
    plan = env.final_plan()
    masked = gate_model(base, predictor=False)
    set_plan(masked, plan)
    data = get_dataset("synthetic", split="val", size=NUM_VAL).subset(env.val_indices)
    scores = evaluate(masked, dataset_for_model(data, masked), batch_size=17)
    return scores, float(model_cost(base, plan).macs_fraction[0])


@pytest.mark.parametrize("over", [False, True])
def test_paper_reward_by_hand(over: bool) -> None:
    base = _net()
    env = _env(base, budget_mode="penalty", budget=0.5)
    action = _ratio_action(0.9 if over else 0.4)
    _, reward, info = _episode(env, [action], seed=0)
    scores, macs_fraction = _independent_eval(env, base)
    assert info["macs_fraction"] == pytest.approx(macs_fraction, abs=1e-12)
    assert (macs_fraction > 0.5) == over
    assert info["top1"] == pytest.approx(scores["top1"])
    assert info["loss"] == pytest.approx(scores["loss"], rel=1e-5)
    # first episode: β_b = this loss, so the accuracy term is exactly -1
    if over:
        expected_budget = -1.2 * (math.exp((macs_fraction - 0.5) / 0.03) - 1)
    else:
        expected_budget = 0.1 * (0.5 - macs_fraction)
    assert info["reward_parts"] == pytest.approx({"accuracy": -1.0, "budget_macs": expected_budget})
    assert reward == pytest.approx(-1.0 + expected_budget)
    # second episode, other plan: β_b is the mean of both losses
    first_loss = info["loss"]
    _, reward2, info2 = _episode(env, [_ratio_action(0.3)], seed=0)
    beta = (first_loss + info2["loss"]) / 2
    assert info2["loss_scale"] == pytest.approx(beta)
    assert reward2 == pytest.approx(-info2["loss"] / beta + budget_term(info2["macs_fraction"], 0.5))


def test_penalty_mode_overshoots_and_pays() -> None:
    env = _env(budget_mode="penalty", budget=0.5, param_budget=0.5)
    _, reward, info = _episode(env, [np.array([1.0])], seed=0)
    assert info["macs_fraction"] == 1.0 and info["params_fraction"] == 1.0
    assert info["applied_keeps"] == info["requested_keeps"] == [1.0] * 3
    penalty = -1.2 * math.expm1(0.5 / 0.03)
    assert info["reward_parts"]["budget_macs"] == pytest.approx(penalty)
    assert info["reward_parts"]["budget_params"] == pytest.approx(penalty)
    assert reward == pytest.approx(sum(info["reward_parts"].values()))


def test_amc_rewards_and_fixed_loss_scale() -> None:
    env = _env(reward="accuracy")
    _, reward, info = _episode(env, [np.array([0.0])], seed=0)
    assert reward == pytest.approx(info["top1"] / 100)
    env = _env(reward="acc_log_macs")
    _, reward, info = _episode(env, [np.array([0.0])], seed=0)
    assert reward == pytest.approx(-(1 - info["top1"] / 100) * math.log(info["macs"]))
    env = _env(loss_scale=2.0)
    _, _, info = _episode(env, [np.array([0.0])], seed=0)
    assert info["reward_parts"]["accuracy"] == pytest.approx(-info["loss"] / 2.0)


def test_user_registered_and_callable_rewards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rewards, "_REWARDS", rewards._REWARDS.copy())

    @register_reward("macs_only")
    def macs_only(result: rewards.EpisodeResult) -> tuple[float, dict[str, float]]:
        return -result.macs_fraction, {"macs": -result.macs_fraction}

    for reward in ("macs_only", macs_only):
        env = _env(reward=reward)
        _, value, info = _episode(env, [np.array([0.0])], seed=0)
        assert value == -info["macs_fraction"] and info["reward_parts"] == {"macs": value}
    with pytest.raises(ValueError, match="Did you mean macs_only"):
        _env(reward="macs_onyl")

    def broken(result: rewards.EpisodeResult) -> tuple[float, dict[str, float]]:
        return math.nan, {}

    env = _env(reward=broken)
    with pytest.raises(ValueError, match="broken"):
        _episode(env, [np.array([0.0])], seed=0)


FUZZ_ENV: dict[str, StaticPruningEnv] = {}

finite = st.floats(-1e6, 1e6)
any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["clamp", "penalty"]),
    actions=st.lists(
        st.one_of(
            st.lists(finite, min_size=1, max_size=1),
            st.lists(any_float, min_size=0, max_size=3),
        ),
        min_size=3,
        max_size=3,
    ),
)
def test_fuzzed_actions_give_finite_rewards_or_value_errors(mode: str, actions: list[list[float]]) -> None:
    if mode not in FUZZ_ENV:
        FUZZ_ENV[mode] = _env(budget_mode=mode, num_val=16)
    env = FUZZ_ENV[mode]
    env.reset(seed=0)
    for a in actions:
        arr = np.asarray(a, dtype=np.float64)
        valid = arr.shape == (1,) and bool(np.isfinite(arr).all())
        if not valid:
            with pytest.raises(ValueError):
                env.step(arr)
            continue
        obs, reward, terminated, _, info = env.step(arr)
        assert math.isfinite(reward) and env.observation_space.contains(obs)
        if terminated:
            assert all(math.isfinite(v) for v in info["reward_parts"].values())


def test_non_finite_loss_is_capped() -> None:
    base = _net()
    with torch.no_grad():
        base.classifier.weight.fill_(math.inf) if hasattr(base, "classifier") else None
        linears = [m for m in base.modules() if isinstance(m, nn.Linear)]
        linears[-1].weight.fill_(math.inf)
    env = _env(base)
    _, reward, info = _episode(env, [np.array([0.0])], seed=0)
    assert info["loss_capped"] and info["loss"] == envs.rewards.LOSS_CAP
    assert math.isfinite(reward)


# -----------------------------------------------------------------------------------------------------------
# accounting: the info equals model_cost and FlopCounterMode
# -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
def test_macs_match_model_cost_and_flop_counter(name: str) -> None:
    base = _net(name)
    env = _env(base, budget=0.45, param_budget=0.7)
    env.action_space.seed(1)
    _, _, info = _episode(env, [env.action_space.sample() for _ in range(3)], seed=0)
    plan = env.final_plan()
    cost = model_cost(base, plan)
    assert info["macs_fraction"] == float(cost.macs_fraction[0])
    assert info["params"] == cost.params
    exported = export_static(base, plan)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        exported(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * info["macs"]
    assert sum(p.numel() for p in exported.parameters()) == info["params"]


def test_runtime_in_the_loop_matches_model_cost() -> None:
    gated = _gated()
    env = _env(gated, runtime=[0.5, 0.7, 0.6], tradeoff=0.5, budget=0.6)
    env.action_space.seed(2)
    _, _, info = _episode(env, [env.action_space.sample() for _ in range(3)], seed=0)
    x, _ = env.validation_data
    cost = model_cost(gated, env.final_plan(), inputs=x)
    assert info["macs_fraction"] == pytest.approx(float(cost.macs_fraction.mean()), abs=1e-12)
    assert info["macs_fraction_max"] == pytest.approx(float(cost.macs_fraction.max()), abs=1e-12)
    assert info["params_fraction"] == pytest.approx(cost.params_fraction)
    assert info["macs_fraction_max"] <= 0.6 + 1e-9


def test_learn_split_sets_each_units_r_r() -> None:
    gated = _gated()
    env = _env(gated, runtime=0.5, learn_split=True, budget=0.7)
    actions = [np.array([0.2, -1.0]), np.array([0.5, 1.0]), np.array([0.0, 0.0])]
    _, _, info = _episode(env, actions, seed=0)
    assert info["tradeoffs"] == [0.0, 1.0, 0.5]
    assert [g.tradeoff for g in gated_units(env.model)] == [0.0, 1.0, 0.5]
    copy_ = env.apply_plan(gate_model(_net()))
    assert [g.tradeoff for g in gated_units(copy_)] == [0.0, 1.0, 0.5]


# -----------------------------------------------------------------------------------------------------------
# criteria, data
# -----------------------------------------------------------------------------------------------------------


def test_default_criterion_is_l1_for_plain_and_u_s_for_gated() -> None:
    plain = _net()
    env = _env(plain)
    assert env.criterion_name == "l1"
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)][:3]
    for scores, conv in zip(env.static_scores, convs, strict=True):
        assert torch.equal(scores, conv.weight.abs().sum(dim=(1, 2, 3)))
    gated = _gated()
    env = _env(gated)
    assert env.criterion_name == "u_s"
    for scores, g in zip(env.static_scores, gated_units(gated), strict=True):
        assert torch.equal(scores, g.static_importance.detach())
    # the plan ranks by those scores: the kept channels of unit 0 are the top-k by u_s
    _, _, info = _episode(env, [_ratio_action(0.5)], seed=0)
    kept = gated_units(env.model)[0].static_sets()[0]
    assert torch.equal(kept, rank_desc(env.static_scores[0]) < info["keep_counts"][0])


def test_other_criteria() -> None:
    plain = _net()
    conv = [m for m in plain.modules() if isinstance(m, nn.Conv2d)][0]
    env = _env(plain, criterion="l2")
    assert torch.allclose(env.static_scores[0], conv.weight.pow(2).sum(dim=(1, 2, 3)).sqrt())
    env = _env(plain, criterion=lambda model, unit: -torch.arange(unit.out_channels, dtype=torch.float32))
    assert torch.equal(env.static_scores[1], -torch.arange(16, dtype=torch.float32))
    with pytest.raises(ValueError, match="gated model"):
        _env(plain, criterion="u_s")
    with pytest.raises(ValueError, match="unknown criterion"):
        _env(plain, criterion="l3")


def test_test_split_is_refused() -> None:
    with pytest.raises(ValueError, match="test split"):
        StaticPruningEnv(split="test", num_val=8)
    with pytest.raises(ValueError, match="test split"):
        StaticPruningEnv(dataset=get_dataset("synthetic", split="test", size=16), num_val=8)
    with pytest.raises(ValueError, match="num_val"):
        StaticPruningEnv(dataset=get_dataset("synthetic", split="val", size=16), num_val=32)


def test_reward_subset_is_fixed_and_sized() -> None:
    env = StaticPruningEnv(num_val=2048)
    x, y = env.validation_data
    assert x.shape == (2048, 3, 32, 32) and y.shape == (2048,)
    env = StaticPruningEnv(dataset=get_dataset("synthetic", split="val", size=100), num_val=40, val_seed=3)
    again = StaticPruningEnv(dataset=get_dataset("synthetic", split="val", size=100), num_val=40, val_seed=3)
    assert torch.equal(env.val_indices, again.val_indices) and len(set(env.val_indices.tolist())) == 40


def test_argument_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="runtime policy"):
        _env(learn_split=True)
    with pytest.raises(ValueError, match="runtime policy"):
        _env(tradeoff=0.5)
    with pytest.raises(ValueError, match="budget_mode"):
        _env(budget_mode="wall")
    with pytest.raises(ValueError, match="budget"):
        _env(budget=None, param_budget=None)
    with pytest.raises(ValueError, match="runtime has shape"):
        _env(runtime=[0.5, 0.5])


@pytest.mark.realdata
@pytest.mark.slow
def test_real_cifar10_with_public_resnet20(shared_models_dir, cifar10_dir) -> None:
    weights = shared_models_dir / "resnet20-12fca82f.th"
    if not weights.is_file():
        pytest.skip(f"{weights} not found")
    env = StaticPruningEnv(
        model="resnet20", weights=weights, dataset="cifar10", data_dir=cifar10_dir, num_val=512, budget_mode="penalty"
    )
    _, _, full = _episode(env, [np.array([1.0])], seed=0)
    assert full["top1"] > 75.0 and full["macs_fraction"] == 1.0  # ImageNet statistics picked up from the weights
    _, _, pruned = _episode(env, [np.array([-1.0])], seed=0)
    assert pruned["macs_fraction"] < 0.7 and 10.0 < pruned["top1"] < full["top1"]


# -----------------------------------------------------------------------------------------------------------
# learning
# -----------------------------------------------------------------------------------------------------------


def test_ppo_learns_a_few_hundred_steps() -> None:
    from stable_baselines3 import PPO

    env = _env(num_val=16)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)
