"""What PruneGym's environments share: their common arguments, the reward split, the private model, the target.

:class:`EnvSettings` holds the constructor arguments both environments take, with their one default and
their one description; every environment also accepts them as keyword arguments (``settings=`` and keywords
combine: :func:`accepts_settings`).

Every environment answers ``pruning_target()`` with a :class:`TargetSpec`, plain data that says what is pruned
and under which budgets. Agents, baselines and policies read it instead of the env's class or attributes, so one
call works on a wrapped env and on any stable-baselines3 ``VecEnv`` (``venv.env_method("pruning_target")``, in
other processes too: it pickles).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn

from pruning.accounting import MacCoefficients
from pruning.data import ImageDataset, get_dataset
from pruning.gating import gate_model, is_gated
from pruning.models import get_model

from .rewards import BudgetTerm, MeanBudgetTerm, RewardFn, RunningLossScale

__all__ = ["EnvSettings", "TargetSpec", "accepts_settings", "build_env_model", "load_reward_split"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class EnvSettings:
    """The arguments both environments take, with their defaults: ``settings=`` of every PruneGym env.

    :class:`envs.static.StaticPruningEnv`, :class:`envs.runtime.RuntimePruningEnv` and
    :class:`envs.runtime.RuntimePruningVecEnv` take each field as a keyword argument with the default below,
    and a whole ``EnvSettings`` as ``settings=``, so one object configures both kinds alike. A keyword passed
    next to ``settings`` must agree with it: a different value raises ``ValueError`` naming both (use
    :func:`dataclasses.replace` to change a field). ``gymnasium.make(id, settings=...)`` passes it through, and
    it pickles (SB3's ``make_vec_env(..., env_kwargs={"settings": s})`` works with ``SubprocVecEnv``).

    Arguments with the same name but another default or meaning are not here: ``min_keep`` (0.2, AMC's floor
    for a permanent static cut, against 0.1, Chen et al.'s runtime floor), ``tradeoff`` (``None`` means R_r = 0
    or 0.5 in the static env, 1 in the runtime env), the reward subset (``num_val``, a seeded draw, against
    ``num_images``, the split's first images) and ``render_mode`` (Gymnasium's own argument). More on each
    field: ``docs/envs.md``, "Both environments".

    Attributes:
        model: A registered name (:func:`pruning.models.list_models`, built with seed 0) or an ``nn.Module``
            (deep-copied; plain or gated).
        weights: Weights of a model given by name: ``None``, ``"DEFAULT"`` or a checkpoint path.
        dataset: ``"cifar10"``, ``"cifar100"``, ``"synthetic"`` or a loaded :class:`pruning.data.ImageDataset`.
        data_dir: Data root of a dataset given by name (:func:`pruning.data.get_dataset`).
        split: Where reward images come from: ``"val"`` or ``"train"``; ``"test"`` is refused.
        dataset_kwargs: Extra keywords of :func:`pruning.data.get_dataset` (e.g. ``val_size``; synthetic:
            ``size``).
        budget: MAC budget, a fraction in (0, 1] of the base model's MACs per image. ``None`` (no MAC budget)
            only in the static env, with a ``param_budget``.
        reward: A name in the :mod:`envs.rewards` registry (``"paper"``, Chen et al.'s, ``"accuracy"``,
            ``"acc_log_macs"``, ...) or a callable ``fn(EpisodeResult) -> (reward, parts)``.
        budget_term: The budget part of the ``"paper"`` reward: :class:`envs.rewards.BudgetTerm` coefficients
            (``None``: 1.2 / 0.03 / 0.1) or a :class:`envs.rewards.MeanBudgetTerm` (no parameter budget).
        loss_scale: β, the paper reward's loss scale: ``None`` (the env's own running mean), a shared
            :class:`envs.rewards.RunningLossScale`, or a positive float (fixed).
        runtime_order: Which channels a runtime keep count keeps: ``"u_r"`` (each image's top-k by ``u_r``) or
            ``"prefix"`` (the first k of the static ranking); in the static env it needs ``runtime=``.
        device: Where the model runs and the reward images live.

    Example:
        >>> from envs.common import EnvSettings
        >>> from envs.runtime import RuntimePruningEnv
        >>> from envs.static import StaticPruningEnv
        >>> settings = EnvSettings(budget=0.3)
        >>> StaticPruningEnv(settings=settings, num_val=16).pruning_target().budget
        0.3
        >>> RuntimePruningEnv(settings=settings).pruning_target().budget
        0.3
        >>> RuntimePruningEnv(settings=settings, budget=0.4)
        Traceback (most recent call last):
        ...
        ValueError: RuntimePruningEnv got budget=0.4 and settings.budget=0.3; pass one of them ...
    """

    model: str | nn.Module = "tiny_cnn"
    weights: str | Path | None = None
    dataset: str | ImageDataset = "synthetic"
    data_dir: str | Path | None = None
    split: str = "val"
    dataset_kwargs: Mapping[str, Any] | None = None
    budget: float | None = 0.5
    reward: str | RewardFn = "paper"
    budget_term: BudgetTerm | MeanBudgetTerm | None = None
    loss_scale: RunningLossScale | float | None = None
    runtime_order: str = "u_r"
    device: str | torch.device = "cpu"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The fields, in order: the keyword arguments every environment shares."""
        return tuple(f.name for f in fields(cls))

    def merge(self, kwargs: Mapping[str, Any], owner: str) -> dict[str, Any]:
        """``kwargs`` with every field not given taken from these settings.

        Raises:
            ValueError: a keyword in ``kwargs`` disagrees with the field of the same name (``owner`` names the
                environment in the message).
        """
        out = dict(kwargs)
        for name in self.names():
            mine = getattr(self, name)
            if name not in out:
                out[name] = mine
            elif not _same(out[name], mine):
                raise ValueError(
                    f"{owner} got {name}={out[name]!r} and settings.{name}={mine!r}; pass one of them "
                    f"(dataclasses.replace(settings, {name}=...) changes a setting)"
                )
        return out


#: The shared defaults, read by the environments' signatures (so they are written once, in :class:`EnvSettings`).
DEFAULTS = EnvSettings()


def _same(a: Any, b: Any) -> bool:
    """Whether a keyword and a setting agree: the same object, or equal plain values."""
    if a is b:
        return True
    plain = (str, int, float, bool, Path, torch.device, dict)
    if not (isinstance(a, plain) and isinstance(b, plain)):
        return False
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def accepts_settings(init: Callable[_P, _R]) -> Callable[_P, _R]:
    """Let an environment's ``__init__`` take ``settings: EnvSettings | None`` next to its keyword arguments.

    The wrapper removes ``settings`` and merges it into the keywords actually passed (:meth:`EnvSettings.merge`),
    so a keyword is a conflict only when it was given, whatever its value; the wrapped ``__init__`` then gets
    ``settings=None``.

    Raises:
        TypeError: ``settings`` is not an :class:`EnvSettings`.
    """

    @functools.wraps(init)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        settings = kwargs.pop("settings", None)
        if settings is None:
            return init(*args, **kwargs)
        owner = type(args[0]).__name__ if args else init.__qualname__
        merged = _check_settings(settings, owner).merge(kwargs, owner)
        return init(*args, **merged)

    return wrapper


def _check_settings(settings: Any, owner: str) -> EnvSettings:
    if not isinstance(settings, EnvSettings):
        raise TypeError(f"{owner}: settings must be an envs.common.EnvSettings, got {type(settings).__name__}")
    return settings


def load_reward_split(
    dataset: str | ImageDataset, data_dir: str | Path | None, split: str, **kwargs: Any
) -> ImageDataset:
    """The data an environment draws rewards from: ``val`` (or ``train``) of a registered dataset, never ``test``.

    Args:
        dataset: A registered name (:func:`pruning.data.list_datasets`) or a loaded dataset (its split is checked).
        data_dir: Data root for a name (``None``: ``$PRUNEGYM_DATA``, else the cache directory).
        split: ``"val"`` (rewards, model selection) or ``"train"``.
        **kwargs: Passed to :func:`pruning.data.get_dataset`.

    Raises:
        ValueError: the test split (reported accuracy only: an agent must never see it) or an unknown split.
        TypeError: ``dataset`` is neither a name nor an ``ImageDataset``.
    """
    if isinstance(dataset, ImageDataset):
        split = dataset.split
    if split == "test":
        raise ValueError(
            "the test split is reserved for reporting accuracy; an agent's reward must never see it. "
            "Use split='val' (a held-out part of the training set) or split='train'"
        )
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    if isinstance(dataset, ImageDataset):
        return dataset
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a registered name or an ImageDataset, got {type(dataset).__name__}")
    return get_dataset(dataset, split=split, root=data_dir, **kwargs)


def build_env_model(
    model: str | nn.Module, weights: str | Path | None, num_classes: int, *, predictor: bool
) -> nn.Module:
    """An environment's private, gated copy of ``model`` in eval mode with gradients off.

    Args:
        model: A registered name (built with seed 0 when ``weights`` is ``None``, so every env built from the
            same name holds the same net) or a module (deep-copied; a gated one is used as it is).
        weights: Weights for a model given by name.
        num_classes: Classifier outputs for a model given by name.
        predictor: Gate a plain model with runtime predictors (``True``) or as maskable units only (``False``).

    Raises:
        ValueError: ``weights`` given with a module.
        TypeError: ``model`` is neither a name nor a module.
    """
    if isinstance(model, str):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            base = get_model(model, num_classes=num_classes, weights=weights)
    elif isinstance(model, nn.Module):
        if weights is not None:
            raise ValueError("weights= applies to a model given by name; load them into the module instead")
        base = copy.deepcopy(model)
    else:
        raise TypeError(f"model must be a registered name or an nn.Module, got {type(model).__name__}")
    net = base if is_gated(base) else gate_model(base, predictor=predictor, inplace=True)
    return net.eval().requires_grad_(False)


@dataclass(frozen=True)
class TargetSpec:
    """What an agent needs to know of a PruneGym environment, as plain data: its answer to ``pruning_target()``.

    Every environment class answers it (:meth:`envs.static.StaticPruningEnv.pruning_target`,
    :meth:`envs.runtime.RuntimePruningEnv.pruning_target`, the same for ``RuntimePruningVecEnv``). The values
    are those of the call: a budget set later gives a new answer. They pickle and compare by value: the answer
    of a wrapped env, of a ``DummyVecEnv`` or of a ``SubprocVecEnv`` (``env_method("pruning_target")``) equals the
    env's own. The live model is not part of it; :func:`agents.unwrap.unwrap_env` reaches it in-process.

    Attributes:
        kind: ``"static"`` (static keep ratios, one per unit) or ``"runtime"`` (a keep ratio per unit and input).
        channels: Full output channels per unit.
        stored: Stored channels per unit: the runtime env's fixed static plan; for the static env all channels
            (its plan decides the stored counts).
        min_keep: The smallest keep ratio an action maps to.
        budget: MAC budget (fraction of the base model's MACs per input), or ``None``.
        param_budget: Parameter budget (fraction of the base backbone parameters), or ``None``; always ``None`` in
            the runtime env, whose stored channels are fixed.
        budget_index: Position of the MAC budget in the observation.
        action_dim: Size of the action (2 for the static env with ``learn_split``: keep ratio and R_r).
        tradeoff: R_r, the share of pruning done at runtime (the static env's default when it learns the split).
        criterion: Name of the static env's channel criterion (which channels a static keep count keeps);
            ``None`` in the runtime env, which ranks channels per input.
        runtime_in_loop: Whether a static env runs a runtime policy in the loop (``runtime=``); ``False`` in the
            runtime env.
        macs: The model's MACs as a function of the kept counts (:class:`pruning.accounting.MacCoefficients`).
    """

    kind: str
    channels: tuple[int, ...]
    stored: tuple[int, ...]
    min_keep: float
    budget: float | None
    param_budget: float | None
    budget_index: int
    action_dim: int
    tradeoff: float
    criterion: str | None
    runtime_in_loop: bool
    macs: MacCoefficients

    @property
    def num_units(self) -> int:
        """L: the number of prunable units (steps of a static episode)."""
        return len(self.channels)
