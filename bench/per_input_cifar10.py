"""Does the learned runtime agent prune per input? The per-input report of a finished protocol row.

Rebuilds a learned row of ``bench/protocol_cifar10.py`` (``runtime_agent`` or ``joint``) from its schedule
checkpoint in ``<runs-dir>/<cell>/runs/<row>/`` — the fine-tuned CNN, the agents, the static plan, the budget guard's
offset — and runs :func:`agents.analysis.per_input_report` on the whole test split: per-unit spread of the kept
fraction across images, the per-image MAC fraction distribution, top-1 and MACs of easy vs hard images (halves by
the unpruned base model's loss), and the shuffled-observation ablation (each image pruned with the decision
made for another image of its batch). Prints the report, writes ``<runs-dir>/<cell>/<row>.per_input.json`` and the
figure ``docs/per_input_<cell>_<row>.png``, and ends with one line::

    top1=<x> shuffled_top1=<x> top1_drop=<x> macs_std=<x> unit_kept_std_max=<x>

Usage::

    python bench/per_input_cifar10.py --cell resnet20_e1_b050_s0 --row runtime_agent
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _common import GRID_RECORDS, GRID_RUNS, REPO, add_machine_args

from agents.analysis import format_report, per_input_report, plot_report
from agents.protocol import load_learned_row, read_cell
from pruning.data import get_dataset
from pruning.models import get_model
from pruning.train import dataset_for_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_args(p, data_file="test.npz")
    p.add_argument("--out", type=Path, default=GRID_RECORDS,
                   help="the protocol's row files (default bench/records/protocol_cifar10_distill0.5)")
    p.add_argument("--runs-dir", type=Path, default=GRID_RUNS,
                   help="the protocol's checkpoints of the learned rows (default runs/protocol_cifar10_distill0.5)")
    p.add_argument("--cell", required=True, help="cell folder name, e.g. resnet20_e1_b050_s0")
    p.add_argument("--row", default="runtime_agent", choices=["runtime_agent", "runtime_prefix", "joint"])
    p.add_argument("--plot-dir", type=Path, default=REPO / "docs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = {r.row: r for r in read_cell(args.out, args.cell)}
    if args.row not in rows:
        print(f"{args.out / args.cell} has no finished {args.row} row; run bench/protocol_cifar10.py first",
              file=sys.stderr)  # fmt: skip
        return 2
    model = rows[args.row].model
    base = get_model(model, num_classes=10, weights=args.models_dir / f"{model}_cifar10jpeg.pt")
    root = args.data_dir / "cifar10"
    data = {s: dataset_for_model(get_dataset("cifar10", split=s, root=root), base) for s in ("train", "val", "test")}
    splits = {"train": data["train"], "val": data["val"]}
    try:
        trainer = load_learned_row(args.out, args.cell, args.row, base, splits, args.runs_dir)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    report = per_input_report(
        trainer.model, trainer.plan(), data["test"], cost_model=trainer.cost_model, base_model=base.eval()
    )
    print(format_report(report))
    (args.runs_dir / args.cell / f"{args.row}.per_input.json").write_text(json.dumps(report, indent=1))
    plot = plot_report(report, args.plot_dir / f"per_input_{args.cell}_{args.row}.png")
    print(f"figure: {plot}")
    shuffled = report["shuffled"] or {}
    print(
        f"top1={report['top1']:.2f} shuffled_top1={shuffled.get('top1_shuffled', float('nan')):.2f} "
        f"top1_drop={shuffled.get('top1_drop', float('nan')):.2f} macs_std={report['macs_fraction']['std']:.4f} "
        f"unit_kept_std_max={max(u['kept_std'] for u in report['units']):.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
