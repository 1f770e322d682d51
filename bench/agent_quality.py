"""Agent quality: learned runtime agents vs the uniform runtime ratio at the same measured MAC fraction.

Three ``train_agent.py`` runs on the gated ResNet-20 fine-tuned on the JPEG copy of CIFAR-10
(``../shared/models/resnet20_cifar10jpeg.pt``, data ``../shared/data/cifar10``), each with the same schedule:

1. ``--mode runtime --budget 0.5``: the runtime agent alone (R_r = 1);
2. ``--mode runtime --budget 0.25``;
3. ``--mode joint --budget 0.5 --tradeoff 0.5``: runtime + static agent; its stored-parameter fraction.

Each run ends with the uniform policy at the agent's measured mean MAC fraction *on the same fine-tuned CNN*
(one runtime keep ratio for every unit and image, with the run's static plan and R_r; found by bisection on 1 000
validation images), so "learned vs uniform" isolates what the agent's per-input, per-unit allocation is worth.
Test top-1 is over the whole test split (10 000 images). The runs write their directories under ``--out``.

The last printed line is ``key=value`` pairs for scripts::

    uniform_top1_050=… learned_top1_050=… uniform_top1_025=… learned_top1_025=… joint_params_fraction=… wall_s=…

Usage::

    python bench/agent_quality.py                   # default schedule of train_agent.py (~45 min on 2 cores)
    python bench/agent_quality.py --quick           # a smoke run (a couple of minutes)
    python bench/agent_quality.py --extra --runtime-steps 80000 --rounds 3

Runs that already finished in ``--out`` are reported, not redone (``--rerun`` redoes them); an interrupted run
is resumed from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _common import add_machine_args

from agents.cli import build_parser, resolve_config, run


def _run(name: str, extra: list[str], args: argparse.Namespace) -> dict:
    out = args.out / name
    if (out / "results.json").is_file() and not args.rerun:  # a finished run is reported, not redone
        results = json.loads((out / "results.json").read_text())
        _report(name, results, float(results["times"]["total_s"]), reused=True)
        return results
    argv = [
        "--model", "resnet20", "--weights", str(args.models_dir / "resnet20_cifar10jpeg.pt"),
        "--data-dir", str(args.data_dir / "cifar10"), "--no-download", "--seed", str(args.seed),
        "--out", str(out), "-q", *extra, *args.extra,
    ]  # fmt: skip
    if args.quick:
        argv += ["--rounds", "1", "--gate-epochs", "0.02", "0.02", "--cnn-epochs", "0.02", "--runtime-steps", "4096",
                 "--static-steps", "54", "--num-val", "128", "--test-images", "1000"]  # fmt: skip
    cfg = resolve_config(build_parser().parse_args(argv))
    t0 = time.perf_counter()
    results = run(cfg, Path(cfg["out"]), resume=(out / "checkpoint.pt").is_file(), argv=argv)
    _report(name, results, time.perf_counter() - t0)
    return results


def _report(name: str, results: dict, seconds: float, *, reused: bool = False) -> None:
    learned, uniform = results["pruned"]["test"], results["uniform_reference"]["test"]
    phases = [k for k in results["phases"] if k != "base"]
    print(
        f"{name:>12}: learned {learned['top1']:.2f}% at MAC {learned['macs_fraction']:.4f} "
        f"(max {learned['macs_fraction_max']:.4f}) | uniform {uniform['top1']:.2f}% at MAC "
        f"{uniform['macs_fraction']:.4f} (ratio {results['uniform_reference']['ratio']:.4f}) | params "
        f"{learned['params_fraction']:.4f} | base {results['base']['test']['top1']:.2f}% | "
        f"{seconds:.0f} s{' (finished earlier)' if reused else ''} | phases {' '.join(phases)}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the three agent trainings and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_args(p, data_file="test.npz")
    p.add_argument("--out", type=Path, default=Path("runs") / "bench_agent_quality", help="where the runs go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny phases")
    p.add_argument("--rerun", action="store_true", help="redo runs that already finished in --out")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further train_agent.py options")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.models_dir / "resnet20_cifar10jpeg.pt").is_file():
        print(f"missing {args.models_dir / 'resnet20_cifar10jpeg.pt'} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    r050 = _run("runtime_050", ["--mode", "runtime", "--budget", "0.5"], args)
    r025 = _run("runtime_025", ["--mode", "runtime", "--budget", "0.25"], args)
    joint = _run("joint_050", ["--mode", "joint", "--budget", "0.5", "--tradeoff", "0.5"], args)
    print(
        f"uniform_top1_050={r050['uniform_reference']['test']['top1']:.2f} "
        f"learned_top1_050={r050['pruned']['test']['top1']:.2f} "
        f"uniform_top1_025={r025['uniform_reference']['test']['top1']:.2f} "
        f"learned_top1_025={r025['pruned']['test']['top1']:.2f} "
        f"joint_params_fraction={joint['pruned']['test']['params_fraction']:.4f} "
        f"wall_s={sum(float(r['times']['total_s']) for r in (r050, r025, joint)):.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
