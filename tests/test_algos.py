"""Algorithm registry, action-space checks and model building on the PruneGym envs."""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.utils import LinearSchedule

import agents.algos as algos
import envs  # noqa: F401 - registers the prunegym/ ids
from agents.algos import (
    ALGOS,
    AlgoSpec,
    check_algo_env,
    get_algo,
    list_algos,
    make_model,
    register_algo,
    resolve_policy_kwargs,
    to_schedule,
)
from agents.hyperparams import load_hyperparams
from envs.runtime import RuntimePruningEnv, RuntimePruningVecEnv

NUM_VAL = 16


@pytest.fixture
def restore_registry(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(algos, "ALGOS", algos.ALGOS.copy())
    return algos.ALGOS


def _static_env() -> gym.Env:
    return gym.make("prunegym/StaticPruning-v0", model="tiny_cnn", num_val=NUM_VAL, batch_size=NUM_VAL)


# -----------------------------------------------------------------------------------------------------------
# registry
# -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ppo", "a2c", "sac", "td3", "ddpg", "recurrent_ppo", "tqc", "trpo", "ars"])
def test_builtin_algorithms_resolve(name: str) -> None:
    spec = get_algo(name)
    assert spec.name == name and name in list_algos()
    for method in ("learn", "predict", "save", "load"):
        assert callable(getattr(spec.cls, method))
    assert spec.default_policy == ("MlpLstmPolicy" if name == "recurrent_ppo" else spec.default_policy)
    assert spec.recurrent is (name == "recurrent_ppo")


def test_action_space_declarations() -> None:
    box, disc = spaces.Box(-1, 1, (1,)), spaces.Discrete(3)
    for name in ("sac", "td3", "ddpg", "tqc"):
        assert get_algo(name).supports(box) and not get_algo(name).supports(disc)
    for name in ("ppo", "a2c", "recurrent_ppo", "trpo", "ars"):
        assert get_algo(name).supports(box) and get_algo(name).supports(disc)
    assert get_algo("dqn").supports(disc) and not get_algo("dqn").supports(box)


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(ValueError, match=r"unknown algorithm 'ppoo'\. Did you mean ppo.*\? Registered: a2c"):
        get_algo("ppoo")


def test_import_path_algorithm() -> None:
    spec = get_algo("stable_baselines3.ppo:PPO")
    assert spec.cls is PPO
    # the registry's knowledge of PPO (spaces, policy) carries over to its import path
    assert spec.action_spaces == ALGOS.get("ppo").action_spaces
    model, n = make_model(
        "stable_baselines3.ppo:PPO", gym.make("CartPole-v1"), {"n_steps": 16, "batch_size": 16}, seed=0
    )
    assert isinstance(model, PPO) and n is None


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("stable_baselines3:", "not an import path"),
        ("no_such_package_xyz:Algo", "cannot import module 'no_such_package_xyz'"),
        ("stable_baselines3:NoSuchAlgo", "has no attribute 'NoSuchAlgo'"),
    ],
)
def test_bad_import_paths(path: str, match: str) -> None:
    with pytest.raises((ImportError, ValueError, KeyError), match=match):
        get_algo(path)


class NoLearn:
    """Has everything of the SB3 API but ``learn``."""

    def __init__(self, policy: str, env: Any) -> None: ...

    def predict(self, obs: Any) -> Any: ...

    def save(self, path: str) -> None: ...

    @classmethod
    def load(cls, path: str) -> NoLearn: ...


class NoEnv:
    def __init__(self, policy: str) -> None: ...

    def learn(self) -> None: ...

    def predict(self) -> None: ...

    def save(self) -> None: ...

    @classmethod
    def load(cls) -> None: ...


def test_class_missing_learn_is_refused(restore_registry: Any) -> None:
    with pytest.raises(
        TypeError, match=r"does not follow the stable-baselines3 algorithm API: it lacks method\(s\) learn;"
    ):
        get_algo(f"{__name__}:NoLearn")
    with pytest.raises(TypeError, match=r"lacks method\(s\) learn"):
        register_algo("nolearn", NoLearn)
    with pytest.raises(TypeError, match=r"constructor argument\(s\) env"):
        register_algo("noenv", NoEnv)
    assert "nolearn" not in ALGOS and "noenv" not in ALGOS
    with pytest.raises(TypeError, match="lacks"):
        get_algo(AlgoSpec("lazy", f"{__name__}:NoLearn"))  # a path is checked on first use


