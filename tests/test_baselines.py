"""Baseline policies: registry, budgets met tightly in both envs, SB3's evaluate_policy, vectorised envs."""

from __future__ import annotations

import dataclasses
import doctest
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from _nets import randomize_
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.type_aliases import PolicyPredictor
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

import agents.baselines as baselines
from agents.baselines import (
    BaselinePolicy,
    PruningTarget,
    TrainedBaseline,
    baseline_class,
    get_baseline,
    list_baselines,
    register_baseline,
)
from envs.runtime import RuntimePruningEnv, RuntimePruningVecEnv
from envs.static import StaticPruningEnv
from pruning.export import export_static
from pruning.models import get_model
from pruning.plan import keep_count

#: Every registered baseline that acts in an env (training-based methods are scored by compare, not here).
ACTING = [n for n in list_baselines() if not issubclass(baseline_class(n), TrainedBaseline)]
CASES: list[tuple[str, dict[str, Any]]] = (
    [(name, {}) for name in ACTING]
    + [(name, {"allocation": "global"}) for name in ("l1", "l2", "bn_scale")]
    + [("neuron_merging", {"criterion": "l2_gm", "allocation": "global"}), ("pfp", {"deterministic": True})]
)
IDS = [name + "".join(f"-{v}" for v in kw.values()) for name, kw in CASES]
STATIC_CASES = [case for case in CASES if "static" in baseline_class(case[0]).env_kinds]
STATIC_IDS = [i for i, case in zip(IDS, CASES, strict=True) if "static" in baseline_class(case[0]).env_kinds]
RUNTIME_CASES = [case for case in CASES if "runtime" in baseline_class(case[0]).env_kinds]
RUNTIME_IDS = [i for i, case in zip(IDS, CASES, strict=True) if "runtime" in baseline_class(case[0]).env_kinds]
_NETS: dict[str, nn.Module] = {}


def _net(name: str) -> nn.Module:
    if name not in _NETS:
        _NETS[name] = randomize_(get_model(name), seed=0)
    return _NETS[name]


_ENVS: dict[tuple[str, str | None, float], Any] = {}


def _static(model: str, policy: BaselinePolicy, budget: float) -> StaticPruningEnv:
    criterion = policy.channel_criterion()
    if not isinstance(criterion, str | None):  # a bound criterion (PFP with a batch): its own env
        return StaticPruningEnv(model=_net(model), num_val=16, budget=budget, criterion=criterion)
    key = (model, criterion, budget)
    if key not in _ENVS:  # envs are reused across tests: building them dominates the run time
        _ENVS[key] = StaticPruningEnv(model=_net(model), num_val=16, budget=budget, criterion=criterion)
    return _ENVS[key]


def _runtime(model: str, budget: float) -> RuntimePruningEnv:
    key = (model, "runtime", budget)
    if key not in _ENVS:
        _ENVS[key] = RuntimePruningEnv(model=_net(model), budget=budget, dataset_kwargs={"size": 8})
    return _ENVS[key]


def _assert_tight(policy: BaselinePolicy, env: Any, budget: float | None, param_budget: float | None = None) -> None:
    """The plan meets the budgets, and one more channel in every unit (not at full width) breaks one of them.

    PFP is held to the first half only: its counts move along its sample sizes m(ε) (one global ε), which can
    step one unit by several channels, so "one more channel everywhere" need not cross the budget; its own
    tightness in ε is tested in test_pfp.py.
    """
    target = PruningTarget.of(env)
    counts = policy.keep_counts
    assert counts is not None
    assert ((counts >= target.min_counts) & (counts <= target.channels)).all()

    def fits(c: np.ndarray) -> bool:
        ok = budget is None or target.macs_fraction(c) <= budget + 1e-12
        return ok and (param_budget is None or target.params_fraction(c) <= param_budget + 1e-12)

    assert fits(counts)
    if (counts < target.channels).any() and policy.name != "pfp":
        assert not fits(np.minimum(counts + 1, target.channels))


