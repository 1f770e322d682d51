"""Why Neuron Merging's lead over plain slicing does not survive the protocol's fine-tune (ResNet-20, CIFAR-10).

Neuron Merging (Kim, Kim, Park & Jeon, "Neuron Merging: Compensating for Pruned Neurons", NeurIPS 2020)
compensates the pruned channels in the consumer's input weights; its claim is about the model *before*
fine-tuning. This bench runs the protocol's ``hand:l1`` (slice the L1 channels) and ``hand:neuron_merging``
(the same channels, merged) rows in one cell, and scores each pruned model at four stages on the test split:

1. ``no_finetune``: as pruned (the BatchNorm statistics of the unpruned model);
2. ``bn_recalibrated``: BatchNorm statistics re-estimated on 2 000 training images (no weight changes);
3. ``short_finetune``: a copy fine-tuned ``--short`` epochs alone with the recipe (its own cosine);
4. ``finetuned``: the row's score after the protocol's ``E`` epochs (the row itself).

If the merged model's lead is gone at stage 2, merging compensated mostly the mis-normalisation that BN
re-estimation (a forward pass, no training) also removes; a lead that fades only over stages 3-4 says training
catches up. It prints one table and the line ``nm_minus_l1=<no_ft>,<bn>,<short>,<ft>`` (points of test top-1).

What merging is for is measured too, before any stage: ``consumer_error``, the relative squared error
``‖y − y_dense‖² / ‖y_dense‖²`` of every consumer conv's output (what the compensation rebuilds) against the
unpruned model's on the same images (``ERROR_IMAGES`` training images, no augmentation), averaged over the
units. Merging helps only where it rebuilds those outputs better than slicing does (its error below slicing's),
so the line ``consumer_error=<l1>,<neuron_merging>`` says whether a missing lead starts there.

Usage::

    python bench/neuron_merging_finetune.py --threads 1 --distill 0.5          # R20, B 0.5, E 1, seed 0
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import REPO, add_machine_args, resolve_shared
from torch import nn

from agents.protocol import Recipe, RowContext, RowResult, register_row, run_protocol, static_row
from pruning.train import evaluate, recalibrate_bn
from pruning.units import get_units

POLICIES = ("l1", "neuron_merging")
RECAL_IMAGES = 2000
ERROR_IMAGES = 512


@torch.no_grad()
def consumer_error(base: nn.Module, pruned: nn.Module, images: torch.Tensor) -> float:
    """Mean over ``base``'s units of ``‖y − y_dense‖² / ‖y_dense‖²`` at each consumer conv's output."""
    paths = [u.consumer for u in get_units(base)]
    outputs: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, model in enumerate((base, pruned)):
        for path in paths:
            hook = functools.partial(lambda key, module, inputs, out: outputs.__setitem__(key, out), (i, path))
            hooks.append(model.get_submodule(path).register_forward_hook(hook))
    errors = []
    try:
        sums = {path: [0.0, 0.0] for path in paths}
        for batch in images.split(128):
            for model in (base, pruned):
                model.eval()(batch)
            for path in paths:
                dense, got = outputs[(0, path)], outputs[(1, path)]
                sums[path][0] += float((got - dense).pow(2).sum())
                sums[path][1] += float(dense.pow(2).sum())
        errors = [num / den for num, den in sums.values()]
    finally:
        for h in hooks:
            h.remove()
    return sum(errors) / len(errors)


def _stages(ctx: RowContext, model: nn.Module, short: float) -> dict[str, float]:
    """Test top-1 of ``model`` (unchanged) as pruned, after BN re-estimation, and after a short fine-tune of a copy."""
    test = ctx.test_set(model)
    train = ctx.train_set(model)
    images = torch.stack([train[i][0] for i in range(min(ERROR_IMAGES, len(train)))])
    was_training = model.training
    out = {"consumer_error": consumer_error(copy.deepcopy(ctx.base()), model, images)}
    model.train(was_training)
    out["no_finetune"] = float(evaluate(model, test)["top1"])
    recal = copy.deepcopy(model)
    recalibrate_bn(recal, ctx.train_set(recal), max_images=RECAL_IMAGES)
    out["bn_recalibrated"] = float(evaluate(recal, test)["top1"])
    tuned = copy.deepcopy(model)
    RowContext.finetune(ctx, tuned, epochs=short)
    out["short_finetune"] = float(evaluate(tuned, test)["top1"])
    return out


@dataclasses.dataclass
class _ProbeContext(RowContext):
    """A row context whose fine-tune first scores the pruned model at the earlier stages."""

    short: float = 0.1
    probe: dict[str, float] = dataclasses.field(default_factory=dict)

    def finetune(self, model: nn.Module, epochs: float | None = None) -> dict[str, Any]:  # noqa: D102
        self.probe.update(_stages(self, model, self.short))
        return super().finetune(model, epochs)


def _probe_row(ctx: RowContext, spec: str, short: float) -> RowResult:
    fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(RowContext)}
    probing = _ProbeContext(**fields, short=short)
    result = static_row(probing, spec)
    result.extra["stages"] = {**probing.probe, "finetuned": result.test_top1}
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=0.5, help="MAC budget (default 0.5)")
    p.add_argument("--epochs", type=float, default=1.0, help="the protocol's E (default 1)")
    p.add_argument("--short", type=float, default=0.1, help="epochs of the short fine-tune (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--distill", type=float, default=0.0, help="the recipe's distillation weight (default 0)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "records" / "neuron_merging_finetune",
                   help="row files (reused)")
    add_machine_args(p, data_file="test.npz")
    a = p.parse_args(argv)
    resolve_shared(a)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    for name in POLICIES:
        register_row(f"probe:{name}")(functools.partial(_probe_row, spec=name, short=args.short))
    rows = run_protocol(
        model="resnet20", weights=args.models_dir / "resnet20_cifar10jpeg.pt", dataset="cifar10",
        data_dir=args.data_dir / "cifar10", budgets=[args.budget], epochs=[args.epochs], seeds=[args.seed],
        rows=[f"probe:{n}" for n in POLICIES], recipe=Recipe(distill=args.distill), out_dir=args.out,
    )  # fmt: skip
    by = {r.row.removeprefix("probe:"): r.extra["stages"] for r in rows}
    stages = ("no_finetune", "bn_recalibrated", "short_finetune", "finetuned")
    print("| policy | " + " | ".join(stages) + " |\n|---|" + "---:|" * len(stages))
    for name in POLICIES:
        print(f"| {name} | " + " | ".join(f"{by[name][s]:.2f}" for s in stages) + " |")
    print("nm_minus_l1=" + ",".join(f"{by['neuron_merging'][s] - by['l1'][s]:+.2f}" for s in stages))
    if all("consumer_error" in by[name] for name in POLICIES):  # (rows written before it was measured lack it)
        print("consumer_error=" + ",".join(f"{by[name]['consumer_error']:.4f}" for name in POLICIES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
