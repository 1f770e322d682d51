"""The same compare grid run serially, as Ray tasks (``--ray``) and with its static cells in forked workers
(``--static-envs``) gives the same rows.

The tests that start Ray need the ``[ray]`` extra (CI installs it) and skip without it; the forked workers
need none (and run before Ray starts in this module).
"""

from __future__ import annotations

import copy
import json
import operator
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _nets import randomize_
from torch import nn

import agents.baselines.base as baselines_base
import agents.compare as compare_module
from agents.baselines import BuiltModel, TrainContext, TrainedBaseline, register_baseline
from agents.compare import CompareSettings, compare, main, parse_policy, read_csv, run_cell
from agents.distributed import connect, run_tasks
from pruning.checkpoint import save_model
from pruning.models import get_model

SMALL: dict[str, Any] = {
    "weights": None,
    "dataset": "synthetic",
    "num_val": 16,
    "test_images": 32,
    "latency": False,
    "progress": False,
}
#: Measured on whichever process ran the cell: the only columns allowed to differ.
TIMING = ("latency_b1_ms", "latency_b128_ms", "seconds", "train_seconds")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")  # skips only where the [ray] extra is not installed
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def _untimed(rows: list[dict[str, Any]]) -> str:
    """The rows without their timing columns, as JSON (``nan == nan`` there, e.g. the base row's env top-1)."""
    return json.dumps([{k: v for k, v in row.items() if k not in TIMING} for row in rows])


def _resnet8() -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return randomize_(get_model("resnet8", num_classes=10))  # trained-looking: accuracies differ between rows


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """ResNet-8 on synthetic data, 2 policies × 2 budgets (× 2 seeds for ``random``), run serially.

    Returns:
        The grid's ``prunegym compare`` arguments (no ``--out``) and the serial run's output folder.
    """
    root = tmp_path_factory.mktemp("grid")
    model_file = save_model(root / "resnet8.pt", _resnet8(), arch="resnet8", num_classes=10, gated=False,
                            predictor=False)  # fmt: skip
    sizes = {"num_val": 64, "test_images": 128}  # enough images for the accuracies to differ between rows
    serial = compare(
        ["l1", "random"], [0.5, 0.3], model=model_file, seeds=[0, 1], include_base=True, out_dir=root / "serial",
        **{**SMALL, **sizes},
    )  # fmt: skip
    assert [(r["policy"], r["budget"], r["seed"]) for r in serial] == [
        ("base", 1.0, 0), ("l1", 0.5, 0), ("random", 0.5, 0), ("random", 0.5, 1),
        ("l1", 0.3, 0), ("random", 0.3, 0), ("random", 0.3, 1),
    ]  # fmt: skip
    assert serial[2]["keep_ratios"] != serial[3]["keep_ratios"]  # the seeds matter, so their order is checked
    assert len({r["val_top1"] for r in serial}) > 2 and len({r["test_top1"] for r in serial}) > 2
    argv = ["--policies", "l1", "random", "--budgets", "0.5", "0.3", "--seeds", "0", "1", "--model", str(model_file)]
    argv += ["--weights", "none", "--dataset", "synthetic", "--num-val", "64", "--test-images", "128"]
    return [*argv, "--no-latency", "--no-progress"], root / "serial"


def _same_outputs(out: Path, serial: Path) -> None:
    assert _untimed(read_csv(out / "results.csv")) == _untimed(read_csv(serial / "results.csv"))
    assert (out / "results.md").read_text() == (serial / "results.md").read_text()
    assert (out / "pareto.png").is_file()


