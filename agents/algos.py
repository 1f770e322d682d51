"""Registry of reinforcement-learning algorithms and a builder that turns YAML hyperparameters into a model.

Algorithms are looked up by name, as in rl-baselines3-zoo (``ALGOS = {"ppo": PPO, ...}``). Each entry is an
:class:`AlgoSpec`: where the class lives (imported on first use, so importing this module stays cheap), the
action spaces it supports and its default policy. Besides the registered names, any ``package.module:Class``
import path that follows the stable-baselines3 algorithm API (a constructor taking ``policy`` and ``env``,
``learn``, ``predict``, ``save`` and a class-level ``load``) can be used directly.

    >>> from agents.algos import get_algo, list_algos
    >>> get_algo("recurrent_ppo").default_policy
    'MlpLstmPolicy'
    >>> "sac" in list_algos()
    True

:func:`make_model` builds a model from a hyperparameter dict as read from YAML (see :mod:`agents.hyperparams`):
``policy_kwargs`` is a plain mapping (``activation_fn: tanh``), ``learning_rate`` may be ``"lin_<x>"`` (a linear
schedule from ``x`` to 0, rl-zoo style) and ``n_timesteps`` is returned apart from the constructor arguments.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gymnasium import spaces

from pruning.registry import Registry

__all__ = [
    "ALGOS",
    "ENV_KEYS",
    "AlgoSpec",
    "check_algo_env",
    "get_algo",
    "list_algos",
    "make_model",
    "register_algo",
    "resolve_policy_kwargs",
    "to_schedule",
]

logger = logging.getLogger(__name__)

#: Methods an algorithm class needs to follow the stable-baselines3 algorithm API.
REQUIRED_METHODS: tuple[str, ...] = ("learn", "predict", "save", "load")

#: Hyperparameter keys that configure the environment or the training loop rather than the algorithm's
#: constructor (rl-zoo names). :func:`make_model` leaves them out of the constructor arguments.
ENV_KEYS: frozenset[str] = frozenset(
    {"n_envs", "normalize", "env_wrapper", "vec_env_wrapper", "frame_stack", "callback", "env_kwargs"}
)

#: Hyperparameter keys whose value may be a ``"lin_<x>"`` linear schedule.
SCHEDULE_KEYS: frozenset[str] = frozenset({"learning_rate", "clip_range", "clip_range_vf"})

_ACTIVATIONS: dict[str, str] = {
    "tanh": "Tanh",
    "relu": "ReLU",
    "elu": "ELU",
    "leaky_relu": "LeakyReLU",
    "gelu": "GELU",
    "silu": "SiLU",
    "sigmoid": "Sigmoid",
    "identity": "Identity",
}

_OPTIMIZERS: dict[str, str] = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}

_ON_POLICY_SPACES: tuple[type[spaces.Space], ...] = (
    spaces.Box,
    spaces.Discrete,
    spaces.MultiDiscrete,
    spaces.MultiBinary,
)


def _import_path(path: str) -> Any:
    """Import ``package.module:Attribute``; errors name the part that failed."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r} is not an import path; write it as 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} of {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from exc


def _check_api(cls: Any, name: str) -> type:
    """Raise ``TypeError`` unless ``cls`` is a class following the stable-baselines3 algorithm API."""
    if not inspect.isclass(cls):
        raise TypeError(f"algorithm {name!r} must be a class, got {type(cls).__name__} {cls!r}")
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None))]
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {}  # type: ignore[assignment]
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing_args = [a for a in ("policy", "env") if a not in params and not has_var_kw]
    if missing or missing_args:
        parts = []
        if missing:
            parts.append(f"method(s) {', '.join(missing)}")
        if missing_args:
            parts.append(f"constructor argument(s) {', '.join(missing_args)}")
        raise TypeError(
            f"algorithm {name!r} ({cls.__module__}.{cls.__qualname__}) does not follow the stable-baselines3 "
            f"algorithm API: it lacks {' and '.join(parts)}; an algorithm needs __init__(policy, env, ...), "
            f"learn, predict, save and a class-level load (subclass stable_baselines3.common.base_class."
            f"BaseAlgorithm to get them)"
        )
    return cls


