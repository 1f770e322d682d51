"""``prunegym sweep``: train_agent.py runs over a grid as Ray Tune trials, failed trials reported, not dropped.

The tests that start Ray need the ``[ray]`` extra (CI installs it) and skip without it.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.sweep import SweepGrid, main, parse_hyperparam_axes, run_trial, sweep
from pruning.checkpoint import save_model
from pruning.models import get_model
from pruning.runs import UsageError

#: A static-mode run on the tiny model and synthetic data in a few seconds.
TRAIN_ARGS = (
    "--model", "tiny_cnn", "--dataset", "synthetic", "--weights", "None", "--mode", "static", "--rounds", "1",
    "--gate-epochs", "1", "0", "--cnn-epochs", "1", "--static-steps", "24", "--num-val", "32", "--test-images", "64",
    "--no-reference", "-q", "--hyperparams", "static.n_steps=24", "static.batch_size=24",
)  # fmt: skip


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")  # skips only where the [ray] extra is not installed
    pytest.importorskip("ray.tune")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_killed_and_raising_trials_are_rows_marked_failed(local_ray: Any, tmp_path: Path) -> None:
    def dies_or_raises(argv: list[str]) -> dict[str, Any]:  # local: Ray pickles it by value for the workers
        """The real trial, except that seed 1 kills its own worker process and seed 2 raises."""
        seed = argv[argv.index("--seed") + 1]
        if seed == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        if seed == "2":
            raise RuntimeError("trial two broke")
        return run_trial(argv)

    grid = SweepGrid(train_args=TRAIN_ARGS, seeds=(0, 1, 2), budgets=(0.5,))
    rows = sweep(grid, tmp_path / "sweep", trainable=dies_or_raises, progress=False)

    names = ["ppo__budget=0.5__seed=0", "ppo__budget=0.5__seed=1", "ppo__budget=0.5__seed=2"]
    table = _read(tmp_path / "sweep" / "results.csv")
    assert [r["trial"] for r in table] == [r["trial"] for r in rows] == names  # no trial dropped, grid order
    assert [r["status"] for r in table] == ["ok", "failed", "failed"]
    assert table[0]["error"] == "" and 0.0 < float(table[0]["macs_fraction"]) <= 1.0
    assert "died" in table[1]["error"].lower()  # the worker process was killed
    assert table[2]["error"] == "RuntimeError: trial two broke"
    assert table[1]["test_top1"] == "nan" and table[2]["test_top1"] == "nan"

    run_dir = Path(table[0]["run_dir"])  # a normal train_agent.py run directory under the sweep folder
    assert run_dir == (tmp_path / "sweep" / names[0]).resolve()
    results = json.loads((run_dir / "results.json").read_text())
    assert float(table[0]["test_top1"]) == pytest.approx(results["pruned"]["test"]["top1"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["args"]["seed"] == 0 and config["args"]["hyperparams"] == [
        "static.n_steps=24",
        "static.batch_size=24",
    ]

    report = (tmp_path / "sweep" / "results.md").read_text()
    assert "failed: RuntimeError: trial two broke" in report and report.count("\n| ppo__") == 3
    assert (tmp_path / "sweep" / "pareto.png").is_file() and (tmp_path / "sweep" / "tune").is_dir()


def test_cli_runs_the_grid_and_exits_nonzero_on_a_failed_trial(
    local_ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths of the train arguments are the driver's, not Tune's trial folder
    save_model("tiny.pt", get_model("tiny_cnn", num_classes=10), arch="tiny_cnn", num_classes=10, gated=False,
               predictor=False)  # fmt: skip
    out = tmp_path / "sweep"
    argv = ["--budgets", "0.5", "0.25", "--hyperparams", "static.n_steps=24,1", "--out", "sweep"]
    train_args = [*TRAIN_ARGS, "--weights", "tiny.pt"]
    assert main([*argv, "--no-progress", "--", *train_args]) == 1  # PPO refuses a one-step rollout

    table = _read(out / "results.csv")
    assert [(r["budget"], r["hp:static.n_steps"], r["status"]) for r in table] == [
        ("0.5", "24", "ok"), ("0.5", "1", "failed"), ("0.25", "24", "ok"), ("0.25", "1", "failed"),
    ]  # fmt: skip
    assert all(r["error"] for r in table if r["status"] == "failed")
    for row in table[::2]:  # the finished runs met their own budgets, with the grid's override last
        config = json.loads((Path(row["run_dir"]) / "config.json").read_text())
        assert config["args"]["budget"] == float(row["budget"])
        assert config["args"]["hyperparams"][-1] == "static.n_steps=24" and config["args"]["weights"] == "tiny.pt"
    assert "2 of 4 trial(s) failed" in capsys.readouterr().out


def test_hyperparam_axes_split_at_top_level_commas() -> None:
    axes = parse_hyperparam_axes(["learning_rate=1e-4,3e-4", "static.policy_kwargs=dict(net_arch=[64,64]),{}"])
    assert axes == {"learning_rate": ["1e-4", "3e-4"], "static.policy_kwargs": ["dict(net_arch=[64,64])", "{}"]}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_hyperparam_axes(["learning_rate"])
    with pytest.raises(UsageError, match="given twice"):
        parse_hyperparam_axes(["gamma=0.9", "gamma=0.99"])


def test_options_the_sweep_sets_are_refused_after_the_separator(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--seed \(use the sweep's --seeds\)"):
        SweepGrid(train_args=(*TRAIN_ARGS, "--seed", "3")).check()
    assert main(["--out", str(tmp_path / "s"), "--", *TRAIN_ARGS, "--budget", "0.3"]) == 2
    assert not (tmp_path / "s").exists()  # refused before anything ran or was written


def test_without_ray_tune_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "prunegym\[ray\]"'):
        sweep(SweepGrid(train_args=TRAIN_ARGS), tmp_path / "sweep")
    assert main(["--out", str(tmp_path / "s"), "--", *TRAIN_ARGS]) == 2
