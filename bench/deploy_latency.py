"""Deployment latency on CPU: is the pruned model really faster than the dense one, and at what accuracy?

For each model (ResNet-20, ResNet-56: ``<models-dir>/<model>_cifar10jpeg.pt``) at MAC budget ``--budget``, the
contenders come from the fair protocol's trained rows when they exist (``bench/protocol_cifar10.py --distill 0.5``,
the committed grid, writes them to ``--protocol-out``, their checkpoints to ``--runs-dir``; the cell
``<model>_e1_b<B>_s0``). The checkpoints are not committed; to time trained rows on a fresh clone, run them into
folders of their own and point this script there::

    python bench/protocol_cifar10.py --cells r20_e1_050 --rows static_agent runtime_prefix --seeds 0 \\
        --distill 0.5 --out runs/rows --runs-dir runs/rows_ckpt
    python bench/deploy_latency.py --models resnet20 --protocol-out runs/rows --runs-dir runs/rows_ckpt

The contenders:

====================  =================================================================================
``dense``             the base checkpoint
``static``            the ``static_agent`` row's plan exported physically (a plain model: its predictors are
                      constant); untrained fallback: the uniform L1 plan at the budget
``dynamic gather``    the ``runtime_agent`` row's CNN (``u_r`` top-k per image) as a ``DynamicModel`` with
                      constant per-unit ratios (the agent's mean keep ratio per unit on the timing images)
``dynamic prefix``    the ``runtime_prefix`` row's CNN likewise: each image keeps the first k channels of a
                      fixed order, stored in that order, so kept channels are weight slices
``agent gather``      the ``runtime_agent`` row with its agent fused inside (``agents.fused``)
``agent prefix``      the ``runtime_prefix`` row with its agent fused inside
====================  =================================================================================

A row that has not been trained yet is replaced by the same structure on the untrained base (fresh predictors,
``u_r = γ``, channels ranked by L1 norm, a randomly initialised PPO agent), and says so ("untrained").
Each contender runs in eager PyTorch, TorchScript (:mod:`pruning.deploy`, script + freeze), TorchScript with
channels-last weights (``TorchScript CL``: NHWC convolutions, ``to_torchscript(..., channels_last=True)``), and
ONNX Runtime (CPU provider: the fixed-shape ones, and the prefix-order dynamic ones as one graph with the keep
counts computed inside it, :func:`pruning.deploy.dynamic_onnx_deployable`; ``u_r``-order models have no ONNX
form), at 2 and 1 threads, batch 1 and batch 128. At batch 128 the dynamic models run eagerly (every unit on the
channels some image of the batch keeps: the longest kept prefix, or in ``u_r`` order their union) and in both
TorchScript forms where those compute the batch at once the same way (``dynamic_deployable(...).batched``; the
ONNX files run one image at a time and are not timed there). The forms of one setting are timed in one
loop, alternating, each call timed alone, fastest of ``--repeats`` (batch 1) or ``--repeats-b128`` (batch 128).

Printed per contender: ms, speed-up over ``dense`` **in the same form** (eager vs eager, TorchScript vs
TorchScript, ONNX Runtime vs ONNX Runtime), MAC reduction (per image, agent MLP included) and speed-up / MAC
reduction, the speed-up over the fastest form of ``dense`` at that setting (``vs best``: what a user who deploys the
dense model as fast as it runs here gains), and test top-1 on ``--test-images`` evenly strided test images (all
forms compute the same logits: checked). Then the deployment targets, each at every thread count (speed-up in the
contender's fastest form over dense in that form, divided by the MAC reduction: static export of ResNet-56 at
batch 1 and 128 >= 0.7, the agent-driven dynamic models at batch 1 >= 0.5), whether each pruned model's fastest
form beats dense's fastest form at every setting (``faster than dense at its best``), and the last line::

    r20_static_b1_ratio=<x> r56_static_b1_ratio=<x> r56_static_b128_ratio=<x> r20_dynamic_agent_b1_ratio=<x>
    r56_dynamic_agent_b1_ratio=<x> r20_prefix_b1_ratio=<x> r20_prefix_ts_b1_ratio=<x> r20_prefix_ort_b1_ratio=<x>
    r20_prefix_b128_vs_best=<x> r56_prefix_b128_vs_best=<x> onnx_max_abs_diff=<x>

(ratios at the first thread count, each contender's fastest form against dense in that form; the dynamic agent is
the ``agent gather`` row, the prefix ratios the ``agent prefix`` row, fastest form and TorchScript / ONNX Runtime
alone; ``*_vs_best``: the agent prefix model's fastest form against dense's fastest form at batch 128). Usage::

    python bench/deploy_latency.py                      # both models, 2 and 1 threads (minutes)
    python bench/deploy_latency.py --models resnet20 --quick
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import GRID_RECORDS, GRID_RUNS, SHARED, fastest
from torch import nn

from agents.algos import make_model
from agents.baselines.scop import uniform_keep_counts
from agents.fused import FusedRuntimeSource
from agents.protocol import load_learned_row
from agents.schedule import RUNTIME_MIN_KEEP
from envs.runtime import RuntimePruningVecEnv
from pruning.accounting import CostModel
from pruning.criteria import get_criterion
from pruning.data import ImageDataset, get_dataset
from pruning.deploy import (
    dynamic_deployable,
    dynamic_onnx_deployable,
    save_dynamic_onnx,
    save_onnx,
    static_deployable,
    to_torchscript,
)
from pruning.export import DynamicModel, export_static, last_kept_count
from pruning.gating import gate_model, gated_units
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.train import dataset_for_model

FORMS = ("eager", "TorchScript", "TorchScript CL", "ONNX Runtime")
#: Contenders of the last line and their key there.
LINE_KEYS = {"static": "static", "agent gather": "dynamic_agent", "agent prefix": "prefix"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], help="models (default both)")
    p.add_argument("--budget", type=float, default=0.5, help="MAC budget of the cells (default 0.5)")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch thread counts (default 2 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed batch-1 forwards per contender (default 300)")
    p.add_argument("--repeats-b128", type=int, default=None, help="timed batch-128 forwards (default 10)")
    p.add_argument("--test-images", type=int, default=1000, help="evenly strided test images for top-1")
    p.add_argument(
        "--protocol-out",
        type=Path,
        default=GRID_RECORDS,
        help="the protocol's row files (default bench/records/protocol_cifar10_distill0.5)",
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=GRID_RUNS,
        help="the protocol's checkpoints of the learned rows (default runs/protocol_cifar10_distill0.5)",
    )
    p.add_argument("--models-dir", type=Path, default=SHARED / "models", help="checkpoints (default ../shared/models)")
    p.add_argument("--data-dir", type=Path, default=SHARED / "data", help="data root holding cifar10/")
    p.add_argument("--quick", action="store_true", help="smoke run: few repeats and images, one thread count")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (10 if a.quick else 300)
    a.repeats_b128 = a.repeats_b128 or (2 if a.quick else 10)
    if a.quick:
        a.threads, a.test_images = a.threads[:1], min(a.test_images, 100)
    return a


@dataclass
class Contender:
    """One model of the table: its eager module, compiled forms, per-image MAC reduction and test top-1."""

    name: str
    eager: nn.Module
    origin: str
    dynamic: bool = False
    batched: bool = False  # its compiled forms compute a batch at once (prefix order), not image by image
    forms: dict[str, Callable[[torch.Tensor], object]] = field(default_factory=dict)
    reduction: float = math.nan
    top1: float = math.nan


def _plain_export(gated: nn.Module, plan: PruningPlan) -> nn.Module:
    """A static-mode CNN (constant predictors, ``u_r = γ``) exported as a plain model (the predictors dropped)."""
    work = copy.deepcopy(gated)
    for g in gated_units(work):
        if g.predictor is not None:
            if bool(g.predictor.weight.any()):
                raise ValueError("a static row's predictors must be constant (u_r = γ)")
            g.gamma = nn.Parameter(g.predictor.bias.detach().clone())
            g.predictor = None
    return export_static(work, plan)


def _random_agent(gated: nn.Module, budget: float) -> object:
    venv = RuntimePruningVecEnv(2, model=gated, budget=budget, num_images=8)
    hp = {"policy": "BudgetResidualPolicy", "n_steps": 8, "batch_size": 8, "policy_kwargs": {"net_arch": [64, 64]}}
    return make_model("ppo", venv, hp, seed=0)[0]


def _trained_row(
    args: argparse.Namespace, cell: str, row: str, base: nn.Module, splits: dict[str, ImageDataset]
) -> Any | None:
    """The protocol's finished ``row`` of ``cell`` (:func:`load_learned_row`), or ``None`` (noted) without one."""
    try:
        return load_learned_row(args.protocol_out, cell, row, base, splits, args.runs_dir)
    except FileNotFoundError as err:
        print(f"note: {err}; its contenders fall back to the untrained model", file=sys.stderr)
        return None


