"""Accounting exactness and the latency of exported models, measured in one run on the CPU.

1. Analytic MACs (:mod:`pruning.accounting`) against ``torch.utils.flop_counter.FlopCounterMode`` on exported
   models: random static plans on plain models, and random per-sample runtime plans on gated models with
   predictors (``DynamicModel`` at batch 1, one sample at a time); stored parameters against the exported
   model's parameter count. Any difference counts as a mismatch.
2. ResNet-56, one static keep ratio for every unit (L1-norm channel choice) solved for ~50% of the MACs: the
   exported plain model's latency against the base model's at batch 128 and 1, and its top-1 (no fine-tuning).
3. ResNet-20 gated with fresh predictors, runtime-only (R_r = 1) keep 0.5 in every unit: the batch-1 latency of
   ``DynamicModel`` against the base model, and a logits check against the masked gated model.

The last line printed is ``key=value`` pairs for scripts. Usage::

    python bench/accounting_and_export.py            # the full run (a few minutes on 2 CPU threads)
    python bench/accounting_and_export.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from _common import add_machine_args, alternating_times
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from pruning.accounting import CostModel, model_cost
from pruning.budget import bisect_bracket
from pruning.data import ImageDataset, get_dataset, iterate_batches
from pruning.export import DynamicModel, export_static
from pruning.gating import applied_masks, gate_model, gated_units, set_plan, stored_masks
from pruning.models import get_model, input_normalization
from pruning.plan import PruningPlan, keep_count
from pruning.units import get_units

ACCOUNTING_MODELS = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16_bn", "m_cifarnet"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per model at batch 128 (default 60; 3 with --quick)")
    p.add_argument("--repeats-b1", type=int, default=None,
                   help="timed runs per model at batch 1 (default 20 x --repeats)")
    add_machine_args(p, data_file="test.npz")
    p.add_argument("--eval-images", type=int, default=None,
                   help="test images for top-1, 10%% per class (default 2000; 200 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: two models, one plan each, few repeats")
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 3 if a.quick else 60
    if a.repeats_b1 is None:
        a.repeats_b1 = 20 * a.repeats
    if a.eval_images is None:
        a.eval_images = 200 if a.quick else 2000
    return a


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def counted_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward pass as counted by FlopCounterMode (total FLOPs // 2)."""
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(x)
    return int(fc.get_total_flops()) // 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Give a randomly initialised model non-trivial BN statistics and affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)  # type: ignore[union-attr]
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)  # type: ignore[union-attr]
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


def time_alternating(
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    inputs: Sequence[torch.Tensor],
    repeats: int,
    warmup: int,
    desc: str,
) -> dict[str, float]:
    """Median seconds per call of each function, the functions alternating (:func:`_common.alternating_times`)."""
    times = alternating_times(fns, inputs, repeats, desc, warmup)  # type: ignore[arg-type]
    return {k: statistics.median(v) for k, v in times.items()}


def balanced_test_subset(data_dir: Path, n: int, model: nn.Module, seed: int = 0) -> ImageDataset:
    """``n`` test images, the same number from every class (the test file is in class-major order)."""
    ds = get_dataset("cifar10", split="test", root=data_dir)
    gen = torch.Generator().manual_seed(seed)
    per = n // ds.num_classes
    idx = []
    for c in range(ds.num_classes):
        members = (ds.labels == c).nonzero().squeeze(1)
        idx.append(members[torch.randperm(len(members), generator=gen)[:per]])
    sub = ds.subset(torch.cat(idx).sort().values)
    sub.mean, sub.std = (tuple(v) for v in input_normalization(model))
    return sub


