"""Compare pruning policies on one base model: a results table and a Pareto plot (DESIGN §6).

:func:`compare` runs every policy × MAC budget (× seed, for stochastic policies) on the same base model and
data, and measures each pruned model on the same axes:

* **applied MAC fraction** and **stored parameters** of the exported (physically smaller) model, costed exactly
  with :func:`pruning.accounting.model_cost`;
* **val top-1** on the environment's fixed validation subset and **test top-1** on the test split (optionally an
  evenly strided subset of it), both measured on the final model (after Neuron Merging's compensation and the
  optional fine-tune);
* **latency** of the exported model at batch 1 and 128 (median of a few timed runs under
  ``torch.inference_mode``).

Policies are baseline names (:func:`agents.baselines.list_baselines`) plus ``"neuron_merging"`` (the ``l1`` plan,
then :func:`pruning.methods.neuron_merging.merge_pruned` instead of plain slicing). Only static baselines run:
``fbs`` is a runtime baseline and joins when runtime evaluation lands. Saved agents are not supported yet.

For each run a :class:`envs.static.StaticPruningEnv` is built on the base model with the policy's channel
criterion, :meth:`agents.baselines.BaselinePolicy.prepare` solves the policy for the env's budget, and one
episode of ``policy.predict`` gives the plan (:meth:`envs.static.StaticPruningEnv.final_plan`), which
:func:`pruning.export.export_static` turns into the pruned model.

Outputs in ``out_dir``: ``results.csv`` (one row per run), ``results.md`` (one row per policy × budget, mean ±
std over seeds) and ``pareto.png`` (test top-1 vs MAC fraction, one series per policy, marker area ∝ stored
parameters).

Command line: ``prunegym compare --policies l1 random --budgets 0.5 0.3 --seeds 0 1 2`` (or
``python -m agents.compare ...``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agents.baselines import BaselinePolicy, get_baseline, list_baselines
from envs.static import StaticPruningEnv
from pruning.accounting import model_cost
from pruning.data import ImageDataset, get_dataset
from pruning.export import export_static
from pruning.gating import is_gated
from pruning.methods.neuron_merging import merge_pruned
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.train import TrainConfig, dataset_for_model, evaluate, train

__all__ = [
    "CSV_FIELDS",
    "NEURON_MERGING",
    "RUNTIME_ONLY",
    "STOCHASTIC",
    "aggregate",
    "compare",
    "main",
    "markdown_table",
    "measure_latency",
    "pareto_plot",
    "static_policies",
]

log = logging.getLogger(__name__)

#: The Neuron Merging policy: the ``l1`` baseline's plan, compensated by merging (no data, no training).
NEURON_MERGING = "neuron_merging"
#: Baselines that choose runtime (per-input) ratios: they run only in the runtime environment.
RUNTIME_ONLY = frozenset({"fbs"})
#: Policies whose plan depends on their seed: repeated over every seed (the others run once).
#: PFP's env plan uses the expected number of unique samples per unit, so it is deterministic here.
STOCHASTIC = frozenset({"random"})
#: Columns of ``results.csv``.
CSV_FIELDS = [
    "policy",
    "budget",
    "seed",
    "macs_fraction",
    "params",
    "params_fraction",
    "val_top1",
    "val_top1_env",
    "test_top1",
    "test_images",
    "latency_b1_ms",
    "latency_b128_ms",
    "finetune_epochs",
    "keep_ratios",
    "seconds",
]

#: Fine-tune recipe applied equally to every pruned model when ``finetune_epochs > 0``.
FINETUNE_LR = 0.01
FINETUNE_BATCH = 128
LATENCY_BATCHES = (1, 128)


def static_policies() -> list[str]:
    """Every policy :func:`compare` can run: the static baselines and ``neuron_merging``, sorted."""
    return sorted([n for n in list_baselines() if n not in RUNTIME_ONLY] + [NEURON_MERGING])


def _check_policy(name: str) -> None:
    """Raise a clear ``ValueError`` for anything :func:`compare` cannot run."""
    if name == NEURON_MERGING:
        return
    if name in RUNTIME_ONLY:
        raise ValueError(
            f"{name!r} is a runtime baseline (per-input ratios); compare evaluates static plans only for now. "
            "Runtime baselines join compare when runtime evaluation lands"
        )
    if name in list_baselines():
        return
    if Path(name).exists() or any(sep in name for sep in ("/", "\\")) or name.endswith((".zip", ".pt", ".pth")):
        raise ValueError(
            f"{name!r} looks like a saved agent; compare does not support saved agents yet, only the baselines "
            f"{static_policies()}"
        )
    get_baseline(name)  # unknown name: ValueError with close matches


def _make_policy(name: str, seed: int) -> BaselinePolicy:
    base_name = "l1" if name == NEURON_MERGING else name
    if name in STOCHASTIC:
        return get_baseline(base_name, seed=seed)
    return get_baseline(base_name)


def _load_base(model: str | nn.Module, weights: str | Path | None, num_classes: int) -> nn.Module:
    """The plain base model every policy prunes (built with seed 0 when it has no weights, as the envs do)."""
    if isinstance(model, nn.Module):
        if weights is not None:
            raise ValueError("weights= applies to a model given by name; load them into the module instead")
        if is_gated(model):
            raise ValueError("compare prunes a plain model; pass the model before gating")
        base = copy.deepcopy(model)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            base = get_model(model, num_classes=num_classes, weights=weights)
    return base.eval()


def _strided(data: ImageDataset, count: int | None) -> ImageDataset:
    n = len(data)
    if count is None or count >= n:
        return data
    if count <= 0:
        raise ValueError(f"test_images must be positive, got {count}")
    idx = np.linspace(0, n, num=count, endpoint=False).astype(np.int64)
    return data.subset(torch.from_numpy(idx))


def measure_latency(
    model: nn.Module, batch: int, *, device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 1
) -> float:
    """Median wall time (ms) of one forward pass of ``model`` on a ``batch × 3 × 32 × 32`` input.

    Args:
        model: The (exported) model; run in eval mode under ``torch.inference_mode``.
        batch: Images per forward pass.
        device: Where to run (the model is moved there).
        repeats: Timed runs; the median is returned.
        warmup: Untimed runs first.
    """
    dev = torch.device(device)
    model = model.to(dev).eval()
    x = torch.randn(batch, 3, 32, 32, device=dev)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
    return float(statistics.median(times))


@torch.no_grad()
def _top1_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, int(y.shape[0]), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return 100.0 * correct / max(1, int(y.shape[0]))


def _episode(env: StaticPruningEnv, policy: BaselinePolicy, seed: int) -> tuple[PruningPlan, dict[str, Any]]:
    obs, _ = env.reset(seed=seed)
    done = False
    info: dict[str, Any] = {}
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        obs, _, done, _, info = env.step(action)
    return env.final_plan(), info


def compare(
    policies: Sequence[str],
    budgets: Sequence[float],
    *,
    model: str | nn.Module = "resnet20",
    weights: str | Path | None = "DEFAULT",
    dataset: str = "cifar10",
    data_dir: str | Path | None = None,
    num_val: int | None = 512,
    test_images: int | None = None,
    seeds: Sequence[int] = (0,),
    finetune_epochs: int = 0,
    out_dir: str | Path,
    latency: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Run every policy × budget (× seed) on the same base model and data; write the table and the plot.

    Args:
        policies: Policy names (:func:`static_policies`). Saved agents and runtime baselines raise.
        budgets: MAC budgets, fractions of the base model's MACs per image.
        model: A registered model name, or a plain module (then ``weights`` must be ``None``).
        weights: Weights of a named model: ``"DEFAULT"`` (public checkpoint), a path, or ``None`` (seed-0 init).
        dataset: Registered dataset name (val subset for the env, test split for the report, train for the
            fine-tune).
        data_dir: Data root (``None``: ``$PRUNEGYM_DATA``, else the cache directory).
        num_val: Images in the env's validation subset (``None``: the whole val split).
        test_images: Score only this many test images, evenly strided over the split (``None``: all).
        seeds: Seeds of stochastic policies (:data:`STOCHASTIC`); deterministic ones run once with the first.
        finetune_epochs: Epochs of the same fine-tune for every pruned model (SGD, lr 0.01, cosine); 0 = none.
        out_dir: Where ``results.csv``, ``results.md`` and ``pareto.png`` go (created).
        latency: Time the exported models at batch 1 and 128.
        progress: Show a progress bar over the runs.
        device: Where models run.

    Returns:
        One dict per run, with the keys of :data:`CSV_FIELDS`.

    Raises:
        ValueError: an unknown policy, a saved agent, a runtime baseline, no policies, budgets or seeds, or a
            budget the env cannot meet.
    """
    policies = list(dict.fromkeys(policies))
    if not policies or not budgets or not seeds:
        raise ValueError("compare needs at least one policy, one budget and one seed")
    for name in policies:
        _check_policy(name)
    for b in budgets:
        if not (math.isfinite(b) and 0.0 < b <= 1.0):
            raise ValueError(f"budgets must be MAC fractions in (0, 1], got {b}")
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    test_full = get_dataset(dataset, split="test", root=data_dir)
    base = _load_base(model, weights, test_full.num_classes).to(device)
    base_params = sum(p.numel() for p in base.parameters())
    test_set = _strided(dataset_for_model(test_full, base), test_images)
    train_set = (
        dataset_for_model(get_dataset(dataset, split="train", root=data_dir), base) if finetune_epochs > 0 else None
    )
    model_name = model if isinstance(model, str) else type(model).__name__

    runs = [
        (name, float(b), int(s))
        for b in budgets
        for name in policies
        for s in (seeds if name in STOCHASTIC else seeds[:1])
    ]
    envs: dict[tuple[str | None, float], StaticPruningEnv] = {}
    rows: list[dict[str, Any]] = []
    bar = tqdm(runs, desc="compare", disable=not progress, file=sys.stderr)
    for name, budget, seed in bar:
        bar.set_postfix_str(f"{name} @ {budget:g} seed {seed}")
        start = time.perf_counter()
        policy = _make_policy(name, seed)
        key = (policy.criterion, budget)
        if key not in envs:
            envs[key] = StaticPruningEnv(
                model=base, dataset=dataset, data_dir=data_dir, num_val=num_val, budget=budget,
                criterion=policy.criterion, device=device,
            )  # fmt: skip
        env = envs[key]
        policy = policy.prepare(env)
        plan, info = _episode(env, policy, seed)
        pruned = merge_pruned(base, plan) if name == NEURON_MERGING else export_static(base, plan)
        pruned = pruned.to(device)
        if finetune_epochs > 0:
            assert train_set is not None
            config = TrainConfig(
                epochs=finetune_epochs, batch_size=FINETUNE_BATCH, lr=FINETUNE_LR, seed=seed, device=str(device)
            )
            train(pruned, train_set, config, progress=False, desc=f"finetune {name}")
        pruned.eval()
        cost = model_cost(base, plan)
        params = sum(p.numel() for p in pruned.parameters())
        val_x, val_y = env.validation_data
        row: dict[str, Any] = {
            "policy": name,
            "budget": budget,
            "seed": seed,
            "macs_fraction": float(cost.macs_fraction[0]),
            "params": params,
            "params_fraction": params / base_params,
            "val_top1": _top1_on(pruned, val_x, val_y),
            "val_top1_env": float(info["top1"]),
            "test_top1": float(evaluate(pruned, test_set)["top1"]),
            "test_images": len(test_set),
            "latency_b1_ms": measure_latency(pruned, 1, device=device) if latency else float("nan"),
            "latency_b128_ms": measure_latency(pruned, 128, device=device, repeats=3) if latency else float("nan"),
            "finetune_epochs": finetune_epochs,
            "keep_ratios": " ".join(
                f"{float(k):.3f}" for k in (plan.static_keep if plan.static_keep is not None else [])
            ),
        }
        row["seconds"] = time.perf_counter() - start
        log.info(
            "%s @ %.3g (seed %d): MACs %.4f, params %d, val %.2f%%, test %.2f%%",
            name, budget, seed, row["macs_fraction"], params, row["val_top1"], row["test_top1"],
        )  # fmt: skip
        rows.append(row)
    bar.close()

    _write_csv(out / "results.csv", rows)
    table = markdown_table(aggregate(rows), title=f"{model_name} on {dataset}")
    (out / "results.md").write_text(table, encoding="utf-8")
    pareto_plot(rows, out / "pareto.png", title=f"{model_name} on {dataset}")
    log.info("wrote %s, %s and %s", out / "results.csv", out / "results.md", out / "pareto.png")
    return rows


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in CSV_FIELDS})


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):  # not measured (latency=False)
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (policy, budget), in first-seen order: ``runs`` and ``(mean, std)`` of every measurement."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["policy"], float(row["budget"])), []).append(row)
    out = []
    for (policy, budget), group in groups.items():
        entry: dict[str, Any] = {"policy": policy, "budget": budget, "runs": len(group)}
        for key in ("macs_fraction", "params", "val_top1", "test_top1", "latency_b1_ms", "latency_b128_ms"):
            entry[key] = _mean_std([r[key] for r in group])
        out.append(entry)
    return out