def test_static_envs_in_forked_workers_give_the_serial_rows(
    grid: tuple[list[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, serial = grid
    ran = tmp_path / "ran.txt"  # one line per cell: the process and the kind (forked workers append too)
    run = compare_module._Cells.run

    def logged(self: Any, spec: Any, budget: float, seed: int) -> Any:
        with ran.open("a") as f:
            f.write(f"{os.getpid()} {spec.kind}\n")
        return run(self, spec, budget, seed)

    monkeypatch.setattr(compare_module._Cells, "run", logged)
    assert main([*argv, "--out", str(tmp_path / "p"), "--static-envs", "2"]) == 0
    _same_outputs(tmp_path / "p", serial)
    cells = [line.split() for line in ran.read_text().splitlines()]
    assert sorted(kind for _, kind in cells) == ["base"] + ["static"] * 6
    assert {pid for pid, kind in cells if kind == "base"} == {str(os.getpid())}
    assert len({pid for pid, kind in cells if kind == "static"} - {str(os.getpid())}) == 2  # two workers


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"static_envs": 0}, "static_envs must be a positive number"),
        ({"static_envs": 2, "ray": "local"}, "pass one of them"),
        ({"static_envs": 2, "device": "cuda"}, "use device='cpu' or static_envs=1"),
        ({"static_envs": 2, "latency_threads": 2}, "use latency_threads=1"),
    ],
)
def test_static_envs_refuses_what_forked_workers_cannot_do(
    options: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        compare(["l1"], [0.5], model="resnet8", out_dir=tmp_path, **{**SMALL, **options})


def test_ray_cli_gives_the_serial_rows(
    grid: tuple[list[str], Path], local_ray: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, serial = grid

    def in_this_process(*args: Any) -> None:
        raise AssertionError("with --ray the cells run in Ray workers, not in the driver")

    monkeypatch.setattr(compare_module._Cells, "run", in_this_process)
    assert main([*argv, "--out", str(tmp_path / "r"), "--ray"]) == 0
    _same_outputs(tmp_path / "r", serial)


def test_ray_reports_infeasible_cells_like_the_serial_run(local_ray: Any, tmp_path: Path) -> None:
    budgets = [0.5, 0.01]  # resnet8 keeps at least a quarter of its MACs: 0.01 is infeasible
    model = _resnet8()  # a module: pickled to the workers
    serial = compare(["l1"], budgets, model=model, out_dir=tmp_path / "s", **SMALL)
    distributed = compare(["l1"], budgets, model=model, out_dir=tmp_path / "r", ray="local", **SMALL)
    assert _untimed(distributed) == _untimed(serial) and [r["budget"] for r in distributed] == [0.5]
    report = (tmp_path / "r" / "results.md").read_text()
    assert "Skipped (no row):" in report and "l1 @ 0.01 (seed 0): budget=0.01 MAC fraction cannot be met" in report
    assert report == (tmp_path / "s" / "results.md").read_text()
    with pytest.raises(ValueError, match="every run was skipped"):
        compare(["l1"], [0.01], model="resnet8", out_dir=tmp_path / "none", ray="local", **SMALL)


def test_run_tasks_keeps_the_order_and_raises_a_failed_task(local_ray: Any) -> None:
    calls = [(float(i), 8.0) for i in range(6)]
    assert run_tasks(operator.truediv, calls, address="local") == [i / 8.0 for i in range(6)]
    assert run_tasks(operator.sub, [(5,), (7,)], address="local", shared=(10,)) == [5, 3]
    with pytest.raises(ZeroDivisionError):
        run_tasks(operator.truediv, [(1.0, 2.0), (1.0, 0.0), (3.0, 4.0)], address="local")
    assert local_ray.is_initialized()  # the caller's instance is used and left running


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "prunegym\[ray\]"'):
        with connect("local"):
            pass
    with pytest.raises(ImportError, match=r"prunegym\[ray\]"):
        compare(["l1"], [0.5], model="resnet8", out_dir=tmp_path, ray="local", **SMALL)


class _NoisyHead(TrainedBaseline):
    """A stand-in training-based method whose model draws from torch's global generator (a fresh layer's init)."""

    def build(self, base: nn.Module, context: TrainContext) -> BuiltModel:
        model = copy.deepcopy(base)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        noise = torch.randn(head.weight.shape)  # unseeded on purpose: the cell's seed must fix it
        with torch.no_grad():
            head.weight.add_(noise)
        return BuiltModel(
            model=model.eval(), macs_fraction=1.0, params_fraction=1.0, keep_ratios=None,
            info={"noise": float(noise.abs().sum())},
        )  # fmt: skip


def test_a_cell_depends_on_its_own_seed_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes the Ray rows equal the serial ones: no cell sees the global random state left before it."""
    monkeypatch.setattr(baselines_base, "_BASELINES", baselines_base._BASELINES.copy())  # restored afterwards
    register_baseline("noisy_head")(_NoisyHead)
    settings = CompareSettings(
        model="tiny_cnn", weights=None, gated_model=None, dataset="synthetic", data_dir=None, num_val=16,
        test_images=32, finetune_epochs=0, finetune_images=None, train_epochs=0.0, latency=True,
        latency_threads=1, device="cpu", progress=False,
    )  # fmt: skip
    spec = parse_policy("noisy_head")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = run_cell(settings, spec, 1.0, 0)
    assert isinstance(first, dict)
    assert torch.equal(torch.get_rng_state(), before)  # restored, though the latency input drew from it
    torch.manual_seed(456)
    again, other = run_cell(settings, spec, 1.0, 0), run_cell(settings, spec, 1.0, 1)
    assert isinstance(again, dict) and isinstance(other, dict)
    assert _untimed([again]) == _untimed([first])
    assert json.loads(other["info"])["noise"] != json.loads(first["info"])["noise"]