def test_register_custom_and_duplicates(restore_registry: Any) -> None:
    spec = register_algo("my_ppo", "stable_baselines3:PPO", action_spaces=(spaces.Box,))
    assert get_algo("my_ppo") is spec and spec.cls is PPO
    with pytest.raises(ValueError, match="already registered"):
        register_algo("my_ppo", PPO)
    register_algo("my_ppo", PPO, overwrite=True)
    assert restore_registry.get("my_ppo").target is PPO and restore_registry.get("my_ppo").action_spaces is None
    with pytest.raises(ValueError, match="plain non-empty name"):
        register_algo("a:b", PPO)


def test_unsupported_pair_names_algo_space_and_alternatives() -> None:
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError) as err:
        check_algo_env("sac", env)
    msg = str(err.value)
    assert "'sac'" in msg and "Discrete" in msg and "needs Box" in msg
    works = msg.split("would work: ")[1]
    assert {"ppo", "a2c", "dqn", "recurrent_ppo"} <= set(works.split(", "))
    assert "td3" not in works and "sac" not in works
    with pytest.raises(ValueError, match="'sac' does not support"):
        make_model("sac", env, {}, seed=0)
    assert check_algo_env("sac", _static_env()).name == "sac"


# -----------------------------------------------------------------------------------------------------------
# value conversion
# -----------------------------------------------------------------------------------------------------------


def test_linear_schedule_values() -> None:
    sched = to_schedule("lin_1e-3")
    assert isinstance(sched, LinearSchedule)
    assert sched(1.0) == pytest.approx(1e-3) and sched(0.0) == pytest.approx(0.0)
    assert sched(0.5) == pytest.approx(5e-4)
    assert to_schedule(3e-4) == 3e-4 and to_schedule("3e-4") == 3e-4
    with pytest.raises(ValueError, match="lin_3e-4"):
        to_schedule("cosine_1e-3")


def test_policy_kwargs_conversion() -> None:
    out = resolve_policy_kwargs(
        {"net_arch": [8], "activation_fn": "relu", "optimizer_class": "adamw", "lstm_hidden_size": 16}
    )
    assert out == {
        "net_arch": [8],
        "activation_fn": torch.nn.ReLU,
        "optimizer_class": torch.optim.AdamW,
        "lstm_hidden_size": 16,
    }
    assert resolve_policy_kwargs({"activation_fn": "torch.nn:Tanh"})["activation_fn"] is torch.nn.Tanh
    assert resolve_policy_kwargs(None) == {}
    with pytest.raises(ValueError, match="unknown activation_fn 'swishy'"):
        resolve_policy_kwargs({"activation_fn": "swishy"})
    with pytest.raises(TypeError, match="never evaluated"):
        resolve_policy_kwargs("dict(net_arch=[64])")  # type: ignore[arg-type]


def test_make_model_converts_and_does_not_mutate() -> None:
    hp = {
        "n_timesteps": "1e4",
        "n_envs": 4,
        "learning_rate": "lin_1e-3",
        "clip_range": "lin_0.2",
        "n_steps": 16,
        "batch_size": 16,
        "policy_kwargs": {"net_arch": [8, 8], "activation_fn": "tanh"},
    }
    before = copy.deepcopy(hp)
    model, n = make_model("ppo", gym.make("CartPole-v1"), hp, seed=3)
    assert hp == before
    assert n == 10_000 and isinstance(n, int)
    assert model.learning_rate(1.0) == pytest.approx(1e-3) and model.clip_range(0.0) == pytest.approx(0.0)
    assert model.policy.activation_fn is torch.nn.Tanh and model.seed == 3
    assert [m.out_features for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)] == [8, 8]


def test_make_model_rejects_unknown_hyperparameter() -> None:
    with pytest.raises(TypeError, match=r"no hyperparameter\(s\) n_step \(did you mean n_steps\?\)"):
        make_model("ppo", gym.make("CartPole-v1"), {"n_step": 16}, seed=0)