def _fmt(value: tuple[float, float], digits: int, runs: int) -> str:
    mean, std = value
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if runs > 1 else f"{mean:.{digits}f}"


def markdown_table(entries: Sequence[dict[str, Any]], *, title: str | None = None) -> str:
    """A markdown table of :func:`aggregate`'s entries (mean ± std where a policy ran over several seeds)."""
    lines = [f"## {title}", ""] if title else []
    lines += [
        "| policy | budget | runs | MAC fraction | params | val top-1 (%) | test top-1 (%) | latency b1 (ms) "
        "| latency b128 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        n = int(e["runs"])
        params = f"{e['params'][0]:,.0f}" + (f" ± {e['params'][1]:,.0f}" if n > 1 else "")
        lines.append(
            f"| {e['policy']} | {e['budget']:g} | {n} | {_fmt(e['macs_fraction'], 4, n)} | {params} "
            f"| {_fmt(e['val_top1'], 2, n)} | {_fmt(e['test_top1'], 2, n)} | {_fmt(e['latency_b1_ms'], 2, n)} "
            f"| {_fmt(e['latency_b128_ms'], 1, n)} |"
        )
    return "\n".join(lines) + "\n"


def pareto_plot(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str | None = None) -> None:
    """Test top-1 vs MAC fraction, one series per policy (mean ± std over seeds), marker area ∝ stored params."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = aggregate(rows)
    max_params = max((e["params"][0] for e in entries), default=1.0) or 1.0
    fig, ax = plt.subplots(figsize=(7, 5))
    try:
        for policy in dict.fromkeys(e["policy"] for e in entries):
            pts = sorted((e for e in entries if e["policy"] == policy), key=lambda e: e["macs_fraction"][0])
            xs = [e["macs_fraction"][0] for e in pts]
            ys = [e["test_top1"][0] for e in pts]
            errs = [e["test_top1"][1] for e in pts]
            sizes = [20.0 + 280.0 * e["params"][0] / max_params for e in pts]
            (line,) = ax.plot(xs, ys, "-", alpha=0.6, label=policy)
            ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor=line.get_color(), alpha=0.6, capsize=3)
            ax.scatter(xs, ys, s=sizes, color=line.get_color(), alpha=0.8, edgecolors="black", linewidths=0.5)
        ax.set_xlabel("MAC fraction of the base model")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title((title + ": " if title else "") + "top-1 vs MACs (marker area ∝ params)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(str(path), dpi=120)
    finally:
        plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prunegym compare",
        description=(
            "Compare pruning policies on one base model: every policy × budget (× seed for stochastic policies) "
            "is pruned, measured (MAC fraction, stored params, val/test top-1, latency) and written to "
            "results.csv, results.md and pareto.png. Policies are the static baselines and neuron_merging; "
            "saved agents are not supported yet, and the runtime baseline fbs joins when runtime evaluation lands."
        ),
    )
    p.add_argument(
        "--policies", nargs="+", default=None, metavar="NAME",
        help=f"policies to compare (default: all of {', '.join(static_policies())})",
    )  # fmt: skip
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5], help="MAC budgets (fractions; default 0.5)")
    p.add_argument("--model", default="resnet20", help="registered model name (default resnet20)")
    p.add_argument(
        "--weights", default="DEFAULT",
        help="DEFAULT (public checkpoint), a checkpoint path, or 'none' for a seed-0 init (default DEFAULT)",
    )  # fmt: skip
    p.add_argument("--dataset", default="cifar10", help="registered dataset (default cifar10)")
    p.add_argument("--data-dir", default=None, help="data root (default $PRUNEGYM_DATA, else the cache)")
    p.add_argument("--num-val", type=int, default=512, help="images in the env's val subset (default 512)")
    p.add_argument("--test-images", type=int, default=None, help="score this many test images (default all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of stochastic policies (default 0)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="equal fine-tune of every pruned model (default 0)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare__<model>__<time>)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Compare pruning policies: table + Pareto plot (``prunegym compare``)."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    weights = None if str(args.weights).lower() == "none" else args.weights
    out = args.out or f"runs/compare__{args.model}__{time.strftime('%Y%m%d-%H%M%S')}"
    policies = args.policies or static_policies()
    try:
        rows = compare(
            policies, args.budgets, model=args.model, weights=weights, dataset=args.dataset,
            data_dir=args.data_dir, num_val=args.num_val, test_images=args.test_images, seeds=args.seeds,
            finetune_epochs=args.finetune_epochs, out_dir=out, latency=not args.no_latency,
            progress=not args.no_progress, device=args.device,
        )  # fmt: skip
    except ValueError as e:
        print(f"prunegym compare: error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(aggregate(rows), title=f"{args.model} on {args.dataset}"))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
