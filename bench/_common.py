"""What the benchmark scripts share: where the real data and weights are, and the machine flags."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: Where ``bench/protocol_cifar10.py`` keeps its row files (committed) and its learned rows' checkpoints (not);
#: a distilled grid adds ``_distill<ALPHA>`` to both names.
PROTOCOL_RECORDS = REPO / "bench" / "records" / "protocol_cifar10"
PROTOCOL_RUNS = REPO / "runs" / "protocol_cifar10"
#: The committed grid (``bench/protocol_cifar10.py --distill 0.5``): its row files and checkpoints, where
#: ``bench/deploy_latency.py`` and ``bench/per_input_cifar10.py`` look by default.
GRID_RECORDS = PROTOCOL_RECORDS.with_name(PROTOCOL_RECORDS.name + "_distill0.5")
GRID_RUNS = PROTOCOL_RUNS.with_name(PROTOCOL_RUNS.name + "_distill0.5")


def add_machine_args(p: argparse.ArgumentParser, *, data_file: str) -> None:
    """Add ``--threads``, ``--models-dir`` and ``--data-dir`` (defaults: 2 threads, ``../shared``)."""
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--models-dir", type=Path, default=SHARED / "models",
                   help="checkpoints directory (default ../shared/models relative to the repository)")
    p.add_argument("--data-dir", type=Path, default=SHARED / "data",
                   help=f"data root holding cifar10/{data_file} (default ../shared/data)")


def resolve_shared(args: argparse.Namespace) -> argparse.Namespace:
    """Apply ``PRUNEGYM_SHARED`` / ``PRUNEGYM_DATA`` to ``--models-dir`` / ``--data-dir`` left at their defaults.

    ``PRUNEGYM_SHARED`` names a folder holding ``models/`` and ``data/``; ``PRUNEGYM_DATA`` a data root alone.
    Flags given on the command line win. Returns ``args`` (changed in place).
    """
    shared = os.environ.get("PRUNEGYM_SHARED")
    if shared and args.models_dir == SHARED / "models":
        args.models_dir = Path(shared) / "models"
    if args.data_dir == SHARED / "data":
        if shared:
            args.data_dir = Path(shared) / "data"
        elif os.environ.get("PRUNEGYM_DATA"):
            args.data_dir = Path(os.environ["PRUNEGYM_DATA"])
    return args


def alternating_times(
    fns: dict[str, Callable[[torch.Tensor], object]], inputs: Sequence[torch.Tensor], repeats: int, desc: str,
    warmup: int = 10,
) -> dict[str, list[float]]:
    """Seconds of every call of each function; in every iteration each function runs once on the same input.

    Alternating the functions inside one loop spreads slow drifts (frequency, other load) over all of them.
    Iteration ``i`` uses ``inputs[i % len(inputs)]``; ``warmup`` untimed iterations come first.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for i in range(warmup):
            for f in fns.values():
                f(inputs[i % len(inputs)])
        for i in tqdm(range(repeats), desc=desc, leave=False, file=sys.stderr):
            x = inputs[i % len(inputs)]
            for k, f in fns.items():
                t0 = time.perf_counter()
                f(x)
                times[k].append(time.perf_counter() - t0)
    return times


def fastest(
    fns: dict[str, Callable[[torch.Tensor], object]], inputs: Sequence[torch.Tensor], repeats: int, desc: str
) -> dict[str, float]:
    """Fastest single-call seconds of each function (:func:`alternating_times`)."""
    return {k: min(v) for k, v in alternating_times(fns, inputs, repeats, desc).items()}
