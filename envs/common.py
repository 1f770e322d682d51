"""What PruneGym's environments share: the reward data split, the env's private model, and the target they answer.

Every environment answers ``pruning_target()`` with a :class:`TargetSpec`, plain data that says what is pruned
and under which budgets. Agents, baselines and policies read it instead of the env's class or attributes, so one
call works on a wrapped env and on any stable-baselines3 ``VecEnv`` (``venv.env_method("pruning_target")``, in
other processes too: it pickles).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.accounting import MacCoefficients
from pruning.data import ImageDataset, get_dataset
from pruning.gating import gate_model, is_gated
from pruning.models import get_model

__all__ = ["TargetSpec", "build_env_model", "load_reward_split"]


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
