"""What the benchmark scripts share: where the real data and weights are, and the machine flags."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def add_machine_args(p: argparse.ArgumentParser, *, data_file: str) -> None:
    """Add ``--threads``, ``--models-dir`` and ``--data-dir`` (defaults: 2 threads, ``../shared``)."""
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--models-dir", type=Path, default=SHARED / "models",
                   help="checkpoints directory (default ../shared/models relative to the repository)")
    p.add_argument("--data-dir", type=Path, default=SHARED / "data",
                   help=f"data root holding cifar10/{data_file} (default ../shared/data)")