def test_module_doctest() -> None:
    result = doctest.testmod(baselines, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_pruning_target_is_the_env_spec_and_the_live_objects() -> None:
    static = StaticPruningEnv(model=_net("resnet8"), num_val=16, budget=0.5, param_budget=0.8, criterion="l2")
    for env in (static, _runtime("resnet8", 0.4)):
        target = PruningTarget.of(DummyVecEnv([lambda env=env: env]))  # type: ignore[misc]
        spec = env.pruning_target()
        assert target.spec == spec and target.model is env.model and target.cost_model is env.cost_model
        for name in ("kind", "budget", "param_budget", "min_keep", "action_dim", "tradeoff", "criterion", "num_units"):
            assert getattr(target, name) == getattr(spec, name), name
        assert target.units == env.cost_model.units
        expected = {
            "channels": spec.channels,
            "stored": spec.stored,
            "min_counts": tuple(int(keep_count(spec.min_keep, c)) for c in spec.channels),
        }
        for name, values in expected.items():
            array = getattr(target, name)
            assert array.dtype == np.int64 and tuple(array.tolist()) == values
            with pytest.raises(ValueError, match="read-only"):  # shared by every allocation solved on the target
                array[0] = 1
    assert PruningTarget.of(static).budget == 0.5 and PruningTarget.of(static).param_budget == 0.8


def test_a_target_without_an_env_costs_as_the_static_env() -> None:
    env = StaticPruningEnv(model=_net("resnet8"), num_val=16, budget=0.5)
    target = PruningTarget.of_model(_net("resnet8"), 0.5, min_keep=env.min_keep, criterion="l1")
    assert target.spec == dataclasses.replace(env.pruning_target(), budget_index=-1)
    counts = np.maximum(target.channels // 3, target.min_counts)
    assert target.macs_fraction(counts) == PruningTarget.of(env).macs_fraction(counts) < 0.5
    assert target.fits(counts, 0.5) and not target.fits(target.channels, 0.5)
    floor = PruningTarget.of_model(_net("resnet8"), None)  # the default min_keep 0: one channel per unit
    assert floor.min_keep == 0.0 and floor.budget is None and floor.min_counts.tolist() == [1] * floor.num_units


def test_registry() -> None:
    assert {"bn_scale", "fbs", "l1", "l2", "neuron_merging", "pfp", "random", "uniform"} <= set(list_baselines())
    assert baseline_class("fbs").env_kinds == {"runtime"} and baseline_class("neuron_merging").env_kinds == {"static"}
    assert get_baseline("random").stochastic and get_baseline("pfp").stochastic
    assert not get_baseline("uniform").stochastic and not get_baseline("pfp", deterministic=True).stochastic
    policy = get_baseline("l1", allocation="global", budget=0.4)
    assert policy.name == "l1" and policy.criterion == "l1" and policy.budget == 0.4
    predictor: PolicyPredictor = policy  # the protocol is static-only: a type check, not isinstance
    assert callable(predictor.predict)
    assert get_baseline("uniform").criterion is None
    with pytest.raises(ValueError, match=r"unknown baseline 'unifrom'\. Did you mean uniform"):
        get_baseline("unifrom")
    with pytest.raises(ValueError, match="already registered"):
        register_baseline("uniform")(type("Other", (BaselinePolicy,), {}))
    with pytest.raises(ValueError, match="allocation"):
        get_baseline("l2", allocation="local")
    with pytest.raises(ValueError, match="budget"):
        get_baseline("uniform", budget=1.5)
    with pytest.raises(RuntimeError, match="prepare"):
        get_baseline("uniform").predict(np.zeros(13, dtype=np.float32))


@pytest.mark.parametrize("model", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize(("name", "kwargs"), STATIC_CASES, ids=STATIC_IDS)
def test_static_env_budget_met_tightly(model: str, name: str, kwargs: dict[str, Any]) -> None:
    budget = 0.45
    policy = get_baseline(name, **kwargs)
    env = _static(model, policy, budget)
    policy.prepare(env)
    _assert_tight(policy, env, budget)
    obs, _ = env.reset(seed=0)
    done, info = False, dict[str, Any]()
    while not done:
        action, state = policy.predict(obs)
        assert state is None and action.shape == (1,) and action.dtype == np.float32
        obs, _, done, _, info = env.step(action)
        assert info["applied_keep"] == info["requested_keep"]  # the action wall never had to cut
    assert info["keep_counts"] == policy.keep_counts.tolist()  # type: ignore[union-attr]
    assert info["macs_fraction"] <= budget + 1e-12
    assert info["macs_fraction"] == pytest.approx(PruningTarget.of(env).macs_fraction(policy.keep_counts))  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize(("name", "kwargs"), RUNTIME_CASES, ids=RUNTIME_IDS)
def test_runtime_env_budget_met_tightly(model: str, name: str, kwargs: dict[str, Any]) -> None:
    budget = 0.4
    policy = get_baseline(name, **kwargs)
    env = _runtime(model, budget)
    policy.prepare(env)
    _assert_tight(policy, env, budget)
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        done, info, kept = False, dict[str, Any](), []
        while not done:
            action, _ = policy.predict(obs)
            obs, _, done, _, info = env.step(action)
            kept.append(info["kept_channels"])
        assert kept == policy.keep_counts.tolist()  # type: ignore[union-attr]
        assert info["macs_fraction"] <= budget + 1e-12


def test_uniform_keeps_one_ratio_and_random_depends_on_its_seed() -> None:
    policy = get_baseline("uniform")
    env = _static("resnet8", policy, 0.5)
    ratios = policy.prepare(env).keep_ratios()
    # one ratio r, each unit keeping ceil(r·C) of its 16, 32 or 64 channels
    counts = policy.keep_counts
    assert counts is not None and len(set(env.channels.tolist())) == 3
    r = min(ratios)
    assert counts.tolist() == [int(keep_count(r, int(c))) for c in env.channels]
    a = get_baseline("random", seed=1).prepare(env).keep_counts
    b = get_baseline("random", seed=1).prepare(env).keep_counts
    c = get_baseline("random", seed=2).prepare(env).keep_counts
    assert a is not None and b is not None and c is not None
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_global_allocation_is_not_uniform_when_scales_differ() -> None:
    net = randomize_(get_model("resnet8"), seed=0)
    # make the last unit's γ tiny except one channel: a global threshold prunes it harder than the others
    bn = net.get_submodule("layer3.0.bn1")
    assert isinstance(bn, nn.BatchNorm2d)
    bn.weight.data[:] = 0.01
    bn.weight.data[0] = 1.0
    policy = get_baseline("bn_scale", allocation="global")
    env = StaticPruningEnv(model=net, num_val=16, budget=0.6, criterion="bn_scale")
    counts = policy.prepare(env).keep_counts
    assert counts is not None
    assert counts[-1] == PruningTarget.of(env).min_counts[-1] and counts[:-1].max() > counts[-1]


def test_env_criterion_must_match_and_impossible_budget_is_refused() -> None:
    env = StaticPruningEnv(model=_net("tiny_cnn"), num_val=16, budget=0.5, criterion="l1")
    with pytest.raises(ValueError, match="criterion='l2'"):
        get_baseline("l2").prepare(env)
    with pytest.raises(ValueError, match="cannot be met"):
        get_baseline("uniform", budget=0.01).prepare(env)


@pytest.mark.parametrize("name", ["uniform", "bn_scale"])
def test_evaluate_policy_static_env(name: str) -> None:
    policy = get_baseline(name)
    env = _static("tiny_cnn", policy, 0.5)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Monitor.*")
        rewards, lengths = evaluate_policy(policy.prepare(env), env, n_eval_episodes=2, return_episode_rewards=True)
    assert lengths == [env.num_units] * 2
    assert all(np.isfinite(rewards))


@pytest.mark.parametrize("name", ["random", "l2"])
def test_evaluate_policy_runtime_env(name: str) -> None:
    policy = get_baseline(name)
    env = _runtime("resnet8", 0.5)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Monitor.*")
        mean, std = evaluate_policy(policy.prepare(env), env, n_eval_episodes=3)
    assert np.isfinite(mean) and np.isfinite(std)


def test_vectorised_envs() -> None:
    policy = get_baseline("uniform", budget=0.4)
    vec = RuntimePruningVecEnv(4, model=_net("resnet8"), budget=0.4, dataset_kwargs={"size": 8})
    single = _runtime("resnet8", 0.4)
    expected = policy.prepare(single).keep_counts
    policy.prepare(vec)
    assert np.array_equal(policy.keep_counts, expected)  # type: ignore[arg-type]
    obs = vec.reset()
    kept = []
    for _ in range(vec.num_units):
        assert isinstance(obs, np.ndarray)
        actions, _ = policy.predict(obs)
        assert actions.shape == (4, 1)
        obs, _, dones, infos = vec.step(actions)
        kept.append([i["kept_channels"] for i in infos])
    assert dones.all()
    assert np.array_equal(np.array(kept).T, np.tile(expected, (4, 1)))  # type: ignore[arg-type]
    assert all(i["macs_fraction"] <= 0.4 + 1e-12 for i in infos)

    static = get_baseline("l1")
    dummy = DummyVecEnv([lambda: StaticPruningEnv(model=_net("tiny_cnn"), num_val=16, criterion="l1")] * 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Monitor.*")
        _, lengths = evaluate_policy(static.prepare(dummy), dummy, n_eval_episodes=2, return_episode_rewards=True)
    assert lengths == [3, 3]


def test_fbs_is_the_constant_runtime_ratio_and_refuses_static_envs() -> None:
    fbs = get_baseline("fbs").prepare(_runtime("resnet8", 0.4))
    uniform = get_baseline("uniform").prepare(_runtime("resnet8", 0.4))
    assert fbs.keep_counts.tolist() == uniform.keep_counts.tolist()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="runtime baseline.*RuntimePruning-v0"):
        get_baseline("fbs").prepare(_static("resnet8", get_baseline("uniform"), 0.4))
    with pytest.raises(ValueError, match="static baseline.*StaticPruning-v0"):
        get_baseline("neuron_merging").prepare(_runtime("resnet8", 0.4))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("uniform", {}), ("random", {"seed": 1}), ("l1", {"allocation": "global"}), ("bn_scale", {}), ("pfp", {})],
    ids=["uniform", "random", "l1-global", "bn_scale", "pfp"],
)
@pytest.mark.parametrize(("budget", "param_budget"), [(None, 0.5), (0.8, 0.45), (0.45, 0.9)])
def test_parameter_budget_met_tightly(
    name: str, kwargs: dict[str, Any], budget: float | None, param_budget: float
) -> None:
    """With a parameter budget (alone or with a MAC budget) the plan meets both, and is tight on one of them."""
    policy = get_baseline(name, **kwargs)
    env = StaticPruningEnv(
        model=_net("resnet8"), num_val=16, budget=budget, param_budget=param_budget,
        criterion=policy.channel_criterion(),
    )  # fmt: skip
    policy.prepare(env)
    _assert_tight(policy, env, budget, param_budget)
    obs, _ = env.reset(seed=0)
    done, info = False, dict[str, Any]()
    while not done:
        action, _ = policy.predict(obs)
        obs, _, done, _, info = env.step(action)
        assert info["applied_keep"] == info["requested_keep"]  # the env's own wall agrees: nothing cut
    assert info["keep_counts"] == policy.keep_counts.tolist()  # type: ignore[union-attr]
    assert info["params_fraction"] <= param_budget + 1e-12
    assert info["params_fraction"] == pytest.approx(PruningTarget.of(env).params_fraction(policy.keep_counts))  # type: ignore[arg-type]
    if budget is not None:
        assert info["macs_fraction"] <= budget + 1e-12
    if (budget, param_budget) == (0.8, 0.45):  # the parameter budget binds: MACs stay well under theirs
        assert info["macs_fraction"] < 0.75


def test_parameter_budget_that_cannot_be_met_is_refused() -> None:
    env = StaticPruningEnv(model=_net("resnet8"), num_val=16, budget=None, param_budget=0.5)
    with pytest.raises(ValueError, match="cannot be met"):
        get_baseline("uniform", budget=0.05).prepare(env)


def test_default_transform_is_export_static_and_neuron_merging_merges() -> None:
    net = _net("resnet8")
    for name in ("l1", "neuron_merging"):
        policy = get_baseline(name)
        env = _static("resnet8", policy, 0.5)
        policy.prepare(env)
        obs, _ = env.reset(seed=0)
        done = False
        while not done:
            obs, _, done, _, _ = env.step(policy.predict(obs)[0])
        plan = env.final_plan()
        pruned, sliced = policy.transform(net, plan), export_static(net, plan)
        shapes = {k: v.shape for k, v in sliced.state_dict().items()}
        assert {k: v.shape for k, v in pruned.state_dict().items()} == shapes
        same = all(torch.equal(v, sliced.state_dict()[k]) for k, v in pruned.state_dict().items())
        assert same == (name == "l1")  # merging adds the pruned channels' weights into the consumers


def test_neuron_merging_options() -> None:
    policy = get_baseline("neuron_merging", criterion="l2_gm", threshold=0.3, lam=0.5)
    assert isinstance(policy, baselines.NeuronMergingBaseline)
    assert (policy.criterion, policy.threshold, policy.lam) == ("l2_gm", 0.3, 0.5)
    assert policy.channel_criterion() == "l2_gm"
    with pytest.raises(ValueError, match="l2_gm"):
        get_baseline("neuron_merging", criterion="bn_scale")
    with pytest.raises(ValueError, match="lam"):
        get_baseline("neuron_merging", lam=2.0)
    env = _static("tiny_cnn", get_baseline("uniform"), 0.5)  # ranks by l1
    with pytest.raises(ValueError, match="criterion='l2_gm'"):
        policy.prepare(env)
