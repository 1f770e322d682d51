"""Gymnasium environments of PruneGym, registered under the ``prunegym/`` namespace.

| id                             | class                                   | one episode                       |
|--------------------------------|-----------------------------------------|-----------------------------------|
| ``prunegym/StaticPruning-v0``  | :class:`envs.static.StaticPruningEnv`   | one pass over the units (AMC)     |
| ``prunegym/RuntimePruning-v0`` | :class:`envs.runtime.RuntimePruningEnv` | one image's forward pass (paper 7) |

Importing ``envs`` only registers the ids (string entry points): torch and the pruning core load when an
environment is made. The version suffix is bumped whenever observations, actions or rewards change meaning.
Importing this package again (or reloading it) does not register twice.

    >>> import gymnasium as gym
    >>> import envs
    >>> sorted(env_id for env_id in gym.registry if env_id.startswith("prunegym/"))
    ['prunegym/RuntimePruning-v0', 'prunegym/StaticPruning-v0']
"""

from __future__ import annotations

import importlib
from typing import Any

from gymnasium.envs.registration import register, registry

__all__ = ["ENV_IDS", "RuntimePruningEnv", "RuntimePruningVecEnv", "StaticPruningEnv"]

#: Every environment id of PruneGym and its entry point.
ENV_IDS: dict[str, str] = {
    "prunegym/StaticPruning-v0": "envs.static:StaticPruningEnv",
    "prunegym/RuntimePruning-v0": "envs.runtime:RuntimePruningEnv",
}

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point)

_LAZY = {
    "StaticPruningEnv": "envs.static",
    "RuntimePruningEnv": "envs.runtime",
    "RuntimePruningVecEnv": "envs.runtime",
}


def __getattr__(name: str) -> Any:
    """Import the environment classes on first use, so ``import envs`` stays cheap."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
