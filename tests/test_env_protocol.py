"""The env protocol: every env answers ``pruning_target()`` with plain data, the same through every client."""

from __future__ import annotations

import pickle
from dataclasses import fields
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

import envs
from agents.baselines import PruningTarget, get_baseline
from agents.policies import complete_policy_kwargs, uniform_macs_curve
from agents.unwrap import pruning_target, unwrap_env
from envs.common import TargetSpec
from envs.runtime import PolicyRuntimeSource, RuntimePruningEnv, RuntimePruningVecEnv
from pruning.gating import stored_masks

KWARGS: dict[str, dict[str, Any]] = {
    envs.STATIC_ENV_ID: {"model": "tiny_cnn", "num_val": 16, "batch_size": 16, "budget": 0.6},
    envs.RUNTIME_ENV_ID: {"model": "tiny_cnn", "num_images": 16, "budget": 0.6},
}
PLAIN = (bool, int, float, str, type(None))


def _make(env_id: str, **overrides: Any) -> gym.Env:
    return gym.make(env_id, **{**KWARGS[env_id], **overrides})


def _assert_plain(value: Any) -> None:
    """Only plain values: numbers, strings, ``None``, tuples of them and frozen dataclasses of them."""
    if isinstance(value, tuple):
        for item in value:
            _assert_plain(item)
    elif hasattr(value, "__dataclass_fields__"):
        for f in fields(value):
            _assert_plain(getattr(value, f.name))
    else:
        assert isinstance(value, PLAIN), f"{type(value).__name__} is not plain data"


def test_the_registry_is_covered() -> None:
    assert set(KWARGS) == set(envs.ENV_IDS)


@pytest.mark.parametrize("env_id", sorted(envs.ENV_IDS))
def test_every_client_gets_the_same_plain_target(env_id: str) -> None:
    env = _make(env_id)
    spec = env.unwrapped.pruning_target()
    assert isinstance(spec, TargetSpec)
    _assert_plain(spec)
    assert pickle.loads(pickle.dumps(spec)) == spec
    # Gymnasium wrappers: through env.unwrapped and through Gymnasium's attribute forwarding
    assert pruning_target(env) == env.get_wrapper_attr("pruning_target")() == spec
    dummy = VecMonitor(DummyVecEnv([lambda: _make(env_id)] * 2))
    assert dummy.env_method("pruning_target") == [spec, spec] and pruning_target(dummy) == spec
    # forked workers: the answer crosses the process boundary by pickle
    subproc = SubprocVecEnv([lambda: _make(env_id)] * 2, start_method="fork")
    try:
        assert subproc.env_method("pruning_target") == [spec, spec]
        assert pruning_target(VecMonitor(subproc)) == spec
    finally:
        subproc.close()
    # the values are the env's own, read at the call
    inner = env.unwrapped
    assert spec.num_units == len(inner.cost_model.units) and spec.budget_index == inner.budget_index
    assert spec.macs == inner.cost_model.mac_coefficients() and spec.min_keep == inner.min_keep
    assert inner.observation_space.shape is not None and spec.budget_index < inner.observation_space.shape[0]
    assert spec.action_dim == inner.action_space.shape[0]
    inner.budget = 0.45
    assert inner.pruning_target().budget == 0.45 and spec.budget == 0.6


def test_the_runtime_vec_env_answers_like_the_single_env() -> None:
    vec = VecMonitor(RuntimePruningVecEnv(num_envs=3, **KWARGS[envs.RUNTIME_ENV_ID]))
    single = _make(envs.RUNTIME_ENV_ID)
    assert vec.env_method("pruning_target") == [single.unwrapped.pruning_target()] * 3
    assert pruning_target(vec) == single.unwrapped.pruning_target()


def test_each_env_states_its_kind_and_setting() -> None:
    static = _make(envs.STATIC_ENV_ID, learn_split=True, runtime=0.8, criterion="l2", param_budget=0.7).unwrapped
    spec = static.pruning_target()
    assert (spec.kind, spec.action_dim, spec.criterion, spec.runtime_in_loop) == ("static", 2, "l2", True)
    assert spec.param_budget == 0.7 and spec.tradeoff == static.tradeoff == 0.5
    runtime = RuntimePruningEnv(model="tiny_cnn", num_images=16, static_keep=[1.0, 0.5, 0.5], tradeoff=0.5)
    spec = runtime.pruning_target()
    assert (spec.kind, spec.action_dim, spec.criterion, spec.runtime_in_loop) == ("runtime", 1, None, False)
    assert spec.tradeoff == 0.5 and spec.param_budget is None
    assert spec.stored == tuple(int(s.sum()) for s in stored_masks(runtime.model)) != spec.channels


