"""The fair protocol on CIFAR-10: learned vs hand-designed pruning at equal MACs and equal training.

Runs :func:`agents.protocol.run_protocol` on the grid of :data:`CELLS` (ResNet-20 and ResNet-56, the public
checkpoints fine-tuned on the JPEG copy of CIFAR-10: ``<models-dir>/<model>_cifar10jpeg.pt``, data in
``<data-dir>/cifar10``), every row of :data:`agents.protocol.DEFAULT_ROWS` unless ``--rows`` says otherwise.
Finished rows are kept in ``--out`` (one small JSON file per cell and row, default
``bench/records/protocol_cifar10/``, or ``protocol_cifar10_distill<ALPHA>/`` with ``--distill``, with ``_lr<LR>``
added for a peak learning rate other than the grid's :data:`GRID_LR`: committed, so any clone can rebuild the
tables and continue the grid) and reused, so the grid can be run a piece at a time
(``--cells``, ``--rows``, ``--seeds``) and an interrupted run continues where it stopped. The learned rows'
checkpoints go to ``--runs-dir`` (default ``runs/protocol_cifar10``, not committed; only
``bench/deploy_latency.py`` and ``bench/per_input_cifar10.py`` read them).

At the end (also with ``--report-only``, which runs nothing) it prints the tables of every cell, writes them
into ``docs/results.md`` under the heading ``## Fair protocol`` (``## Fair protocol, distilled (alpha A)``
with ``--distill``; replacing that section, keeping the rest of
the file; rows not run yet say "not run"), followed by the seed methods' section and the learning rate chosen on
val for each (model, E) (:func:`lr_section`; cells run at another rate tabled there), draws
``docs/protocol_pareto[_distill<ALPHA>].png``, and prints one line::

    r20_e1_050_best_hand=<x> r20_e1_050_learned=<x> ... r56_e1_050_learned=<x> learned_budget_misses=<n>

for the four cells :data:`LINE_CELLS`, just after a line of the same ``<label>_best_hand`` / ``<label>_learned``
fields for the other cells (the B = 0.25 cells at ResNet-20 E = 3 and at ResNet-56)::

    r20_e3_025_best_hand=<x> r20_e3_025_learned=<x> r56_e1_025_best_hand=<x> r56_e1_025_learned=<x>

(``best_hand`` / ``learned``: the best mean test top-1 over seeds of the hand-designed / learned rows meeting
the budget, ``nan`` where none has run; the misses count learned rows over their budget.)

The paths default to ``../shared`` beside the repository; ``PRUNEGYM_SHARED`` (holding ``models/`` and
``data/``) or ``PRUNEGYM_DATA`` (the data root) override them, as do ``--models-dir`` / ``--data-dir``.

Usage::

    python bench/protocol_cifar10.py                                   # the whole grid (many hours on a CPU)
    python bench/protocol_cifar10.py --cells r20_e1_050 --rows l1 fbs joint --seeds 0
    python bench/protocol_cifar10.py --report-only                     # tables, docs and the line from --out
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import PROTOCOL_RECORDS, PROTOCOL_RUNS, REPO, add_machine_args, resolve_shared

from agents.protocol import (
    BUDGET_TOLERANCE,
    DEFAULT_ROWS,
    GATE_SHARE,
    SEED_METHODS,
    SEED_SHARE,
    Cell,
    LearnedSettings,
    Recipe,
    RowResult,
    best_hand,
    best_learned,
    format_table,
    pareto_plot,
    read_cell,
    run_protocol,
    summary_line,
)
from pruning.models import get_model
from pruning.units import get_units

HEADING = "## Fair protocol"
#: Static-agent episodes of a learned row: 1 800 timesteps on ResNet-20 (9 units), 5 400 on ResNet-56 (27), so a
#: deeper net's search sees as many whole plans.
STATIC_EPISODES = 200


@dataclass(frozen=True)
class BenchCell:
    """One cell group of the grid: model, MAC budget ``B``, training budget ``E`` and its seeds."""

    model: str
    budget: float
    epochs: float
    seeds: tuple[int, ...]


#: The grid, in report order.
CELLS: dict[str, BenchCell] = {
    "r20_e1_050": BenchCell("resnet20", 0.5, 1.0, (0, 1)),
    "r20_e1_025": BenchCell("resnet20", 0.25, 1.0, (0, 1)),
    "r20_e3_050": BenchCell("resnet20", 0.5, 3.0, (0,)),
    "r20_e3_025": BenchCell("resnet20", 0.25, 3.0, (0,)),
    "r56_e1_050": BenchCell("resnet56", 0.5, 1.0, (0,)),
    "r56_e1_025": BenchCell("resnet56", 0.25, 1.0, (0,)),
}
#: The cells of the final line, in its order; the other cells get a line of the same form just above it.
LINE_CELLS = ("r20_e1_050", "r20_e1_025", "r20_e3_050", "r56_e1_050")
SEED_HEADING = "## Seed methods under the fair protocol"
LR_HEADING = "## The recipe's learning rate, chosen on val"
#: The grid's peak learning rate (the recipe's default) and the candidates chosen from on val for each (model, E):
#: the ``l1`` row's top-1 on the whole val split, at B = 0.5, seed 0. Runs at another rate go to ``<out>_lr<lr>``.
GRID_LR = 0.01
LR_CANDIDATES = (0.01, 0.02)


@dataclass(frozen=True)
class Direction:
    """What a method's paper claims, as a comparison of two rows of one cell (``rival = None``: nothing to test)."""

    row: str
    rival: str | None
    claim: str


