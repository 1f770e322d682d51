"""Saving and loading PruneGym models and training state: atomic writes, plain types, ``weights_only`` reads.

A PruneGym model file is a dict of plain Python values and tensors, so ``torch.load(path, weights_only=True)``
reads it without running pickled code::

    {
        "state_dict": {...},            # tensors, the model's own keys (no "module." prefix)
        "arch": "resnet20",             # a name from pruning.models.list_models()
        "num_classes": 10,
        "gated": True,                  # the prunable units are GatedConv (pruning.gating)
        "predictor": True,              # ... with runtime-importance predictors
        "normalization": {"mean": [0.4914, ...], "std": [0.2470, ...]},
        ...                             # anything else the writer adds (accuracy, recipe), plain types only
    }

:func:`load_model` rebuilds the architecture from the registry, gates it when the file says so, loads the
state dict strictly and returns the model in eval mode. Every write goes through :func:`atomic_save`: a crash
or an error while saving never leaves a half-written file in place of the old one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.models import get_model, input_normalization, load_checkpoint_file
from pruning.models.weights import state_dict_mismatch

__all__ = [
    "MODEL_FORMAT_KEYS",
    "atomic_save",
    "check_plain",
    "load_model",
    "model_from_record",
    "model_record",
    "save_model",
]

log = logging.getLogger(__name__)

#: Keys every PruneGym model file holds (see the module docstring).
MODEL_FORMAT_KEYS: tuple[str, ...] = (
    "state_dict",
    "arch",
    "num_classes",
    "gated",
    "predictor",
    "normalization",
)

_PLAIN_SCALARS = (type(None), bool, int, float, str)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` with ``torch.save`` so that ``path`` holds either the old file or the complete new one.

    The object is written to a temporary file in the same directory (``.<name>.<random>.tmp``), flushed and
    ``fsync``-ed, then moved over ``path`` with ``os.replace`` (atomic on POSIX and Windows when both lie on
    one file system), and the directory entry is synced where the OS allows it. If anything fails — the object
    cannot be pickled, the disk is full, the process is interrupted by an exception — the temporary file is
    removed, ``path`` is left as it was, and the error propagates. Parent directories are created.

    Args:
        obj: Anything ``torch.save`` accepts. Keep to tensors and plain types (dict, list, tuple, str, int,
            float, bool, None) if the file must be readable with ``torch.load(weights_only=True)``; see
            :func:`check_plain`.
        path: Destination file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    dest = Path(path).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name opened with "x" gets the usual permissions (0o666 & ~umask), unlike tempfile.mkstemp's 0o600.
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)
    return dest


def _fsync_dir(directory: Path) -> None:
    """Persist a rename by syncing its directory (POSIX only; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_plain(obj: Any, *, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` unless ``obj`` is made only of tensors and plain Python values.

    Plain values are ``None``, ``bool``, ``int``, ``float``, ``str``, and ``dict`` (string keys), ``list`` and
    ``tuple`` of plain values: what ``torch.load(weights_only=True)`` reads back. Numpy arrays and scalars,
    paths, dataclasses and other objects are refused, so a file that would later be unreadable is never
    written.

    Args:
        obj: The object to check.
        where: Name used in the error message (the path of the offending entry is appended).

    Raises:
        TypeError: An entry has another type; the message names the entry and says how to convert it.
    """
    if isinstance(obj, (torch.Tensor, *_PLAIN_SCALARS)):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            check_plain(value, where=f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            check_plain(value, where=f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which torch.load(weights_only=True) "
        "cannot read; convert it to a tensor or to plain Python values "
        "(dict, list, str, int, float, bool, None)"
    )


def _gating_flags(model: nn.Module) -> tuple[bool, bool]:
    """``(gated, predictor)`` of a model, read from its modules."""
    from pruning.gating import gated_units, is_gated

    if not is_gated(model):
        return False, False
    return True, any(unit.predictor is not None for unit in gated_units(model))


def model_record(
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    gated: bool | None = None,
    predictor: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build the dict :func:`save_model` writes (the model file format of the module docstring).

    Args:
        model: The model; its state dict is copied to the CPU.
        arch: Registry name the model was built with (``get_model(arch, ...)``).
        num_classes: Classifier outputs.
        gated: Whether the prunable units are ``GatedConv``. ``None`` reads it from the model.
        predictor: Whether the gated units have runtime predictors. ``None`` reads it from the model.
        **extra: More entries (accuracy, recipe, ...); plain types and tensors only.

    Returns:
        The record, checked with :func:`check_plain`.

    Raises:
        TypeError: An entry of ``extra`` is not a plain type.
        ValueError: ``extra`` repeats a format key, or ``gated``/``predictor`` contradict the model.
    """
    clash = sorted(set(extra) & set(MODEL_FORMAT_KEYS))
    if clash:
        raise ValueError(
            f"extra entries {clash} would overwrite the model file's own keys {MODEL_FORMAT_KEYS}"
        )
    found_gated, found_predictor = _gating_flags(model)
    if gated is not None and gated != found_gated:
        raise ValueError(f"gated={gated} but the model {'is' if found_gated else 'is not'} gated")
    if predictor is not None and gated and predictor != found_predictor:
        raise ValueError(
            f"predictor={predictor} but the model's gated units {'have' if found_predictor else 'have no'} "
            "predictors"
        )
    mean, std = input_normalization(model)
    record: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "arch": str(arch),
        "num_classes": int(num_classes),
        "gated": found_gated,
        "predictor": found_predictor,
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        **extra,
    }
    check_plain(record, where="model record")
    return record


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    gated: bool,
    predictor: bool,
    **extra: Any,
) -> Path:
    """Save a model so that :func:`load_model` can rebuild it, atomically.

    Args:
        path: Destination file (conventionally ``model.pt``).
        model: The model (plain or gated by :func:`pruning.gating.gate_model`).
        arch: Registry name the model was built with, e.g. ``"resnet20"``.
        num_classes: Classifier outputs.
        gated: Whether the model is gated; checked against the model.
        predictor: Whether its gated units have runtime predictors; checked against the model (ignored for
            plain models, which are saved with ``predictor=False``).
        **extra: More entries stored beside the model, e.g. ``val_top1=91.2``, ``recipe={...}``; plain types
            and tensors only.

    Returns:
        The written path.

    Raises:
        TypeError: An extra entry cannot be read back with ``weights_only=True``.
        ValueError: ``gated``/``predictor`` contradict the model, or ``extra`` repeats a format key.

    Example:
        >>> import tempfile, torch
        >>> from pruning.models import get_model
        >>> net = get_model("tiny_cnn")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_model(f"{d}/model.pt", net, arch="tiny_cnn", num_classes=10, gated=False,
        ...                    predictor=False, note="demo")
        ...     back = load_model(p)
        ...     x = torch.randn(2, 3, 32, 32)
        ...     torch.equal(net.eval()(x), back(x))
        True
    """
    record = model_record(
        model, arch=arch, num_classes=num_classes, gated=gated, predictor=predictor, **extra
    )
    out = atomic_save(record, path)
    log.info("saved %s (%s, gated=%s) to %s", type(model).__name__, arch, record["gated"], out)
    return out


def model_from_record(record: Mapping[str, Any], *, source: str = "checkpoint") -> nn.Module:
    """Rebuild a model from a record in the model file format (see the module docstring).

    Args:
        record: A dict with at least ``state_dict``, ``arch`` and ``num_classes``; ``gated``, ``predictor``
            and ``normalization`` are optional (plain, predictor-less defaults).
        source: Name used in error messages.

    Returns:
        The model, weights loaded strictly, ``normalization`` restored, in eval mode.

    Raises:
        ValueError: Keys are missing, the architecture is unknown, or the state dict does not fit it; the
            message names the mismatching keys and shapes.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{source} is a {type(record).__name__}, not a PruneGym model file (a dict)")
    missing = [k for k in ("state_dict", "arch", "num_classes") if k not in record]
    if missing:
        raise ValueError(
            f"{source} is not a PruneGym model file: missing {missing} (has {sorted(map(str, record))}). "
            "Plain weight checkpoints load with pruning.models.get_model(name, weights=path) instead."
        )
    arch, num_classes = str(record["arch"]), int(record["num_classes"])
    model = get_model(arch, num_classes=num_classes)
    if record.get("gated", False):
        from pruning.gating import gate_model

        model = gate_model(model, predictor=bool(record.get("predictor", True)), inplace=True)
    state = record["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: 'state_dict' is a {type(state).__name__}, expected a dict of tensors")
    expected = model.state_dict()
    problems = state_dict_mismatch(expected, state, require_batch_counts=True)
    if problems:
        raise ValueError(
            f"{source} does not fit {arch} (num_classes={num_classes}, gated={bool(record.get('gated'))}): "
            + problems
        )
    model.load_state_dict(state, strict=True)
    norm = record.get("normalization")
    if isinstance(norm, Mapping) and "mean" in norm and "std" in norm:
        model.normalization = (  # type: ignore[assignment]
            tuple(float(v) for v in norm["mean"]),
            tuple(float(v) for v in norm["std"]),
        )
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a model saved by :func:`save_model` (read with ``weights_only=True``).

    Args:
        path: The model file.

    Returns:
        The rebuilt model on the CPU, in eval mode, with ``model.normalization`` set to the ``(mean, std)``
        its inputs must be normalised with (see :func:`pruning.models.input_normalization`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is corrupt, holds pickled objects other than plain types and tensors, is not a
            PruneGym model file, or does not fit its architecture.
    """
    record = load_checkpoint_file(Path(path))
    model = model_from_record(record, source=str(path))
    log.info("loaded %s from %s", record.get("arch"), path)
    return model
