"""``envs.common.EnvSettings`` (the arguments both envs share) and ``envs.make_batched`` (either id as a VecEnv)."""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import pickle
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
import envs.common
from envs.common import EnvSettings
from envs.runtime import RuntimePruningEnv, RuntimePruningVecEnv, _env_defaults
from envs.static import StaticPruningEnv

FAST: dict[str, dict[str, Any]] = {envs.STATIC_ENV_ID: {"num_val": 16}, envs.RUNTIME_ENV_ID: {"num_images": 16}}
SETTINGS = EnvSettings(budget=0.3, reward="accuracy")


def _rollout(env: gym.Env, seed: int) -> list[Any]:
    env.action_space.seed(seed)
    out: list[Any] = [env.reset(seed=seed)]
    terminated = False
    while not terminated:
        step = env.step(env.action_space.sample())
        terminated = step[2]
        out.append(step)
    return out


# ------------------------------------------------------------------------------------------------------------
# EnvSettings
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [StaticPruningEnv, RuntimePruningEnv])
def test_every_setting_is_a_keyword_of_both_envs_with_the_same_default(cls: type) -> None:
    params = inspect.signature(cls.__init__).parameters
    assert params["settings"].default is None
    for f in dataclasses.fields(EnvSettings):
        assert f.name in params, f"{cls.__name__} does not take {f.name}"
        assert params[f.name].default == f.default, f"{cls.__name__}.{f.name}"


def test_the_vec_env_takes_the_single_env_defaults() -> None:
    defaults = _env_defaults()
    assert "settings" not in defaults
    assert all(defaults[name] == getattr(envs.common.DEFAULTS, name) for name in EnvSettings.names())


def test_arguments_with_other_defaults_or_meanings_are_not_settings() -> None:
    static = inspect.signature(StaticPruningEnv.__init__).parameters
    runtime = inspect.signature(RuntimePruningEnv.__init__).parameters
    shared = {n for n in set(static) & set(runtime) if static[n].default == runtime[n].default}
    assert set(EnvSettings.names()) == shared - {"self", "settings", "tradeoff", "render_mode"}
    assert static["min_keep"].default != runtime["min_keep"].default  # so min_keep stays each env's own


@pytest.mark.parametrize("env_id", sorted(envs.ENV_IDS))
def test_settings_give_the_same_env_and_episode_as_keywords(env_id: str) -> None:
    by_settings = gym.make(env_id, settings=SETTINGS, **FAST[env_id])
    by_keywords = gym.make(env_id, budget=0.3, reward="accuracy", **FAST[env_id])
    assert by_settings.unwrapped.pruning_target().budget == 0.3  # type: ignore[attr-defined]
    assert by_settings.unwrapped.pruning_target() == by_keywords.unwrapped.pruning_target()  # type: ignore[attr-defined]
    first, second = _rollout(by_settings, 3), _rollout(by_keywords, 3)
    assert data_equivalence(first, second, exact=True)
    assert set(first[-1][4]["reward_parts"]) == {"accuracy"}  # the reward setting was used, not the default


def test_vec_env_takes_settings() -> None:
    venv = RuntimePruningVecEnv(2, settings=SETTINGS, num_images=16)
    plain = RuntimePruningVecEnv(2, budget=0.3, reward="accuracy", num_images=16)
    assert venv.pruning_target() == plain.pruning_target()
    assert venv.budget == 0.3 and venv._core.reward_name == "accuracy"


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: StaticPruningEnv(num_val=16, **kw),
        lambda **kw: RuntimePruningEnv(**kw),
        lambda **kw: RuntimePruningVecEnv(2, **kw),
        lambda **kw: gym.make(envs.RUNTIME_ENV_ID, **kw),
    ],
    ids=["static", "runtime", "vec", "gym.make"],
)
def test_a_keyword_that_disagrees_with_the_settings_is_refused(make: Any) -> None:
    with pytest.raises(ValueError, match=r"budget=0\.4 and settings\.budget=0\.3"):
        make(settings=SETTINGS, budget=0.4)
    with pytest.raises(ValueError, match=r"budget=0\.5 and settings\.budget=0\.3"):
        make(settings=SETTINGS, budget=0.5)  # given explicitly, even at its default
    env = make(settings=SETTINGS, budget=0.3)  # agreeing is fine
    assert env.unwrapped.budget == 0.3