@dataclass(frozen=True)
class AlgoSpec:
    """One registered algorithm.

    Attributes:
        name: Registry name (``"ppo"``) or, for an unregistered class, its import path.
        target: The class, or its ``package.module:Class`` import path (imported on first use).
        action_spaces: Action-space classes the algorithm supports; ``None`` when unknown (the algorithm's own
            constructor then does the check).
        default_policy: Policy used when the hyperparameters name none (``"MlpPolicy"``).
        recurrent: Whether ``predict`` takes and returns a recurrent state (``RecurrentPPO``).
    """

    name: str
    target: type | str
    action_spaces: tuple[type[spaces.Space], ...] | None = None
    default_policy: str = "MlpPolicy"
    recurrent: bool = False
    _cache: dict[str, type] = field(default_factory=dict, repr=False, compare=False)

    @property
    def cls(self) -> type:
        """The algorithm class, imported and checked against the stable-baselines3 API on first access."""
        if "cls" not in self._cache:
            target = _import_path(self.target) if isinstance(self.target, str) else self.target
            self._cache["cls"] = _check_api(target, self.name)
        return self._cache["cls"]

    def supports(self, action_space: spaces.Space) -> bool:
        """Whether the algorithm can act in ``action_space`` (``True`` when its spaces are unknown)."""
        return self.action_spaces is None or isinstance(action_space, self.action_spaces)

    def load(self, path: str | Path, **kwargs: Any) -> Any:
        """A saved model of this algorithm (``cls.load(path, **kwargs)``, e.g. ``env=``, ``device=``)."""
        return self.cls.load(str(path), **kwargs)  # type: ignore[attr-defined]


#: Every registered algorithm by name.
ALGOS: Registry[AlgoSpec] = Registry("algorithm")


def register_algo(
    name: str,
    cls_or_path: type | str,
    *,
    action_spaces: tuple[type[spaces.Space], ...] | None = None,
    default_policy: str = "MlpPolicy",
    recurrent: bool = False,
    overwrite: bool = False,
) -> AlgoSpec:
    """Register an algorithm under ``name``.

    Args:
        name: Registry name, lower case (``"my_ppo"``).
        cls_or_path: The class, or its ``package.module:Class`` import path. A class is checked against the
            stable-baselines3 API now; a path when first used.
        action_spaces: Supported action-space classes, e.g. ``(spaces.Box,)``; ``None`` (default) when unknown.
        default_policy: Policy name used when the hyperparameters give none. Default ``"MlpPolicy"``.
        recurrent: Whether the policy keeps a recurrent state. Default ``False``.
        overwrite: Replace an existing entry instead of raising. Default ``False``.

    Returns:
        The new :class:`AlgoSpec`.

    Raises:
        ValueError: If ``name`` is taken (and ``overwrite`` is false) or is not a plain name.
        TypeError: If a class is given that does not follow the stable-baselines3 algorithm API.
    """
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"algorithm name must be a plain non-empty name without ':', got {name!r}")
    if name in ALGOS and not overwrite:
        raise ValueError(f"algorithm {name!r} is already registered; pass overwrite=True to replace it")
    if not isinstance(cls_or_path, str):
        _check_api(cls_or_path, name)
    spec = AlgoSpec(name, cls_or_path, action_spaces, default_policy, recurrent)
    return ALGOS.add(name, spec, replace=overwrite)


def list_algos() -> list[str]:
    """Names of the registered algorithms, sorted."""
    return ALGOS.names()


def get_algo(name: str | AlgoSpec) -> AlgoSpec:
    """Look up an algorithm by registry name or ``package.module:Class`` import path.

    The class is imported and checked against the stable-baselines3 algorithm API before returning, so a
    missing package or method fails here rather than at training time.

    Args:
        name: A registered name (``"ppo"``, see :func:`list_algos`), an import path
            (``"stable_baselines3.ppo:PPO"``) or an :class:`AlgoSpec`.

    Returns:
        The algorithm's :class:`AlgoSpec`; ``spec.cls`` is the class.

    Raises:
        ValueError: For an unknown name (the message suggests close ones and lists the registered ones).
        ImportError: If the class cannot be imported.
        TypeError: If the class does not follow the stable-baselines3 algorithm API.
    """
    if isinstance(name, AlgoSpec):
        spec = name
    elif name in ALGOS:
        spec = ALGOS.get(name)
    elif ":" in name:
        cls = _check_api(_import_path(name), name)
        known = next((s for _, s in ALGOS.items() if s.target is cls or _same_path(s.target, cls)), None)
        spec = (
            AlgoSpec(name, cls, known.action_spaces, known.default_policy, known.recurrent)
            if known
            else AlgoSpec(name, cls)
        )
    else:
        try:
            spec = ALGOS.get(name)
        except ValueError as err:
            raise ValueError(f"{err}; or give an import path 'package.module:Class'") from None
    spec.cls  # noqa: B018 - import and API check now
    return spec


