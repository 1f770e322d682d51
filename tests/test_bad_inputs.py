"""``train_agent.py`` refuses bad input with one line on stderr naming the cause and the fix, exit code 2, and no run
directory left behind: data that cannot be found or downloaded, a malformed ``.npz``, a missing device, a bad
``--n-envs``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROG = "train_agent.py: error:"
#: A run that would take seconds if it started: tiny model, synthetic data, no reference rows.
TINY = ["--model", "tiny_cnn", "--weights", "None", "--mode", "joint", "--rounds", "1", "--gate-epochs", "0", "0",
        "--cnn-epochs", "0", "--runtime-steps", "16", "--static-steps", "3", "--num-val", "16", "--no-reference",
        "-q"]  # fmt: skip


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[-3000:]}"
    assert lines[0].startswith(PROG), lines[0]
    return lines[0]


def test_empty_data_dir_without_network(tmp_path: Path) -> None:
    # a real download attempt through a proxy that refuses every connection: urllib's URLError, as offline
    empty, out = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    refuse = "http://127.0.0.1:9"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "prunegym_data")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"),
               http_proxy=refuse, https_proxy=refuse, HTTP_PROXY=refuse, HTTPS_PROXY=refuse)  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_agent.py"), *TINY, "--dataset", "cifar10", "--data-dir", str(empty),
         "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_line(proc.stderr)
    assert str(empty / "cifar10" / "train.npz") in line and str(empty / "cifar-10-batches-py") in line  # where
    assert "download" in line and "failed" in line  # the cause
    for fix in ("--data-dir", "train.npz", "PRUNEGYM_DATA", "--download", "network"):  # the three fixes
        assert fix in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    "content",
    [b"not an npz at all", "missing-labels"],
    ids=["garbage", "missing-labels"],
)
def test_malformed_npz_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | str) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    for split in ("train", "test"):
        path = data / f"{split}.npz"
        if content == "missing-labels":
            np.savez(path, images=np.zeros((20, 32, 32, 3), np.uint8))
        else:
            assert isinstance(content, bytes)
            path.write_bytes(content)
    assert main([*TINY, "--dataset", "cifar10", "--data-dir", str(data), "--no-download", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(data / "train.npz") in line and "expected an .npz with 'images'" in line
    assert not out.exists()


@pytest.mark.parametrize("device", ["cuda:{past_last}", "gpu"])
def test_device_this_machine_does_not_have(tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str) -> None:
    device = device.format(past_last=torch.cuda.device_count() if torch.cuda.is_available() else 7)
    out = tmp_path / "run"
    assert main([*TINY, "--dataset", "synthetic", "--device", device, "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--device {device}" in line.replace("'", "") and "cpu" in line  # the cause, and a device to use
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--n-envs", "0"], "--n-envs must be >= 1"), (["--n-envs", "-3"], "--n-envs must be >= 1"),
     (["--hyperparams", "runtime.n_envs=0"], "n_envs must be positive")],
    ids=["zero", "negative", "hyperparams"],
)  # fmt: skip
def test_n_envs_below_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main([*TINY, "--dataset", "synthetic", *args, "--out", str(out)]) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not out.exists()
