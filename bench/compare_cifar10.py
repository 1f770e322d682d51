"""Hand-designed baselines on CIFAR-10: ``agents.compare`` for ResNet-20 and ResNet-56 at several MAC budgets.

For every model (``<models-dir>/<model>_cifar10jpeg.pt``, the public checkpoints fine-tuned on the JPEG copy of
CIFAR-10 in ``<data-dir>/cifar10``) and every fine-tune setting, :func:`agents.compare.compare` runs every
policy (default: every registered baseline, training-based ones included with ``--train-epochs``, see
:data:`BENCH_POLICIES`) at every budget and scores the results on the same validation subset and test split.
Everything lands in ``--out``:

* ``results.csv``: one row per run over all models and fine-tune settings, each setting starting with the
  ``base`` row (the unpruned model) (``agents.compare.CSV_FIELDS``:
  ``policy, model, kind, budget, seed, mac_fraction, params, params_fraction, val_top1, test_top1, ...,
  finetune_epochs, train_epochs, ...``);
* ``<model>/ft<E>/``: compare's own ``results.csv``, ``results.md`` and ``pareto.png`` for one setting;
* ``pareto_<model>.png``: test top-1 vs MAC fraction, one panel per fine-tune setting;
* ``results.md``: every table, with the command line and the wall time of each setting.

The paths default to ``../shared`` beside the repository; ``PRUNEGYM_SHARED`` (holding ``models/`` and
``data/``) or ``PRUNEGYM_DATA`` (the data root) override them, as do ``--models-dir`` / ``--data-dir``.

Usage::

    python bench/compare_cifar10.py                                   # everything (hours on 2 CPU cores)
    python bench/compare_cifar10.py --models resnet20 --finetune-epochs 0 1 --finetune-images 5000
    python bench/compare_cifar10.py --quick                           # a smoke run (a few minutes)
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import add_machine_args, resolve_shared

from agents.compare import aggregate, compare, default_policies, draw_pareto, markdown_table, read_csv, write_csv

MODELS = ("resnet20", "resnet56")

#: What the bench compares without ``--policies``: every registered baseline, with the training-based ones in
#: the variant that aims at the budget (the (λ, t) search of polarization, the ``c`` search of gRDA; channel
#: gating also gates the consumer convs, whose floor of 0.26 of the MACs is below every budget here).
BENCH_POLICIES = (
    "uniform", "random", "l1", "l2", "bn_scale", "neuron_merging", "neuron_merging:criterion=l2_gm", "pfp",
    "pfp:deterministic=true", "fbs", "polarization:search=true", "grda:search=true", "scop",
    "channel_gating:consumers=true",
)  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), help="models (default resnet20 resnet56)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.25], help="MAC budgets (0.7 0.5 0.25)")
    p.add_argument(
        "--policies", nargs="+", default=None,
        help="policy specs (default: BENCH_POLICIES, every registered baseline aiming at the budget)",
    )  # fmt: skip
    p.add_argument(
        "--finetune-epochs", nargs="+", type=int, default=[0, 1],
        help="fine-tune settings, one compare run each (default 0 1)",
    )  # fmt: skip
    p.add_argument(
        "--gated-model", type=Path, default=None,
        help="gated model with trained predictors for runtime policies (a `prunegym pretrain` model.pt; one model)",
    )  # fmt: skip
    p.add_argument("--finetune-images", type=int, default=None, help="fine-tune on a fixed subset of N train images")
    p.add_argument("--test-images", type=int, default=None, help="score N test images, evenly strided (default all)")
    p.add_argument("--num-val", type=int, default=512, help="validation subset of the env (default 512)")
    p.add_argument("--train-epochs", type=float, default=0.2, help="training budget of training-based methods")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of stochastic policies (default 0)")
    p.add_argument("--no-latency", action="store_true", help="skip latency")
    p.add_argument(
        "--latency-threads", type=int, default=1,
        help="CPU threads while timing (default 1: stable on a shared machine; batch 1 is single-threaded work)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/bench_compare__<time>)")
    p.add_argument("--quick", action="store_true", help="smoke run: resnet20 at 0.5, 500 test images")
    p.add_argument("--plot-only", action="store_true", help="redraw the Pareto figures from <out>/results.csv")
    add_machine_args(p, data_file="test.npz")
    a = p.parse_args(argv)
    resolve_shared(a)
    if a.quick:
        a.models, a.budgets, a.test_images, a.finetune_epochs = ["resnet20"], [0.5], 500, [0]
    return a


def bench_policies() -> list[str]:
    """:data:`BENCH_POLICIES`, checked against the registry: a baseline registered later is added as is."""
    names = {spec.split(":")[0] for spec in BENCH_POLICIES}
    return list(BENCH_POLICIES) + [name for name in default_policies() if name not in names]


def weights_of(args: argparse.Namespace, name: str) -> Path:
    path = args.models_dir / f"{name}_cifar10jpeg.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass --models-dir or set PRUNEGYM_SHARED")
    return path


def pareto_panels(rows: list[dict[str, Any]], path: Path, model: str, settings: Sequence[int]) -> None:
    """One panel per fine-tune setting, same axes and colours, so the effect of the fine-tune reads across.

    The ``base`` row (the unpruned model, never fine-tuned) is drawn in every panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [r for r in rows if r["kind"] == "base"][:1]
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 5), sharey=True, squeeze=False)
    try:
        for ax, ft in zip(axes[0], settings, strict=True):
            panel = base + [r for r in rows if r["finetune_epochs"] == ft and r["kind"] != "base"]
            draw_pareto(ax, panel, title=f"{model}, fine-tune {ft} epoch(s)")
        fig.tight_layout()
        fig.savefig(str(path), dpi=80)
    finally:
        plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out: Path = args.out or Path("runs") / f"bench_compare__{time.strftime('%Y%m%d-%H%M%S')}"
    if args.plot_only:
        rows = read_csv(out / "results.csv")
        for model in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == model]
            settings = sorted({int(r["finetune_epochs"]) for r in mine if r["kind"] != "base"})
            pareto_panels(mine, out / f"pareto_{model}.png", model, settings)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    policies = args.policies or bench_policies()
    command = "python bench/compare_cifar10.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    report = [f"command: `{command}`", "", f"policies: {', '.join(policies)}", ""]
    all_rows: list[dict[str, Any]] = []
    total = time.perf_counter()
    if args.gated_model is not None and len(args.models) > 1:
        raise SystemExit("--gated-model is one model's: run one --models at a time with it")
    for model in args.models:
        weights = weights_of(args, model)
        model_rows: list[dict[str, Any]] = []
        built: dict[tuple[Any, ...], Any] = {}  # training-based methods train once for every fine-tune setting
        for ft in args.finetune_epochs:
            start = time.perf_counter()
            rows = compare(
                policies, args.budgets, model=model, weights=weights, dataset="cifar10",
                data_dir=args.data_dir / "cifar10", num_val=args.num_val, test_images=args.test_images,
                seeds=args.seeds, finetune_epochs=ft, finetune_images=args.finetune_images,
                train_epochs=args.train_epochs, out_dir=out / model / f"ft{ft}", latency=not args.no_latency,
                gated_model=args.gated_model, built_models=built,
                progress=True, include_base=True, latency_threads=args.latency_threads,
            )  # fmt: skip
            wall = time.perf_counter() - start
            subset = f" on {args.finetune_images} images" if ft and args.finetune_images else ""
            title = (
                f"{model}, fine-tune {ft} epoch(s){subset}, test images {rows[0]['test_images']} "
                f"(wall {wall / 60:.1f} min)"
            )
            table = markdown_table(aggregate(rows), title=title)
            print(table, flush=True)
            report += [table]
            model_rows += rows
        pareto_panels(model_rows, out / f"pareto_{model}.png", model, args.finetune_epochs)
        all_rows += model_rows
    write_csv(out / "results.csv", all_rows)
    report.append(f"total wall time: {(time.perf_counter() - total) / 60:.1f} min")
    (out / "results.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    print(report[-1])
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
