"""``compare``: policies × budgets on one base model, results.csv / results.md / pareto.png, and the CLI."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from agents.compare import compare, main, static_policies
from pruning import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL: dict[str, Any] = {
    "model": "tiny_cnn",
    "weights": None,
    "dataset": "synthetic",
    "num_val": 16,
    "test_images": 32,
    "progress": False,
}


def _table_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")][2:]  # skip the header and the rule
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_compare_writes_table_csv_and_plot(tmp_path: Path) -> None:
    policies, budgets = ["l1", "uniform", "neuron_merging"], [0.5, 0.7]
    rows = compare(policies, budgets, out_dir=tmp_path, latency=True, **SMALL)
    assert len(rows) == len(policies) * len(budgets)
    for row in rows:
        assert row["macs_fraction"] <= row["budget"] + 1e-12
        assert 0 < row["params_fraction"] <= 1
        assert row["latency_b1_ms"] > 0 and row["latency_b128_ms"] > 0
        assert row["test_images"] == 32
        if row["policy"] != "neuron_merging":  # merging changes the weights after the env scored the plan
            assert row["val_top1"] == pytest.approx(row["val_top1_env"])

    with (tmp_path / "results.csv").open(newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert all(float(r["macs_fraction"]) <= float(r["budget"]) + 1e-12 for r in csv_rows)

    table = _table_rows((tmp_path / "results.md").read_text())
    assert sorted((r[0], float(r[1])) for r in table) == sorted((p, b) for p in policies for b in budgets)

    png = tmp_path / "pareto.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(str(png))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_seeds_give_mean_and_std_for_random(tmp_path: Path) -> None:
    rows = compare(["random", "l2"], [0.5], seeds=(0, 1, 2), out_dir=tmp_path, latency=False, **SMALL)
    assert [r["seed"] for r in rows if r["policy"] == "random"] == [0, 1, 2]
    assert [r["seed"] for r in rows if r["policy"] == "l2"] == [0]  # deterministic: once
    table = {r[0]: r for r in _table_rows((tmp_path / "results.md").read_text())}
    assert table["random"][2] == "3" and "±" in table["random"][6]
    assert table["l2"][2] == "1" and "±" not in table["l2"][6]


def test_saved_agents_and_runtime_baselines_are_refused(tmp_path: Path) -> None:
    agent = tmp_path / "ppo_agent.zip"
    agent.write_bytes(b"")
    with pytest.raises(ValueError, match="saved agents yet"):
        compare([str(agent)], [0.5], out_dir=tmp_path / "out", **SMALL)
    with pytest.raises(ValueError, match="runtime evaluation lands"):
        compare(["fbs"], [0.5], out_dir=tmp_path / "out", **SMALL)
    with pytest.raises(ValueError, match="unknown baseline"):
        compare(["l3"], [0.5], out_dir=tmp_path / "out", **SMALL)
    assert not (tmp_path / "out").exists()
    assert "fbs" not in static_policies() and "neuron_merging" in static_policies()


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = [
        "--policies", "l1", "random", "--budgets", "0.6", "--model", "tiny_cnn", "--weights", "none",
        "--dataset", "synthetic", "--num-val", "16", "--test-images", "16", "--seeds", "0", "1",
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| policy |" in printed and "| random | 0.6 | 2 |" in printed
    assert all((out / name).is_file() for name in ("results.csv", "results.md", "pareto.png"))
    assert main([argv[0], str(tmp_path / "agent.zip"), *argv[3:]]) == 2
    assert "saved agents" in capsys.readouterr().err


def test_registered_as_prunegym_command() -> None:
    assert cli.get_command("compare").target == "agents.compare:main"


def test_equal_finetune_runs(tmp_path: Path) -> None:
    rows = compare(["l1"], [0.5], finetune_epochs=1, out_dir=tmp_path, latency=False, **SMALL)
    assert rows[0]["finetune_epochs"] == 1 and rows[0]["macs_fraction"] <= 0.5
    with pytest.raises(ValueError, match="finetune_epochs"):
        compare(["l1"], [0.5], finetune_epochs=-1, out_dir=tmp_path, **SMALL)