#: The claimed direction of each seed method, with its source. A direction reproduces in a cell when both rows
#: meet the budget and ``row`` has the higher mean test top-1 over the seeds both ran.
DIRECTIONS = (
    Direction("seed:polarization", "hand:l2_gm",
              "above FPGM at about equal FLOPs: CIFAR-10 ResNet-56 93.80 → 93.83 at 47% of the FLOPs removed vs "
              "FPGM 93.59 → 93.49 at 53% (Zhuang et al., \"Neuron-level Structured Pruning using Polarization "
              "Regularizer\", NeurIPS 2020, Table 1)"),
    Direction("seed:scop", "hand:pfp",
              "above PFP at comparable FLOPs: ImageNet ResNet-50 top-1 error 23.85 → 24.74 with 54.6% of the FLOPs "
              "removed vs PFP-B 23.87 → 24.79 with 44.0% (Tang et al., \"SCOP: Scientific Control for Reliable "
              "Neural Network Pruning\", NeurIPS 2020, its ImageNet table)"),
    Direction("seed:channel_gating", "l1",
              "2.7-8.0x fewer FLOPs on CIFAR-10 with minimal accuracy loss (Hua et al., \"Channel Gating Neural "
              "Networks\", NeurIPS 2019, abstract); tested here as: above static L1 pruning at equal mean MACs"),
    Direction("hand:pfp", "hand:l1",
              "above filter-norm thresholding at equal size (Liebenwein et al., \"Provable Filter Pruning for "
              "Efficient Neural Networks\", ICLR 2020: its CIFAR experiments compare with FilterThresNet; that table "
              "was not read, so the direction is our reading)"),
    Direction("seed:grda", None,
              "no FLOP claim: unstructured sparsity at SGD's accuracy (Chao et al., \"Directional Pruning of Deep "
              "Neural Networks\", NeurIPS 2020, Fig. 1: WRN28x10 CIFAR-100 76.81% at 9.7% active weights vs SGD "
              "76.6%); tested with `bench/grda_unstructured.py` as: at the sparsity gRDA reaches, at least the "
              "accuracy of global magnitude pruning with the same E (the `seed:grda` row is gRDA as a channel "
              "method, our completion)"),
    Direction("hand:neuron_merging", None,
              "merging above plain pruning without fine-tuning (Kim et al., \"Neuron Merging: Compensating for "
              "Pruned Neurons\", NeurIPS 2020); every protocol row is fine-tuned, so tested with "
              "`bench/neuron_merging_finetune.py` at its no-fine-tune stage (the same L1 channels sliced vs merged)"),
)
#: Where the two benches that test a direction outside the protocol table keep their rows.
GRDA_RECORDS = REPO / "bench" / "records" / "grda_unstructured"
NM_RECORDS = REPO / "bench" / "records" / "neuron_merging_finetune"


def _records(folder: Path, pattern: str) -> list[dict]:
    return [json.loads(f.read_text(encoding="utf-8")) for f in sorted(folder.glob(f"*/{pattern}"))]


