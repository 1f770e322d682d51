"""Shared fixtures: where the real data and weights are (``../shared`` beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one share of the cores per xdist worker: more intra-op threads only oversubscribe the CPU
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data/weights directory: ``$PRUNEGYM_SHARED``, else ``../shared`` next to the repository."""
    env = os.environ.get("PRUNEGYM_SHARED")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def cifar10_dir(shared_dir: Path) -> Path:
    """``<shared>/data/cifar10`` with train/val/test.npz; skips the test when it is absent."""
    path = shared_dir / "data" / "cifar10"
    if not (path / "test.npz").is_file():
        pytest.skip(f"real CIFAR-10 data not found ({path / 'test.npz'}); set PRUNEGYM_SHARED to run it")
    return path


@pytest.fixture(scope="session")
def shared_models_dir(shared_dir: Path) -> Path:
    """``<shared>/models`` with the reference checkpoints; skips the test when it is absent."""
    path = shared_dir / "models"
    if not path.is_dir():
        pytest.skip(f"shared model checkpoints not found ({path}); set PRUNEGYM_SHARED to run this test")
    return path
