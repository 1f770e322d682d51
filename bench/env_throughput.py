"""Throughput of the environments on the CPU: a batched runtime episode against one plain forward pass.

1. Runtime environment (``RuntimePruningVecEnv``, gated ResNet-20 and ResNet-56 with fresh predictors, CIFAR-10
   ``val``, B = 128 episodes per batch, a constant action = keep ratio 0.5): the time of one batched episode
   (L steps; the last step also starts the next episode, i.e. draws 128 new images and runs the stem) against
   one forward pass of the plain (ungated) model on the same 128 images, and against the gated model's own
   forward pass with the same ratio (what the env cannot avoid: the masked units). Env steps per second count
   per-image steps: ``B·L`` per episode.
2. Static environment (``StaticPruningEnv``, when ``envs/static.py`` exists): the time of one episode (reset +
   L steps with a constant action; the last step scores the pruned model on the validation subset, in batches
   of 512) at 512 and 2048 validation images, against plain forward passes over the same images at batch 128
   and at batch 512.

Times are medians under ``torch.inference_mode()`` after a warm-up; the contenders of a row run alternately in
one loop so slow drifts of a shared machine hit all of them alike. The last printed line is ``key=value`` pairs
for scripts. Usage::

    python bench/env_throughput.py            # the full run (a few minutes on 2 CPU threads)
    python bench/env_throughput.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from _common import add_machine_args
from tqdm import tqdm

from envs.runtime import RuntimePruningVecEnv
from pruning.data import get_dataset, iterate_batches
from pruning.gating import set_plan
from pruning.models import get_model, input_normalization
from pruning.plan import PruningPlan

MODELS = ("resnet20", "resnet56")
RATIO = 0.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="timed runtime episodes per model (default 30; 3 quick)")
    p.add_argument("--static-repeats", type=int, default=None,
                   help="timed static episodes per model and size (default 5; 1 quick)")
    p.add_argument("--batch", type=int, default=128, help="runtime episodes per batch B (default 128)")
    p.add_argument("--static-sizes", type=int, nargs="*", default=None,
                   help="validation images of the static env (default 512 2048; 128 quick); none to skip")
    add_machine_args(p, data_file="val.npz")
    p.add_argument("--quick", action="store_true", help="smoke run: few repeats, one small static size")
    a = p.parse_args(argv)
    if a.repeats is None:
        a.repeats = 3 if a.quick else 30
    if a.static_repeats is None:
        a.static_repeats = 1 if a.quick else 5
    if a.static_sizes is None:
        a.static_sizes = [128] if a.quick else [512, 2048]
    return a


def weights_of(args: argparse.Namespace, name: str) -> Path | None:
    path = args.models_dir / f"{name}_cifar10jpeg.pt"
    return path if path.is_file() else None


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------------------
# 1. runtime environment
# ------------------------------------------------------------------------------------------------------------


def runtime_env(args: argparse.Namespace, name: str) -> dict[str, float]:
    w = weights_of(args, name)
    b = args.batch
    venv = RuntimePruningVecEnv(num_envs=b, model=name, weights=w, dataset="cifar10", data_dir=args.data_dir)
    plain = get_model(name, weights=w).eval()
    gated = copy.deepcopy(venv.model)
    set_plan(gated, PruningPlan(runtime_keep=RATIO, tradeoff=1.0))
    actions = np.tile(venv.action_for_ratio(RATIO), (b, 1))
    L = venv.num_units
    venv.seed(0)
    venv.reset()

    def episode() -> None:
        for _ in range(L):
            venv.step(actions)

    times: dict[str, list[float]] = {"episode": [], "plain": [], "gated": []}
    warmup = 2
    with torch.inference_mode():
        for i in tqdm(range(warmup + args.repeats), desc=f"{name} runtime env", leave=False, file=sys.stderr):
            idx = torch.tensor([info["image_index"] for info in venv.reset_infos])
            x = venv.dataset.normalize(venv.dataset.images[idx])  # this episode's images
            runs = {"episode": episode, "plain": lambda x=x: plain(x), "gated": lambda x=x: gated(x)}
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for k in order:
                t = timed(runs[k])
                if i >= warmup:
                    times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "episode_ms": 1e3 * med["episode"],
        "plain_ms": 1e3 * med["plain"],
        "gated_ms": 1e3 * med["gated"],
        "over_forward": med["episode"] / med["plain"],
        "gated_over_forward": med["gated"] / med["plain"],
        "steps_per_s": b * L / med["episode"],
        "units": L,
    }
    print(f"{name:<9} L={L:<3} weights {w.name if w else 'RANDOM INIT (checkpoint not found)'}")
    print(f"  episode (B={b}, {L} steps + auto-reset) {out['episode_ms']:8.1f} ms   plain forward "
          f"{out['plain_ms']:8.1f} ms   gated forward (masked, ratio {RATIO}) {out['gated_ms']:8.1f} ms")
    print(f"  episode / plain forward {out['over_forward']:.3f}   gated forward / plain forward "
          f"{out['gated_over_forward']:.3f}   env steps/s {out['steps_per_s']:,.0f} "
          f"({b}x{L} per episode; {args.repeats} runs)")
    return out


# ------------------------------------------------------------------------------------------------------------
# 2. static environment
# ------------------------------------------------------------------------------------------------------------


def static_env(args: argparse.Namespace, name: str, sizes: Sequence[int]) -> None:
    from envs.static import StaticPruningEnv  # optional: only when envs/static.py exists

    w = weights_of(args, name)
    plain = get_model(name, weights=w).eval()
    val = get_dataset("cifar10", split="val", root=args.data_dir)
    mean, std = input_normalization(plain)
    val.mean, val.std = tuple(mean), tuple(std)
    for n in sizes:
        env = StaticPruningEnv(model=name, weights=w, dataset="cifar10", data_dir=args.data_dir, num_val=n)
        action = np.zeros(env.action_space.shape, dtype=np.float32)
        sub = val.subset(range(n))
        batches = {bs: [x for x, _ in iterate_batches(sub, bs)] for bs in (128, 512)}

        def episode(env: StaticPruningEnv = env, action: np.ndarray = action) -> None:
            env.reset(seed=0)
            terminated = False
            while not terminated:
                terminated = env.step(action)[2]

        def forward(batches: list[torch.Tensor]) -> None:
            with torch.inference_mode():
                for x in batches:
                    plain(x)

        runs: dict[str, Callable[[], object]] = {"episode": episode}
        for bs, xs in batches.items():
            runs[f"b{bs}"] = lambda xs=xs: forward(xs)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in tqdm(range(1 + args.static_repeats), desc=f"{name} static env {n}", leave=False, file=sys.stderr):
            for k, fn in runs.items():
                t = timed(fn)
                if i >= 1:
                    times[k].append(t)
        e, f128, f512 = (statistics.median(times[k]) for k in runs)
        print(f"{name:<9} static env, {n:>5} val images: episode ({env.num_units} steps) {1e3 * e:8.1f} ms   plain "
              f"forward over the {n} images at batch 128 {1e3 * f128:8.1f} ms, at 512 {1e3 * f512:8.1f} ms   "
              f"episode / best forward {e / min(f128, f512):.3f}  ({args.static_repeats} runs)")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {args.repeats} "
          f"(static {args.static_repeats})")
    print(f"## 1. Runtime environment: one batched episode vs one forward pass of the batch (CIFAR-10 val, "
          f"constant keep ratio {RATIO})")
    res = {name: runtime_env(args, name) for name in MODELS}
    has_static = importlib.util.find_spec("envs.static") is not None
    if args.static_sizes and has_static:
        print("\n## 2. Static environment: one episode (reset + L steps, the last scores the validation subset)")
        for name in MODELS:
            static_env(args, name, args.static_sizes)
    elif not has_static:
        print("\n## 2. Static environment: skipped (envs/static.py not found)")
    print(f"r20_episode_over_forward={res['resnet20']['over_forward']:.3f} "
          f"r56_episode_over_forward={res['resnet56']['over_forward']:.3f} "
          f"r56_steps_per_s={res['resnet56']['steps_per_s']:.0f}")


if __name__ == "__main__":
    main()