def top1(model: nn.Module, ds: ImageDataset, desc: str, batch_size: int = 250) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in tqdm(iterate_batches(ds, batch_size), total=-(-len(ds) // batch_size), desc=desc,
                         leave=False, file=sys.stderr):
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(ds)


def load(name: str, path: Path) -> tuple[nn.Module, str]:
    if path.is_file():
        return get_model(name, weights=path).eval(), f"weights {path.name}"
    torch.manual_seed(0)
    return get_model(name).eval(), f"RANDOM INIT ({path} not found)"


# ------------------------------------------------------------------------------------------------------------
# 1. accounting
# ------------------------------------------------------------------------------------------------------------


def check_accounting(names: Sequence[str], plans: int, samples: int) -> int:
    print("## 1. Analytic MACs / params vs FlopCounterMode / exported parameter count")
    print(f"   static: plain model, keep ratios ~ U[0.2, 1], export_static, batch 1; runtime: gated with random "
          f"predictors and u_s, R_r = 0.5, static keep ~ U[0.2, 1], runtime keep ~ U[0.1, 1] per sample and unit, "
          f"{samples} samples per plan, DynamicModel at batch 1 per sample vs CostModel.from_masks(...).total_macs")
    head = f"{'model':<11} {'plan':<10} {'analytic MACs':>15} {'counted MACs':>15} {'stored params':>14} " \
           f"{'exported params':>15}  mismatches"
    print(head)
    print("-" * len(head))
    total = 0
    jobs = [(n, kind, s) for n in names for kind in ("static", "runtime") for s in range(plans)]
    models: dict[str, nn.Module] = {}
    for name, kind, seed in tqdm(jobs, desc="accounting", file=sys.stderr):
        gen = torch.Generator().manual_seed(1000 * ACCOUNTING_MODELS.index(name) + 10 * seed + (kind == "runtime"))
        if name not in models:
            torch.manual_seed(ACCOUNTING_MODELS.index(name))
            m = get_model(name).eval()
            randomize_bn(m, torch.Generator().manual_seed(7))
            models[name] = m
        model = models[name]
        L = len(get_units(model))
        static = (0.2 + 0.8 * torch.rand(L, generator=gen, dtype=torch.float64)).tolist()
        x = torch.randn(samples, 3, 32, 32, generator=gen)
        if kind == "static":
            plan = PruningPlan(static_keep=static)
            ex = export_static(model, plan)
            cost = model_cost(model, plan)
            a_macs, c_macs = [int(cost.total_macs[0])], [counted_macs(ex, x[:1])]
        else:
            g = gate_model(model)
            for gu in gated_units(g):
                gu.predictor.weight.data.copy_(torch.randn(gu.predictor.weight.shape, generator=gen) * 0.1)
                gu.static_importance.data.copy_(torch.rand(gu.conv.out_channels, generator=gen) + 0.5)
            rt = 0.1 + 0.9 * torch.rand(samples, L, generator=gen, dtype=torch.float64)
            plan = PruningPlan(static_keep=static, runtime_keep=rt, tradeoff=0.5)
            set_plan(g, plan)
            g.eval()
            with torch.inference_mode():
                g(x)
            cm = CostModel(g)
            stored = stored_masks(g)
            per_sample = cm.from_masks(applied_masks(g), stored)
            st = torch.tensor([int(s.sum()) for s in stored])
            cost = cm.from_counts(st, st)
            ex = export_static(g)
            dm = DynamicModel(ex, runtime=None).eval()
            a_macs, c_macs = [], []
            for i in range(samples):
                dm.set_runtime(rt[i].tolist())
                c_macs.append(counted_macs(dm, x[i : i + 1]))
                a_macs.append(int(per_sample.total_macs[i]))
        p_stored, p_exported = cost.total_params, n_params(ex)
        bad = sum(a != c for a, c in zip(a_macs, c_macs, strict=True)) + (p_stored != p_exported)
        total += bad
        am = str(a_macs[0]) if len(a_macs) == 1 else f"{min(a_macs)}-{max(a_macs)}"
        cmx = str(c_macs[0]) if len(c_macs) == 1 else f"{min(c_macs)}-{max(c_macs)}"
        print(f"{name:<11} {kind + ' ' + str(seed):<10} {am:>15} {cmx:>15} {p_stored:>14} {p_exported:>15}  "
              f"{bad} / {len(a_macs) + 1}")
    print(f"accounting mismatches: {total} (MAC checks + param checks; ranges are min-max over a plan's samples)")
    return total


# ------------------------------------------------------------------------------------------------------------
# 2. ResNet-56 static export
# ------------------------------------------------------------------------------------------------------------


def solve_uniform_ratio(model: nn.Module, target: float) -> float:
    """The uniform keep ratio whose MAC fraction is closest to ``target`` (bisection; the fraction is a step
    function of the ratio because channel counts are integers)."""
    cm = CostModel(model)

    def frac(a: float) -> float:
        k = torch.stack([keep_count(a, int(c)) for c in cm.channels])
        return float(cm.from_counts(k, k).macs_fraction[0])

    hi, lo = bisect_bracket(lambda a: frac(a) >= target, 1.0, 0.0, steps=50)  # smallest a with frac(a) >= target
    return hi if abs(frac(hi) - target) <= abs(frac(lo) - target) else lo


def r56_static(args: argparse.Namespace) -> dict[str, float]:
    print("\n## 2. ResNet-56: uniform static keep ratio (L1-norm channels) for ~50% MACs, exported plain model")
    base, origin = load("resnet56", args.models_dir / "resnet56_cifar10jpeg.pt")
    print(f"model: resnet56, {origin}")
    units = get_units(base)
    scores = [base.get_submodule(u.conv).weight.detach().abs().sum((1, 2, 3)) for u in units]
    ratio = solve_uniform_ratio(base, 0.5)
    plan = PruningPlan(static_keep=[ratio] * len(units), static_scores=scores)
    ex = export_static(base, plan)
    cost = model_cost(base, plan)
    x1 = torch.zeros(1, 3, 32, 32)
    base_macs, ex_macs = counted_macs(base, x1), counted_macs(ex, x1)
    assert ex_macs == int(cost.total_macs[0]) and base_macs == cost.base_macs, "accounting disagrees with counts"
    kept = [int(keep_count(ratio, u.out_channels)) for u in units]
    print(f"keep ratio {ratio:.4f} in all {len(units)} units (kept channels per stage: "
          f"{sorted(set(kept))} of {sorted({u.out_channels for u in units})}); MAC fraction "
          f"{float(cost.macs_fraction[0]):.4f}")
    print(f"MACs: base {base_macs:,}  exported {ex_macs:,}  -> reduction {base_macs / ex_macs:.3f}x; "
          f"params: base {n_params(base):,}  exported {n_params(ex):,}")

    ds = balanced_test_subset(args.data_dir, args.eval_images, base)
    xs = next(iter(iterate_batches(ds, 128)))[0]
    out: dict[str, float] = {"mac_reduction": base_macs / ex_macs}
    print(f"latency (torch.inference_mode, {args.threads} threads, median; base and exported alternate):")
    for bs, reps in ((128, args.repeats), (1, args.repeats_b1)):
        inputs = [xs] if bs == 128 else [xs[i : i + 1] for i in range(len(xs))]
        t = time_alternating({"base": base, "exported": ex}, inputs, reps, warmup=3 if bs == 128 else 20,
                             desc=f"r56 latency b{bs}")
        sp = t["base"] / t["exported"]
        out[f"speedup_b{bs}"] = sp
        print(f"  batch {bs:>3}: base {1e3 * t['base']:8.2f} ms  exported {1e3 * t['exported']:8.2f} ms  "
              f"({reps} runs)  speed-up {sp:.3f}x  speed-up / MAC reduction {sp / out['mac_reduction']:.3f}")
    acc_b, acc_e = top1(base, ds, "r56 top-1 base"), top1(ex, ds, "r56 top-1 exported")
    print(f"top-1 on {len(ds)} test images ({len(ds) // ds.num_classes} per class), no fine-tuning: "
          f"base {acc_b:.2f}%  exported {acc_e:.2f}%")
    return out


# ------------------------------------------------------------------------------------------------------------
# 3. ResNet-20 dynamic model at batch 1
# ------------------------------------------------------------------------------------------------------------


def r20_dynamic(args: argparse.Namespace) -> dict[str, float]:
    print("\n## 3. ResNet-20: gated (fresh predictors, u_r = gamma), runtime-only R_r = 1, keep 0.5 per unit, "
          "DynamicModel at batch 1")
    base, origin = load("resnet20", args.models_dir / "resnet20_cifar10jpeg.pt")
    print(f"model: resnet20, {origin}")
    gated = gate_model(base).eval()
    set_plan(gated, PruningPlan(runtime_keep=0.5, tradeoff=1.0))
    dm = DynamicModel(export_static(gated), runtime=0.5).eval()
    ds = balanced_test_subset(args.data_dir, args.eval_images, base)
    xs = next(iter(iterate_batches(ds, 256)))[0]
    images = [xs[i : i + 1] for i in range(len(xs))]

    cm = CostModel(gated)
    with torch.inference_mode():
        ref = gated(xs)
    cost = cm.from_masks(applied_masks(gated), stored_masks(gated))
    n_check = 16
    with torch.inference_mode():
        dyn = torch.cat([dm(x) for x in images[:n_check]])
    diff = float((dyn - ref[:n_check]).abs().max())
    counted = [counted_macs(dm, x) for x in images[:4]]
    assert counted == [int(v) for v in cost.total_macs[:4]], "DynamicModel FLOPs disagree with the accounting"
    base_macs = cost.base_macs
    backbone, total = float(cost.macs.double().mean()), float(cost.total_macs.double().mean())
    red, red_bb = base_macs / total, base_macs / backbone
    print(f"logits of DynamicModel (batch 1) vs masked gated model: max abs diff {diff:.3g} over {n_check} images "
          f"(logit scale {float(ref.abs().max()):.3g})")
    print(f"MACs per sample (mean over {len(xs)} images): base {base_macs:,}  dynamic backbone {backbone:,.0f}  "
          f"+ predictors {float(cost.predictor_macs.double().mean()):,.0f}")
    print(f"MAC reduction: {red:.3f}x with predictors, {red_bb:.3f}x backbone only")
    # The same channels chosen statically (u_r = gamma for every input, so the top half by gamma) and exported
    # plain: the latency a per-sample method could at best reach at these MACs, without selection overhead.
    units = get_units(base)
    gammas = [base.get_submodule(u.bn).weight.detach() for u in units]
    same = export_static(base, PruningPlan(static_keep=[0.5] * len(units), static_scores=gammas))
    with torch.inference_mode():
        same_diff = float((torch.cat([same(x) for x in images[:n_check]]) - dyn).abs().max())
    print(f"static export of the same channels (the floor at these MACs): {counted_macs(same, images[0]):,} MACs, "
          f"logits vs DynamicModel max abs diff {same_diff:.3g}")
    t = time_alternating({"base": base, "dynamic": dm, "static": same}, images, args.repeats_b1, warmup=20,
                         desc="r20 latency b1")
    sp = t["base"] / t["dynamic"]
    print(f"latency batch 1 ({args.repeats_b1} runs cycling over {len(images)} test images): base "
          f"{1e3 * t['base']:.3f} ms  dynamic {1e3 * t['dynamic']:.3f} ms  speed-up {sp:.3f}x  "
          f"speed-up / MAC reduction {sp / red:.3f}")
    print(f"  same channels, static export: {1e3 * t['static']:.3f} ms  speed-up {t['base'] / t['static']:.3f}x; "
          f"DynamicModel's extra time over it {1e6 * (t['dynamic'] - t['static']) / len(units):.1f} us per unit")
    acc_b, acc_g = top1(base, ds, "r20 top-1 base"), top1(gated, ds, "r20 top-1 dynamic")
    print(f"top-1 on {len(ds)} test images, no fine-tuning: base {acc_b:.2f}%  dynamic (= masked gated) {acc_g:.2f}%")
    return {"mac_reduction": red, "speedup_b1": sp}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats b128={args.repeats} "
          f"b1={args.repeats_b1}{', QUICK' if args.quick else ''}")
    names = ["resnet20", "m_cifarnet"] if args.quick else ACCOUNTING_MODELS
    mism = check_accounting(names, plans=1 if args.quick else 3, samples=2 if args.quick else 4)
    r56 = r56_static(args)
    r20 = r20_dynamic(args)
    print("\n## Targets (reported, not asserted)")
    for what, sp, red, k in (
        ("ResNet-56 static export, batch 128", r56["speedup_b128"], r56["mac_reduction"], 0.7),
        ("ResNet-56 static export, batch 1", r56["speedup_b1"], r56["mac_reduction"], 0.7),
        ("ResNet-20 DynamicModel, batch 1", r20["speedup_b1"], r20["mac_reduction"], 0.5),
    ):
        ok = "MET" if sp >= k * red else "MISSED"
        print(f"  {what}: speed-up {sp:.3f}x vs {k} x MAC reduction = {k * red:.3f}x -> {ok}")
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    print(
        f"accounting_mismatches={mism} r56_mac_reduction={r56['mac_reduction']:.3f} "
        f"r56_static_speedup_b128={r56['speedup_b128']:.3f} r56_static_speedup_b1={r56['speedup_b1']:.3f} "
        f"r20_dynamic_mac_reduction={r20['mac_reduction']:.3f} r20_dynamic_speedup_b1={r20['speedup_b1']:.3f}"
    )


if __name__ == "__main__":
    main()
