"""Batch-1 CPU latency of runtime pruning on ResNet-20: is the runtime-pruned model faster than the dense one?

ResNet-20 (``../shared/models/resnet20_cifar10jpeg.pt``; a seeded random init when absent) gated with fresh
predictors (``u_r = γ``), runtime keep 0.5 in every unit (R_r = 1). Contenders, timed in one loop (each
forward timed alone, the contenders alternating, fastest of ``--repeats`` per contender), for each thread
count:

=======================  ==============================================================================
``dense``                the plain model (eager PyTorch)
``static``               the same channels exported statically (the top half by γ, which ``u_r = γ`` keeps
                         for every image): the floor at these MACs, with no per-image selection
``dynamic before``       ``DynamicModel`` as it was before the lean path (``pruning/export.py`` at git
                         revision ``BEFORE``; skipped without git)
``dynamic lean``         ``DynamicModel`` of this tree
``dynamic prefix``       ``DynamicModel`` with the prefix runtime order (channels stored by γ: a keep count is a
                         slice of the weights, no gather), eager and TorchScript
``agent, predict``       a randomly initialised runtime agent (PPO + ``BudgetResidualPolicy``, 64-64 tanh, as
                         ``agents/hyperparams/ppo.yml``) in charge through SB3's ``predict``
                         (``PolicyRuntimeSource``): with the before and with the lean ``DynamicModel``
``agent, fused``         the same agent fused into PyTorch (``agents.fused.FusedRuntimeSource``), eager and
                         TorchScript (the default), on the lean ``DynamicModel``
``..., TorchScript``     dense, static, dynamic lean and dynamic with the fused agent inside compiled whole
                         (:mod:`pruning.deploy`, ``torch.jit.script`` + ``freeze``), as ``prunegym export``
                         writes them
``..., ONNX Runtime``    dense and static exported to ONNX and run in ONNX Runtime (CPU provider; when
                         ``onnxruntime`` is installed)
=======================  ==============================================================================

Each row prints its time, its speed-up over ``dense``, its MAC reduction (backbone + predictors + the agent's
MLP, per image) and speed-up / MAC reduction. Checks printed before the timings: the lean model's logits
against the masked gated model, the fused agent's ratios against ``predict``'s. The last line is
``key=value`` pairs for scripts. Usage::

    python bench/runtime_latency.py                  # 1 and 2 threads (a few minutes on a shared machine)
    python bench/runtime_latency.py --quick          # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from _common import REPO, SHARED, fastest
from torch import nn

from agents.algos import make_model
from agents.fused import FusedRuntimeSource, fuse_policy
from envs.runtime import PolicyRuntimeSource, RuntimePruningVecEnv
from pruning.accounting import CostModel
from pruning.deploy import dynamic_deployable, save_onnx, to_torchscript
from pruning.export import DynamicModel, export_static, last_kept_count
from pruning.gating import gate_model, set_plan
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.units import get_units

#: The last revision before the lean batch-1 path (``DynamicModel`` as measured in docs/results.md).
BEFORE = "722f916"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed forwards per contender (default 400)")
    p.add_argument("--models-dir", type=Path, default=SHARED / "models", help="checkpoints (default ../shared/models)")
    p.add_argument("--quick", action="store_true", help="smoke run: few repeats, one thread count")
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 20 if a.quick else 400
    if a.quick:
        a.threads = a.threads[:1]
    return a


def before_module() -> types.ModuleType | None:
    """``pruning/export.py`` at revision ``BEFORE``, imported as ``pruning._export_before`` (None without git)."""
    try:
        src = subprocess.run(
            ["git", "show", f"{BEFORE}:pruning/export.py"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("pruning._export_before")
    module.__package__ = "pruning"
    exec(compile(src, f"pruning/export.py@{BEFORE}", "exec"), module.__dict__)
    return module


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    weights = args.models_dir / "resnet20_cifar10jpeg.pt"
    torch.manual_seed(0)
    base = get_model("resnet20", weights=weights if weights.is_file() else None).eval()
    origin = weights.name if weights.is_file() else f"RANDOM INIT ({weights} not found)"
    print(f"torch {torch.__version__}; resnet20, {origin}; runtime keep 0.5, R_r = 1, batch 1")

    gated = gate_model(base).eval()
    venv = RuntimePruningVecEnv(2, model=gated, budget=0.5, num_images=8)
    hp = {"policy": "BudgetResidualPolicy", "n_steps": 8, "batch_size": 8, "policy_kwargs": {"net_arch": [64, 64]}}
    agent, _ = make_model("ppo", venv, hp, seed=0)
    set_plan(gated, PruningPlan(runtime_keep=0.5, tradeoff=1.0))
    exported = export_static(gated)
    units = get_units(base)
    gammas = [base.get_submodule(u.bn).weight.detach() for u in units]
    static = export_static(base, PruningPlan(static_keep=[0.5] * len(units), static_scores=gammas))
    prefix_plan = PruningPlan(runtime_keep=0.5, tradeoff=1.0, static_scores=gammas, runtime_order="prefix")
    set_plan(gated, prefix_plan)
    exported_prefix = export_static(gated)
    with torch.inference_mode():
        masked_prefix = gated(torch.cat([torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i))
                                         for i in range(8)]))  # fmt: skip
    set_plan(gated, PruningPlan(runtime_keep=0.5, tradeoff=1.0))
    old = before_module()

    def with_source(cls: type, make: Callable[[nn.Module], object]) -> nn.Module:
        dyn = cls(exported, None).eval()
        source = make(dyn)
        dyn.set_runtime(source)
        return dyn

    contenders: dict[str, nn.Module] = {"dense": base, "static": static}
    if old is not None:
        contenders["dynamic before"] = old.DynamicModel(exported, 0.5).eval()
    contenders["dynamic lean"] = DynamicModel(exported, 0.5).eval()
    contenders["dynamic prefix"] = DynamicModel(exported_prefix, 0.5).eval()
    if old is not None:
        contenders["agent, predict, before"] = with_source(
            old.DynamicModel, lambda d: PolicyRuntimeSource(agent, gated, budget=0.5).bind(d)
        )
    contenders["agent, predict, lean"] = with_source(
        DynamicModel, lambda d: PolicyRuntimeSource(agent, gated, budget=0.5).bind(d)
    )
    contenders["agent, fused eager, lean"] = with_source(
        DynamicModel, lambda d: FusedRuntimeSource(agent, gated, budget=0.5, script=False).bind(d)
    )
    contenders["agent, fused script, lean"] = with_source(
        DynamicModel, lambda d: FusedRuntimeSource(agent, gated, budget=0.5).bind(d)
    )

    # -- checks and MACs per image ---------------------------------------------------------------------------
    mlp = fuse_policy(agent, gated, budget=0.5)
    agent_mlp_macs = len(units) * sum(int(m.weight.numel()) for m in mlp.modules() if isinstance(m, nn.Linear))
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(16)]
    cm = CostModel(gated)
    with torch.inference_mode():
        masked = gated(torch.cat(images))
        diff = max(float((contenders["dynamic lean"](x) - masked[i : i + 1]).abs().max()) for i, x in enumerate(images))
    print(f"logits, lean DynamicModel vs masked gated model: max abs diff {diff:.3g} over {len(images)} images")
    with torch.inference_mode():
        prefix_diff = max(
            float((contenders["dynamic prefix"](torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)))
                   - masked_prefix[i : i + 1]).abs().max())
            for i in range(len(masked_prefix))
        )  # fmt: skip
    print(f"logits, prefix DynamicModel vs masked gated model (prefix order): max abs diff {prefix_diff:.3g}")
    stored = cm.channels
    reduction: dict[str, float] = {}
    ratio_seen: dict[str, list[torch.Tensor]] = {}
    for name, model in contenders.items():
        if name in ("dense",):
            reduction[name] = 1.0
            continue
        if name == "static":
            kept = torch.tensor([int(m.out_channels) for m in (static.get_submodule(u.conv) for u in units)])
            reduction[name] = cm.base_macs / float(cm.from_counts(kept, kept).macs[0])
            continue
        dyn_units = model.units  # type: ignore[attr-defined]
        totals = []
        seen: list[torch.Tensor] = []
        for x in images:
            with torch.inference_mode():
                model(x)
            counts = torch.tensor([int(last_kept_count(u)) for u in dyn_units])
            seen.append(counts)
            totals.append(float(cm.from_counts(counts, stored).total_macs[0]))
        extra = agent_mlp_macs if name.startswith("agent") else 0
        reduction[name] = cm.base_macs / (sum(totals) / len(totals) + extra)
        ratio_seen[name] = seen
    if "agent, predict, lean" in ratio_seen:
        same = all(
            torch.equal(a, b)
            for a, b in zip(ratio_seen["agent, predict, lean"], ratio_seen["agent, fused script, lean"], strict=True)
        )
        print(f"kept counts, fused agent vs predict: {'equal' if same else 'DIFFERENT'} on {len(images)} images")

    # -- compiled: TorchScript (frozen), ONNX Runtime --------------------------------------------------------
    compiled: dict[str, tuple[Callable[[torch.Tensor], object], str]] = {
        "dense, TorchScript": (to_torchscript(base), "dense"),
        "static, TorchScript": (to_torchscript(static), "static"),
        "dynamic lean, TorchScript": (
            to_torchscript(dynamic_deployable(contenders["dynamic lean"]), optimize_numerics=False),
            "dynamic lean",
        ),
        "dynamic prefix, TorchScript": (
            to_torchscript(dynamic_deployable(contenders["dynamic prefix"]), optimize_numerics=False),
            "dynamic prefix",
        ),
        "agent, fused, TorchScript": (
            to_torchscript(dynamic_deployable(contenders["agent, fused script, lean"]), optimize_numerics=False),
            "agent, fused script, lean",
        ),
    }
    with torch.inference_mode():
        ts_diff = max(
            float(
                (compiled["agent, fused, TorchScript"][0](x) - contenders["agent, fused script, lean"](x)).abs().max()
            )
            for x in images
        )
    print(f"logits, TorchScript dynamic model with the agent inside vs eager: max abs diff {ts_diff:.3g}")
    for name, (_, like) in compiled.items():
        reduction[name] = reduction[like]
    onnx_files: dict[str, Path] = {}
    try:
        import onnxruntime as ort

        folder = Path(tempfile.mkdtemp())
        onnx_files = {
            "dense, ONNX Runtime": save_onnx(base, folder / "dense.onnx", torch.cat(images[:2])),
            "static, ONNX Runtime": save_onnx(static, folder / "static.onnx", torch.cat(images[:2])),
        }
        reduction["dense, ONNX Runtime"], reduction["static, ONNX Runtime"] = 1.0, reduction["static"]
    except ImportError:
        print("onnxruntime is not installed (pip install -e '.[export]'): no ONNX Runtime row")

    # -- timings -----------------------------------------------------------------------------------------------
    results: dict[int, dict[str, float]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        fns: dict[str, Callable[[torch.Tensor], object]] = {**contenders, **{k: v[0] for k, v in compiled.items()}}
        for name, file in onnx_files.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            # idle ONNX Runtime threads spin by default and starve the PyTorch contenders timed beside them
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            fns[name] = lambda x, s=session: s.run(None, {"images": x.numpy()})
        t = fastest(fns, images, args.repeats, f"{threads} thread(s)")
        results[threads] = t
        print(f"\n{threads} thread(s), fastest of {args.repeats} forwards each (alternating):")
        print(f"  {'contender':<30}{'ms':>8}{'speed-up':>10}{'MAC red.':>10}{'sp/MAC red.':>13}")
        for name, sec in t.items():
            sp = t["dense"] / sec
            print(f"  {name:<30}{1e3 * sec:>8.3f}{sp:>9.2f}x{reduction[name]:>9.2f}x{sp / reduction[name]:>13.2f}")
    t = results[args.threads[0]]
    keys = {
        "static": "static", "dynamic_before": "dynamic before", "dynamic_lean": "dynamic lean",
        "prefix": "dynamic prefix", "prefix_ts": "dynamic prefix, TorchScript",
        "agent_predict_before": "agent, predict, before", "agent_fused": "agent, fused script, lean",
        "static_ts": "static, TorchScript", "dynamic_lean_ts": "dynamic lean, TorchScript",
        "agent_fused_ts": "agent, fused, TorchScript", "static_onnxruntime": "static, ONNX Runtime",
        "dense_onnxruntime": "dense, ONNX Runtime",
    }  # fmt: skip
    pairs = [f"threads={args.threads[0]}", f"dense_ms={1e3 * t['dense']:.3f}"]
    pairs.append(f"dense_ts_ms={1e3 * t['dense, TorchScript']:.3f}")
    pairs += [f"r20_{k}_b1_ratio={t['dense'] / t[v]:.3f}" for k, v in keys.items() if v in t]
    pairs.append(f"lean_max_abs_diff={diff:.3g} prefix_max_abs_diff={prefix_diff:.3g}")
    pairs.append(f"ts_agent_max_abs_diff={ts_diff:.3g}")
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
