"""RuntimePruningEnv / RuntimePruningVecEnv: API checkers, determinism, batch = singles, exact rewards and costs."""

from __future__ import annotations

import copy
import doctest
import functools
import math
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from _nets import randomize_, randomize_gates_
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.utils.env_checker import data_equivalence
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import VecMonitor
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import envs.runtime
from envs.rewards import EpisodeResult, RunningLossScale, paper_reward
from envs.runtime import RuntimePruningEnv, RuntimePruningVecEnv
from pruning.accounting import CostModel, model_cost, sparsity_to_mac_fraction
from pruning.export import DynamicModel, export_static
from pruning.gating import applied_masks, gate_model, set_plan, stored_masks
from pruning.models import get_model
from pruning.plan import PruningPlan, keep_count


@functools.cache
def _net(name: str) -> nn.Module:
    """A gated model with realistic BN statistics and non-constant predictors (cached; envs deep-copy it)."""
    torch.manual_seed(0)
    return randomize_gates_(gate_model(randomize_(get_model(name))), seed=1).eval()


def _rollout(env: RuntimePruningEnv, seed: int, episodes: int, action_seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(action_seed)
    out: list[Any] = []
    obs, info = env.reset(seed=seed)
    out.append((obs, info))
    for _ in range(episodes):
        terminated = False
        while not terminated:
            obs, reward, terminated, truncated, info = env.step(rng.uniform(-1.3, 1.3, size=1).astype(np.float32))
            assert truncated is False
            out.append((obs, reward, terminated, info))
        obs, info = env.reset()
        out.append((obs, info))
    return out


# ------------------------------------------------------------------------------------------------------------
# API checkers
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
def test_checkers_pass_without_warnings(name: str) -> None:
    env = RuntimePruningEnv(model=_net(name), budget=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


def test_registered_id_passes_the_checker() -> None:
    import envs  # registers the ids

    assert envs.RUNTIME_ENV_ID in gym.registry, f"{envs.RUNTIME_ENV_ID} is not registered by envs/__init__.py"
    env = gym.make(envs.RUNTIME_ENV_ID, budget=0.5)
    assert isinstance(env.unwrapped, RuntimePruningEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)
    obs, _ = env.reset(seed=3)
    assert obs in env.observation_space
    env.close()


def test_module_doctests() -> None:
    result = doctest.testmod(envs.runtime, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


# ------------------------------------------------------------------------------------------------------------
# determinism and the vector env
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["val", "train"])
def test_same_seed_same_rollout(split: str) -> None:
    """Two envs (or one env twice) from the same seed give identical episodes, loss scale included."""
    a = RuntimePruningEnv(model=_net("resnet8"), split=split)
    b = RuntimePruningEnv(model=_net("resnet8"), split=split)
    ra, rb, ra2 = _rollout(a, 7, 3), _rollout(b, 7, 3), _rollout(a, 7, 3)
    assert data_equivalence(ra, rb, exact=True)
    assert data_equivalence(ra, ra2, exact=True)
    # a different seed draws other images
    rc = _rollout(b, 8, 3)
    assert [x[1]["image_index"] for x in ra if len(x) == 2] != [x[1]["image_index"] for x in rc if len(x) == 2]


@pytest.mark.parametrize("fixed_scale", [False, True])
def test_vec_env_equals_single_envs(fixed_scale: bool) -> None:
    """VecEnv(B) seeded s == B single envs seeded s + i: observations, masks, fractions, CE, rewards."""
    b, seed, episodes = 5, 11, 2
    kwargs: dict[str, Any] = {"model": _net("resnet8"), "budget": 0.6, "split": "train"}
    if fixed_scale:
        kwargs["loss_scale"] = 2.0
    venv = RuntimePruningVecEnv(num_envs=b, **kwargs)
    singles = [RuntimePruningEnv(**kwargs) for _ in range(b)]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.2, 1.2, size=(episodes * venv.num_units, b, 1)).astype(np.float32)

    assert venv.seed(seed) == [seed + i for i in range(b)]
    v_obs = venv.reset()
    s_reset = [env.reset(seed=seed + i) for i, env in enumerate(singles)]
    np.testing.assert_allclose(v_obs, np.stack([o for o, _ in s_reset]), rtol=1e-5, atol=1e-6)
    assert venv.reset_infos == [info for _, info in s_reset]

    for act in actions:
        v_obs, v_rew, v_done, v_infos = venv.step(act)
        results = [env.step(act[i]) for i, env in enumerate(singles)]
        for i, (obs, rew, term, _, info) in enumerate(results):
            vi = v_infos[i]
            assert v_done[i] == term
            for key in ("image_index", "unit", "ratio", "requested_ratio", "kept_channels", "macs_fraction"):
                assert vi[key] == info[key], key
            if term:
                for key in ("ce", "reward_budget", "predictor_macs_fraction", "correct", "label"):
                    assert vi[key] == pytest.approx(info[key], rel=1e-5, abs=1e-7), key
                np.testing.assert_allclose(vi["terminal_observation"], obs, rtol=1e-5, atol=1e-6)
                assert obs[-1] == np.float32(info["macs_fraction"])  # committed MACs end at the episode's B
                assert v_rew[i] == pytest.approx(vi["reward_accuracy"] + vi["reward_budget"], rel=1e-6)
                assert vi["reward_accuracy"] == pytest.approx(-vi["ce"] / vi["loss_scale"], rel=1e-12)
                assert vi["loss_scale"] == pytest.approx(info["loss_scale"], rel=1e-5)
                assert v_rew[i] == pytest.approx(rew, rel=1e-5, abs=1e-6)  # own beta per sub-env: same reward
                obs = singles[i].reset()[0]
            else:
                assert v_rew[i] == rew == 0.0
            np.testing.assert_allclose(v_obs[i], obs, rtol=1e-5, atol=1e-6)


def test_vec_env_auto_reset_and_seeding() -> None:
    venv = RuntimePruningVecEnv(num_envs=3, model="tiny_cnn")
    venv.seed(0)
    first = venv.reset()
    firsts = [dict(i) for i in venv.reset_infos]
    for _ in range(venv.num_units):
        obs, rewards, dones, infos = venv.step(np.ones((3, 1), dtype=np.float32))
    assert dones.all() and all("terminal_observation" in i and i["TimeLimit.truncated"] is False for i in infos)
    assert obs[:, -3].tolist() == [0.0] * 3 and obs[:, -1].min() > 0  # a new episode at unit 0
    assert all(i["macs_fraction"] == 1.0 for i in infos)  # ratio 1 everywhere
    # seeding again repeats the first batch; unseeded resets continue the generators
    venv.seed(0)
    np.testing.assert_array_equal(venv.reset(), first)
    assert venv.reset_infos == firsts
    venv.set_options([{"image_index": 5}, {}, {"image_index": 7}])
    venv.reset()
    assert venv.reset_infos[0]["image_index"] == 5 and venv.reset_infos[2]["image_index"] == 7


def test_vec_env_attribute_api() -> None:
    venv = RuntimePruningVecEnv(num_envs=3, model="tiny_cnn", budget=0.4)
    assert venv.get_attr("budget") == [0.4] * 3
    assert venv.get_attr("num_units", indices=[0, 2]) == [3, 3]
    rngs = venv.get_attr("np_random")
    assert len({id(r) for r in rngs}) == 3
    venv.set_attr("budget", 0.3)
    assert venv.budget == 0.3 and venv.reset()[:, -2].tolist() == pytest.approx([0.3] * 3)
    with pytest.raises(ValueError, match="shared by all 3"):
        venv.set_attr("budget", 0.2, indices=[1])
    venv.set_attr("np_random", np.random.default_rng(0), indices=1)
    assert venv.env_method("action_for_ratio", 1.0, indices=[0, 1]) == [np.ones(1, np.float32)] * 2
    with pytest.raises(ValueError, match="whole batch"):
        venv.env_method("reset")
    assert venv.env_is_wrapped(gym.Wrapper) == [False] * 3
    with pytest.raises(AttributeError):
        venv.get_attr("no_such_attribute")
    with pytest.raises(TypeError, match="unknown argument"):
        RuntimePruningVecEnv(num_envs=2, bugdet=0.5)


# ------------------------------------------------------------------------------------------------------------
# rewards and costs
# ------------------------------------------------------------------------------------------------------------


def _run_constant(env: RuntimePruningEnv, ratio: float, image: int) -> tuple[float, dict[str, Any]]:
    env.reset(options={"image_index": image})
    terminated = False
    while not terminated:
        _, reward, terminated, _, info = env.step(env.action_for_ratio(ratio))
    return reward, info


@pytest.mark.parametrize("case", ["under", "over"])
def test_reward_is_the_hand_computation(case: str) -> None:
    net = _net("tiny_cnn")
    budget, ratio = (0.9, 0.3) if case == "under" else (0.2, 0.8)
    env = RuntimePruningEnv(model=net, budget=budget)
    env.reset(seed=0)
    x_all = env.dataset.normalize(env.dataset.images)
    scale = 1.0
    for episode, image in enumerate([3, 17, 40]):
        reward, info = _run_constant(env, ratio, image)
        # by hand: the same plan on a copy of the model, a plain forward, the cost of its applied masks
        cost = model_cost(net, PruningPlan(runtime_keep=ratio), inputs=x_all[image : image + 1])
        frac = float(cost.macs_fraction[0])
        with torch.no_grad():
            ref = _plan_forward(net, ratio, x_all[image : image + 1])
        ce = float(torch.nn.functional.cross_entropy(ref, env.dataset.labels[image : image + 1]))
        # the running mean: cumulative over the warm-up, updated before the reward
        scale = ce if episode == 0 else scale + (ce - scale) / (episode + 1)
        if case == "under":
            assert frac < budget
            bud = 0.1 * (budget - frac)
        else:
            assert frac > budget
            bud = -1.2 * (math.exp((frac - budget) / 0.03) - 1)
        assert info["macs_fraction"] == pytest.approx(frac, abs=1e-15)
        assert info["ce"] == pytest.approx(ce, rel=1e-6)
        assert info["loss_scale"] == pytest.approx(scale)
        assert info["reward_budget"] == pytest.approx(bud, rel=1e-12)
        assert info["reward_parts"] == pytest.approx({"accuracy": -ce / scale, "budget_macs": bud}, rel=1e-6)
        assert reward == pytest.approx(-ce / scale + bud, rel=1e-6)
        assert info["label"] == int(env.dataset.labels[image]) and info["image_index"] == image
        assert info["correct"] == (ref.argmax(1).item() == info["label"])
    assert env.loss_scale.value == pytest.approx(scale)  # type: ignore[union-attr]
    env.reset(seed=0)  # a seeded reset restarts it
    assert isinstance(env.loss_scale, RunningLossScale) and env.loss_scale.count == 0


def test_shared_loss_scale_is_shared_and_kept() -> None:
    shared = RunningLossScale()
    a = RuntimePruningEnv(loss_scale=shared)
    b = RuntimePruningVecEnv(num_envs=2, loss_scale=shared)
    a.reset(seed=0)
    _run_constant(a, 0.5, 0)
    b.seed(0)
    b.reset()
    for _ in range(b.num_units):
        b.step(np.zeros((2, 1), np.float32))
    assert a.loss_scale is shared and b.loss_scale is shared and shared.count == 2


@pytest.mark.parametrize("reward", ["default", "paper", "callable"])
def test_registry_reward_is_the_hand_formula_for_a_batch(reward: str) -> None:
    """A seeded VecEnv episode: each image's reward is -CE/β + Chen et al.'s budget term, computed here by hand."""
    net, budget, ratio = _net("tiny_cnn"), 0.3, 0.5
    kwargs: dict[str, Any] = {} if reward == "default" else {"reward": "paper" if reward == "paper" else paper_reward}
    venv = RuntimePruningVecEnv(num_envs=3, model=net, budget=budget, **kwargs)
    venv.seed(5)
    venv.reset()
    images = [info["image_index"] for info in venv.reset_infos]
    for _ in range(venv.num_units):
        _, rewards, dones, infos = venv.step(np.tile(venv.action_for_ratio(ratio), (3, 1)))
    assert dones.all()
    x_all = venv.dataset.normalize(venv.dataset.images)
    for i, image in enumerate(images):
        x = x_all[image : image + 1]
        frac = float(model_cost(net, PruningPlan(runtime_keep=ratio), inputs=x).macs_fraction[0])
        with torch.no_grad():
            ce = float(
                torch.nn.functional.cross_entropy(_plan_forward(net, ratio, x), venv.dataset.labels[image][None])
            )
        # a first episode: each sub-env's own running β is its image's CE, so the accuracy term is -1
        over = frac > budget
        bud = -1.2 * math.expm1((frac - budget) / 0.03) if over else 0.1 * (budget - frac)
        assert rewards[i] == pytest.approx(np.float32(-1.0 + bud), rel=1e-6)
        assert infos[i]["reward_parts"] == pytest.approx({"accuracy": -1.0, "budget_macs": bud}, rel=1e-6)
        assert infos[i]["loss"] == pytest.approx(ce, rel=1e-6) and infos[i]["macs_fraction"] == pytest.approx(frac)


def test_reward_argument_takes_any_registered_reward_on_the_batch() -> None:
    """``reward="accuracy"`` pays 0.01·top1 per image (1 if correct, else 0); no deprecated aliases then."""
    venv = RuntimePruningVecEnv(num_envs=6, model=_net("resnet8"), reward="accuracy")
    venv.seed(0)
    venv.reset()
    for _ in range(venv.num_units):
        _, rewards, _, infos = venv.step(np.zeros((6, 1), dtype=np.float32))
    assert rewards.tolist() == [1.0 if info["correct"] else 0.0 for info in infos]
    assert all(info["reward_parts"] == {"accuracy": info["top1"] / 100} for info in infos)
    assert not any("reward_accuracy" in info or "reward_budget" in info for info in infos)


def test_reward_function_is_called_once_per_batch_and_checked() -> None:
    calls: list[int] = []

    def by_macs(result: EpisodeResult) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert isinstance(result.macs_fraction, torch.Tensor)
        calls.append(result.macs_fraction.numel())
        return -result.macs_fraction, {"macs": -result.macs_fraction}

    venv = RuntimePruningVecEnv(num_envs=4, reward=by_macs)
    venv.reset()
    for _ in range(venv.num_units):
        _, rewards, _, infos = venv.step(np.array([[-1.0], [0.0], [0.5], [1.0]], dtype=np.float32))
    assert calls == [4]
    assert rewards.tolist() == pytest.approx([-info["macs_fraction"] for info in infos])

    env = RuntimePruningEnv(reward=lambda r: (r.loss * math.inf, {}))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="rewards must be finite"):
        for _ in range(env.num_units):
            env.step(np.zeros(1, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown reward|paper"):
        RuntimePruningEnv(reward="papr")


def _plan_forward(net: nn.Module, ratio: float, x: torch.Tensor) -> torch.Tensor:
    work = copy.deepcopy(net)
    set_plan(work, PruningPlan(runtime_keep=ratio))
    return work(x)


def test_macs_fraction_matches_cost_model_and_flop_counter() -> None:
    env = RuntimePruningEnv(model=_net("resnet8"), budget=0.5)
    env.reset(seed=2)
    rng = np.random.default_rng(4)
    ratios, terminated = [], False
    while not terminated:
        _, _, terminated, _, info = env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
        ratios.append(info["ratio"])
    # 1. CostModel of the masks the model applied in the episode
    cm = CostModel(env.model)
    cost = cm.from_masks(applied_masks(env.model), stored_masks(env.model))
    assert info["macs_fraction"] == float(cost.macs_fraction[0])
    assert info["predictor_macs_fraction"] == float(cost.predictor_macs[0]) / cm.base_macs
    # 2. model_cost of the same per-unit ratios on that image
    image = info["image_index"]
    x = env.dataset.normalize(env.dataset.images[image : image + 1])
    plan = PruningPlan(runtime_keep=torch.tensor(ratios, dtype=torch.float64))
    assert float(model_cost(_net("resnet8"), plan, inputs=x).macs_fraction[0]) == info["macs_fraction"]
    # 3. FlopCounterMode on the deployable model, which computes only the kept channels (+ predictors)
    # (the env's model carries its plan: no static side, R_r = 1)
    dyn = DynamicModel(export_static(env.model), runtime=torch.tensor(ratios, dtype=torch.float64)).eval()
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        dyn(x)
    counted = fc.get_total_flops() // 2
    total = (info["macs_fraction"] + info["predictor_macs_fraction"]) * env.base_macs
    assert counted == round(total)


def test_constant_action_at_budget_ratio_meets_the_cap() -> None:
    """Keeping ratio r everywhere lands within one channel per unit above the cap of real-valued r·C."""
    net = _net("resnet8")
    cm = CostModel(net)
    for r in (0.3, 0.45, 0.62):
        cap = sparsity_to_mac_fraction(net, r)
        env = RuntimePruningEnv(model=net, budget=cap)
        env.reset(seed=0)
        _, info = _run_constant(env, r, 0)
        k = torch.stack([keep_count(r, int(c)) for c in cm.channels])
        lower = float(cm.from_counts(k - 1, cm.channels).macs_fraction[0])
        upper = float(cm.from_counts(k, cm.channels).macs_fraction[0])
        assert lower < cap <= info["macs_fraction"] == pytest.approx(upper, abs=1e-15)
        assert info["reward_budget"] <= 0  # just over: a small penalty
        assert info["reward_budget"] > -1.2 * math.expm1((upper - lower) / 0.03)


def test_static_plan_and_tradeoff() -> None:
    net = _net("resnet8")
    env = RuntimePruningEnv(model=net, static_keep=[0.5] * 3, tradeoff=0.5)
    env.reset(seed=0)
    _, info = _run_constant(env, 1.0, 0)
    # static keep 8 of 16, R_r = 0.5: 4 channels are never stored; the runtime side keeps every stored channel,
    # so of the 4 static-only pruned channels floor(0.5 * 4) = 2 go: 10 of 16 computed
    assert [int(s.sum()) for s in stored_masks(env.model)] == [12, 24, 48]
    assert info["kept_fraction"] == 10 / 16 and info["kept_channels"] == 40
    assert 0 < info["params_fraction"] < 1.0
    with pytest.raises(ValueError, match="needs tradeoff"):
        RuntimePruningEnv(model=net, static_keep=[0.5] * 3)


def test_prefix_order_keeps_the_top_of_the_given_scores() -> None:
    """runtime_order="prefix": every image keeps the first k channels of static_scores' order (no static plan
    needed), whatever its u_r; the MAC accounting is the u_r order's (it depends on counts only)."""
    net = _net("resnet8")
    scores = [torch.randn(c, generator=torch.Generator().manual_seed(c)) for c in (16, 32, 64)]
    infos = {}
    for order in ("u_r", "prefix"):
        env = RuntimePruningEnv(model=net, static_scores=scores if order == "prefix" else None, runtime_order=order)
        env.reset(seed=0)
        _, infos[order] = _run_constant(env, 0.4, 0)
        if order == "prefix":
            for mask, sc in zip(applied_masks(env.model), scores, strict=True):
                k = int(mask[0].sum())
                assert mask[0].nonzero().squeeze(1).tolist() == sorted(torch.argsort(sc, descending=True)[:k].tolist())
    assert infos["prefix"]["macs_fraction"] == infos["u_r"]["macs_fraction"]
    with pytest.raises(ValueError, match="runtime_order must be one of"):
        RuntimePruningEnv(model=net, runtime_order="slice")
    with pytest.raises(ValueError, match="runtime_order='prefix'"):
        RuntimePruningEnv(model=net, static_scores=scores)


# ------------------------------------------------------------------------------------------------------------
# actions: fuzzing and errors
# ------------------------------------------------------------------------------------------------------------


@functools.cache
def _fuzz_env() -> RuntimePruningEnv:
    return RuntimePruningEnv(model=_net("resnet8"), budget=0.3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=3, max_size=3))
def test_any_finite_action_gives_a_finite_reward(values: list[float]) -> None:
    env = _fuzz_env()
    obs, _ = env.reset(seed=0)
    for t, v in enumerate(values):
        assert obs in env.observation_space
        obs, reward, terminated, _, info = env.step(np.array([v], dtype=np.float32))
        assert math.isfinite(reward) and terminated == (t == 2)
        assert env.min_keep <= info["ratio"] <= 1.0
        assert info["ratio"] == round(min(max(info["requested_ratio"], 0.1), 1.0), 6)
    assert obs in env.observation_space
    assert all(math.isfinite(info[k]) for k in ("reward_accuracy", "reward_budget", "macs_fraction", "ce"))


BAD_ACTIONS = [
    np.array([np.nan], np.float32), np.array([np.inf]), np.array([-np.inf]), np.zeros(2), np.zeros((2, 1)), "a",
]  # fmt: skip


@pytest.mark.parametrize("action", BAD_ACTIONS)
def test_bad_actions_raise_value_error(action: Any) -> None:
    env = _fuzz_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)
    env.step(np.zeros(1, np.float32))  # the episode goes on