def _same_path(target: type | str, cls: type) -> bool:
    """Whether registry ``target`` names ``cls`` (comparing import paths without importing anything)."""
    if not isinstance(target, str):
        return False
    module, _, attr = target.partition(":")
    return attr == cls.__qualname__ and (cls.__module__ == module or cls.__module__.startswith(module + "."))


def _space_name(space: spaces.Space) -> str:
    return type(space).__name__


def check_algo_env(algo: str | AlgoSpec, env: Any) -> AlgoSpec:
    """Check that ``algo`` supports the action space of ``env`` (a Gymnasium env or an SB3 ``VecEnv``).

    Args:
        algo: Algorithm name, import path or spec.
        env: Anything with an ``action_space``.

    Returns:
        The algorithm's :class:`AlgoSpec`.

    Raises:
        ValueError: If the action space is unsupported; the message names the algorithm, the space and the
            registered algorithms that support it.
    """
    spec = get_algo(algo)
    space = env.action_space
    if not spec.supports(space):
        assert spec.action_spaces is not None
        fits = [n for n, s in sorted(ALGOS.items()) if s.action_spaces is not None and s.supports(space)]
        wanted = " or ".join(c.__name__ for c in spec.action_spaces)
        raise ValueError(
            f"algorithm {spec.name!r} does not support the {_space_name(space)} action space {space} of this "
            f"environment (it needs {wanted}); algorithms that would work: {', '.join(fits) or 'none registered'}"
        )
    return spec


def to_schedule(value: Any, key: str = "learning_rate") -> Any:
    """Turn a YAML-friendly schedule value into what stable-baselines3 takes.

    ``"lin_<x>"`` becomes a linear schedule from ``x`` (at progress remaining 1, the start) to 0 (the end), as in
    rl-zoo; it is SB3's picklable ``LinearSchedule``. Numbers and callables are returned unchanged.

    Args:
        value: A number, a ``"lin_<x>"`` string or a callable of the progress remaining.
        key: Hyperparameter name, for error messages.

    Returns:
        A float or a callable ``progress_remaining -> value``.

    Raises:
        ValueError: For any other string.
    """
    if isinstance(value, str):
        if value.startswith("lin_"):
            try:
                start = float(value[4:])
            except ValueError:
                pass
            else:
                from stable_baselines3.common.utils import LinearSchedule

                return LinearSchedule(start, 0.0, 1.0)
        try:
            return float(value)
        except ValueError:
            raise ValueError(
                f"{key}={value!r} is neither a number nor a linear schedule; write e.g. {key}=3e-4 or {key}=lin_3e-4"
            ) from None
    return value


def _named(value: Any, table: dict[str, str], module: Any, what: str) -> Any:
    """Map a short name (``"tanh"``) or an import path to a class; classes pass through."""
    if not isinstance(value, str):
        return value
    if ":" in value:
        return _import_path(value)
    key = value.lower()
    if key in table:
        return getattr(module, table[key])
    raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(table)} or an import path 'pkg.mod:Class'")


