"""How agents learn about a PruneGym environment behind Gymnasium wrappers and stable-baselines3 vector envs.

Two questions, two functions:

* :func:`pruning_target`: what is pruned and under which budgets, as plain data (:class:`envs.common.TargetSpec`).
  Every PruneGym env answers ``pruning_target()``; this function asks the env itself, a wrapped one
  (``env.unwrapped``) or any ``VecEnv`` (``env_method("pruning_target", indices=[0])``), so it works with a
  ``SubprocVecEnv`` too, whose envs live in worker processes. Baselines, policies and the schedule read the env
  this way, never by its class.
* :func:`unwrap_env`: the env object itself, for what plain data cannot carry: its live model (baselines score
  its channels, PFP calibrates on its images). That needs the env in this process: a Gymnasium env, wrapped or
  not, a ``RuntimePruningVecEnv`` or a ``DummyVecEnv``; a ``SubprocVecEnv`` is refused with the fix.

Every sub-env of a PruneGym ``VecEnv`` is built alike, so both read the first.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import VecEnv

from envs.common import TargetSpec

__all__ = ["pruning_target", "unwrap_env"]


def pruning_target(env: Any) -> TargetSpec:
    """The answer of the PruneGym environment behind ``env`` to ``pruning_target()``.

    Args:
        env: A PruneGym env, wrapped in Gymnasium wrappers or not, or any stable-baselines3 ``VecEnv`` of them
            (``DummyVecEnv``, ``SubprocVecEnv``, ``RuntimePruningVecEnv``, in VecEnv wrappers or not).

    Returns:
        The first (sub-)environment's :class:`envs.common.TargetSpec`.

    Raises:
        TypeError: ``env`` is not a PruneGym environment (it has no ``pruning_target()``).
    """
    if isinstance(env, VecEnv):
        try:
            (spec,) = env.env_method("pruning_target", indices=[0])
        except AttributeError as err:
            raise TypeError(f"{_name(env)} is not a PruneGym environment: it has no pruning_target()") from err
    else:
        inner = env.unwrapped if isinstance(env, gym.Env) else env
        method = getattr(inner, "pruning_target", None)
        if not callable(method):
            raise TypeError(f"{_name(env)} is not a PruneGym environment: it has no pruning_target()")
        spec = method()
    if not isinstance(spec, TargetSpec):
        raise TypeError(f"{_name(env)}.pruning_target() returned a {type(spec).__name__}, not a TargetSpec")
    return spec


def unwrap_env(env: Any) -> Any:
    """The innermost environment object of ``env``, in this process (for its live model and data).

    Args:
        env: A Gymnasium env (wrapped or not), a PruneGym ``VecEnv`` such as ``RuntimePruningVecEnv`` (inside
            VecEnv wrappers or not), or a ``DummyVecEnv`` (its first env is read). Anything else is returned
            unchanged.

    Returns:
        ``env.unwrapped`` for a Gymnasium env, the PruneGym ``VecEnv`` itself, or the first sub-env's
        ``unwrapped``.

    Raises:
        TypeError: A ``VecEnv`` whose sub-envs live in other processes (``SubprocVecEnv``): their model cannot be
            read here. Build the envs in this process (``make_vec_env(..., vec_env_cls=DummyVecEnv)``) for what
            needs the model; plain data comes from any ``VecEnv`` through :func:`pruning_target`.
    """
    if isinstance(env, VecEnv):
        vec = env.unwrapped
        envs = getattr(vec, "envs", None)  # DummyVecEnv; SubprocVecEnv keeps its envs in other processes
        if envs:
            return envs[0].unwrapped
        if callable(getattr(vec, "pruning_target", None)):  # a PruneGym VecEnv (RuntimePruningVecEnv)
            return vec
        raise TypeError(
            f"the environments of a {type(vec).__name__} live in other processes, and this needs the env's model "
            "(baselines score its channels, PFP calibrates on its images). Build the envs in this process: a "
            "DummyVecEnv (make_vec_env(..., vec_env_cls=DummyVecEnv)), RuntimePruningVecEnv or a single env. "
            "Budgets and other plain data come from any VecEnv through agents.unwrap.pruning_target"
        )
    if isinstance(env, gym.Env):
        return env.unwrapped
    return env


def _name(env: Any) -> str:
    """The class name of ``env``'s innermost object that this process can see (for messages)."""
    inner = env.unwrapped if isinstance(env, gym.Env | VecEnv) else env
    envs = getattr(inner, "envs", None)
    return type(envs[0].unwrapped if envs else inner).__name__
