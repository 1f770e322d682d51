"""Find the PruneGym environment behind Gymnasium wrappers and stable-baselines3 vectorised envs.

Baselines and policies read attributes of the environment itself (its cost model, its budget, where the budget
sits in the observation); what they are handed is often wrapped: ``gymnasium.make`` adds checkers, training
adds ``VecMonitor`` or a ``DummyVecEnv``. :func:`unwrap_env` is the one place that looks through them.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import VecEnv

from envs.runtime import RuntimePruningVecEnv

__all__ = ["unwrap_env"]


def unwrap_env(env: Any) -> Any:
    """The innermost environment of ``env``.

    Args:
        env: A Gymnasium env (wrapped or not), a ``RuntimePruningVecEnv`` (inside VecEnv wrappers or
            not), or a ``DummyVecEnv`` (its first env is read: every sub-env of a PruneGym ``DummyVecEnv`` is
            built alike). Anything else is returned unchanged.

    Returns:
        ``env.unwrapped`` for a Gymnasium env, the ``RuntimePruningVecEnv`` itself, or the first sub-env's
        ``unwrapped``.

    Raises:
        TypeError: A ``VecEnv`` whose sub-envs live in other processes (``SubprocVecEnv``); use a ``DummyVecEnv``.
    """
    if isinstance(env, VecEnv):
        vec = env.unwrapped
        if isinstance(vec, RuntimePruningVecEnv):
            return vec
        envs = getattr(vec, "envs", None)  # DummyVecEnv; SubprocVecEnv keeps its envs in other processes
        if not envs:
            raise TypeError(f"cannot read the environments of a {type(vec).__name__}; use a DummyVecEnv")
        return envs[0].unwrapped
    if isinstance(env, gym.Env):
        return env.unwrapped
    return env
