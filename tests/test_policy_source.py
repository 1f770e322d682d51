"""PolicyRuntimeSource: an agent prunes a plain forward pass exactly as it prunes the runtime env."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.runtime import PolicyRuntimeSource, RuntimePruningEnv, RuntimePruningVecEnv, action_to_ratio
from pruning.export import DynamicModel, export_static
from pruning.gating import applied_masks, gated_units, set_plan
from pruning.plan import PruningPlan


class ObsPolicy:
    """A deterministic policy whose action depends on every part of the observation it is shown."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict(self, obs, state=None, episode_start=None, deterministic=True):  # noqa: D102
        obs = np.asarray(obs, dtype=np.float64)
        self.seen.append(obs.copy())
        a = np.tanh(3.0 * np.sin(17.0 * obs[:, :-3].sum(1)) + 2.0 * obs[:, -1] - obs[:, -3])
        return a[:, None].astype(np.float32), state


@pytest.mark.parametrize("static_keep", [None, [0.75, 0.5, 1.0]])
def test_forward_with_source_matches_env(static_keep: list[float] | None) -> None:
    kwargs = {"num_images": 12, "budget": 0.4}
    if static_keep is not None:
        kwargs.update(static_keep=static_keep, tradeoff=0.5)
    env = RuntimePruningVecEnv(6, **kwargs)
    env.seed(3)
    # the env draws its images at random: read which ones, then run them through the model in one batch
    obs = env.reset()
    idx = [int(info["image_index"]) for info in env.reset_infos]
    policy = ObsPolicy()
    env_obs, env_masks = _env_rollout(env, policy, obs)

    model = env.model
    source_policy = ObsPolicy()
    source = PolicyRuntimeSource(source_policy, model, budget=0.4, min_keep=env.min_keep)
    set_plan(model, PruningPlan(static_keep=static_keep, runtime_keep=source, tradeoff=0.5 if static_keep else None))
    x = env.dataset.normalize(env.dataset.images[idx])
    with torch.no_grad():
        model(x)
    masks = applied_masks(model)
    for t, (a, b) in enumerate(zip(env_masks, masks, strict=True)):
        assert torch.equal(a, b), f"unit {t}: the forward pass kept other channels than the env"
    assert len(source_policy.seen) == len(env_obs) == env.num_units
    for t, (a, b) in enumerate(zip(env_obs, source_policy.seen, strict=True)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=f"observation at unit {t} differs")


def _env_rollout(
    env: RuntimePruningVecEnv, policy: ObsPolicy, obs: np.ndarray
) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Observations shown and keep masks applied at every unit of one batch of episodes."""
    observations, masks = [], []
    for t in range(env.num_units):
        observations.append(obs.copy())
        action, _ = policy.predict(obs)
        obs, _, _, _ = env.step(action)
        masks.append(gated_units(env.model)[t].last_keep.clone())
    return observations, masks


def test_dynamic_model_with_bound_source_matches_masked_model() -> None:
    env = RuntimePruningEnv(num_images=8, budget=0.5, static_keep=[0.5, 0.75, 1.0], tradeoff=0.5)
    model = env.model
    policy = ObsPolicy()
    source = PolicyRuntimeSource(policy, model, budget=0.5)
    set_plan(model, PruningPlan(static_keep=[0.5, 0.75, 1.0], runtime_keep=source, tradeoff=0.5))
    x = env.dataset.normalize(env.dataset.images[:3])
    with torch.no_grad():
        expected = torch.cat([model(x[i : i + 1]) for i in range(3)])
    exported = export_static(model)
    dyn = DynamicModel(exported, source)
    source.bind(dyn)
    with torch.no_grad():
        got = torch.cat([dyn(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_action_to_ratio_clips_and_rounds() -> None:
    r = action_to_ratio(np.array([-2.0, -1.0, 0.0, 1.0, 5.0, np.float32(0.0) + 1e-7]), 0.1)
    np.testing.assert_array_equal(r, [0.1, 0.1, 0.55, 1.0, 1.0, 0.55])


def test_source_rejects_bad_arguments() -> None:
    env = RuntimePruningEnv(num_images=4)
    with pytest.raises(TypeError, match="predict"):
        PolicyRuntimeSource(object(), env.model, budget=0.5)
    with pytest.raises(ValueError, match="budget"):
        PolicyRuntimeSource(ObsPolicy(), env.model, budget=1.5)
