"""The fair protocol (``agents.protocol``, ``prunegym protocol``, ``bench/protocol_cifar10.py``): equal training,
equal budgets, reuse of finished rows, the tables and the summary line."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import agents.protocol as protocol
from agents.baselines import get_baseline
from agents.protocol import (
    BUDGET_TOLERANCE,
    DEFAULT_ROWS,
    GATE_SHARE,
    HAND_POLICIES,
    LEARNED_ROWS,
    SEED_METHODS,
    SEED_SHARE,
    SEED_VARIANTS,
    Cell,
    LearnedSettings,
    Recipe,
    RowContext,
    RowResult,
    best_hand,
    best_learned,
    format_table,
    list_rows,
    load_learned_row,
    main,
    read_cell,
    register_row,
    row_path,
    run_protocol,
    split_epochs,
    static_row,
    summary_line,
)
from pruning import cli
from pruning.data import get_dataset
from pruning.models import get_model
from pruning.train import dataset_for_model

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_TRAIN = 512  # the synthetic train split
LR = 0.01
TINY: dict[str, Any] = {
    "model": "tiny_cnn",
    "weights": None,
    "dataset": "synthetic",
    "num_val": 32,
    "recipe": Recipe(lr=LR, batch_size=32),
    "progress": False,
}
#: Agents that learn in a second: short PPO rollouts, one round.
LEARNED = LearnedSettings(
    rounds=1, runtime_steps=128, static_steps=24, n_envs=8, num_val=32,
    hyperparams=("runtime.n_steps=16", "runtime.batch_size=32", "static.n_steps=24", "static.batch_size=24"),
)  # fmt: skip


class _Steps:
    """Counts real optimizer steps (a global post-step hook), optionally of one optimizer class only."""

    def __init__(self, kind: type[torch.optim.Optimizer] = torch.optim.Optimizer) -> None:
        self.kind, self.count = kind, 0

    def __enter__(self) -> _Steps:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if isinstance(optimizer, self.kind):
                self.count += 1

        self.handle = register_optimizer_step_post_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _cosine(step: int, total: int) -> float:
    return LR * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _row(name: str, top1: float, mac: float, *, seed: int = 0, kind: str = "static", group: str = "g") -> RowResult:
    hand = name.startswith("hand:")
    return RowResult(
        row=name, policy=name, kind=kind, hand=hand, cell=f"{group}_s{seed}", group=group, model="resnet20",
        budget=0.5, epochs=1.0, seed=seed, test_top1=top1, mac_fraction=mac, mac_fraction_max=mac,
        params_fraction=0.5, meets_budget=mac <= 0.5 + BUDGET_TOLERANCE,
    )  # fmt: skip


@pytest.fixture
def own_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A copy of the row registry for one test, so rows registered in it do not leak."""
    monkeypatch.setattr(protocol, "_ROWS", protocol._ROWS.copy())
    yield


# ------------------------------------------------------------------------------------------------------------
# the rules
# ------------------------------------------------------------------------------------------------------------


def test_learned_settings_default_to_the_schedule() -> None:
    import dataclasses

    from agents.schedule import ScheduleConfig

    learned, schedule = LearnedSettings(), ScheduleConfig()
    shared = {f.name for f in dataclasses.fields(learned)} & {f.name for f in dataclasses.fields(schedule)}
    assert shared == set("rounds runtime_steps static_steps n_envs num_val static_select static_min_keep".split())
    assert {k: getattr(learned, k) for k in shared} == {k: getattr(schedule, k) for k in shared}


def test_rows_are_registered_in_table_order() -> None:
    assert list_rows()[: len(DEFAULT_ROWS)] == list(DEFAULT_ROWS)
    assert {f"hand:{n}" for n in HAND_POLICIES} <= set(DEFAULT_ROWS) and set(LEARNED_ROWS) <= set(DEFAULT_ROWS)
    assert get_baseline("l2_gm").criterion == "l2_gm"  # FPGM's plain slicing, the hand:l2_gm row
    assert Cell("resnet20", None, 0.5, 1.0, 0).name == "resnet20_e1_b050_s0"
    assert Cell("resnet56", None, 0.25, 0.5, 3).name == "resnet56_e0p5_b025_s3"
    assert row_path("c", "hand:l1").name == "hand-l1.json"