def build(name: str, budget: float, args: argparse.Namespace) -> tuple[list[Contender], ImageDataset]:
    """Every contender of one model at one budget (trained protocol rows where they exist)."""
    weights = args.models_dir / f"{name}_cifar10jpeg.pt"
    base = get_model(name, num_classes=10, weights=weights).eval()
    root = args.data_dir / "cifar10"
    data = {s: dataset_for_model(get_dataset("cifar10", split=s, root=root), base) for s in ("train", "val", "test")}
    test = data["test"].strided(args.test_images, what="--test-images")
    cell = f"{name}_e1_b{round(budget * 100):03d}_s0"
    train_val = {"train": data["train"], "val": data["val"]}
    out: list[Contender] = [Contender("dense", base, weights.name)]
    units = CostModel(base).units
    l1 = [torch.as_tensor(get_criterion("l1")(base, u), dtype=torch.float32) for u in units]

    static_trainer = _trained_row(args, cell, "static_agent", base, train_val)
    if static_trainer is not None:
        plan = PruningPlan(static_keep=static_trainer.static_keep, static_scores=static_trainer.frozen_scores())
        static = _plain_export(static_trainer.model, plan)
        out.append(Contender("static", static, f"{cell}/static_agent"))
    else:
        counts = uniform_keep_counts(base, budget)
        keep = [int(k) / int(c) for k, c in zip(counts, CostModel(base).channels.tolist(), strict=True)]
        static = export_static(base, PruningPlan(static_keep=keep, static_scores=l1))
        out.append(Contender("static", static, "untrained: uniform L1"))

    for order, row in (("gather", "runtime_agent"), ("prefix", "runtime_prefix")):
        trainer = _trained_row(args, cell, row, base, train_val)
        runtime_order = "u_r" if order == "gather" else "prefix"
        if trainer is not None:
            gated, origin = trainer.model.eval(), f"{cell}/{row}"
            agent, offset = trainer.runtime_model, trainer.action_offset
            scores = trainer.order_scores()
        else:
            gated, origin = gate_model(base).eval(), "untrained: fresh predictors, random agent"
            agent, offset, scores = _random_agent(gated, budget), 0.0, (l1 if order == "prefix" else None)
        exported = export_static(gated, PruningPlan(tradeoff=1.0, static_scores=scores, runtime_order=runtime_order))
        dyn = DynamicModel(exported, None).eval()
        source = FusedRuntimeSource(agent, gated, budget=budget, min_keep=RUNTIME_MIN_KEEP, action_offset=offset)
        dyn.set_runtime(source.bind(dyn))
        out.append(Contender(f"agent {order}", dyn, origin, dynamic=True))
        # the same CNN with the agent's mean per-unit ratio as constants: what the agent itself costs
        ratios = _mean_ratios(dyn, test.normalize(test.images[:64]))
        out.append(Contender(f"dynamic {order}", DynamicModel(exported, ratios).eval(), origin + ", mean ratios",
                             dynamic=True))  # fmt: skip
    return out, test


