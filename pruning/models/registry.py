"""Model registry: ``register_model``, ``get_model``, ``list_models`` (torchvision's ``_api`` pattern)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from ..registry import Registry

__all__ = ["register_model", "get_model", "list_models", "get_model_builder"]

M = TypeVar("M", bound=Callable[..., nn.Module])

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str | None = None) -> Callable[[M], M]:
    """Register a model builder under ``name`` (default: the function's name).

    Args:
        name: Registry key. Registering the same name twice raises ``ValueError``.

    Returns:
        A decorator that returns the builder unchanged.
    """

    def wrapper(fn: M) -> M:
        _MODELS.add(name or fn.__name__, fn)
        return fn

    return wrapper


def list_models() -> list[str]:
    """Return the names of every registered model, sorted."""
    return _MODELS.names()


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """Return the builder registered as ``name``.

    Raises:
        ValueError: ``name`` is unknown; the message lists close matches and every registered name.
    """
    return _MODELS.get(name)


def get_model(
    name: str, *, num_classes: int = 10, weights: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """Build a registered model, optionally with weights.

    Args:
        name: A name from :func:`list_models`, e.g. ``"resnet20"``.
        num_classes: Size of the classifier output.
        weights: ``None`` (random init), ``"DEFAULT"`` (the model's public checkpoint, downloaded once through
            ``torch.hub`` with its hash check and cached in ``$TORCH_HOME/hub/checkpoints``), or a path to a
            local checkpoint (an akamaster ``.th`` file, a ``{'state_dict': ...}`` dict, or a bare state dict).
        **kwargs: Passed to the builder.

    Returns:
        The model in eval mode if weights were loaded, else in train mode (as built).
    """
    return get_model_builder(name)(num_classes=num_classes, weights=weights, **kwargs)
