"""One contract for every registered id: registration, same seed → same rollout, what ``info`` reports at the end."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence

import envs
from envs.rewards import EPISODE_INFO_KEYS, list_rewards

ENV_IDS = sorted(envs.ENV_IDS)
#: Keywords that keep an id's episodes fast (an id not listed runs with its defaults).
FAST: dict[str, dict[str, Any]] = {envs.STATIC_ENV_ID: {"num_val": 32}}
BUILT_IN_REWARDS = ["paper", "accuracy", "acc_log_macs"]


def _make(env_id: str, **kwargs: Any) -> gym.Env:
    return gym.make(env_id, **{**FAST.get(env_id, {}), **kwargs})


def _rollout(env: gym.Env, seed: int, episodes: int) -> list[Any]:
    """``episodes`` episodes from ``reset(seed=seed)`` with actions drawn from the action space seeded alike."""
    env.action_space.seed(seed)
    out: list[Any] = [env.reset(seed=seed)]
    for episode in range(episodes):
        terminated = truncated = False
        while not (terminated or truncated):
            step = env.step(env.action_space.sample())
            terminated, truncated = step[2], step[3]
            out.append(step)
        if episode < episodes - 1:
            out.append(env.reset())  # unseeded: the loss scale and the generator carry over
    return out


def _episode_end(env: gym.Env, seed: int = 0) -> tuple[float, dict[str, Any]]:
    out = _rollout(env, seed, 1)
    _, reward, terminated, _, info = out[-1]
    assert terminated
    return float(reward), info


def test_every_id_is_registered_and_every_prunegym_id_is_listed() -> None:
    registered = {env_id for env_id in gym.registry if env_id.startswith("prunegym/")}
    assert registered == set(envs.ENV_IDS)
    for env_id, entry_point in envs.ENV_IDS.items():
        assert gym.registry[env_id].entry_point == entry_point


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_gives_the_same_rollout(env_id: str) -> None:
    first, second = _rollout(_make(env_id), 7, 2), _rollout(_make(env_id), 7, 2)
    assert data_equivalence(first, second, exact=True)
    assert any(step[1] != 0 for step in first if len(step) == 5)  # the rollouts were paid a reward


@pytest.mark.parametrize("reward", BUILT_IN_REWARDS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_episode_end_reports_the_shared_keys_and_reward_parts(env_id: str, reward: str) -> None:
    env = _make(env_id, reward=reward)
    value, info = _episode_end(env)
    assert set(EPISODE_INFO_KEYS) <= set(info)
    parts = info["reward_parts"]
    assert parts and all(type(v) is float and math.isfinite(v) for v in parts.values())
    assert value == pytest.approx(sum(parts.values()), rel=1e-6)  # the parts of a built-in reward sum to it
    cost_model = env.unwrapped.cost_model  # type: ignore[attr-defined]
    assert info["macs_fraction"] == pytest.approx(info["macs"] / cost_model.base_macs, rel=1e-12)
    assert type(info["params"]) is int
    assert info["params_fraction"] == pytest.approx(info["params"] / cost_model.base_params, rel=1e-12)
    assert 0.0 <= info["top1"] <= 100.0 and info["loss"] >= 0.0 and info["loss_scale"] > 0
    assert type(info["loss_capped"]) is bool and not info["loss_capped"]
    if reward == "paper":
        assert info["reward_parts"]["accuracy"] == pytest.approx(-info["loss"] / info["loss_scale"], rel=1e-12)


def test_the_builtin_rewards_are_the_ones_tested() -> None:
    assert set(BUILT_IN_REWARDS) <= set(list_rewards())


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_only_the_last_step_pays_and_reports_the_parts(env_id: str) -> None:
    steps = _rollout(_make(env_id), 1, 1)[1:]
    assert all(reward == 0.0 and "reward_parts" not in info for _, reward, _, _, info in steps[:-1])
    assert "reward_parts" in steps[-1][4]


def test_runtime_deprecated_aliases_repeat_the_paper_parts() -> None:
    _, info = _episode_end(_make(envs.RUNTIME_ENV_ID))
    assert info["reward_accuracy"] == info["reward_parts"]["accuracy"]
    assert info["reward_budget"] == info["reward_parts"]["budget_macs"]


def test_static_reward_values_are_floats_and_runtime_vec_rewards_float32() -> None:
    value, _ = _episode_end(_make(envs.STATIC_ENV_ID))
    assert type(value) is float
    venv = envs.RuntimePruningVecEnv(num_envs=2)
    venv.reset()
    for _ in range(venv.num_units):
        _, rewards, _, _ = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert rewards.dtype == np.float32 and rewards.shape == (2,)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_the_training_log_reads_the_contract_of_every_env(env_id: str) -> None:
    from agents.schedule import _PruningStats

    _, info = _episode_end(_make(env_id))
    stats = _PruningStats(None)
    stats.locals = {"dones": np.array([False, True]), "infos": [{"unit": 0, "macs_fraction": 0.9}, info]}
    assert stats._on_step()
    expected = {f"reward/{k}": [v] for k, v in info["reward_parts"].items()}
    expected |= {"pruning/macs_fraction": [info["macs_fraction"]], "pruning/params_fraction": [info["params_fraction"]]}
    assert stats.values == {**expected, "pruning/val_top1": [info["top1"]]}


MANUAL_SECTIONS = (
    "## Description",
    "## Action Space",
    "## Observation Space",
    "## Rewards",
    "## Starting State",
    "## Episode End",
    "## Arguments",
    "## Version History",
)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_manual_has_gymnasiums_sections_and_fits_a_manual(env_id: str) -> None:
    """The class docstring is the manual: Gymnasium's sections and a doctest in 100 lines (the rest: docs/envs.md)."""
    doc = type(gym.make(env_id, **FAST.get(env_id, {})).unwrapped).__doc__ or ""
    positions = [doc.find(section) for section in MANUAL_SECTIONS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), positions
    assert ">>> " in doc and "docs/envs.md" in doc and "EnvSettings" in doc
    assert len(doc.strip().splitlines()) <= 100