def test_vec_env_bad_actions_and_order() -> None:
    venv = RuntimePruningVecEnv(num_envs=2, model="tiny_cnn")
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros((2, 1), np.float32))
    venv.reset()
    with pytest.raises(ValueError, match="finite"):
        venv.step(np.array([[0.0], [np.nan]], np.float32))
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((3, 1), np.float32))


def test_episode_order_errors() -> None:
    env = RuntimePruningEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, np.float32))
    env.reset(seed=0)
    for _ in range(env.num_units):
        env.step(np.zeros(1, np.float32))
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"budget": 0.3})
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"image_index": 10**6})


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="test split"):
        RuntimePruningEnv(split="test")
    with pytest.raises(ValueError, match="budget"):
        RuntimePruningEnv(budget=1.5)
    with pytest.raises(ValueError, match="min_keep"):
        RuntimePruningEnv(min_keep=0.0)
    with pytest.raises(ValueError, match="weights"):
        RuntimePruningEnv(model=get_model("tiny_cnn"), weights="x.pt")
    with pytest.raises(ValueError, match="num_images"):
        RuntimePruningEnv(num_images=10**6)
    with pytest.raises(ValueError, match="render_mode"):
        RuntimePruningEnv(render_mode="human")
    env = RuntimePruningEnv(num_images=10)
    assert len(env.dataset) == 10


def test_broken_model_is_reported_not_observed() -> None:
    net = copy.deepcopy(_net("tiny_cnn"))
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    env = RuntimePruningEnv(model=net)  # NaN weights in unit 0: its output, unit 1's input, is NaN
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="non-finite activations at the input of unit 1"):
        env.step(np.zeros(1, np.float32))


# ------------------------------------------------------------------------------------------------------------
# learning runs
# ------------------------------------------------------------------------------------------------------------


def test_ppo_learns_on_vec_env_and_single_env() -> None:
    venv = VecMonitor(RuntimePruningVecEnv(num_envs=8, model="tiny_cnn", budget=0.5))
    model = PPO("MlpPolicy", venv, n_steps=12, batch_size=48, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=288)
    assert model.num_timesteps >= 288
    assert len(model.ep_info_buffer) >= 8 and all(ep["l"] == 3 for ep in model.ep_info_buffer)
    env = RuntimePruningEnv(model="tiny_cnn", budget=0.5)
    model = PPO("MlpPolicy", env, n_steps=96, batch_size=48, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=192)
    assert model.num_timesteps >= 192
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert action.shape == (1,)
