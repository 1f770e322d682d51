"""Does the budget-residual prior help PPO? Policies compared on a PruneGym env with real data.

``--env runtime`` (default): ``RuntimePruningVecEnv`` (``--num-envs`` images), gated ResNet-20 from
``resnet20_cifar10jpeg.pt`` with fresh predictors, CIFAR-10 ``val``, MAC budget 0.5. ``--env static``:
``StaticPruningEnv`` on the same model (clamp mode, ``--num-val`` validation images). PPO with ``ppo.yml``'s
hyperparameters for the env id and one seed; only the policy differs:

- ``mlp``: ``MlpPolicy`` as in ``ppo.yml`` (log σ starts at 0);
- ``mlp_std-4``: ``MlpPolicy`` with ``log_std_init=-4``, i.e. the residual policy's σ without its prior;
- ``residual``: ``BudgetResidualPolicy``, prior fitted to the model's MAC curve (``make_model`` fills it);
- ``residual_sqrt``: ``BudgetResidualPolicy`` with ``macs_curve=[0, 0, 1]``, the prior keep ratio ``sqrt(B)``.

Printed per policy: over the first rollout and over the last ``--last`` rollouts, the mean episode reward, the
mean top-1 (runtime: of the episode images; static: on the validation subset), the mean backbone MAC fraction
and the fraction of episodes over the budget (``info["macs_fraction"] > budget``); and the wall time. Usage::

    python bench/policy_prior.py                       # 20k steps per policy, 1 thread (10-20 s each)
    python bench/policy_prior.py --steps 2000 --policies residual   # a smoke run
    python bench/policy_prior.py --env static --steps 5000 --num-val 128
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from _common import add_machine_args
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecMonitor

from agents.algos import make_model
from agents.hyperparams import load_hyperparams
from envs import RUNTIME_ENV_ID, STATIC_ENV_ID
from envs.runtime import RuntimePruningVecEnv
from envs.static import StaticPruningEnv

ENV_IDS = {"runtime": RUNTIME_ENV_ID, "static": STATIC_ENV_ID}
POLICIES: dict[str, list[str]] = {
    "mlp": ["policy=MlpPolicy"],
    "mlp_std-4": ["policy=MlpPolicy", "policy_kwargs={log_std_init: -4.0}"],
    "residual": ["policy=BudgetResidualPolicy"],
    "residual_sqrt": ["policy=BudgetResidualPolicy", "policy_kwargs={macs_curve: [0.0, 0.0, 1.0]}"],
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--env", choices=list(ENV_IDS), default="runtime", help="which env (default runtime)")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--num-val", type=int, default=128, help="static env: validation images (default 128)")
    p.add_argument("--steps", type=int, default=20_000, help="PPO timesteps per policy (default 20000)")
    p.add_argument("--num-envs", type=int, default=32, help="parallel images (default 32)")
    p.add_argument("--budget", type=float, default=0.5, help="MAC budget (default 0.5)")
    p.add_argument("--last", type=int, default=5, help="rollouts averaged at the end (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="resnet20")
    add_machine_args(p, data_file="val.npz")
    p.set_defaults(threads=1)  # the figures in ppo.yml were taken on one thread
    return p.parse_args(argv)


class EpisodeLog(BaseCallback):
    """Collects ``(rollout, reward, top-1, MAC fraction)`` of every finished episode."""

    def __init__(self) -> None:
        super().__init__()
        self.rollout = 0
        self.rows: list[tuple[int, float, float, float]] = []

    def _on_rollout_end(self) -> None:
        self.rollout += 1

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info and "macs_fraction" in info:
                top1 = float(info["correct"]) if "correct" in info else info["top1"] / 100.0
                self.rows.append((self.rollout, info["episode"]["r"], top1, info["macs_fraction"]))
        return True


def summary(rows: np.ndarray, budget: float) -> str:
    return (f"reward {rows[:, 1].mean():+8.3f}  top-1 {100 * rows[:, 2].mean():5.1f}%  MACs {rows[:, 3].mean():.3f}  "
            f"over budget {100 * (rows[:, 3] > budget).mean():5.1f}%  ({len(rows)} episodes)")


def run(args: argparse.Namespace, name: str) -> dict[str, Any]:
    common = {"model": args.model, "weights": args.models_dir / f"{args.model}_cifar10jpeg.pt", "dataset": "cifar10",
              "data_dir": args.data_dir / "cifar10", "budget": args.budget}
    if args.env == "runtime":
        venv: Any = VecMonitor(RuntimePruningVecEnv(num_envs=args.num_envs, **common))
        venv.seed(args.seed)
    else:
        venv = StaticPruningEnv(num_val=args.num_val, **common)  # SB3 adds Monitor and DummyVecEnv
    hp = load_hyperparams("ppo", ENV_IDS[args.env], overrides=POLICIES[name])
    model, _ = make_model("ppo", venv, hp, seed=args.seed, verbose=0)
    log = EpisodeLog()
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.steps, callback=log)
    wall = time.perf_counter() - t0
    rows = np.array(log.rows)
    first, last = rows[rows[:, 0] == 0], rows[rows[:, 0] >= log.rollout - args.last]
    print(f"{name:<14} policy {type(model.policy).__name__}, {model.num_timesteps} steps, "
          f"{log.rollout} rollouts, {wall:.0f} s")
    print(f"  first rollout         {summary(first, args.budget)}")
    print(f"  last {args.last} rollouts       {summary(last, args.budget)}")
    return {"wall_s": wall, "last_reward": float(last[:, 1].mean()), "last_macs": float(last[:, 3].mean())}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = f"{args.num_envs} envs" if args.env == "runtime" else f"{args.num_val} validation images"
    print(f"{args.model} {args.env} env, budget {args.budget}, {size}, {args.steps} PPO steps, "
          f"seed {args.seed}, {args.threads} thread(s)")
    out = {name: run(args, name) for name in args.policies}
    print(" ".join(f"{n}_{k}={v:.4g}" for n, r in out.items() for k, v in r.items()))


if __name__ == "__main__":
    main()
