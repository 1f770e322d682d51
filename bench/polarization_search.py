"""Does Polarization's (λ, t) search reach a MAC budget within ±0.02? Three budgets on a small net.

Polarization (Zhuang et al., "Neuron-level Structured Pruning using Polarization Regularizer", NeurIPS 2020)
prunes the channels below the first valley of the BN-scale histogram; its Algorithm 1 searches λ and t
until the resulting FLOPs are within δ of the target. This bench runs
:func:`pruning.methods.polarization.search_lambda_t` (our reading of Algorithm 1) on the small ``tiny_cnn``
with synthetic data for three budgets at ``--tolerance`` and prints every trial (λ, t, the valley plan's
MAC fraction), so the shape of the MAC fraction as a function of (λ, t) is visible; ``--sweep-t`` first prints
the valley plan's MAC fraction for each listed ``t`` at ``--sweep-lam`` (one training run each, no search). It
needs no data files and runs in about a minute on one core. Last line: ``polarization_search_hits=<k>/3``.

Usage::

    python bench/polarization_search.py --threads 1
    python bench/polarization_search.py --threads 1 --sweep-t -0.35 -0.05 0 0.05 0.4 0.8 1.2
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence

import torch

from pruning.accounting import model_cost
from pruning.data import get_dataset
from pruning.methods.polarization import search_lambda_t, sparsity_train, threshold_plan
from pruning.models import get_model
from pruning.train import TrainConfig, dataset_for_model


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.55, 0.7], help="default 0.4 0.55 0.7")
    p.add_argument("--tolerance", type=float, default=0.02, help="absolute, in MAC fraction (default 0.02)")
    p.add_argument("--lam-max", type=float, default=2.0, help="upper end of the first λ bracket (default 2)")
    p.add_argument("--max-trials", type=int, default=12, help="training runs per budget (default 12)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of each trial (default 6)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--sweep-t", type=float, nargs="*", default=[], metavar="T", help="t values to sweep first")
    p.add_argument("--sweep-lam", type=float, default=0.5, help="λ of the t sweep (default 0.5)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = get_model("tiny_cnn")
    data = dataset_for_model(get_dataset("synthetic", split="train", size=128), model)
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.1)
    for t in args.sweep_t:
        work = copy.deepcopy(model)
        sparsity_train(work, data, config, lam=args.sweep_lam, t=t)
        plan, _ = threshold_plan(work)
        print(f"sweep λ {args.sweep_lam:g}, t {t:+.2f}: MAC fraction {model_cost(work, plan).macs_fraction[0]:.3f}")
    hits = 0
    for target in args.budgets:
        result = search_lambda_t(
            model, data, config, target=target, lam_range=(0.0, args.lam_max), tolerance=args.tolerance,
            max_trials=args.max_trials, progress=False,
        )  # fmt: skip
        hits += result.hit
        trials = ", ".join(f"(λ {tr.lam:.3g}, t {tr.t:.1f}) {tr.macs_fraction:.3f}" for tr in result.trials)
        print(f"target {target:g}: {'hit' if result.hit else 'missed'}, best {result.best.macs_fraction:.3f}; {trials}")
    print(f"polarization_search_hits={hits}/{len(args.budgets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