def resolve_policy_kwargs(policy_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn a YAML ``policy_kwargs`` mapping into objects.

    ``activation_fn`` (``"tanh"``, ``"relu"``, ... or ``"pkg.mod:Class"``) becomes a ``torch.nn`` class;
    ``optimizer_class`` (``"adam"``, ``"adamw"``, ``"rmsprop"``, ``"sgd"`` or an import path) a ``torch.optim``
    class; any other ``*_class`` string is imported as ``package.module:Class``. The rest (``net_arch``,
    ``lstm_hidden_size``, ``ortho_init``, ...) passes through.

    Args:
        policy_kwargs: The mapping, or ``None``.

    Returns:
        A new dict.

    Raises:
        TypeError: If ``policy_kwargs`` is not a mapping (e.g. rl-zoo's ``"dict(...)"`` strings, which are
            never evaluated here).
    """
    if policy_kwargs is None:
        return {}
    if not isinstance(policy_kwargs, Mapping):
        raise TypeError(
            f"policy_kwargs must be a mapping, got {policy_kwargs!r} (strings such as dict(...) are never "
            f"evaluated); write it in YAML, e.g. "
            f"policy_kwargs={{net_arch: [64, 64], activation_fn: tanh}}"
        )
    import torch

    out = dict(policy_kwargs)
    if "activation_fn" in out:
        out["activation_fn"] = _named(out["activation_fn"], _ACTIVATIONS, torch.nn, "activation_fn")
    if "optimizer_class" in out:
        out["optimizer_class"] = _named(out["optimizer_class"], _OPTIMIZERS, torch.optim, "optimizer_class")
    for key, value in out.items():
        if key.endswith("_class") and isinstance(value, str):
            out[key] = _import_path(value)
    return out


def _constructor_kwargs(cls: type, kwargs: Mapping[str, Any], algo: str) -> None:
    """Raise ``TypeError`` for keyword arguments the algorithm's constructor does not take."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, params, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise TypeError(
            f"algorithm {algo!r} takes no hyperparameter(s) {', '.join(hints)}; "
            f"its constructor takes {', '.join(p for p in params if p not in ('self', 'policy', 'env'))}"
        )


def _action_noise(noise_type: str | None, noise_std: float | None, action_space: spaces.Space) -> Any:
    """rl-zoo's ``noise_type`` (``normal`` / ``ornstein-uhlenbeck``) + ``noise_std`` as an SB3 action-noise object."""
    if noise_type is None:
        if noise_std is not None:
            raise ValueError("noise_std is set but noise_type is not; add noise_type=normal or ornstein-uhlenbeck")
        return None
    import numpy as np
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    kinds = {"normal": NormalActionNoise, "ornstein-uhlenbeck": OrnsteinUhlenbeckActionNoise}
    if noise_type not in kinds:
        raise ValueError(f"unknown noise_type {noise_type!r}; use one of {', '.join(kinds)}")
    if not isinstance(action_space, spaces.Box):
        raise ValueError(f"noise_type needs a Box action space, got {action_space}")
    dim = int(np.prod(action_space.shape))
    std = 0.1 if noise_std is None else float(noise_std)
    return kinds[noise_type](mean=np.zeros(dim), sigma=std * np.ones(dim))


def _resolve_policy(policy: Any, kwargs: dict[str, Any], env: Any) -> Any:
    """Resolve a ``policy`` hyperparameter to what the algorithm's constructor takes.

    A name in :data:`agents.policies.POLICIES` or an import path becomes its class; SB3's own aliases
    (``MlpPolicy``) stay strings. A budget-residual policy gets its env-dependent ``policy_kwargs`` filled in
    ``kwargs`` (:func:`agents.policies.complete_policy_kwargs`).
    """
    from agents.policies import POLICIES, complete_policy_kwargs, is_budget_residual

    if isinstance(policy, str) and policy in POLICIES:
        policy = POLICIES.get(policy)
    elif isinstance(policy, str) and ":" in policy:
        policy = _import_path(policy)
    if is_budget_residual(policy):
        kwargs["policy_kwargs"] = complete_policy_kwargs(policy, kwargs.get("policy_kwargs"), env)
    return policy


