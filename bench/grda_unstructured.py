"""gRDA as its paper reports it: unstructured sparsity at an accuracy, against magnitude pruning at that sparsity.

Directional pruning (Chao, Wang, Xing & Cheng, "Directional Pruning of Deep Neural Networks", NeurIPS 2020)
claims no FLOP reduction: trained with the gRDA optimizer, a network ends sparse (unstructured) at about the
accuracy of SGD. The protocol's ``seed:grda`` row uses it as a *channel* method (its all-zero filters,
completed to the MAC budget); this bench reports the paper's own kind of result under the same protocol
inputs (base checkpoint, splits, recipe, distillation, ``E`` epochs counted over every weight-changing step),
in one cell at MAC budget 1.0 (nothing is sliced, so every row is dense in MACs):

* ``unstructured:sgd``: the recipe alone for ``E`` epochs (SGD, Nesterov, cosine): the dense reference.
* ``unstructured:grda:c=<c>``: gRDA (constant lr 0.02, μ 0.51, its ℓ1 threshold strength ``c``) for ``E``
  epochs from the base; its conv sparsity ``s`` (exact zeros over every conv weight) is the row's.
* ``unstructured:magnitude:c=<c>``: global magnitude pruning of the base's conv weights at the same ``s``
  (``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``), then the recipe for ``E`` epochs
  with the mask held fixed: the classic prune-then-fine-tune at the sparsity gRDA reached.

The paper's direction, as tested here: at equal sparsity gRDA is at least as accurate as magnitude pruning
(and close to SGD). Finished rows are kept in ``--out`` (committed) and reused. It prints one table and the
line ``grda_unstructured=<c>:<s>:<grda top-1>:<magnitude top-1>,... sgd=<top-1>``.

Usage::

    python bench/grda_unstructured.py --threads 1 --distill 0.5                  # R20, E 1, c 0.1 and 0.5
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from _common import REPO, add_machine_args, resolve_shared
from torch import nn
from torch.nn.utils import prune

from agents.baselines import get_baseline
from agents.baselines.grda import GRDABaseline
from agents.protocol import Recipe, RowContext, RowResult, register_row, row_path, run_protocol
from pruning.methods.grda import conv_sparsity
from pruning.train import evaluate

#: Dense in MACs: nothing here is sliced.
BUDGET = 1.0


def _dense_result(ctx: RowContext, model: nn.Module, policy: str, training: dict, extra: dict) -> RowResult:
    model.eval()
    test = dict(evaluate(model, ctx.test_set(model)))
    test.update(macs_fraction=1.0, macs_fraction_max=1.0)
    extra = {"conv_sparsity": conv_sparsity(model), "val_top1": float(evaluate(model, ctx.val_set(model))["top1"]),
             **extra}  # fmt: skip
    return ctx.result(policy=policy, test=test, params_fraction=1.0, training=training, extra=extra)


def sgd_row(ctx: RowContext) -> RowResult:
    """The recipe for ``E`` epochs, nothing pruned."""
    model = copy.deepcopy(ctx.base())
    record = ctx.finetune(model)
    return _dense_result(ctx, model, "recipe, dense", record, {})


def grda_row(ctx: RowContext, c: float) -> RowResult:
    """gRDA for all of ``E`` from the base (its own optimizer, constant lr), nothing sliced."""
    method = get_baseline("grda", c=c)
    assert isinstance(method, GRDABaseline)
    model, info, seconds = method.train_copy(ctx.base(), ctx.train_context(ctx.cell.epochs))
    record = {"steps": info["steps"], "images": info["images"], "seconds": seconds, "lr_first": method.lr,
              "lr_last": method.lr}  # fmt: skip
    return _dense_result(ctx, model, f"grda c={c:g} mu={method.mu:g} lr={method.lr:g}", record, info)


def magnitude_row(ctx: RowContext, c: float) -> RowResult:
    """Global magnitude pruning of the conv weights at the sparsity of the finished ``grda`` row, then ``E`` epochs."""
    path = row_path(ctx.cell_dir, f"unstructured:grda:c={c:g}")
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run the unstructured:grda:c={c:g} row of this cell first")
    sparsity = float(json.loads(path.read_text())["extra"]["conv_sparsity"])
    model = copy.deepcopy(ctx.base())
    convs = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)]
    total = sum(m.weight.numel() for m, _ in convs)
    prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=round(sparsity * total))
    record = ctx.finetune(model)  # the masks stay in force: weight = weight_orig * weight_mask
    for m, name in convs:
        prune.remove(m, name)
    return _dense_result(ctx, model, f"global L1 magnitude at {sparsity:.4f} + recipe", record,
                         {"target_sparsity": sparsity})  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", choices=("resnet20", "resnet56"), help="default resnet20")
    p.add_argument("--epochs", type=float, default=1.0, help="the protocol's E (default 1)")
    p.add_argument("--c", type=float, nargs="+", default=[0.1, 0.5], help="gRDA strengths (default 0.1 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--distill", type=float, default=0.0, help="the recipe's distillation weight (default 0)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "records" / "grda_unstructured",
                   help="row files (reused)")
    add_machine_args(p, data_file="test.npz")
    return resolve_shared(p.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    register_row("unstructured:sgd")(sgd_row)
    for c in args.c:
        register_row(f"unstructured:grda:c={c:g}")(functools.partial(grda_row, c=c))
        register_row(f"unstructured:magnitude:c={c:g}")(functools.partial(magnitude_row, c=c))
    names = ["unstructured:sgd"] + [f"unstructured:{k}:c={c:g}" for c in args.c for k in ("grda", "magnitude")]
    rows = run_protocol(
        model=args.model, weights=args.models_dir / f"{args.model}_cifar10jpeg.pt", dataset="cifar10",
        data_dir=args.data_dir / "cifar10", budgets=[BUDGET], epochs=[args.epochs], seeds=[args.seed],
        rows=names, recipe=Recipe(distill=args.distill), out_dir=args.out, progress=True,
    )  # fmt: skip
    by = {r.row: r for r in rows}
    print("| row | policy | conv sparsity | val top-1 | test top-1 | train epochs |\n|---|---|---:|---:|---:|---:|")
    for name in names:
        r = by[name]
        print(f"| `{name}` | {r.policy} | {r.extra['conv_sparsity']:.4f} | {r.extra['val_top1']:.2f} | "
              f"{r.test_top1:.2f} | {r.train_epochs:.2f} |")  # fmt: skip
    parts = [
        f"{c:g}:{by[f'unstructured:grda:c={c:g}'].extra['conv_sparsity']:.4f}:"
        f"{by[f'unstructured:grda:c={c:g}'].test_top1:.2f}:{by[f'unstructured:magnitude:c={c:g}'].test_top1:.2f}"
        for c in args.c
    ]
    print(f"grda_unstructured={','.join(parts)} sgd={by['unstructured:sgd'].test_top1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
