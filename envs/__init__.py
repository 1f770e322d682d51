"""Gymnasium environments of PruneGym, registered under the ``prunegym/`` namespace.

| id                             | class                                   | one episode                            |
|--------------------------------|-----------------------------------------|----------------------------------------|
| ``prunegym/StaticPruning-v0``  | :class:`envs.static.StaticPruningEnv`   | one pass over the units (AMC)          |
| ``prunegym/RuntimePruning-v0`` | :class:`envs.runtime.RuntimePruningEnv` | one image's forward pass (Chen et al.) |

AMC: He et al., ECCV 2018. Chen et al.: Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel
Pruning via Deep Reinforcement Learning", NeurIPS 2020.

Importing ``envs`` only registers the ids (string entry points): torch and the pruning core load when an
environment is made. The version suffix is bumped whenever observations, actions or rewards change meaning.
Importing this package again (or reloading it) does not register twice.

Importing ``envs`` also makes fork-started workers safe (Gymnasium's ``AsyncVectorEnv``, ``multiprocessing``
with the ``fork`` start method): an :func:`os.register_at_fork` hook sets ``torch.set_num_threads(1)`` in every
forked child once torch is loaded. A child forked after the parent ran torch inherits a handle on OpenMP's
thread pool but not its threads, and blocks forever in its first parallel region (a convolution); one thread
never enters the pool. Building the environment lazily in the worker does not help (``AsyncVectorEnv`` builds
it there already; the pool is the parent's). A forked worker must stay at one thread (measured: raising it
again with ``torch.set_num_threads(2)`` blocks the same way); workers that need more threads must be spawned.

Both kinds as a stable-baselines3 ``VecEnv`` of ``num_envs`` episodes, by id: :func:`make_batched`. The arguments
both environments take (model, data, budget, reward, device, ...) are one :class:`envs.common.EnvSettings`, which
every constructor also accepts as ``settings=``.

Spawned and forkserver workers (SB3's ``SubprocVecEnv`` by default) start a fresh interpreter that knows the ids
only once it imports ``envs``: a script that imports it at the top is re-imported by them; from a notebook or
``python -c``, use the ``"module:id"`` form, e.g. ``make_vec_env("envs:prunegym/StaticPruning-v0", n_envs=4,
vec_env_cls=SubprocVecEnv)``.

    >>> import gymnasium as gym
    >>> import envs
    >>> sorted(env_id for env_id in gym.registry if env_id.startswith("prunegym/"))
    ['prunegym/RuntimePruning-v0', 'prunegym/StaticPruning-v0']
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from gymnasium.envs.registration import register, registry

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

__all__ = [
    "ENV_IDS",
    "RUNTIME_ENV_ID",
    "STATIC_ENV_ID",
    "EnvSettings",
    "RuntimePruningEnv",
    "RuntimePruningVecEnv",
    "StaticPruningEnv",
    "make_batched",
]

#: The id of :class:`envs.static.StaticPruningEnv`.
STATIC_ENV_ID = "prunegym/StaticPruning-v0"
#: The id of :class:`envs.runtime.RuntimePruningEnv`.
RUNTIME_ENV_ID = "prunegym/RuntimePruning-v0"
#: Every environment id of PruneGym and its entry point.
ENV_IDS: dict[str, str] = {
    STATIC_ENV_ID: "envs.static:StaticPruningEnv",
    RUNTIME_ENV_ID: "envs.runtime:RuntimePruningEnv",
}

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point)


def _torch_single_threaded_after_fork() -> None:
    """In a forked child: one torch thread, so no OpenMP pool inherited from the parent is entered."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


if "_FORK_HOOK" not in globals():  # once per process, even when the module is reloaded
    _FORK_HOOK = _torch_single_threaded_after_fork
    if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
        os.register_at_fork(after_in_child=_FORK_HOOK)


def make_batched(env_id: str, num_envs: int, *, seed: int | None = None, **kwargs: Any) -> VecEnv:
    """``num_envs`` episodes of a PruneGym env as one stable-baselines3 ``VecEnv``, chosen by the env's id.

    Each id gets its batched form: ``prunegym/RuntimePruning-v0`` a :class:`envs.runtime.RuntimePruningVecEnv`
    (the episodes run as one batch: one forward segment per step for all of them), ``prunegym/StaticPruning-v0``
    a ``DummyVecEnv`` of ``num_envs`` ``gymnasium.make(env_id, **kwargs)`` environments (a static episode scores a
    whole subset at its end; there is nothing to batch). Neither is wrapped in ``Monitor``: wrap the result in
    ``VecMonitor`` for episode statistics. Unlike SB3's ``make_vec_env``, which builds ``num_envs`` single runtime
    environments, this gives the batched one. The runtime id is not registered with Gymnasium's
    ``vector_entry_point``: that must return a Gymnasium ``VectorEnv``, and ``gymnasium.make_vec(id)`` would then
    return it by default instead of its ``SyncVectorEnv``.

    Args:
        env_id: ``STATIC_ENV_ID`` or ``RUNTIME_ENV_ID`` (:data:`ENV_IDS`).
        num_envs: Episodes run side by side (>= 1).
        seed: As ``VecEnv.seed(seed)``: the first ``reset()`` seeds sub-environment ``i`` with ``seed + i``
            (``None``: unseeded).
        **kwargs: Keyword arguments of the env's class, ``settings=`` included (an object passed, such as a
            shared ``RunningLossScale`` or a ``MeanBudgetTerm``, is shared by every sub-environment).

    Raises:
        ValueError: an unknown id (the message lists the ids) or ``num_envs < 1``.

    Example:
        >>> import envs
        >>> venv = envs.make_batched(envs.RUNTIME_ENV_ID, 4, seed=0, budget=0.5)
        >>> type(venv).__name__, venv.num_envs, venv.reset().shape
        ('RuntimePruningVecEnv', 4, (4, 35))
        >>> venv = envs.make_batched(envs.STATIC_ENV_ID, 2, seed=0, num_val=16)
        >>> type(venv).__name__, venv.num_envs, venv.reset().shape
        ('DummyVecEnv', 2, (2, 13))
    """
    if env_id not in ENV_IDS:
        raise ValueError(f"unknown env id {env_id!r}; PruneGym's ids are {sorted(ENV_IDS)}")
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    venv: VecEnv
    if env_id == RUNTIME_ENV_ID:
        from envs.runtime import RuntimePruningVecEnv

        venv = RuntimePruningVecEnv(num_envs, **kwargs)
    else:
        import functools

        import gymnasium
        from stable_baselines3.common.vec_env import DummyVecEnv

        venv = DummyVecEnv([functools.partial(gymnasium.make, env_id, **kwargs)] * num_envs)
    if seed is not None:
        venv.seed(seed)
    return venv


_LAZY = {
    "EnvSettings": "envs.common",
    "StaticPruningEnv": "envs.static",
    "RuntimePruningEnv": "envs.runtime",
    "RuntimePruningVecEnv": "envs.runtime",
}


def __getattr__(name: str) -> Any:
    """Import the environment classes on first use, so ``import envs`` stays cheap."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