def bench_direction(row: str, grda_dir: Path, nm_dir: Path) -> tuple[list[str], list[bool]]:
    """The cells and verdicts of a direction tested by its own bench (gRDA unstructured, Neuron Merging as pruned)."""
    cells: list[str] = []
    verdicts: list[bool] = []
    if row == "seed:grda":
        recs = {r["row"]: r for r in _records(grda_dir, "unstructured-*.json")}
        for name, r in sorted(recs.items()):
            rival = recs.get(name.replace(":grda:", ":magnitude:"))
            if ":grda:" in name and rival is not None:
                cells.append(f"{r['group']} {name.split(':')[-1]}: {r['test_top1']:.2f} at sparsity "
                             f"{r['extra']['conv_sparsity']:.3f} vs magnitude {rival['test_top1']:.2f}")  # fmt: skip
                verdicts.append(r["test_top1"] >= rival["test_top1"])
    elif row == "hand:neuron_merging":
        recs = {(r["group"], r["row"]): r for r in _records(nm_dir, "probe-*.json")}
        for (group, name), r in sorted(recs.items()):
            rival = recs.get((group, "probe:l1"))
            if name == "probe:neuron_merging" and rival is not None:
                mine, theirs = r["extra"]["stages"]["no_finetune"], rival["extra"]["stages"]["no_finetune"]
                cells.append(f"{group} as pruned: {mine:.2f} vs sliced {theirs:.2f}")
                verdicts.append(mine > theirs)
    return cells, verdicts


def lr_out(grid_dir: Path, lr: float) -> Path:
    """The folder of the grid's runs at peak learning rate ``lr``: ``grid_dir`` at :data:`GRID_LR`, else
    ``<grid_dir>_lr<lr>``."""
    return grid_dir if lr == GRID_LR else grid_dir.with_name(f"{grid_dir.name}_lr{lr:g}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS), help="cells to run (default all)")
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="rows to run (default every row)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="run only these of each cell's seeds")
    p.add_argument("--rerun", nargs="+", default=[], metavar="ROW", help="redo these rows where finished")
    p.add_argument("--lr", type=float, default=GRID_LR,
                   help=f"peak learning rate of the recipe (default {GRID_LR:g}; other rates: rows in <out>_lr<LR>)")
    p.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                   help="distil from the base model with this weight in every row's training (default 0: off)")
    p.add_argument("--test-images", type=int, default=None, help="score N test images, evenly strided (default all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--out", type=Path, default=None,
                   help="row files, reused (default bench/records/protocol_cifar10[_distill<ALPHA>][_lr<LR>])")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="the learned rows' checkpoints (default runs/protocol_cifar10[_distill<ALPHA>][_lr<LR>])")
    p.add_argument("--static-min-keep", type=float, default=None,
                   help="the static agent's keep floor (default min(0.2, B/2); a learned row's setting)")
    p.add_argument("--static-episodes", type=int, default=STATIC_EPISODES,
                   help=f"static-agent episodes (timesteps = episodes x the model's units; default {STATIC_EPISODES})")
    p.add_argument("--static-select", type=int, default=LearnedSettings.static_select,
                   help="best static episodes re-scored against the deterministic one (a learned row's setting)")
    p.add_argument("--static-num-val", type=int, default=LearnedSettings.num_val,
                   help=f"validation images a static-env episode scores (default {LearnedSettings.num_val})")
    p.add_argument("--grda-records", type=Path, default=GRDA_RECORDS,
                   help="bench/grda_unstructured.py's rows, for gRDA's direction (default its --out)")
    p.add_argument("--nm-records", type=Path, default=NM_RECORDS,
                   help="bench/neuron_merging_finetune.py's rows, for Neuron Merging's direction (default its --out)")
    p.add_argument("--report-only", action="store_true", help="run nothing: report what --out holds")
    p.add_argument("--results-md", type=Path, default=REPO / "docs" / "results.md", help="where the tables go")
    p.add_argument("--plot", type=Path, default=None,
                   help="the Pareto figure (default docs/protocol_pareto[_distill<ALPHA>].png)")
    add_machine_args(p, data_file="test.npz")
    a = p.parse_args(argv)
    suffix = f"_distill{a.distill:g}" if a.distill > 0 else ""
    a.grid_out = a.out or PROTOCOL_RECORDS.with_name(PROTOCOL_RECORDS.name + suffix)
    a.out = a.out or lr_out(a.grid_out, a.lr)
    a.runs_dir = a.runs_dir or lr_out(PROTOCOL_RUNS.with_name(PROTOCOL_RUNS.name + suffix), a.lr)
    a.plot = a.plot or REPO / "docs" / f"protocol_pareto{suffix}.png"
    resolve_shared(a)
    return a


