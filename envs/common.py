"""Construction helpers shared by PruneGym's environments: the reward data split and the env's private model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.data import ImageDataset, get_dataset
from pruning.gating import gate_model, is_gated
from pruning.models import get_model

__all__ = ["build_env_model", "load_reward_split"]


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