@pytest.mark.parametrize(("epochs", "rounds"), [(1.0, 2), (3.0, 2), (0.3, 3), (1.0, 1), (0.0, 2)])
def test_split_epochs_adds_up_to_E(epochs: float, rounds: int) -> None:
    gate, cnn = split_epochs(epochs, rounds)
    assert gate + rounds * cnn == pytest.approx(epochs, abs=1e-12)
    assert gate == pytest.approx(GATE_SHARE * epochs) and cnn >= 0
    with pytest.raises(ValueError, match="epochs"):
        split_epochs(-1.0, rounds)
    with pytest.raises(ValueError, match="rounds"):
        split_epochs(epochs, 0)


def test_every_row_trains_E_epochs_with_one_cosine_and_meets_the_budget(tmp_path: Path) -> None:
    rows_run = ["l1", "hand:l2", "hand:random", "hand:neuron_merging", "fbs"]
    with _Steps() as steps:
        rows = run_protocol(rows=rows_run, budgets=[0.5], epochs=[1.5], out_dir=tmp_path, **TINY)
    # 1.5 epochs = 2 epochs over a seeded subset of 384 images = 2 × 12 steps of 32 images
    per_row = 2 * -(-384 // 32)
    assert steps.count == per_row * len(rows_run)  # every optimizer step is accounted for
    for r in rows:
        assert r.error is None and r.train_steps == per_row and r.train_images == 1.5 * N_TRAIN
        assert r.train_epochs == pytest.approx(1.5)
        # the cosine spans the whole E: peak at the first step, the last step's value of a 24-step schedule
        assert r.lr_first == pytest.approx(LR) and r.lr_last == pytest.approx(_cosine(per_row - 1, per_row))
        assert r.lr_last < 0.01 * LR
        assert r.meets_budget and r.mac_fraction <= 0.5 + BUDGET_TOLERANCE
        assert r.mac_fraction_max >= r.mac_fraction and 0 < r.params_fraction <= 1
        assert r.recipe["optimizer"] == "sgd" and r.recipe["nesterov"] and r.recipe["weight_decay"] == 1e-4
        assert r.test_images == 128 and 0 <= r.test_top1 <= 100 and r.train_seconds > 0
    by = {r.row: r for r in rows}
    assert by["l1"].kind == "static" and by["l1"].mac_fraction_max == by["l1"].mac_fraction  # a static plan
    assert all(0 <= by[n].extra["val_top1"] <= 100 for n in ("l1", "hand:l2", "hand:random"))  # for val choices
    assert by["fbs"].kind == "runtime" and by["fbs"].params_fraction == 1.0  # nothing removed, runtime only
    assert by["fbs"].extra["ratio"] == by["fbs"].extra["ratio_before_training"]  # constant counts per image
    assert len({json.dumps(r.settings, sort_keys=True) for r in rows}) == 1  # one base, one recipe, one cell


@pytest.mark.slow
def test_learned_rows_train_E_epochs_and_meet_the_budget(tmp_path: Path) -> None:
    budget = 0.5
    with _Steps(torch.optim.SGD) as steps:  # the agents' own optimizers are Adam: only CNN steps are SGD
        rows = run_protocol(
            rows=list(LEARNED_ROWS), budgets=[budget], epochs=[1.0], out_dir=tmp_path / "rows",
            runs_dir=tmp_path / "ckpt", learned=LEARNED, **TINY,
        )  # fmt: skip
    assert [r.row for r in rows] == list(LEARNED_ROWS)
    assert steps.count == sum(r.train_steps for r in rows)
    for r in rows:
        assert r.kind == "learned" and r.error is None
        # the static agent's plan is trained for the whole E; the others split it into gate stage + CNN phases
        static = r.row == "static_agent"
        rounds = 1 if static else LEARNED.rounds
        gate, cnn = (0.0, 1.0) if static else split_epochs(1.0, LEARNED.rounds)
        # one epoch in all: gate stage + CNN phase, each a seeded subset (rounded to whole images)
        assert abs(r.train_images - N_TRAIN) <= 1 and r.train_epochs == pytest.approx(1.0, abs=1 / N_TRAIN)
        gate_steps = -(-round(gate * N_TRAIN) // 32) if gate > 0 else 0
        assert r.train_steps == gate_steps + rounds * -(-round(cnn * N_TRAIN) // 32)
        assert r.lr_first == pytest.approx(LR) and r.lr_last < 0.02 * LR  # one cosine over the whole E
        assert r.rl_seconds > 0 and r.train_seconds > 0
        assert r.meets_budget == (r.mac_fraction <= budget + BUDGET_TOLERANCE)
        assert isinstance(r.extra["budget_guard"], dict)
        run_dir = tmp_path / "ckpt" / r.cell / "runs" / r.row
        assert (run_dir / "checkpoint.pt").is_file()  # a resumable schedule in runs_dir, apart from the rows
    # the row files alone (what a repository keeps) hold every row, and nothing else
    assert sorted(p.name for p in (tmp_path / "rows").rglob("*") if p.is_file()) == sorted(
        row_path(".", r.row).name for r in rows
    )
    by = {r.row: r for r in rows}
    assert by["runtime_agent"].params_fraction == 1.0 and by["static_agent"].params_fraction < 1.0
    assert by["static_agent"].mac_fraction_max == pytest.approx(by["static_agent"].mac_fraction)
    misses = sum(not r.meets_budget for r in rows)
    assert summary_line({"x": rows}).endswith(f"learned_budget_misses={misses}")
    # a finished row rebuilds as it was scored (checkpoint + final guard): the same test score and MACs
    base = get_model("tiny_cnn", num_classes=10)
    splits = {s: dataset_for_model(get_dataset("synthetic", split=s), base) for s in ("train", "val", "test")}
    for row in ("runtime_prefix", "static_agent"):
        trainer = load_learned_row(
            tmp_path / "rows",
            by[row].cell,
            row,
            base,
            {"train": splits["train"], "val": splits["val"]},
            runs_dir=tmp_path / "ckpt",
        )
        again = trainer.evaluate_plan(splits["test"])
        assert again["top1"] == pytest.approx(by[row].test_top1) and again["macs_fraction"] == pytest.approx(
            by[row].mac_fraction
        )
    assert load_learned_row(tmp_path / "rows", by["static_agent"].cell, "no_such_row", base, splits) is None


# ------------------------------------------------------------------------------------------------------------
# budgets: misses are flagged and never ranked
# ------------------------------------------------------------------------------------------------------------


def test_best_hand_is_the_best_row_meeting_the_budget() -> None:
    rows = [
        _row("hand:a", 60.0, 0.49),
        _row("hand:b", 70.0, 0.52),  # the best top-1, over its budget
        _row("hand:c", 65.0, 0.50, seed=0),
        _row("hand:c", 67.0, 0.504, seed=1),  # within the tolerance: mean 66
        _row("hand:d", 80.0, 0.48, seed=0),
        _row("hand:d", 81.0, 0.51, seed=1),  # over its budget in one seed: not ranked
        _row("l1", 90.0, 0.40),  # not a hand-designed candidate
        _row("joint", 50.0, 0.49, kind="learned"),
        _row("runtime_agent", 95.0, 0.6, kind="learned"),
    ]
    assert best_hand(rows) == ("hand:c", pytest.approx(66.0))
    assert best_learned(rows) == ("joint", 50.0)
    assert best_hand([r for r in rows if r.row in ("hand:b", "hand:d")]) is None
    with pytest.raises(ValueError, match="several cells"):
        best_hand([_row("hand:a", 1.0, 0.4), _row("hand:b", 1.0, 0.4, group="other")])


def test_a_row_over_its_budget_is_flagged_and_never_ranked(tmp_path: Path, own_rows: None) -> None:
    @register_row("hand:l1_wide", hand=True)
    def _wide(ctx: RowContext) -> RowResult:  # a real policy aiming at a larger budget than the cell's
        result = static_row(ctx, "l1", budget=ctx.cell.budget + 0.3)
        result.meets_budget = True  # a row function cannot decide this: the protocol checks the MACs itself
        return result

    rows = run_protocol(rows=["hand:l2", "hand:l1_wide"], budgets=[0.4], epochs=[0.25], out_dir=tmp_path, **TINY)
    l2, wide = rows
    assert l2.meets_budget and not wide.meets_budget and wide.mac_fraction > 0.4 + BUDGET_TOLERANCE
    assert wide.hand and math.isfinite(wide.test_top1)
    assert best_hand(rows) == ("hand:l2", l2.test_top1)
    stored = json.loads(row_path(tmp_path / wide.cell, wide.row).read_text())
    assert stored["meets_budget"] is False
    table = format_table(rows)
    assert "Missing the budget (not ranked): hand:l1_wide" in table
    assert re.search(r"^\| best_hand \| hand:l2 \|", table, re.M)

    # below what the static policies can reach (tiny_cnn's floor is 0.13 of its MACs): rows that miss, with
    # the reason; fbs (runtime floor 0.1 per unit) still meets it
    rows = run_protocol(rows=["hand:l2", "fbs"], budgets=[0.1], epochs=[0.25], out_dir=tmp_path, **TINY)
    l2, fbs = rows
    assert not l2.meets_budget and l2.error and "cannot be met" in l2.error and math.isnan(l2.test_top1)
    assert fbs.meets_budget and fbs.error is None
    assert best_hand(rows) is None
    assert summary_line({"c": rows}) == "c_best_hand=nan c_learned=nan learned_budget_misses=0"
    table = format_table(rows)
    assert "| best_hand | none meets the budget |" in table and "no (infeasible)" in table


# ------------------------------------------------------------------------------------------------------------
# finished rows, interrupted rows, reruns
# ------------------------------------------------------------------------------------------------------------


def test_finished_rows_are_reused_and_rerun_redoes_one(tmp_path: Path) -> None:
    kw = {"budgets": [0.5], "epochs": [0.5], "out_dir": tmp_path, **TINY}
    names = ["l1", "hand:l1", "hand:l2"]
    with _Steps() as steps:
        first = run_protocol(rows=names, **kw)
    per_row = -(-N_TRAIN // 2 // 32)
    assert steps.count == 2 * per_row  # hand:l1 is l1: copied, not trained again
    assert first[1].extra["same_as"] == "l1" and first[1].test_top1 == first[0].test_top1
    cell = tmp_path / first[0].cell
    files = {n: row_path(cell, n) for n in names}
    before = {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in files.items()}

    with _Steps() as steps:
        again = run_protocol(rows=names, **kw)
    assert steps.count == 0  # nothing trained
    assert {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in files.items()} == before
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]

    with _Steps() as steps:
        run_protocol(rows=names, rerun=["hand:l2"], **kw)
    assert steps.count == per_row
    assert files["l1"].stat().st_mtime_ns == before["l1"][0]
    assert files["hand:l2"].stat().st_mtime_ns != before["hand:l2"][0]

    # a finished row made with other settings is not silently mixed in
    with pytest.raises(ValueError, match="--rerun"):
        run_protocol(rows=names, **{**kw, "recipe": Recipe(lr=0.02, batch_size=32)})


def test_an_interrupted_row_is_run_again(tmp_path: Path) -> None:
    cell = tmp_path / Cell("tiny_cnn", None, 0.5, 0.5, 0).name
    cell.mkdir(parents=True)
    (cell / "l1.json.tmp").write_text('{"format": "prunegym.protocol.row.v1", "row": "l1", "test_')  # killed mid-write
    row_path(cell, "hand:l2").write_text('{"format": "prunegym.protocol.row.v1", "row": "hand:l2"')  # cut short
    with _Steps() as steps:
        rows = run_protocol(rows=["l1", "hand:l2"], budgets=[0.5], epochs=[0.5], out_dir=tmp_path, **TINY)
    assert steps.count == 2 * -(-N_TRAIN // 2 // 32)  # both rows trained
    assert not list(cell.glob("*.tmp"))
    assert [r.to_dict() for r in read_cell(tmp_path, cell.name)] == [r.to_dict() for r in rows]


# ------------------------------------------------------------------------------------------------------------
# tables and the summary line
# ------------------------------------------------------------------------------------------------------------


def test_table_shows_each_seed_and_rows_not_run() -> None:
    rows = [_row("hand:a", 60.0, 0.49, seed=0), _row("hand:a", 62.0, 0.47, seed=1)]
    table = format_table(rows, expected=["l1", "hand:a"])
    lines = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert "61.00 (60.00, 62.00)" in lines["hand:a"] and "| 0, 1 |" in lines["hand:a"]
    assert "| 0.4800 | 0.4900 |" in lines["hand:a"]  # mean of the means, then the largest
    assert "not run" in lines["l1"]
    assert lines["best_hand"].startswith("| best_hand | hand:a | 61.00 (60.00, 62.00)")
    assert "seeds 0, 1" in table.splitlines()[0]


def _load_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("protocol_cifar10", ROOT / "bench" / "protocol_cifar10.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "protocol_cifar10", module)
    spec.loader.exec_module(module)
    return module


def test_bench_report_line_and_results_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load_bench(monkeypatch)
    out = tmp_path / "out"
    group = "resnet20_e1_b050"
    rows = [
        _row("hand:a", 60.0, 0.49, group=group, seed=0), _row("hand:a", 64.0, 0.49, group=group, seed=1),
        _row("hand:b", 99.0, 0.60, group=group), _row("joint", 55.5, 0.50, kind="learned", group=group),
        _row("runtime_agent", 70.0, 0.58, kind="learned", group=group),
        _row("seed:scop", 61.0, 0.49, group=group), _row("hand:pfp", 58.0, 0.49, group=group),
        _row("seed:grda", 40.0, 0.55, group=group),
    ]  # fmt: skip
    for r in rows:
        cell = out / f"{group}_s{r.seed}"
        cell.mkdir(parents=True, exist_ok=True)
        row_path(cell, r.row).write_text(json.dumps(r.to_dict()))
    md = tmp_path / "results.md"
    before = "# Results\n\n## Before\nkept\n```text\n## not a heading\n```\n"
    md.write_text(before + "\n## Fair protocol\nold table\n\n## After\nkept too\n")
    grda_dir, nm_dir = tmp_path / "grda", tmp_path / "nm"
    argv = ["--report-only", "--out", str(out), "--results-md", str(md), "--plot", str(tmp_path / "p.png"),
            "--grda-records", str(grda_dir), "--nm-records", str(nm_dir)]  # fmt: skip
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    line, seed_line = printed[-1], next(p for p in printed if p.startswith("seed_methods_rows="))
    # SCOP's claim (above PFP) holds in the one cell where both ran; gRDA's row misses its budget
    assert seed_line == "seed_methods_rows=2 seed_methods_budget_misses=1 directions_reproduced=1/1"
    assert line == (
        "r20_e1_050_best_hand=62.00 r20_e1_050_learned=55.50 r20_e1_025_best_hand=nan r20_e1_025_learned=nan "
        "r20_e3_050_best_hand=nan r20_e3_050_learned=nan r56_e1_050_best_hand=nan r56_e1_050_learned=nan "
        "learned_budget_misses=1"
    )
    text = md.read_text()
    assert text.startswith(before)
    assert text.count("## Fair protocol") == 1 and "old table" not in text and text.endswith("## After\nkept too\n")
    assert "| static_agent | not run |" in text and text.count("| best_hand | not run |") == len(bench.CELLS) - 1
    assert line in text and "![test top-1 vs mean MAC fraction](p.png)" in text
    seeds = text[text.index("## Seed methods under the fair protocol") :]
    assert seed_line in seeds
    assert text.index("## Fair protocol") < text.index("## Seed methods") < text.index("## After")
    assert "| `seed:scop` |" in seeds and "r20_e1_050: 61.00 vs hand:pfp 58.00 | yes (1/1 cells) |" in seeds
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    # the directions with no rival row are read from their own benches' rows: gRDA below magnitude pruning at
    # its sparsity (not reproduced), merging above slicing before any fine-tune (reproduced)
    for folder, name, top1, extra in [
        (grda_dir, "unstructured:grda:c=0.5", 50.0, {"conv_sparsity": 0.9}),
        (grda_dir, "unstructured:magnitude:c=0.5", 70.0, {"conv_sparsity": 0.9}),
        (nm_dir, "probe:l1", 80.0, {"stages": {"no_finetune": 10.0}}),
        (nm_dir, "probe:neuron_merging", 79.0, {"stages": {"no_finetune": 12.0}}),
    ]:
        r = _row(name, top1, 1.0, group="g")
        r.extra.update(extra)
        (folder / "g_s0").mkdir(parents=True, exist_ok=True)
        row_path(folder / "g_s0", name).write_text(json.dumps(r.to_dict()))
    assert bench.main(argv) == 0
    assert "seed_methods_rows=2 seed_methods_budget_misses=1 directions_reproduced=2/3" in capsys.readouterr().out
    seeds = md.read_text().split("## Seed methods under the fair protocol")[1]
    assert "g c=0.5: 50.00 at sparsity 0.900 vs magnitude 70.00 | no (0/1 cells) |" in seeds
    assert "g as pruned: 12.00 vs sliced 10.00 | yes (1/1 cells) |" in seeds
    text = md.read_text()
    # a distilled grid is a table of its own: its own section, the labels-only one kept as it was
    assert bench.main([*argv, "--distill", "0.5"]) == 0
    both = md.read_text()
    assert both.startswith(text.rstrip("\n").rsplit("\n## After", 1)[0])
    assert both.count("\n## Fair protocol\n") == 1 and both.count("\n## Fair protocol, distilled (alpha 0.5)\n") == 1
    assert "α = 0.5, T = 4" in both.split("## Fair protocol, distilled")[1]
    assert bench.parse_args(["--distill", "0.5"]).out.name == "protocol_cifar10_distill0.5"
    assert bench.parse_args(["--distill", "0.5", "--lr", "0.02"]).out.name == "protocol_cifar10_distill0.5_lr0.02"
    # the lr is chosen on val (the l1 row's val top-1), never by a test score; the other rate's cell is tabled
    lr_rows = {0.01: (70.0, 50.0), 0.02: (69.0, 99.0)}  # val top-1, test top-1 of l1 at each rate
    for lr, (val, test) in lr_rows.items():
        r = _row("l1", test, 0.49, group=group)
        r.extra["val_top1"] = val
        cell = bench.lr_out(out, lr) / f"{group}_s0"
        cell.mkdir(parents=True, exist_ok=True)
        row_path(cell, "l1").write_text(json.dumps(r.to_dict()))
    assert bench.main(argv) == 0
    final = md.read_text()
    assert final.count("\n## The recipe's learning rate, chosen on val\n") == 1
    assert final.count("\n## Seed methods") == 2
    assert final.index("## Seed methods under the fair protocol\n") < final.index("## The recipe's learning rate")
    lr_text = final.split("## The recipe's learning rate, chosen on val")[1]
    assert "| resnet20, E = 1 | 0.01: 70.00, 0.02: 69.00 | **0.01** |" in lr_text
    assert "| resnet56, E = 1 | – | not chosen yet |" in lr_text
    assert "### r20_e1_050 at lr 0.02" in lr_text and "| l1 | l1 | 99.00 |" in lr_text
    assert bench.parse_args([]).out.relative_to(ROOT).as_posix() == "bench/records/protocol_cifar10"
    # the static search is sized in whole plans: as many episodes for the 27-unit ResNet-56 as for ResNet-20
    assert bench.static_steps("resnet20", bench.STATIC_EPISODES) == LearnedSettings().static_steps == 1800
    assert bench.static_steps("resnet56", 200) == 5400


# ------------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["--budgets", "1.5"], "budgets are MAC fractions"),
        (["--budgets", "half"], "invalid float value"),
        (["--epochs", "-1"], "epochs are training budgets"),
        (["--rows", "jiont"], "Did you mean joint"),
        (["--rows", "l1", "--rerun", "fbs"], "--rerun fbs"),
        (["--lr", "0"], "learning rate must be a positive"),
        (["--test-images", "0"], "test_images must be positive"),
        (["--model", "resnet21"], "unknown model 'resnet21'"),
        (["--weights", "/nowhere/w.pt"], "not found"),
        (["--algo", "nosuch"], "nosuch"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], cause: str
) -> None:
    out = tmp_path / "out"
    base = ["--model", "tiny_cnn", "--weights", "none", "--dataset", "synthetic", "--out", str(out), "-q"]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prunegym protocol: error: ") and cause in err
    assert not out.exists()  # nothing half-made


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = [
        "--model", "tiny_cnn", "--weights", "none", "--dataset", "synthetic", "--rows", "l1", "fbs",
        "--epochs", "0.25", "--budgets", "0.5", "--batch-size", "32", "--num-val", "32", "--out", str(out), "-q",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^\| l1 \| l1 uniform \|", printed, re.M) and re.search(r"^\| fbs \| fbs r=", printed, re.M)
    assert (out / "protocol.md").read_text() in printed
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (out / "tiny_cnn_e0p25_b050_s0").glob("*.json")) == ["fbs.json", "l1.json"]


def test_registered_as_prunegym_command() -> None:
    command = cli.get_command("protocol")
    assert command.target == "agents.protocol:main" and "equal MACs" in command.help


def test_distillation_applies_to_every_row_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pruning.train as train_mod

    assert "distill" not in Recipe().as_dict()  # rows trained on labels alone keep their record
    calls = []
    real = train_mod.distillation_loss

    def spy(logits: torch.Tensor, teacher_logits: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(teacher_logits.shape[0])
        return real(logits, teacher_logits, *args)

    monkeypatch.setattr(train_mod, "distillation_loss", spy)
    kw = {**TINY, "recipe": Recipe(lr=LR, batch_size=32, distill=0.5)}
    with _Steps(torch.optim.SGD) as steps:
        rows = run_protocol(
            rows=["l1", "fbs", "static_agent"], budgets=[0.5], epochs=[0.5], out_dir=tmp_path, learned=LEARNED, **kw
        )
    assert all(r.error is None and r.recipe["distill"] == 0.5 for r in rows)
    assert all(r.settings["recipe"]["distill"] == 0.5 for r in rows)
    assert len(calls) == steps.count == sum(r.train_steps for r in rows) > 0  # every CNN step distilled
    with pytest.raises(ValueError, match="distill must be a weight"):
        Recipe(distill=-0.1)


def test_seed_method_rows_train_E_epochs_in_all_and_meet_the_budget(tmp_path: Path) -> None:
    names = [f"seed:{n}" for n in SEED_METHODS] + ["seed:scop_conditional"]
    with _Steps() as steps:
        rows = run_protocol(rows=names, budgets=[0.6], epochs=[1.0], out_dir=tmp_path, **TINY)
    by = {r.row: r for r in rows}
    assert set(by) == set(names)
    # a variant runs its method with the variant's options in place of the default's
    assert SEED_VARIANTS["scop_conditional"] == ("scop", {"conditional_knockoffs": True})
    assert by["seed:scop"].extra["knockoffs"].startswith("gaussian, independent of x")  # the default
    assert by["seed:scop_conditional"].extra["knockoffs"].startswith("gaussian model-X")
    assert "seed:scop_conditional" not in DEFAULT_ROWS
    for r in rows:
        # the method's own training and the recipe's fine-tune add up to E: every image counted once
        assert r.error is None and r.train_images == N_TRAIN and r.train_epochs == pytest.approx(1.0)
        assert r.meets_budget and r.mac_fraction <= 0.6 + BUDGET_TOLERANCE, (r.row, r.mac_fraction)
        assert 0 <= r.test_top1 <= 100 and 0 <= r.extra["val_top1"] <= 100
    for n in ("seed:polarization", "seed:grda", "seed:scop", "seed:scop_conditional"):
        assert by[n].kind == "static" and by[n].mac_fraction_max == by[n].mac_fraction
        assert by[n].extra["method_epochs"] == pytest.approx(SEED_SHARE)
        assert by[n].extra["finetune_epochs"] == pytest.approx(1.0 - SEED_SHARE)
        assert by[n].params_fraction < 1.0  # channels were sliced out
    assert by["seed:channel_gating"].kind == "runtime" and by["seed:channel_gating"].extra["finetune_epochs"] == 0
    # the optimizer steps that ran are the rows' own plus the search trials that were not kept
    trials = len(by["seed:polarization"].extra["trials"])
    extra_steps = (trials - 1) * -(-int(N_TRAIN * SEED_SHARE) // 128)
    assert steps.count == sum(r.train_steps for r in rows) + extra_steps
