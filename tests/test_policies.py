"""Budget-residual policies: the prior mean, its use on every path, building from YAML, saving and errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from agents.algos import make_model
from agents.hyperparams import load_hyperparams
from agents.policies import (
    POLICIES,
    BudgetResidualLstmPolicy,
    BudgetResidualPolicy,
    budget_prior_action,
    complete_policy_kwargs,
    get_policy,
    uniform_macs_curve,
)
from envs import RUNTIME_ENV_ID, STATIC_ENV_ID  # importing envs registers the prunegym/ ids
from envs.runtime import RuntimePruningEnv, RuntimePruningVecEnv
from pruning.plan import keep_count

STATIC_KW: dict[str, Any] = {"model": "tiny_cnn", "num_val": 16, "batch_size": 16}
SMALL_FF = {"net_arch": [16], "activation_fn": "tanh"}
SMALL_LSTM = {"lstm_hidden_size": 16, "net_arch": [], "shared_lstm": True, "enable_critic_lstm": False}


def _env(kind: str) -> Any:
    if kind == "runtime":
        return RuntimePruningEnv(model="tiny_cnn", budget=0.5)
    if kind == "runtime_vec":
        return VecMonitor(RuntimePruningVecEnv(num_envs=4, model="tiny_cnn", budget=0.4))
    if kind == "static":
        return gym.make(STATIC_ENV_ID, budget=0.5, **STATIC_KW)
    assert kind == "static_split"
    return gym.make(STATIC_ENV_ID, budget=0.6, learn_split=True, runtime=0.8, **STATIC_KW)


def _inner(env: Any) -> Any:
    return env.unwrapped


def _obs_batch(env: Any) -> np.ndarray:
    """A few observations of ``env`` (several units and, for the vec env, several images)."""
    if hasattr(env, "num_envs"):
        obs = env.reset()
        return np.concatenate([obs, env.step(np.zeros((env.num_envs, 1), np.float32))[0]])
    obs, _ = env.reset(seed=0)
    nxt = env.step(np.zeros(env.action_space.shape, np.float32))[0]
    return np.stack([obs, nxt])


def _a0(budget: np.ndarray, min_keep: float, curve: tuple[float, float, float]) -> np.ndarray:
    """The prior action, by the textbook quadratic formula in float64 (independent of the policy's code)."""
    c0, c1, c2 = curve
    b = np.asarray(budget, dtype=np.float64)
    r = (b - c0) / c1 if c2 == 0 else (-c1 + np.sqrt(c1 * c1 + 4 * c2 * (b - c0))) / (2 * c2)
    r = np.clip(r, min_keep, 1.0)
    return 2 * (r - min_keep) / (1 - min_keep) - 1


def _build(algo: str, env: Any, policy: str, policy_kwargs: dict[str, Any], **hp: Any) -> Any:
    model, _ = make_model(algo, env, {"policy": policy, "policy_kwargs": policy_kwargs, **hp}, seed=0)
    return model


# -----------------------------------------------------------------------------------------------------------
# the prior
# -----------------------------------------------------------------------------------------------------------


def test_prior_action_formula_and_clipping() -> None:
    b = torch.tensor([0.0, 0.01, 0.25, 0.5, 0.81, 1.0, 1.5], dtype=torch.float64)
    for curve in [(0.0, 0.0, 1.0), (0.011, 0.989, 0.0), (0.0002, 0.3683, 0.6315), (0.1, 0.45, 0.45)]:
        for min_keep in (0.1, 0.2):
            got = budget_prior_action(b, min_keep, curve).numpy()
            np.testing.assert_allclose(got, _a0(np.maximum(b.numpy(), curve[0]), min_keep, curve), atol=1e-12)
    # the default curve is Chen et al.'s r0 = sqrt(B): B = 0.25 -> r0 = 0.5 -> a0 = 2 (0.5 - 0.1) / 0.9 - 1
    assert float(budget_prior_action(torch.tensor(0.25, dtype=torch.float64), 0.1)) == pytest.approx(-1 / 9)
    ends = budget_prior_action(torch.tensor([0.0, 1e-4, 1.0, 2.0]), 0.1)
    assert ends.tolist() == [-1.0, -1.0, 1.0, 1.0]  # clipped to [min_keep, 1]
    assert budget_prior_action(torch.tensor([0.3]), 1.0).tolist() == [1.0]
    for bad in [(0.0, -0.1, 1.0), (0.0, 0.0, 0.0), (0.0, 1.0), (0.0, 1.0, math.nan)]:
        with pytest.raises(ValueError, match="macs_curve"):
            budget_prior_action(b, 0.1, bad)
    with pytest.raises(ValueError, match="min_keep"):
        budget_prior_action(b, 0.0)


@pytest.mark.parametrize("kind", ["runtime", "static"])
def test_fitted_curve_is_the_env_cost(kind: str) -> None:
    inner = _inner(_env(kind))
    cm = inner.cost_model
    c0, c1, c2 = uniform_macs_curve(cm)
    assert c0 + c1 + c2 == pytest.approx(1.0) and c1 > 0 and c2 > 0  # tiny_cnn: plain net, both terms
    for r in (0.25, 0.5, 0.75):  # tiny_cnn's widths (8, 16, 16) make r*C whole numbers: exact costs
        counts = cm.channels * r
        assert torch.equal(counts, counts.round())
        cost = cm.from_counts(counts.long()[None], cm.channels)
        assert float(cost.macs[0]) / cm.base_macs == pytest.approx(c0 + c1 * r + c2 * r * r, rel=1e-12)
    # the prior keep ratio, with counts rounded up as the env does, lands on the budget from above
    r0 = inner.min_keep + (
        float(budget_prior_action(torch.tensor(inner.budget), inner.min_keep, (c0, c1, c2))) + 1
    ) / 2 * (1 - inner.min_keep)
    counts = torch.tensor([keep_count(r0, int(c)) for c in cm.channels])
    frac = float(cm.from_counts(counts[None], cm.channels).macs[0]) / cm.base_macs
    assert inner.budget <= frac < inner.budget + 0.1


# -----------------------------------------------------------------------------------------------------------
# a fresh policy acts at the prior
# -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "policy", "kind"),
    [
        ("ppo", "BudgetResidualPolicy", "runtime"),
        ("ppo", "BudgetResidualPolicy", "runtime_vec"),
        ("ppo", "BudgetResidualPolicy", "static_split"),
        ("recurrent_ppo", "BudgetResidualLstmPolicy", "runtime_vec"),
        ("recurrent_ppo", "BudgetResidualLstmPolicy", "static"),
    ],
)
def test_fresh_policy_acts_at_the_prior(algo: str, policy: str, kind: str) -> None:
    env = _env(kind)
    inner = _inner(env)
    small = SMALL_FF if policy == "BudgetResidualPolicy" else SMALL_LSTM
    obs = _obs_batch(env)
    curve = uniform_macs_curve(inner.cost_model)
    a0 = _a0(obs[:, inner.budget_index], inner.min_keep, curve)
    assert np.all(np.abs(a0) < 0.9)  # the prior is inside the box, so clipping does not hide the head

    # head switched off: the mean *is* the prior, on action dim 0; other dims (R_r) get 0
    model = _build(algo, env, policy, {**small, "mean_init_scale": 0.0})
    act, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(act[:, 0], a0, atol=1e-6)
    if act.shape[1] == 2:
        np.testing.assert_allclose(act[:, 1], 0.0, atol=1e-7)
    # ... and moving the budget in the observation moves the mean by exactly the change of a0
    moved = obs.copy()
    moved[:, inner.budget_index] = [0.3, 0.7, 0.45, 0.9, 0.2, 0.6, 0.35, 0.8][: len(obs)]
    act_moved, _ = model.predict(moved, deterministic=True)
    delta = _a0(moved[:, inner.budget_index], inner.min_keep, curve) - a0
    np.testing.assert_allclose(act_moved[:, 0] - act[:, 0], delta, atol=1e-6)

    # default head: weights x0.2 of PyTorch's default init, bias 0, so it only nudges the prior
    model = _build(algo, env, policy, small)
    head = model.policy.action_net
    fan_in = head.weight.shape[1]
    assert torch.all(head.bias == 0)
    assert 0.1 / math.sqrt(fan_in) < float(head.weight.detach().abs().max()) <= 0.2 / math.sqrt(fan_in)
    act, _ = model.predict(obs, deterministic=True)
    # |head(h)| <= ||W||_1 · max|h| and |h| < 1 (tanh MLP / LSTM output)
    bound = float(head.weight.detach().abs().sum(1).max())
    assert bound < 0.5
    assert np.all(np.abs(act[:, 0] - a0) <= bound + 1e-6)
    assert np.any(np.abs(act[:, 0] - a0) > 1e-4)  # the head does contribute
    # initial σ = exp(-4) on every action dimension
    np.testing.assert_allclose(model.policy.log_std.detach().numpy(), -4.0)


