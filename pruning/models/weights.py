"""Loading checkpoints into models: public URLs with hash check, local files, clear errors.

Every checkpoint is read with ``weights_only=True`` (no pickled code runs). Accepted layouts:

* the public akamaster CIFAR ResNets: ``{'state_dict': {'module.conv1.weight': ...}, 'best_prec1': ...}``
  (``module.`` prefix from ``DataParallel``, no ``num_batches_tracked`` buffers);
* PruneGym's own checkpoints: ``{'state_dict': {...}}`` without prefix (other keys ignored);
* a bare state dict.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..data import CIFAR_MEAN, CIFAR_STD

__all__ = [
    "CIFAR10_NORMALIZATION",
    "IMAGENET_NORMALIZATION",
    "Weights",
    "extract_state_dict",
    "input_normalization",
    "load_checkpoint_file",
    "load_weights",
    "state_dict_mismatch",
]

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=nn.Module)

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]
#: CIFAR-10 channel mean and std on [0, 1] pixels: the default input normalisation of PruneGym models.
CIFAR10_NORMALIZATION: Normalization = (CIFAR_MEAN, CIFAR_STD)
#: ImageNet statistics, which the public akamaster checkpoints were trained with (their ``main.py``); on the
#: JPEG copy of CIFAR-10 the benchmarks use, using them instead of CIFAR's is worth ~0.3-0.5 points of top-1.
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def input_normalization(model: nn.Module) -> Normalization:
    """Return the ``(mean, std)`` a model's weights expect its inputs to be normalised with.

    Loading weights records it on the model (attribute ``normalization``); models without that attribute
    use :data:`CIFAR10_NORMALIZATION`.
    """
    return getattr(model, "normalization", CIFAR10_NORMALIZATION)


@dataclass(frozen=True)
class Weights:
    """A public checkpoint with its metadata (torchvision's ``WeightsEnum`` entry, flattened).

    Attributes:
        url: Download address; its file name ends in ``-<first 8 hex digits of sha256>``, which
            ``torch.hub`` checks.
        num_classes: Classes the checkpoint was trained for.
        meta: Free-form metadata: published accuracy, recipe, source.
    """

    url: str
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        PUBLIC_FILE_NAMES.add(self.url.rsplit("/", 1)[-1])


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor state dict inside a loaded checkpoint, ``module.`` prefixes stripped.

    Raises:
        ValueError: ``obj`` holds no state dict.
    """
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{source} holds no state dict: expected a dict of tensors, or a dict with a 'state_dict' entry"
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_checkpoint_file(path: str | Path) -> Any:
    """Read a checkpoint file with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable PyTorch checkpoint (truncated, corrupt or pickled code).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p}; pass weights=None, 'DEFAULT' or an existing file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt files
        raise ValueError(
            f"cannot read checkpoint {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "The file is corrupt, truncated, or not a PyTorch checkpoint saved with plain tensors "
            "(PruneGym reads checkpoints with weights_only=True)."
        ) from e


def load_weights(
    model: ModelT, weights: str | Path | Weights | None, *, source_name: str = ""
) -> ModelT:
    """Load ``weights`` into ``model`` in place and return it in eval mode.

    Args:
        model: The freshly built model.
        weights: ``None`` (nothing to do), a :class:`Weights` entry (downloaded through
            ``torch.hub.load_state_dict_from_url`` with ``check_hash=True``), or a local path.
        source_name: Name used in error messages.

    Raises:
        ValueError: the checkpoint does not fit the model; the message lists missing and unexpected keys
            and the shapes that differ, with what the model expects.
    """
    if weights is None:
        return model
    if isinstance(weights, Weights):
        obj = torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", check_hash=True, weights_only=True, progress=False
        )
        src = weights.url
        norm = weights.meta.get("normalization")
    else:
        obj = load_checkpoint_file(weights)
        src = str(weights)
        norm = _normalization_of(obj, Path(weights).name)
    state = extract_state_dict(obj, source=src)
    expected = model.state_dict()
    problems = state_dict_mismatch(expected, state)
    if problems:
        exp = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(expected.items())[:4])
        raise ValueError(
            f"checkpoint {src} does not fit {source_name or type(model).__name__}: {problems}. "
            f"The model expects {len(expected)} entries such as {exp}, ...; check the model name and "
            "num_classes."
        )
    model.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    if norm is not None:
        model.normalization = norm  # type: ignore[assignment]
    log.info("loaded weights from %s", src)
    return model.eval()


def _normalization_of(obj: Any, file_name: str) -> Normalization | None:
    """Which input normalisation a checkpoint file was trained with, when the file says or is known."""
    if isinstance(obj, Mapping) and isinstance(obj.get("normalization"), Mapping):
        n = obj["normalization"]
        return (tuple(float(v) for v in n["mean"]), tuple(float(v) for v in n["std"]))  # type: ignore[return-value]
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    akamaster = (
        isinstance(state, Mapping)
        and "best_prec1" in obj
        and all(str(k).startswith("module.") for k in state)
    )
    if akamaster or file_name in PUBLIC_FILE_NAMES:
        return IMAGENET_NORMALIZATION
    return None


#: File names of the public checkpoints (filled by the model modules that declare :class:`Weights`).
PUBLIC_FILE_NAMES: set[str] = set()


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], *, require_batch_counts: bool = False
) -> str | None:
    """Describe how ``state`` fails to fit a model whose state dict is ``expected``, or ``None`` if it fits.

    Args:
        expected: The model's ``state_dict()``.
        state: The loaded tensors.
        require_batch_counts: Count absent ``num_batches_tracked`` buffers as missing (public checkpoints lack
            them, so by default they are tolerated).

    Returns:
        ``"missing keys [...] / unexpected keys [...] / shape mismatches: k: file (..), model (..)"`` (the
        parts that apply) or ``None``.
    """
    missing = [
        k for k in expected if k not in state and (require_batch_counts or not k.endswith("num_batches_tracked"))
    ]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_short(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        parts.append("shape mismatches: " + "; ".join(shapes[:5]))
    return " / ".join(parts) or None


def _short(keys: list[str], n: int = 6) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") + "]"