def test_settings_must_be_env_settings() -> None:
    with pytest.raises(TypeError, match="EnvSettings"):
        RuntimePruningEnv(settings={"budget": 0.3})  # type: ignore[arg-type]


def test_the_runtime_env_refuses_no_budget() -> None:
    with pytest.raises(TypeError, match="needs a MAC budget"):
        RuntimePruningEnv(settings=EnvSettings(budget=None))


def test_settings_pickle_and_replace() -> None:
    assert pickle.loads(pickle.dumps(SETTINGS)) == SETTINGS
    changed = dataclasses.replace(SETTINGS, budget=0.4)
    assert changed.budget == 0.4 and changed.reward == "accuracy"
    with pytest.raises(dataclasses.FrozenInstanceError):
        SETTINGS.budget = 0.4  # type: ignore[misc]


def test_common_module_doctest() -> None:
    result = doctest.testmod(envs.common, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------------------------
# make_batched
# ------------------------------------------------------------------------------------------------------------


def test_make_batched_runtime_is_the_batched_env_and_matches_the_constructor() -> None:
    venv = envs.make_batched(envs.RUNTIME_ENV_ID, 3, seed=5, budget=0.4, num_images=16)
    assert type(venv) is RuntimePruningVecEnv and venv.num_envs == 3 and venv.budget == 0.4
    direct = RuntimePruningVecEnv(3, budget=0.4, num_images=16)
    direct.seed(5)
    obs = venv.reset()
    assert obs.shape == (3, *venv.observation_space.shape)
    np.testing.assert_array_equal(obs, direct.reset())
    single = RuntimePruningEnv(budget=0.4, num_images=16)
    for i in range(3):  # sub-environment i is a single env seeded 5 + i
        np.testing.assert_array_equal(obs[i], single.reset(seed=5 + i)[0])


def test_make_batched_static_is_a_dummy_vec_env_of_registered_envs() -> None:
    venv = envs.make_batched(envs.STATIC_ENV_ID, 2, seed=0, budget=0.4, num_val=16)
    assert type(venv) is DummyVecEnv and venv.num_envs == 2
    assert all(type(e.unwrapped) is StaticPruningEnv for e in venv.envs)
    assert venv.envs[0].unwrapped is not venv.envs[1].unwrapped
    assert venv.env_method("pruning_target")[0].budget == 0.4
    obs = venv.reset()
    first, _ = StaticPruningEnv(budget=0.4, num_val=16).reset(seed=0)
    np.testing.assert_array_equal(obs, np.stack([first, first]))


def test_make_batched_passes_settings() -> None:
    venv = envs.make_batched(envs.RUNTIME_ENV_ID, 2, settings=SETTINGS)
    assert venv.get_attr("budget") == [0.3, 0.3]


def test_make_batched_refuses_unknown_ids_and_sizes() -> None:
    with pytest.raises(ValueError, match="prunegym/RuntimePruning-v0.*prunegym/StaticPruning-v0"):
        envs.make_batched("CartPole-v1", 2)
    with pytest.raises(ValueError, match="num_envs"):
        envs.make_batched(envs.RUNTIME_ENV_ID, 0)


def test_gymnasium_make_vec_is_unchanged() -> None:
    venv = gym.make_vec(envs.RUNTIME_ENV_ID, num_envs=2, vectorization_mode="sync")
    assert isinstance(venv, gym.vector.SyncVectorEnv)
    assert gym.registry[envs.RUNTIME_ENV_ID].vector_entry_point is None
    venv.close()
