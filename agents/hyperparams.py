"""Hyperparameters from YAML, rl-baselines3-zoo style.

``agents/hyperparams/<algo>.yml`` maps environment ids to hyperparameters, with a ``default:`` entry that
applies to every env. Any other top-level key that is not an env id is a *preset*: a named set of settings
(``paper``) that is either flat or itself keyed by ``default`` and env ids::

    default:                          # every env
      n_timesteps: 100000
      learning_rate: 3.0e-4
    prunegym/RuntimePruning-v0:       # this env (merged over default)
      n_steps: 64
    paper:                            # a preset, chosen with preset="paper"
      default: {gamma: 0.999}
      prunegym/RuntimePruning-v0: {n_envs: 128}

:func:`load_hyperparams` resolves, later winning: ``default`` < env-id entry < preset (its ``default``, then its
env-id entry) < ``key=value`` overrides. Mappings merge key by key (so an override of ``policy_kwargs.net_arch``
or ``policy_kwargs={net_arch: [64]}`` keeps the other policy arguments); any other value is replaced.

Files and override values are parsed with ``yaml.safe_load`` only, never ``eval``: ``policy_kwargs=dict(...)``
is not accepted, write ``policy_kwargs={net_arch: [64, 64]}``. Strings that look like numbers in scientific
notation without a dot (``1e-6``, which YAML 1.1 reads as a string) are turned into floats.

    >>> hp = load_hyperparams("recurrent_ppo", "prunegym/RuntimePruning-v0", preset="paper",
    ...                       overrides=["learning_rate=1e-5"])
    >>> hp["gamma"], hp["learning_rate"], hp["policy_kwargs"]["lstm_hidden_size"]
    (0.999, 1e-05, 128)
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "HYPERPARAMS_DIR",
    "apply_overrides",
    "available_algos",
    "is_env_id",
    "list_presets",
    "load_hyperparams",
    "parse_override",
    "read_hyperparams_file",
]

#: Directory of the shipped ``<algo>.yml`` files.
HYPERPARAMS_DIR: Path = Path(__file__).resolve().parent / "hyperparams"

#: The entry every env inherits.
DEFAULT_KEY = "default"

# Gymnasium's id grammar: optional namespace, name, mandatory version suffix for our purposes.
_ENV_ID = re.compile(r"^(?:[\w:.-]+/)?[\w:.-]+-v\d+$")
# Numbers YAML 1.1 leaves as strings: 1e-6, 3E5, -2e+3 (no dot in the mantissa).
_SCI_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_KEY = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def is_env_id(key: str) -> bool:
    """Whether a top-level YAML key is an environment id (``namespace/Name-v0``) rather than a preset name."""
    return bool(_ENV_ID.match(key))


def _numbers(value: Any) -> Any:
    """Turn scientific-notation strings (``"1e-6"``) into floats, recursively."""
    if isinstance(value, str) and _SCI_NUMBER.match(value):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``update``; mappings on both sides merge recursively."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def available_algos(directory: str | Path | None = None) -> list[str]:
    """Algorithms that have a hyperparameter file in ``directory`` (default :data:`HYPERPARAMS_DIR`)."""
    return sorted(p.stem for p in Path(directory or HYPERPARAMS_DIR).glob("*.yml"))


def read_hyperparams_file(algo: str, directory: str | Path | None = None) -> dict[str, Any]:
    """Read ``<directory>/<algo>.yml`` with ``yaml.safe_load``.

    Args:
        algo: Algorithm name (``"ppo"``).
        directory: Where the files are; default :data:`HYPERPARAMS_DIR`.

    Returns:
        The top-level mapping (``default``, env ids, presets).

    Raises:
        FileNotFoundError: If there is no file for ``algo`` (the message lists the algorithms that have one).
        ValueError: If the file is not a YAML mapping of mappings.
    """
    folder = Path(directory or HYPERPARAMS_DIR)
    path = folder / f"{algo}.yml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no hyperparameters for algorithm {algo!r} (looked for {path}); files exist for "
            f"{', '.join(available_algos(folder)) or 'no algorithm'}; add {path.name} or pick one of those"
        )
    with path.open(encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of env ids / presets to settings, got {type(data).__name__}")
    for key, value in data.items():
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{path}: entry {key!r} must be a mapping of hyperparameters, got {value!r}")
    return {str(k): _numbers(v or {}) for k, v in data.items()}


def list_presets(algo: str, directory: str | Path | None = None) -> list[str]:
    """Preset names (top-level keys other than ``default`` and env ids) in ``algo``'s file."""
    data = read_hyperparams_file(algo, directory)
    return sorted(k for k in data if k != DEFAULT_KEY and not is_env_id(k))


def _known_env(env_id: str) -> bool:
    import gymnasium as gym

    import envs  # noqa: F401 - registers the prunegym/ ids

    return env_id in gym.registry