# -----------------------------------------------------------------------------------------------------------
# every path uses the same distribution
# -----------------------------------------------------------------------------------------------------------


def test_feedforward_paths_share_the_distribution() -> None:
    env = _env("static_split")
    inner = _inner(env)
    model = _build("ppo", env, "BudgetResidualPolicy", {**SMALL_FF, "mean_init_scale": 0.0})
    policy = model.policy
    obs = torch.as_tensor(_obs_batch(env))
    with torch.no_grad():
        actions, _, logp_forward = policy(obs)
        _, logp_eval, entropy = policy.evaluate_actions(obs, actions)
        dist = policy.get_distribution(obs)
    torch.testing.assert_close(logp_eval, logp_forward)
    torch.testing.assert_close(dist.log_prob(actions), logp_eval)
    # the mean of all three is the prior (head off): log-probs from the hand formula agree
    a0 = _a0(obs[:, inner.budget_index].numpy(), inner.min_keep, uniform_macs_curve(inner.cost_model))
    mean = np.stack([a0, np.zeros_like(a0)], 1)
    sigma = math.exp(-4.0)
    by_hand = (-0.5 * ((actions.numpy() - mean) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(1)
    np.testing.assert_allclose(logp_eval.numpy(), by_hand, rtol=1e-5, atol=1e-4)
    assert entropy is not None and torch.allclose(entropy, dist.entropy())
    with pytest.raises(RuntimeError, match="only inside forward, evaluate_actions or get_distribution"):
        policy._get_action_dist_from_latent(torch.zeros(2, 16))


def test_recurrent_paths_share_the_distribution() -> None:
    env = _env("runtime_vec")
    model = _build("recurrent_ppo", env, "BudgetResidualLstmPolicy", SMALL_LSTM)
    policy = model.policy
    obs = torch.as_tensor(env.reset())
    n = obs.shape[0]
    zeros = torch.zeros(policy.lstm_hidden_state_shape[0], n, policy.lstm_hidden_state_shape[2])
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    states = RNNStates((zeros, zeros), (zeros, zeros))
    starts = torch.ones(n)
    with torch.no_grad():
        actions, _, logp_forward, _ = policy(obs, states, starts)
        _, logp_eval, _ = policy.evaluate_actions(obs, actions, states, starts)
        dist, _ = policy.get_distribution(obs, states.pi, starts)
        np_actions, _ = policy.predict(obs.numpy(), None, np.ones(n, bool), deterministic=True)
    torch.testing.assert_close(logp_eval, logp_forward)
    torch.testing.assert_close(dist.log_prob(actions), logp_eval)
    np.testing.assert_allclose(np_actions, dist.distribution.mean.numpy(), atol=1e-6)


# -----------------------------------------------------------------------------------------------------------
# built from YAML, trained, saved and loaded
# -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "env_id", "preset", "overrides"),
    [
        ("ppo", RUNTIME_ENV_ID, None, ["policy=BudgetResidualPolicy", "n_steps=24", "batch_size=48", "n_epochs=2"]),
        ("ppo", STATIC_ENV_ID, None, ["policy=BudgetResidualPolicy", "n_steps=48", "batch_size=48", "n_epochs=2"]),
        ("recurrent_ppo", RUNTIME_ENV_ID, "paper", ["n_steps=24", "batch_size=48", "learning_rate=3e-4"]),
        ("recurrent_ppo", STATIC_ENV_ID, "paper", ["n_steps=48", "batch_size=48", "learning_rate=3e-4"]),
    ],
)
def test_learns_from_yaml_and_saves(
    algo: str, env_id: str, preset: str | None, overrides: list[str], tmp_path: Path
) -> None:
    hp = load_hyperparams(algo, env_id, preset=preset, overrides=overrides)
    assert "budget_index" not in hp.get("policy_kwargs", {})  # YAML users do not write them
    env = VecMonitor(RuntimePruningVecEnv(num_envs=4, model="tiny_cnn")) if env_id == RUNTIME_ENV_ID else _env("static")
    inner = _inner(env)
    model, _ = make_model(algo, env, hp, seed=0)
    policy_cls = BudgetResidualPolicy if algo == "ppo" else BudgetResidualLstmPolicy
    assert type(model.policy) is policy_cls
    assert model.policy.budget_index == inner.budget_index and model.policy.min_keep == inner.min_keep
    assert model.policy.macs_curve == pytest.approx(uniform_macs_curve(inner.cost_model))
    before = model.policy.action_net.weight.detach().clone()
    model.learn(total_timesteps=192)
    assert model.num_timesteps >= 192
    assert not torch.equal(before, model.policy.action_net.weight)  # the head was trained through the prior

    obs = _obs_batch(env)
    act, state = model.predict(obs, deterministic=True)
    model.save(tmp_path / "agent.zip")
    loaded = type(model).load(tmp_path / "agent.zip", device="cpu")
    assert type(loaded.policy) is policy_cls and loaded.policy.macs_curve == model.policy.macs_curve
    act_loaded, state_loaded = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(act_loaded, act)
    if state is not None:
        np.testing.assert_array_equal(state_loaded[0], state[0])
    # policy.save / load alone (its constructor parameters carry the prior's settings)
    model.policy.save(str(tmp_path / "policy.pt"))
    alone = policy_cls.load(str(tmp_path / "policy.pt"), device="cpu")
    np.testing.assert_array_equal(alone.predict(obs, deterministic=True)[0], act)


# -----------------------------------------------------------------------------------------------------------
# kwargs, registry and errors
# -----------------------------------------------------------------------------------------------------------


def test_complete_policy_kwargs_reads_wrapped_envs() -> None:
    vec = VecMonitor(RuntimePruningVecEnv(num_envs=2, model="tiny_cnn", min_keep=0.25))
    kw = complete_policy_kwargs("BudgetResidualLstmPolicy", {"lstm_hidden_size": 8}, vec)
    assert kw["budget_index"] == vec.unwrapped.budget_index and kw["min_keep"] == 0.25
    assert kw["lstm_hidden_size"] == 8 and all(isinstance(c, float) for c in kw["macs_curve"])
    dummy = DummyVecEnv([lambda: gym.make(STATIC_ENV_ID, **STATIC_KW)])
    given = {"budget_index": 10, "min_keep": 0.3, "macs_curve": [0.0, 1.0, 0.0]}
    assert complete_policy_kwargs(BudgetResidualPolicy, given, dummy) == given  # given values win
    assert complete_policy_kwargs(BudgetResidualPolicy, None, dummy)["min_keep"] == 0.2
    assert complete_policy_kwargs("MlpPolicy", None, gym.make("Pendulum-v1")) == {}  # other policies pass through
    assert get_policy("BudgetResidualPolicy") is BudgetResidualPolicy and len(POLICIES) == 2
    with pytest.raises(ValueError, match="Did you mean BudgetResidualPolicy"):
        get_policy("BudgetResidualPolicyy")


def test_errors_name_cause_and_fix() -> None:
    with pytest.raises(ValueError, match=r"Pendulum.* has no budget_index.*PruneGym env.*MlpPolicy"):
        make_model("ppo", gym.make("Pendulum-v1"), {"policy": "BudgetResidualPolicy"}, seed=0)
    with pytest.raises(ValueError, match="needs budget_index and min_keep.*make_model"):
        PPO(BudgetResidualPolicy, _env("runtime"))
    with pytest.raises(ValueError, match="outside the observation"):
        PPO(BudgetResidualPolicy, _env("runtime"), policy_kwargs={"budget_index": 10_000, "min_keep": 0.1})
    with pytest.raises(ValueError, match="gSDE"):
        PPO(BudgetResidualPolicy, _env("runtime"), use_sde=True, policy_kwargs={"budget_index": 0, "min_keep": 0.1})
    with pytest.raises(ValueError, match="Box action space"):
        PPO(BudgetResidualPolicy, gym.make("CartPole-v1"), policy_kwargs={"budget_index": 0, "min_keep": 0.1})
    # SB3's own aliases still resolve through make_model
    model = _build("recurrent_ppo", _env("runtime"), "MlpLstmPolicy", {"lstm_hidden_size": 8}, n_steps=8)
    assert type(model).__name__ == "RecurrentPPO" and not isinstance(model.policy, BudgetResidualLstmPolicy)
    assert isinstance(model, RecurrentPPO)


def test_module_doctest() -> None:
    import doctest

    import agents.policies

    result = doctest.testmod(agents.policies)
    assert result.attempted > 0 and result.failed == 0