def test_action_noise_keys() -> None:
    model, _ = make_model(
        "td3", _static_env(), {"noise_type": "normal", "noise_std": 0.3, "learning_starts": 8}, seed=0
    )
    assert isinstance(model.action_noise, NormalActionNoise)
    assert np.allclose(model.action_noise._sigma, 0.3)
    with pytest.raises(ValueError, match="unknown noise_type"):
        make_model("td3", _static_env(), {"noise_type": "pink"}, seed=0)


# -----------------------------------------------------------------------------------------------------------
# short learning runs on the PruneGym envs, with the shipped default hyperparameters
# -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac", "recurrent_ppo"])
def test_learn_on_static_env(algo: str) -> None:
    env = _static_env()
    hp = load_hyperparams(algo, "prunegym/StaticPruning-v0")
    model, n = make_model(algo, env, hp, seed=0)
    assert n is not None and n > 0
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))
    obs, _ = env.reset(seed=0)
    action, state = model.predict(obs, deterministic=True)
    assert env.action_space.contains(action.astype(np.float32))
    assert (state is not None) is get_algo(algo).recurrent


def test_learn_on_runtime_vec_env() -> None:
    venv = RuntimePruningVecEnv(num_envs=4, model="tiny_cnn")
    hp = load_hyperparams("ppo", "prunegym/RuntimePruning-v0", overrides=["n_steps=16", "batch_size=32"])
    assert hp["n_envs"] == 64  # left to the env builder; make_model ignores it
    model, _ = make_model("ppo", venv, hp, seed=0)
    model.learn(total_timesteps=128)
    assert model.num_timesteps >= 128 and model.n_envs == 4


def test_recurrent_paper_preset_builds_on_runtime_env() -> None:
    env = RuntimePruningEnv(model="tiny_cnn")
    hp = load_hyperparams(
        "recurrent_ppo", "prunegym/RuntimePruning-v0", preset="paper", overrides=["n_steps=16", "batch_size=16"]
    )
    model, _ = make_model("recurrent_ppo", env, hp, seed=0)
    assert model.policy.lstm_actor.hidden_size == 128 and model.policy.shared_lstm
    assert model.gamma == 0.999 and model.n_epochs == 1 and model.learning_rate == 1e-6
    assert float(model.policy.log_std.detach()[0]) == -4.0
    model.learn(total_timesteps=32)


def test_module_doctest() -> None:
    import doctest

    import agents.algos

    result = doctest.testmod(agents.algos)
    assert result.attempted > 0 and result.failed == 0


#: Small settings that make every algorithm update within a few dozen steps (replay starts, rollouts).
_FEW_STEPS: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 16, "batch_size": 16},
    "a2c": {"n_steps": 8},
    "trpo": {"n_steps": 16, "batch_size": 16},
    "recurrent_ppo": {"n_steps": 16, "batch_size": 16},
    "ars": {"n_delta": 2},
    **{
        name: {"learning_starts": 8, "batch_size": 8, "buffer_size": 512}
        for name in ("sac", "td3", "ddpg", "tqc", "crossq")
    },
}


@pytest.mark.parametrize("env_kind", ["static", "runtime"])
@pytest.mark.parametrize("algo", [n for n in list_algos() if get_algo(n).supports(spaces.Box(-1, 1, (1,)))])
def test_every_box_algorithm_learns_on_both_envs(algo: str, env_kind: str) -> None:
    env = _static_env() if env_kind == "static" else RuntimePruningVecEnv(num_envs=2, model="tiny_cnn", num_images=8)
    model, _ = make_model(algo, env, _FEW_STEPS[algo], seed=0)
    params = getattr(model, "policy", None)
    before = [p.detach().clone() for p in params.parameters()] if params is not None else None
    model.learn(total_timesteps=64)
    assert model.num_timesteps >= 64
    if before is not None:
        assert any(not torch.equal(a, b) for a, b in zip(before, params.parameters(), strict=True)), "no update"
    obs = env.reset()[0] if env_kind == "static" else env.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert np.isfinite(action).all()