def _preset_layers(name: str, preset: dict[str, Any], env_id: str, algo: str) -> list[dict[str, Any]]:
    """The layers a preset adds for ``env_id``: itself when flat, else its ``default`` then its env entry."""
    keyed = [k for k in preset if k == DEFAULT_KEY or is_env_id(k)]
    if not keyed:
        return [preset]
    flat = sorted(set(preset) - set(keyed))
    if flat:
        raise ValueError(
            f"preset {name!r} of {algo}.yml mixes env-id entries {keyed} with plain settings {flat}; put the "
            f"plain settings under 'default:' inside the preset"
        )
    if DEFAULT_KEY not in preset and env_id not in preset:
        raise ValueError(
            f"preset {name!r} of {algo}.yml has no entry for {env_id!r} and no 'default:'; it covers {', '.join(keyed)}"
        )
    return [dict(preset.get(DEFAULT_KEY) or {}), dict(preset.get(env_id) or {})]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``key=value`` override; the value is YAML (``yaml.safe_load``), the key may be dotted.

    Args:
        text: e.g. ``"learning_rate=1e-4"``, ``"policy_kwargs={net_arch: [64, 64]}"``,
            ``"policy_kwargs.activation_fn=relu"``.

    Returns:
        ``(key path, value)``, e.g. ``(["policy_kwargs", "activation_fn"], "relu")``.

    Raises:
        ValueError: If there is no ``=``, the key is not a name, or the value is not plain YAML (tags such as
            ``!!python/object`` are refused by ``safe_load``); the message says how to write it.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ValueError(
            f"override {text!r} is not key=value; write e.g. learning_rate=1e-4 or "
            f"policy_kwargs={{net_arch: [64, 64]}} (dotted keys such as policy_kwargs.net_arch=[64] set one entry)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ValueError(
            f"override {text!r}: the value is not plain YAML ({problem}); values are read with yaml.safe_load, "
            f"never evaluated: write lists as [64, 64], mappings as {{net_arch: [64, 64], activation_fn: tanh}}, "
            f"no dict(...) or !!python tags, and quote the whole argument in the shell"
        ) from exc
    return key.split("."), _numbers(value)


def apply_overrides(hyperparams: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return ``hyperparams`` with the ``key=value`` ``overrides`` applied in order (see :func:`parse_override`).

    Args:
        hyperparams: The settings to start from; not modified.
        overrides: ``key=value`` strings; later ones win.

    Returns:
        A new dict.

    Raises:
        ValueError: For a malformed override, or a dotted key whose parent is not a mapping.
    """
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    out = copy.deepcopy(dict(hyperparams))
    for text in overrides:
        path, value = parse_override(text)
        update: dict[str, Any] = {path[-1]: value}
        for key in reversed(path[:-1]):
            update = {key: update}
        node: Any = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, Mapping) else None
            if node is not None and not isinstance(node, Mapping):
                raise ValueError(f"override {text!r}: {key!r} is {node!r}, not a mapping, so it has no sub-keys")
        out = _merge(out, update)
    return out


def load_hyperparams(
    algo: str,
    env_id: str,
    *,
    preset: str | None = None,
    overrides: Iterable[str] = (),
    directory: str | Path | None = None,
) -> dict[str, Any]:
    """Resolve the hyperparameters of ``algo`` on ``env_id``.

    Order, later winning: the file's ``default`` < its ``env_id`` entry < the preset (flat, or its ``default``
    then its ``env_id`` entry) < ``overrides``. Mappings such as ``policy_kwargs`` merge key by key.

    Args:
        algo: Algorithm name; reads ``<directory>/<algo>.yml``.
        env_id: Environment id; must have an entry in the file or be registered with Gymnasium.
        preset: Name of a preset in the same file (``"paper"``), or ``None`` (default) for none.
        overrides: ``key=value`` strings with YAML values (``learning_rate=1e-4``); default none.
        directory: Where the YAML files are; default :data:`HYPERPARAMS_DIR`.

    Returns:
        The resolved settings, a new dict (values still YAML-friendly; :func:`agents.algos.make_model` turns
        them into objects).

    Raises:
        FileNotFoundError: If ``algo`` has no file (lists those that exist).
        KeyError: For an unknown env id or preset (lists those that exist).
        ValueError: For a malformed file, preset or override.
    """
    data = read_hyperparams_file(algo, directory)
    env_ids = sorted(k for k in data if is_env_id(k))
    presets = sorted(k for k in data if k != DEFAULT_KEY and not is_env_id(k))
    if env_id not in data and not _known_env(env_id):
        close = difflib.get_close_matches(env_id, env_ids, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(
            f"unknown env id {env_id!r}{hint}: it is neither in {algo}.yml (which has entries for "
            f"{', '.join(env_ids) or 'no env'}) nor registered with Gymnasium"
        )
    layers = [data.get(DEFAULT_KEY, {}), data.get(env_id, {})]
    if preset is not None:
        if preset not in presets:
            raise KeyError(
                f"unknown preset {preset!r} for {algo}; {algo}.yml has "
                f"{'presets ' + ', '.join(presets) if presets else 'no presets'}"
            )
        layers += _preset_layers(preset, data[preset], env_id, algo)
    resolved: dict[str, Any] = {}
    for layer in layers:
        resolved = _merge(resolved, layer)
    return apply_overrides(resolved, overrides)
