"""``prunegym export RUN_DIR``: a finished ``train_agent.py`` run's pruned model as a TorchScript or ONNX file.

Two kinds of model (:mod:`pruning.deploy` builds them):

* ``dynamic`` (the default when the run has a runtime agent): the exported static model with the runtime
  agent fused inside (:mod:`agents.fused`), computing per image only the channels the agent keeps. TorchScript:
  frozen with every CNN operation kept (the agent's first layer folded), so it keeps the channels of
  ``agents.cli.load_run``'s model. A batch is computed at once, every unit on the channels some image of the batch
  keeps (the longest kept prefix in prefix order, the union of the top-k sets in ``u_r`` order), each image's
  others zeroed; image by image where a keep set also depends on a static set (``u_r`` order with R_r < 1) or a
  producer's count (plain nets) (:func:`pruning.deploy.dynamic_deployable`). ONNX (prefix runtime order
  only, ``runtime_order="prefix"``: kept channels are weight slices): input ``images`` ``(1, 3, 32, 32)``, outputs
  ``logits`` and ``kept`` (every unit's kept channel count); checked image by image in ONNX Runtime, counts
  included. A ``u_r``-order run picks channels by top-k and has no ONNX form.
* ``static``: the exported static model with runtime pruning off (every stored channel; in a gated export
  the predictors still scale the channels per image). Any batch size; TorchScript or ONNX (checked in ONNX
  Runtime).

``--channels-last`` stores a TorchScript file's weights channels-last (NHWC), which runs NHWC convolutions: the
fastest TorchScript form of both kinds measured in ``bench/deploy_latency.py``.

The file is checked against the PyTorch model before it is written (logits within ``--atol``) and written
atomically: an error leaves nothing behind. Inputs are normalised images ``(N, 3, 32, 32)`` (the
normalisation is printed). Run it with ``torch.jit.load(path)(x)`` or ``onnxruntime.InferenceSession(path)``
(input ``images``, output ``logits``).

Examples::

    prunegym export runs/JointPruning__ppo__0__20261125-101500                  # dynamic TorchScript
    prunegym export runs/JointPruning__ppo__0__20261125-101500 --format onnx    # ONNX (dynamic for prefix runs)
    prunegym export RUN_DIR --kind static --format torchscript --out model.pt
    prunegym export RUN_DIR --channels-last                                       # NHWC weights
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from pruning.cli import HelpFormatter
from pruning.deploy import (
    dynamic_deployable,
    dynamic_onnx_deployable,
    save_dynamic_onnx,
    save_onnx,
    save_torchscript,
    static_deployable,
)
from pruning.export import DynamicModel, load_exported
from pruning.gating import gated_units, is_gated
from pruning.models import input_normalization

__all__ = ["FORMATS", "KINDS", "export_run", "main"]

#: File formats and their default file names' suffixes.
FORMATS: dict[str, str] = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
#: What can be exported; ``auto``: dynamic when the run has a runtime agent and the format allows it (ONNX: prefix
#: runtime order only).
KINDS = ("auto", "dynamic", "static")


def export_run(
    run_dir: str | Path,
    *,
    fmt: str = "torchscript",
    kind: str = "auto",
    out: str | Path | None = None,
    atol: float = 1e-4,
    channels_last: bool = False,
) -> tuple[Path, str]:
    """Export a finished run's pruned model to a file.

    Args:
        run_dir: A directory written by ``train_agent.py`` (it has ``results.json``).
        fmt: ``"torchscript"`` or ``"onnx"``.
        kind: ``"dynamic"`` (the runtime agent inside; ONNX only for prefix-order runs), ``"static"`` (runtime
            pruning off) or ``"auto"`` (dynamic when the run has a runtime agent and ``fmt`` allows it).
        out: Destination file; default ``RUN_DIR/model_<kind><suffix>`` (``.torchscript.pt``, ``.onnx``).
        atol: Largest absolute logit difference between the file and PyTorch accepted.
        channels_last: A TorchScript file (static or dynamic) with channels-last (NHWC) weights
            (:func:`pruning.deploy.to_torchscript`); inputs stay NCHW. Measured in ``bench/deploy_latency.py``
            (form ``TorchScript CL``).

    Returns:
        ``(path, kind)``: the written file and the kind exported.

    Raises:
        FileNotFoundError: the run is not finished (no ``results.json``) or a file is missing.
        ValueError: an unknown format or kind, a dynamic ONNX export of a ``u_r``-order run, a dynamic export of
            a run without a runtime agent, ``channels_last`` for an ONNX file, or an
            agent that cannot be fused (a policy SB3's ``predict`` alone can run).
        ImportError: ONNX export without ``onnx`` / ``onnxscript`` / ``onnxruntime`` (the ``export`` extra).
        RuntimeError: the file's logits disagree with PyTorch's (nothing is written).
    """
    from agents.cli import AGENT_FILES, EXPORTED_FILE, RESULTS_FILE, load_run

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    root = Path(run_dir)
    if not (root / RESULTS_FILE).is_file():
        raise FileNotFoundError(
            f"{root} has no {RESULTS_FILE}: the run did not finish (resume it with train_agent.py --resume), "
            "so there is no final model to export"
        )
    has_agent = (root / AGENT_FILES["runtime"]).is_file()
    prefix = fmt == "onnx" and _prefix_order(root / EXPORTED_FILE)
    if kind == "auto":
        kind = "dynamic" if has_agent and (fmt == "torchscript" or prefix) else "static"
    if kind == "dynamic" and fmt == "onnx" and not prefix:
        raise ValueError(
            "this run's dynamic model cannot be exported to ONNX: it picks each image's channels by u_r top-k "
            "(runtime order 'u_r'); only prefix-order runs (runtime_order='prefix', kept channels = weight "
            "slices) have an ONNX form. Use --format torchscript, or --kind static for an ONNX file without "
            "runtime pruning"
        )
    if kind == "dynamic" and not has_agent:
        raise ValueError(f"{root} has no runtime agent ({AGENT_FILES['runtime']}); export --kind static")
    if channels_last and fmt != "torchscript":
        raise ValueError(
            f"channels_last applies to TorchScript files only (asked: --format {fmt}); ONNX Runtime picks its own "
            "layout: drop --channels-last"
        )
    path = Path(out) if out is not None else root / f"model_{kind}{FORMATS[fmt]}"
    example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if kind == "dynamic":
        dyn, _ = load_run(root, dynamic=True)
        assert isinstance(dyn, DynamicModel)
        try:
            if fmt == "onnx":
                images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
                return save_dynamic_onnx(dynamic_onnx_deployable(dyn), path, images, atol=atol), kind
            module = dynamic_deployable(dyn)
        except TypeError as err:
            raise ValueError(f"{err}; export --kind static instead") from err
        # its fastest form: float rounding apart
        return save_torchscript(module, path, example, atol=atol, channels_last=channels_last), kind
    module = static_deployable(load_exported(root / EXPORTED_FILE))
    if fmt == "onnx":
        return save_onnx(module, path, example, atol=atol), kind
    return save_torchscript(module, path, example, atol=atol, channels_last=channels_last), kind


def _prefix_order(exported: Path) -> bool:
    """Whether the run's exported model has the prefix runtime order in every unit (False when unreadable)."""
    try:
        model = load_exported(exported)
    except (FileNotFoundError, ValueError):
        return False
    return is_gated(model) and all(g.runtime_order == "prefix" for g in gated_units(model))


def build_parser() -> argparse.ArgumentParser:
    """The ``prunegym export`` command line."""
    p = argparse.ArgumentParser(
        prog="prunegym export", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("run_dir", type=Path, help="a finished train_agent.py run directory")
    p.add_argument("--format", dest="fmt", choices=list(FORMATS), default="torchscript", help="file format")
    p.add_argument(
        "--kind", choices=KINDS, default="auto",
        help="dynamic: the runtime agent inside (ONNX: prefix-order runs only); static: runtime pruning off; "
        "auto: dynamic when the run has a runtime agent and the format allows it",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="destination file (default RUN_DIR/model_<kind><suffix>)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest logit difference to PyTorch accepted")
    p.add_argument("--channels-last", action="store_true",
                   help="TorchScript only: channels-last (NHWC) weights, NHWC convolutions (faster here)")  # fmt: skip
    return p


def _normalization(model: nn.Module) -> str:
    mean, std = input_normalization(model)
    return f"mean {tuple(round(v, 4) for v in mean)}, std {tuple(round(v, 4) for v in std)}"


def main(argv: list[str] | None = None) -> int:
    """Export a finished run's pruned model to TorchScript or ONNX (``prunegym export``).

    Returns:
        0 on success, 2 on an error (one line on stderr, nothing written).
    """
    args = build_parser().parse_args(argv)
    try:
        path, kind = export_run(
            args.run_dir, fmt=args.fmt, kind=args.kind, out=args.out, atol=args.atol, channels_last=args.channels_last
        )
        from agents.cli import EXPORTED_FILE

        norm = _normalization(load_exported(args.run_dir / EXPORTED_FILE))
    except (FileNotFoundError, ValueError, ImportError, RuntimeError, json.JSONDecodeError) as err:
        print(f"prunegym export: error: {err}", file=sys.stderr)
        return 2
    if kind == "dynamic" and args.fmt == "onnx":
        shape, batch = "(1, 3, 32, 32)", "one image per call; outputs logits and kept (channels kept per unit)"
    else:
        shape, batch = "(N, 3, 32, 32)", "any batch size"
    print(f"wrote {path} ({kind} model, {args.fmt}; normalised inputs {shape}, {norm}; {batch})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