def static_steps(model: str, episodes: int) -> int:
    """Static-agent timesteps of ``episodes`` whole plans of ``model`` (one timestep per prunable unit)."""
    return episodes * len(get_units(get_model(model, num_classes=10)))


def weights_of(models_dir: Path, model: str) -> Path:
    path = models_dir / f"{model}_cifar10jpeg.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass --models-dir or set PRUNEGYM_SHARED")
    return path


def cell_rows(out: Path, cell: BenchCell) -> list[RowResult]:
    """Every finished row of a cell group (all its seeds) in ``out``."""
    rows: list[RowResult] = []
    for seed in cell.seeds:
        rows += read_cell(out, Cell(cell.model, None, cell.budget, cell.epochs, seed).name)
    return rows


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` with the section under ``heading`` replaced by ``body`` (appended when absent).

    A section runs from its heading to the next heading of the same level (``## ``) outside fenced code
    blocks, or to the end of the file; everything else is kept as it is.
    """
    lines = text.splitlines(keepends=True)
    fence = False
    start = end = None
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fence = not fence
            continue
        if fence or not line.startswith("## "):
            continue
        if start is None and (line.rstrip("\n") == heading or line.startswith(heading + " ")):
            start = i
        elif start is not None:
            end = i
            break
    section = body.rstrip("\n") + "\n"
    if start is None:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + section
    after = lines[end:] if end is not None else []
    return "".join(lines[:start]) + section + ("\n" + "".join(after) if after else "")


def _scores(rows: Sequence[RowResult], name: str) -> dict[int, RowResult]:
    return {r.seed: r for r in rows if r.row == name and r.error is None}


def direction_holds(rows: Sequence[RowResult], d: Direction) -> tuple[float, float] | None:
    """Mean test top-1 of ``d.row`` and ``d.rival`` over the seeds both ran in one cell group (``None``: not both).

    A pair where either row misses its budget in one of those seeds is ``None`` too (not comparable).
    """
    if d.rival is None:
        return None
    mine, theirs = _scores(rows, d.row), _scores(rows, d.rival)
    seeds = sorted(set(mine) & set(theirs))
    if not seeds or not all(mine[s].meets_budget and theirs[s].meets_budget for s in seeds):
        return None
    return (sum(mine[s].test_top1 for s in seeds) / len(seeds), sum(theirs[s].test_top1 for s in seeds) / len(seeds))


def seed_section(
    groups: dict[str, list[RowResult]], heading: str = SEED_HEADING, *, grda_dir: Path = GRDA_RECORDS,
    nm_dir: Path = NM_RECORDS,
) -> tuple[list[str], str]:
    """The docs section of the seed methods (one reproduction line per method) and its last line.

    A direction with no rival row in the table is read from its own bench's records (``grda_dir``,
    ``nm_dir``) where they exist.
    """
    seed_rows = [r for rows in groups.values() for r in rows if r.row.startswith("seed:")]
    misses = [r for r in seed_rows if not r.meets_budget]
    lines = [
        heading,
        "",
        "The training-based methods as rows of the tables above (`seed:<method>`, `agents.protocol.seed_method_row`): "
        f"polarization, gRDA and SCOP run their own training for {SEED_SHARE:g}·E from the base (their own "
        "optimizer: it is part of each method), are cut to the budget (polarization and gRDA at one global "
        "threshold set where the plan meets it, SCOP at its uniform rate) and fine-tuned with the recipe for the "
        f"other {1 - SEED_SHARE:g}·E; Channel Gating trains its gated model for all of E (SGD, Nesterov, cosine, "
        "the recipe's lr, plus its threshold loss), its MACs counted from the gates each test image used "
        "(PyTorch computes both paths, so its latency needs the paper's hardware). Options: "
        + "; ".join(f"`{n}`: " + (", ".join(f"{k}={v}" for k, v in o.items()) or "defaults")
                    for n, o in SEED_METHODS.items())
        + ".",
        "",
        "| method | claimed direction (source) | ours under the protocol (test top-1, mean over seeds) | reproduces |",
        "|---|---|---|---|",
    ]
    reproduced = tested = 0
    for d in DIRECTIONS:
        cells, verdicts = [], []
        for label, rows in groups.items():
            pair = direction_holds(rows, d)
            if pair is not None:
                cells.append(f"{label}: {pair[0]:.2f} vs {d.rival} {pair[1]:.2f}")
                verdicts.append(pair[0] > pair[1])
        if d.rival is None:
            cells, verdicts = bench_direction(d.row, grda_dir, nm_dir)
        if d.rival is None and not verdicts:
            verdict = "not tested"
        elif not verdicts:
            verdict = "not run"
        else:
            tested += 1
            reproduced += all(verdicts)
            verdict = "yes" if all(verdicts) else ("partly" if any(verdicts) else "no")
            verdict += f" ({sum(verdicts)}/{len(verdicts)} cells)"
        lines.append(f"| `{d.row}` | {d.claim} | {'; '.join(cells) or '–'} | {verdict} |")
    if misses:
        lines += ["", "Seed rows missing their budget: " + "; ".join(
            f"{r.cell} {r.row} ({r.error or f'MAC {r.mac_fraction:.3f}'})" for r in misses)]  # fmt: skip
    last = f"seed_methods_rows={len(seed_rows)} seed_methods_budget_misses={len(misses)} " \
        f"directions_reproduced={reproduced}/{tested}"  # fmt: skip
    return [*lines, "", "```text", last, "```"], last


def lr_section(grid_dir: Path, heading: str = LR_HEADING) -> list[str]:
    """The docs section of the learning-rate choice: per (model, E) the ``l1`` row's val top-1 at each candidate.

    The choice is made on val only (``extra["val_top1"]`` of the ``l1`` row at B = 0.5, seed 0, in
    ``lr_out(grid_dir, lr)``); a (model, E) missing a candidate's row is "not chosen yet". The cells run at a
    rate other than :data:`GRID_LR` follow as tables.
    """
    lines = [
        heading,
        "",
        f"The grid above trains every row at the recipe's peak lr {GRID_LR:g}. For each (model, E) the rate is "
        "chosen from " + ", ".join(f"{lr:g}" for lr in LR_CANDIDATES) + " by the `l1` row's top-1 on the whole "
        "val split (B = 0.5, seed 0), never by a test score; a cell run at another rate keeps its rows in "
        "`<records>_lr<lr>/` and is tabled below. Best hand-designed / learned: test top-1 at B 0.5 at that rate.",
        "",
        "| model, E | `l1` val top-1 per lr | chosen on val | best hand-designed / learned at each lr (B 0.5) |",
        "|---|---|---|---|",
    ]
    tables: list[str] = []
    for label, cell in CELLS.items():
        if cell.budget != 0.5:
            continue
        vals, scores = {}, []
        for lr in LR_CANDIDATES:
            rows = cell_rows(lr_out(grid_dir, lr), cell)
            l1 = [r for r in rows if r.row == "l1" and r.seed == 0 and "val_top1" in r.extra]
            if l1:
                vals[lr] = float(l1[0].extra["val_top1"])
            hand, learned = best_hand(rows), best_learned(rows)
            if hand or learned:
                scores.append(f"lr {lr:g}: " + " / ".join("–" if b is None else f"{b[1]:.2f} (`{b[0]}`)"
                                                          for b in (hand, learned)))  # fmt: skip
            if lr != GRID_LR and rows:
                title = f"{label} at lr {lr:g}: {cell.model}, B = {cell.budget:g}, E = {cell.epochs:g} epoch(s)"
                tables.append(format_table(rows, expected=list(DEFAULT_ROWS), title=title))
        chosen = max(vals, key=lambda lr: vals[lr]) if len(vals) == len(LR_CANDIDATES) else None
        lines.append(
            f"| {cell.model}, E = {cell.epochs:g} | " + (", ".join(f"{lr:g}: {v:.2f}" for lr, v in vals.items()) or "–")
            + f" | {'not chosen yet' if chosen is None else f'**{chosen:g}**'} | {'; '.join(scores) or '–'} |"
        )  # fmt: skip
    return [*lines, "", *tables]


def report(args: argparse.Namespace, command: str, wall: float | None) -> str:
    """Tables of every cell, the docs section, the figure; returns the final line."""
    groups = {label: cell_rows(args.grid_out, cell) for label, cell in CELLS.items()}
    tables = []
    for label, cell in CELLS.items():
        seeds = ", ".join(str(s) for s in cell.seeds)
        title = f"{label}: {cell.model}, B = {cell.budget:g}, E = {cell.epochs:g} epoch(s), seeds {seeds}"
        tables.append(format_table(groups[label], expected=list(DEFAULT_ROWS), title=title))
    print("\n".join(tables), flush=True)
    fields = summary_line(groups).split()  # the misses (last field) count the learned rows of every cell
    ours = [f for f in fields if any(f.startswith(label + "_") for label in LINE_CELLS)]
    others = [f for f in fields[:-1] if f not in ours]
    line = (" ".join(others) + "\n" if others else "") + " ".join([*ours, fields[-1]])
    every = [r for rows in groups.values() for r in rows]
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    pareto_plot(every, args.plot)
    recipe = Recipe(lr=GRID_LR, distill=args.distill).as_dict()
    heading = HEADING if args.distill <= 0 else f"{HEADING}, distilled (alpha {args.distill:g})"
    distilled = (
        f" plus knowledge distillation from the unpruned base in every step of every row (loss (1 - α)·CE + "
        f"α·T²·KL, α = {args.distill:g}, T = {recipe['distill_temperature']:g})" if args.distill > 0 else ""
    )
    intro = [
        heading,
        "",
        "Learned vs hand-designed channel pruning under one protocol (`agents/protocol.py`, "
        "`bench/protocol_cifar10.py`): every row of a cell starts from the same CIFAR-10 checkpoint "
        "(`<model>_cifar10jpeg.pt`), trains exactly E epochs on the train split with one recipe "
        f"(SGD, Nesterov momentum {recipe['momentum']}, weight decay {recipe['weight_decay']:g}, lr {recipe['lr']:g} "
        f"cosine-annealed over the whole E, batch {recipe['batch_size']}, crop + flip{distilled}), uses val only for "
        "rewards, model selection and budget bisection, and is scored on the test split. A row meets the budget B "
        f"when its mean per-image MAC fraction on the test images is at most B + {BUDGET_TOLERANCE:g}; rows that "
        "miss are listed under their table and never ranked. `best_hand` is the hand-designed row with the best "
        "mean test top-1 over seeds among those meeting the budget. Learned rows: `agents.schedule.JointTrainer` "
        "with its plan brought to the budget on val (`static_agent`: one static plan learned on the base model, then E "
        f"epochs under it; `runtime_agent` and `joint` (R_r = 0.5): gate stage {GATE_SHARE:g}·E under the "
        "budget's uniform cut, the rest over 2 rounds of {RL, CNN phase}); their RL time is apart.",
        "",
        f"Command: `{command}`" + (f" ({wall / 60:.1f} min)" if wall is not None else ""),
        "",
        *tables,
        f"![test top-1 vs mean MAC fraction]({Path(os.path.relpath(args.plot, args.results_md.parent)).as_posix()})",
        "",
        "```text",
        line,
        "```",
    ]
    seed_heading = SEED_HEADING + heading.removeprefix(HEADING)  # the same suffix
    seeds, seed_line = seed_section(groups, seed_heading, grda_dir=args.grda_records, nm_dir=args.nm_records)
    print(seed_line, flush=True)
    md = args.results_md
    text = md.read_text(encoding="utf-8") if md.is_file() else "# Results\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    lr_heading = LR_HEADING + heading.removeprefix(HEADING)
    sections = [(heading, intro), (seed_heading, seeds), (lr_heading, lr_section(args.grid_out, lr_heading))]
    for i, (name, body) in enumerate(sections):
        if i and not any(line.rstrip() == name for line in text.splitlines()):  # new: right after the one before
            name, body = sections[i - 1][0], [*sections[i - 1][1], "", *body]
        text = replace_section(text, name, "\n".join(body))
    md.write_text(text, encoding="utf-8")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    command = "python bench/protocol_cifar10.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    wall = None
    if not args.report_only:
        start = time.perf_counter()
        for label in args.cells:
            cell = CELLS[label]
            seeds = [s for s in cell.seeds if args.seeds is None or s in args.seeds]
            if not seeds:
                continue
            run_protocol(
                model=cell.model, weights=weights_of(args.models_dir, cell.model), dataset="cifar10",
                data_dir=args.data_dir / "cifar10", budgets=[cell.budget], epochs=[cell.epochs], seeds=seeds,
                rows=args.rows, recipe=Recipe(lr=args.lr, distill=args.distill), test_images=args.test_images,
                out_dir=args.out, runs_dir=args.runs_dir,
                learned=LearnedSettings(
                    static_min_keep=args.static_min_keep, num_val=args.static_num_val, static_select=args.static_select,
                    static_steps=static_steps(cell.model, args.static_episodes),
                ),
                rerun=args.rerun, device=args.device, progress=True,
            )  # fmt: skip
        wall = time.perf_counter() - start
    print(report(args, command, wall))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
