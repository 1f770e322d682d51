"""Does Polarization reach a MAC budget within ±0.02? The (λ, t) search and the completion rule, three budgets.

Polarization (Zhuang et al., "Neuron-level Structured Pruning using Polarization Regularizer", NeurIPS 2020)
prunes the channels below the first valley of the BN-scale histogram; its Algorithm 1 searches λ and t
until the resulting FLOPs are within δ of the target. This bench runs the baseline's search
(:func:`agents.baselines.polarization.search_budget`, our reading of Algorithm 1) on a small net with
synthetic data for three budgets, prints every trial (λ, t, the valley plan's MAC fraction), whether a valley
alone landed in the band ``[budget − tolerance, budget + overshoot]``, and then the rule of
:func:`agents.baselines.polarization.budget_plan` that brought the plan to the budget (``valley``,
``nearest`` or ``nearest+fill``) with the MAC fraction it reached. ``--sweep-t`` first prints the valley
plan's MAC fraction for each listed ``t`` at ``--sweep-lam`` (one training run each, no search). It needs no
data files and runs in about ten seconds on one core. On ``tiny_cnn`` one channel is up to 0.046 of the
MACs, wider than the band: give it ``--overshoot 0.02`` (the completion may then go up to the budget + 0.02).
Last two lines: ``polarization_search_hits=<k>/3`` (valley alone) and ``polarization_budget_hits=<k>/3``
(after the completion rule).

Usage::

    python bench/polarization_search.py --threads 1
    python bench/polarization_search.py --threads 1 --model tiny_cnn --overshoot 0.02 --sweep-t -0.35 0 0.4 1.2
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence

import torch

from agents.baselines.polarization import budget_plan, search_budget
from pruning.accounting import model_cost
from pruning.data import get_dataset
from pruning.methods.polarization import sparsity_train, threshold_plan
from pruning.models import get_model
from pruning.train import TrainConfig, dataset_for_model


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet8", help="registered model (default resnet8)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="default 0.3 0.5 0.7")
    p.add_argument("--tolerance", type=float, default=0.02, help="absolute, in MAC fraction (default 0.02)")
    p.add_argument("--overshoot", type=float, default=0.0, help="how far above the budget (default 0)")
    p.add_argument("--lam-max", type=float, default=0.6, help="upper end of the first λ bracket (default 0.6)")
    p.add_argument("--max-trials", type=int, default=4, help="training runs per budget (default 4)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each trial (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--sweep-t", type=float, nargs="*", default=[], metavar="T", help="t values to sweep first")
    p.add_argument("--sweep-lam", type=float, default=0.3, help="λ of the t sweep (default 0.3)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = get_model(args.model)
    data = dataset_for_model(get_dataset("synthetic", split="train", size=128), model)
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.1)
    for t in args.sweep_t:
        work = copy.deepcopy(model)
        sparsity_train(work, data, config, lam=args.sweep_lam, t=t, progress=False)
        plan, _ = threshold_plan(work)
        print(f"sweep λ {args.sweep_lam:g}, t {t:+.2f}: MAC fraction {model_cost(work, plan).macs_fraction[0]:.3f}")
    search_hits = budget_hits = 0
    for target in args.budgets:
        work, chosen, trials, hit = search_budget(
            model, data, config, target=target, lam_range=(0.0, args.lam_max), tolerance=args.tolerance,
            overshoot=args.overshoot, max_trials=args.max_trials, progress=False,
        )  # fmt: skip
        plan, info = budget_plan(work, target, tolerance=args.tolerance, overshoot=args.overshoot)
        frac = float(model_cost(work, plan).macs_fraction[0])
        met = target - args.tolerance <= frac <= target + args.overshoot
        search_hits += hit
        budget_hits += met
        runs = ", ".join(f"(λ {tr.lam:.3g}, t {tr.t:.1f}) {tr.macs_fraction:.3f}" for tr in trials)
        print(
            f"target {target:g}: valley {'hit' if hit else 'missed'} ({runs}); chosen λ {chosen.lam:.3g}, "
            f"valley {info['valley_macs_fraction']:.3f} -> {info['budget_rule']}: {frac:.4f} "
            f"({'in' if met else 'OUT OF'} the band)"
        )
    print(f"polarization_search_hits={search_hits}/{len(args.budgets)}")
    print(f"polarization_budget_hits={budget_hits}/{len(args.budgets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