def make_model(
    algo: str | AlgoSpec,
    env: Any,
    hyperparams: Mapping[str, Any],
    *,
    seed: int | None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> tuple[Any, int | None]:
    """Build an algorithm instance from YAML-style hyperparameters.

    Args:
        algo: Algorithm name (``"ppo"``), ``package.module:Class`` path or :class:`AlgoSpec`.
        env: A Gymnasium env or an SB3 ``VecEnv`` (e.g. :class:`envs.runtime.RuntimePruningVecEnv`).
        hyperparams: Resolved hyperparameters (see :func:`agents.hyperparams.load_hyperparams`); not modified.
            ``policy`` defaults to the algorithm's default policy and may be an SB3 alias (``MlpPolicy``), a
            name in :data:`agents.policies.POLICIES` (``BudgetResidualPolicy``, whose ``budget_index``,
            ``min_keep`` and ``macs_curve`` are then read from ``env`` unless given) or ``package.module:Class``;
            ``policy_kwargs`` is converted by :func:`resolve_policy_kwargs`;
            ``learning_rate``/``clip_range``/``clip_range_vf`` may be ``"lin_<x>"``; ``noise_type``
            (``normal``/``ornstein-uhlenbeck``) with ``noise_std`` becomes ``action_noise``; ``n_timesteps``
            is returned apart; the :data:`ENV_KEYS` (``n_envs``, ``normalize``, ...) are
            for whoever builds the env and are left out; everything else goes to the constructor.
        seed: Seed of the algorithm (torch, numpy, action-space sampling).
        tensorboard_log: TensorBoard log directory, or ``None`` (default) for none.
        verbose: SB3 verbosity, 0 (default) silent.

    Returns:
        ``(model, n_timesteps)``; ``n_timesteps`` is ``None`` when not given.

    Raises:
        ValueError: If the algorithm does not support the env's action space, or a value cannot be converted.
        TypeError: If a hyperparameter is not a constructor argument of the algorithm.
    """
    spec = check_algo_env(algo, env)
    kwargs = dict(hyperparams)
    n_timesteps = kwargs.pop("n_timesteps", None)
    if n_timesteps is not None:
        n_timesteps = int(float(n_timesteps))
    skipped = sorted(ENV_KEYS & set(kwargs))
    for key in skipped:
        del kwargs[key]
    if skipped:
        logger.debug("make_model leaves env/loop keys %s to the caller", skipped)
    policy = kwargs.pop("policy", None) or spec.default_policy
    if "policy_kwargs" in kwargs:
        kwargs["policy_kwargs"] = resolve_policy_kwargs(kwargs["policy_kwargs"])
    policy = _resolve_policy(policy, kwargs, env)
    for key in SCHEDULE_KEYS & set(kwargs):
        kwargs[key] = to_schedule(kwargs[key], key)
    noise = _action_noise(kwargs.pop("noise_type", None), kwargs.pop("noise_std", None), env.action_space)
    if noise is not None:
        kwargs["action_noise"] = noise
    cls = spec.cls
    _constructor_kwargs(
        cls, {**kwargs, "seed": seed, "tensorboard_log": tensorboard_log, "verbose": verbose}, spec.name
    )
    model = cls(policy, env, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose, **kwargs)
    return model, n_timesteps


# -----------------------------------------------------------------------------------------------------------
# built-in entries: stable-baselines3 and sb3-contrib (imported on first use)
# -----------------------------------------------------------------------------------------------------------

_BOX: tuple[type[spaces.Space], ...] = (spaces.Box,)
_DISCRETE: tuple[type[spaces.Space], ...] = (spaces.Discrete,)

for _name, _path, _spaces, _policy in [
    ("ppo", "stable_baselines3:PPO", _ON_POLICY_SPACES, "MlpPolicy"),
    ("a2c", "stable_baselines3:A2C", _ON_POLICY_SPACES, "MlpPolicy"),
    ("sac", "stable_baselines3:SAC", _BOX, "MlpPolicy"),
    ("td3", "stable_baselines3:TD3", _BOX, "MlpPolicy"),
    ("ddpg", "stable_baselines3:DDPG", _BOX, "MlpPolicy"),
    ("dqn", "stable_baselines3:DQN", _DISCRETE, "MlpPolicy"),
    ("recurrent_ppo", "sb3_contrib:RecurrentPPO", _ON_POLICY_SPACES, "MlpLstmPolicy"),
    ("tqc", "sb3_contrib:TQC", _BOX, "MlpPolicy"),
    ("trpo", "sb3_contrib:TRPO", _ON_POLICY_SPACES, "MlpPolicy"),
    ("ars", "sb3_contrib:ARS", (spaces.Box, spaces.Discrete), "LinearPolicy"),
    ("crossq", "sb3_contrib:CrossQ", _BOX, "MlpPolicy"),
    ("qrdqn", "sb3_contrib:QRDQN", _DISCRETE, "MlpPolicy"),
]:
    register_algo(_name, _path, action_spaces=_spaces, default_policy=_policy, recurrent=_name == "recurrent_ppo")
del _name, _path, _spaces, _policy