def _mean_ratios(dyn: DynamicModel, images: torch.Tensor) -> list[float]:
    counts = []
    with torch.inference_mode():
        for i in range(len(images)):
            dyn(images[i : i + 1])
            counts.append([int(last_kept_count(u)) for u in dyn.units])
    mean = np.mean(np.asarray(counts, dtype=np.float64), axis=0)
    return [float(m) / u.full_channels for m, u in zip(mean, dyn.units, strict=True)]


def _top1(c: Contender, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = 0
    with torch.inference_mode():
        if c.dynamic:  # batch 1: what deployment runs (the batched path keeps the same channels)
            for i in range(len(images)):
                correct += int(c.eager(images[i : i + 1]).argmax(1).item() == int(labels[i]))
        else:
            for i in range(0, len(images), 250):
                correct += int((c.eager(images[i : i + 250]).argmax(1) == labels[i : i + 250]).sum())
    return 100.0 * correct / len(images)


def _macs(c: Contender, images: Sequence[torch.Tensor]) -> float:
    """Mean MACs per image (FlopCounterMode's FLOPs / 2: convolutions, linears, the fused agent's MLP)."""
    from torch.utils.flop_counter import FlopCounterMode

    total = 0
    with torch.inference_mode():
        for x in images:
            with FlopCounterMode(display=False) as counter:
                c.eager(x)
            total += counter.get_total_flops() // 2
    return total / len(images)


def _compile(c: Contender, example: torch.Tensor, folder: Path) -> float:
    """Fill ``c.forms`` (eager, TorchScript, ONNX Runtime where it applies); return the ONNX logit difference."""
    c.forms["eager"] = c.eager
    if c.dynamic:
        compiled = dynamic_deployable(c.eager)  # type: ignore[arg-type]  # the fastest form
        c.batched = bool(compiled.batched)
        c.forms["TorchScript"] = to_torchscript(compiled)
        c.forms["TorchScript CL"] = to_torchscript(compiled, channels_last=True)
        if not all(u.runtime_order == "prefix" for u in c.eager.units):  # type: ignore[union-attr]
            return 0.0  # u_r top-k: no ONNX form
        # save_dynamic_onnx checks logits (atol 1e-4) and every unit's kept count image by image
        traced = dynamic_onnx_deployable(c.eager)  # type: ignore[arg-type]
        path = save_dynamic_onnx(traced, folder / f"{c.name.replace(' ', '_')}.onnx", example)
        c.forms["ONNX Runtime"] = path  # type: ignore[assignment]
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        diff = 0.0
        with torch.inference_mode():
            for x in example.split(1):
                got = session.run(None, {"images": x.numpy()})[0]
                diff = max(diff, float(np.abs(got - c.eager(x).numpy()).max()))
        return diff
    module = static_deployable(c.eager) if c.name != "dense" else c.eager
    c.forms["TorchScript"] = to_torchscript(module)
    c.forms["TorchScript CL"] = to_torchscript(module, channels_last=True)
    path = save_onnx(static_deployable(c.eager), folder / f"{c.name}.onnx", example)
    c.forms["ONNX Runtime"] = path  # type: ignore[assignment]  # sessions are made per thread count
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = c.eager(example).numpy()
    return float(np.abs(session.run(None, {"images": example.numpy()})[0] - ref).max())


def _session(path: Path, threads: int) -> Callable[[torch.Tensor], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # idle ONNX Runtime threads spin by default and starve the PyTorch contenders timed beside them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})


def _check_forms(
    fns: dict[str, Callable[[torch.Tensor], object]], contenders: Sequence[Contender], x: torch.Tensor
) -> None:
    """Every timed form computes its contender's eager logits on ``x`` (within 1e-3), or the bench stops."""
    with torch.inference_mode():
        ref = {c.name: c.eager(x) for c in contenders}
        for key, fn in fns.items():
            out = fn(x)
            logits = torch.as_tensor(out[0] if isinstance(out, (list, tuple)) else out)
            diff = float((logits - ref[key.split("|")[0]]).abs().max())
            if not diff <= 1e-3:
                raise RuntimeError(f"{key} differs from its eager model by {diff:.3g} on a batch of {len(x)}")


def table(contenders: Sequence[Contender], t: dict[str, float]) -> dict[str, float]:
    """Print one timing table; return each contender's speed-up in its fastest form (against dense in that form)."""
    head = (f"  {'contender':<16}{'form':<16}{'ms':>9}{'speed-up':>10}{'MAC red.':>10}{'sp/MAC':>8}"
            f"{'vs best':>9}{'top-1':>8}")  # fmt: skip
    print(head)
    best: dict[str, float] = {}
    dense_best = min(v for k, v in t.items() if k.startswith("dense|"))
    for c in contenders:
        forms = [f for f in FORMS if f"{c.name}|{f}" in t and f"dense|{f}" in t]
        for form in forms:
            sec = t[f"{c.name}|{form}"]
            sp = t[f"dense|{form}"] / sec
            print(f"  {c.name:<16}{form:<16}{1e3 * sec:>9.3f}{sp:>9.2f}x{c.reduction:>9.2f}x"
                  f"{sp / c.reduction:>8.2f}{dense_best / sec:>8.2f}x{c.top1:>8.2f}")  # fmt: skip
        if forms:
            form = min(forms, key=lambda f: t[f"{c.name}|{f}"])
            best[c.name] = t[f"dense|{form}"] / t[f"{c.name}|{form}"]
    return best


#: The deployment targets: (model tag, batch, contender, least speed-up / MAC reduction).
TARGETS = (
    ("r56", 1, "static", 0.7),
    ("r56", 128, "static", 0.7),
    ("r20", 1, "agent prefix", 0.5),
    ("r56", 1, "agent prefix", 0.5),
    ("r20", 1, "agent gather", 0.5),
    ("r56", 1, "agent gather", 0.5),
)


def print_targets(ratios: dict[tuple[str, int, int, str], tuple[str, float, float]], threads: Sequence[int]) -> None:
    """One line per target and thread count.

    The speed-up over dense in the form where the contender gains most (dense in that same form), divided by the
    MAC reduction, against the target; then the contender's fastest form against dense's fastest form (``vs best``:
    below 1 means a user is better served by the dense model deployed in its best form).
    """
    print("\ntargets (speed-up over dense in the same form / MAC reduction; vs best: fastest form vs dense's fastest):")
    for tag, batch, name, least in TARGETS:
        for n in threads:
            got = ratios.get((tag, n, batch, name))
            if got is None:
                continue
            form, sp_mac, vs_best = got
            verdict = "met" if sp_mac >= least else "MISSED"
            print(f"  {tag} {name:<13} batch {batch:<4} {n} thread(s): {sp_mac:.2f} >= {least} in {form} ({verdict}); "
                  f"vs best {vs_best:.2f}x")  # fmt: skip


def print_vs_best(ratios: dict[tuple[str, int, int, str], tuple[str, float, float]]) -> None:
    """Per pruned contender and setting: its fastest form against dense's fastest form (> 1: really faster)."""
    print("\nfaster than dense at its best (fastest form vs dense's fastest form, per model / threads / batch):")
    names = sorted({k[3] for k in ratios if k[3] != "dense"})
    for name in names:
        cells = sorted((k, v[2]) for k, v in ratios.items() if k[3] == name)
        text = "  ".join(f"{k[0]} {k[1]}t b{k[2]} {r:.2f}x" for k, r in cells)
        print(f"  {name:<16}{text}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)
    line: dict[str, float] = {}
    #: (model tag, threads, batch, contender): (form, its speed-up / MAC reduction, fastest form vs fastest dense)
    ratios: dict[tuple[str, int, int, str], tuple[str, float, float]] = {}
    onnx_diff = 0.0
    folder = Path(tempfile.mkdtemp())
    for name in args.models:
        contenders, test = build(name, args.budget, args)
        tag = {"resnet20": "r20", "resnet56": "r56"}.get(name, name)
        x_test = test.normalize(test.images)
        b1 = [x_test[i : i + 1] for i in range(16)]
        b128 = [x_test[torch.arange(start, start + 128) % len(x_test)] for start in (0, 128)]
        dense_macs = _macs(contenders[0], b1[:4])
        print(f"\n== {name}, MAC budget {args.budget:g}; top-1 on {len(test)} test images ==")
        for c in contenders:
            onnx_diff = max(onnx_diff, _compile(c, torch.cat(b1[:2]), folder / name))
            c.reduction = dense_macs / _macs(c, b1[:8] if c.dynamic else b1[:1])
            c.top1 = _top1(c, x_test, test.labels)
            print(f"  {c.name:<16} top-1 {c.top1:6.2f}  MAC reduction {c.reduction:5.2f}x  ({c.origin})")
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch, inputs, repeats in ((1, b1, args.repeats), (128, b128, args.repeats_b128)):
                fns: dict[str, Callable[[torch.Tensor], object]] = {}
                for c in contenders:
                    for form, fn in c.forms.items():
                        if batch > 1 and c.dynamic and form != "eager" and (form == "ONNX Runtime" or not c.batched):
                            continue  # these compiled dynamic models run one image at a time
                        fns[f"{c.name}|{form}"] = _session(fn, threads) if form == "ONNX Runtime" else fn  # type: ignore
                _check_forms(fns, contenders, inputs[0])
                t = fastest(fns, inputs, repeats, f"{name} {threads}t b{batch}")
                print(f"\n{name}, {threads} thread(s), batch {batch}, fastest of {repeats} (alternating):")
                best = table(contenders, t)
                dense_best = min(v for k, v in t.items() if k.startswith("dense|"))
                for c in contenders:
                    forms = [f for f in FORMS if f"{c.name}|{f}" in t and f"dense|{f}" in t]
                    if forms:  # the form where it gains most over dense, and its fastest against dense's fastest
                        f = max(forms, key=lambda f: t[f"dense|{f}"] / t[f"{c.name}|{f}"])
                        fastest_sec = min(t[f"{c.name}|{g}"] for g in forms)
                        sp_mac = t[f"dense|{f}"] / t[f"{c.name}|{f}"] / c.reduction
                        ratios[(tag, threads, batch, c.name)] = (f, sp_mac, dense_best / fastest_sec)
                if threads == args.threads[0]:
                    for c_name, key in LINE_KEYS.items():
                        if c_name in best:
                            line[f"{tag}_{key}_b{batch}_ratio"] = best[c_name]
                    for form, key in (("TorchScript", "ts"), ("ONNX Runtime", "ort")):
                        if f"agent prefix|{form}" in t:
                            line[f"{tag}_prefix_{key}_b{batch}_ratio"] = t[f"dense|{form}"] / t[f"agent prefix|{form}"]
    print_targets(ratios, args.threads)
    print_vs_best(ratios)
    for tag in ("r20", "r56"):
        got = ratios.get((tag, args.threads[0], 128, "agent prefix"))
        if got is not None:
            line[f"{tag}_prefix_b128_vs_best"] = got[2]
    want = ["r20_static_b1_ratio", "r56_static_b1_ratio", "r56_static_b128_ratio", "r20_dynamic_agent_b1_ratio",
            "r56_dynamic_agent_b1_ratio", "r20_prefix_b1_ratio", "r20_prefix_ts_b1_ratio",
            "r20_prefix_ort_b1_ratio", "r20_prefix_b128_vs_best", "r56_prefix_b128_vs_best"]  # fmt: skip
    print(" ".join([f"{k}={line.get(k, math.nan):.3f}" for k in want] + [f"onnx_max_abs_diff={onnx_diff:.3g}"]))


if __name__ == "__main__":
    main()