@pytest.mark.parametrize("env_id", sorted(envs.ENV_IDS))
def test_mac_coefficients_cost_like_the_cost_model(env_id: str) -> None:
    inner = _make(env_id).unwrapped
    macs, cm = inner.pruning_target().macs, inner.cost_model
    assert any(p is not None for p in macs.producer)  # tiny_cnn chains units: input widths follow kept counts
    rng = np.random.default_rng(0)
    keep = rng.integers(0, np.array(macs.channels) + 1, size=(5, len(macs.channels)))
    expected = cm.from_counts(torch.from_numpy(keep), cm.channels).macs.numpy()
    np.testing.assert_array_equal(macs.macs(keep), expected)
    assert int(macs.macs(np.array(macs.channels))[0]) == macs.base_macs == cm.base_macs
    assert uniform_macs_curve(macs) == uniform_macs_curve(cm)


def test_policy_runtime_source_exposes_its_mac_coefficients() -> None:
    env = RuntimePruningEnv(model="tiny_cnn", num_images=16, budget=0.5)
    source = PolicyRuntimeSource(get_baseline("fbs").prepare(env), env.model, budget=0.5)
    assert source.mac_coefficients == env.pruning_target().macs


# ------------------------------------------------------------------------------------------------------------
# what agents read through the protocol
# ------------------------------------------------------------------------------------------------------------


def _by_hand(env: Any, static: bool) -> PruningTarget:
    """A baseline's target read off the env's attributes, without the protocol."""
    model, cm = env.model, env.cost_model
    channels = tuple(int(c) for c in cm.channels)
    stored = channels if static else tuple(int(s.sum()) for s in stored_masks(model))
    spec = TargetSpec(
        kind="static" if static else "runtime", channels=channels, stored=stored, min_keep=env.min_keep,
        budget=env.budget, param_budget=env.param_budget if static else None, budget_index=env.budget_index,
        action_dim=1, tradeoff=env.tradeoff, criterion=env.criterion_name if static else None,
        runtime_in_loop=False, macs=cm.mac_coefficients(),
    )  # fmt: skip
    return PruningTarget(spec=spec, model=model, cost_model=cm)


@pytest.mark.parametrize(("env_id", "baseline"), [(envs.STATIC_ENV_ID, "l1"), (envs.RUNTIME_ENV_ID, "fbs")])
def test_a_baseline_acts_the_same_through_the_protocol(env_id: str, baseline: str) -> None:
    env = _make(env_id)
    inner = env.unwrapped
    direct = get_baseline(baseline)
    counts = np.asarray(direct.allocate(_by_hand(inner, env_id == envs.STATIC_ENV_ID), 0.6))
    wrapped = get_baseline(baseline).prepare(env)
    vec = get_baseline(baseline).prepare(VecMonitor(DummyVecEnv([lambda: _make(env_id)])))
    np.testing.assert_array_equal(wrapped.keep_counts, counts)
    np.testing.assert_array_equal(vec.keep_counts, counts)
    obs, _ = env.reset(seed=0)
    observations = [obs]
    for _ in range(inner.pruning_target().num_units - 1):
        obs = env.step(wrapped.predict(obs)[0])[0]
        observations.append(obs)
    batch = np.stack(observations)
    np.testing.assert_array_equal(wrapped.predict(batch)[0], vec.predict(batch)[0])
    assert len(np.unique(wrapped.predict(batch)[0])) > 1  # the units' actions differ: the index is read


def test_subprocess_envs_give_plain_data_and_refuse_the_model_with_the_fix() -> None:
    dummy = DummyVecEnv([lambda: _make(envs.RUNTIME_ENV_ID)])
    subproc = SubprocVecEnv([lambda: _make(envs.RUNTIME_ENV_ID)] * 2, start_method="fork")
    try:
        kwargs = complete_policy_kwargs("BudgetResidualPolicy", None, subproc)
        assert kwargs == complete_policy_kwargs("BudgetResidualPolicy", None, dummy)
        assert kwargs["budget_index"] == dummy.envs[0].unwrapped.budget_index and kwargs["min_keep"] == 0.1
        with pytest.raises(TypeError, match="other processes.*DummyVecEnv"):
            get_baseline("fbs").prepare(subproc)
        with pytest.raises(TypeError, match="other processes.*DummyVecEnv"):
            unwrap_env(subproc)
    finally:
        subproc.close()


def test_a_non_prunegym_env_is_named_in_the_error() -> None:
    with pytest.raises(TypeError, match="PendulumEnv is not a PruneGym environment"):
        pruning_target(gym.make("Pendulum-v1"))
    with pytest.raises(TypeError, match="PendulumEnv is not a PruneGym environment"):
        pruning_target(DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
