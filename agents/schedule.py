"""The training schedule with two agents: gate stage → rounds of {RL phase, CNN phase} → export.

The schedule of Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel Pruning via Deep
Reinforcement Learning" (NeurIPS 2020, Sec. 4.1), as phases run in order:

===================  ======================================================================================
``gate_predictor``   backbone + runtime predictors ``u_r`` fine-tuned under the budget's uniform cut
                     (``gate_prune``, the default; ``False``: no pruning, as Chen et al.), ``u_s`` frozen
``gate_static``      the same with ``u_s`` trained too
``rl_runtime_<r>``   CNN frozen: the runtime agent learns in ``prunegym/RuntimePruning-v0`` under the current
                     static plan (R_r = ``tradeoff``); round 0 starts from "store everything"
``rl_static_<r>``    CNN frozen: the static agent learns in ``prunegym/StaticPruning-v0`` with the runtime
                     agent in the loop (deterministic); the best of its explored plans, re-scored on val
                     (``static_select``), becomes the static plan
``cnn_<r>``          agents frozen and deterministic: CNN and importances fine-tuned (the run's one SGD
                     schedule: Nesterov, cosine over all CNN phases; optional distillation from the base)
                     under their decisions (:class:`envs.runtime.PolicyRuntimeSource` prunes every batch)
===================  ======================================================================================

``mode="runtime"`` trains only the runtime agent (R_r = 1, nothing stored is removed), ``mode="static"`` only
the static agent (R_r = 0, no runtime pruning), ``mode="joint"`` both. :class:`JointTrainer` runs the phases,
logs to one stable-baselines3 ``Logger`` (``progress.csv`` + TensorBoard; keys ``runtime/...``, ``static/...``,
``cnn/...``, ``pruning/...``), and writes a checkpoint (CNN, optimizer, agents, static plan, position in the
schedule, random state) at every phase boundary, every ``checkpoint_every`` RL timesteps and after every CNN
epoch, atomically: a run killed at any moment resumes from its last checkpoint (:meth:`JointTrainer.run`
with ``resume=True``) and loses at most one checkpoint interval.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import logging
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor
from torch import nn
from tqdm import tqdm

from envs import RUNTIME_ENV_ID, STATIC_ENV_ID, EnvSettings, make_batched
from envs.rewards import MeanBudgetTerm
from envs.runtime import PolicyRuntimeSource
from pruning.accounting import CostModel
from pruning.budget import bisect_monotone
from pruning.checkpoint import atomic_save, check_plain, model_from_record, model_record
from pruning.criteria import get_criterion
from pruning.data import ImageDataset
from pruning.gating import clear_plan, set_plan
from pruning.models import load_checkpoint_file
from pruning.plan import RUNTIME_ORDERS, PruningPlan
from pruning.train import (
    TrainConfig,
    evaluate,
    fractional_epochs,
    gate_schedule,
    recalibrate_bn,
    rng_state,
    set_rng_state,
    train,
)

from .algos import get_algo, make_model
from .policies import fit_macs_curve, is_budget_residual

__all__ = [
    "BUDGET_TOLERANCE",
    "CHECKPOINT_FILE",
    "MODES",
    "AgentSpec",
    "JointTrainer",
    "Phase",
    "MODE_DEFAULTS",
    "STATIC_VEC_ENVS",
    "ScheduleConfig",
    "run_episode",
    "schedule_defaults",
]

log = logging.getLogger(__name__)

#: What each ``mode`` trains.
MODES: dict[str, tuple[bool, bool]] = {"runtime": (True, False), "static": (False, True), "joint": (True, True)}
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "prunegym.agents.checkpoint.v1"
#: Smallest runtime keep ratio (the runtime env's default, Chen et al.'s α = 0.1).
RUNTIME_MIN_KEEP = 0.1
#: Images of the validation split scored after each phase (``pruning/val_top1``); the full split at the end.
PHASE_EVAL_IMAGES = 1000
#: Default smallest static keep ratio (:attr:`ScheduleConfig.static_min_keep`; the static env's default floor).
STATIC_MIN_KEEP = 0.2
#: Validation images the budget guard measures the mean MAC fraction on.
GUARD_IMAGES = 1000
#: Validation images (and uniform runtime ratios) measured to refit the budget prior and find the gate ratio.
PRIOR_FIT_IMAGES = 500
PRIOR_FIT_RATIOS = (0.1, 0.28, 0.46, 0.64, 0.82, 1.0)
#: A plan meets its budget when its mean per-image MAC fraction is at most ``budget + BUDGET_TOLERANCE``.
BUDGET_TOLERANCE = 0.005
#: Validation images (and training images for BatchNorm re-estimation) that re-score the static candidates.
SELECT_IMAGES = 1000
#: How :attr:`ScheduleConfig.static_envs` > 1 static envs run (:attr:`ScheduleConfig.static_vec`), given one
#: factory per env. Workers are forked, not spawned: they start at once and share the parent's pages until
#: written, and nothing (CNN, images, the runtime agent in the loop) has to pickle; importing ``envs`` makes a
#: forked worker safe after the parent ran torch (one torch thread, see :mod:`envs`).
STATIC_VEC_ENVS: dict[str, Callable[[list[Callable[[], gym.Env]]], VecEnv]] = {
    "dummy": DummyVecEnv,
    "subproc": functools.partial(SubprocVecEnv, start_method="fork"),
}


@dataclass(frozen=True)
class Phase:
    """One step of the schedule: ``kind`` in gate_predictor, gate_static, rl_runtime, rl_static, cnn."""

    kind: str
    round: int
    length: float
    """Epochs (gate and CNN phases, fractions allowed) or environment timesteps (RL phases)."""

    @property
    def name(self) -> str:
        """Unique name, e.g. ``"rl_runtime_0"`` (gate phases have no round suffix)."""
        return self.kind if self.kind.startswith("gate") else f"{self.kind}_{self.round}"

    @property
    def is_rl(self) -> bool:
        """Whether the phase trains an agent."""
        return self.kind.startswith("rl_")


_T = TypeVar("_T")


def _setting(default: _T, help: str) -> _T:
    """A :class:`ScheduleConfig` field: ``default`` and the one-line ``help`` that its command-line option shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class ScheduleConfig:
    """Settings of the joint schedule (see the module docstring for the phases).

    Each field carries its default and, in ``metadata["help"]``, the one-line help of its command-line option:
    ``train_agent.py`` builds ``--<field-name>`` from them (:func:`agents.cli.build_parser`).
    """

    mode: str = _setting(
        "joint", "train the runtime agent, the static agent (one plan) or both (Chen, Chen & Pan's joint mode)"
    )
    """``runtime``, ``static`` or ``joint`` (:data:`MODES`)."""
    budget: float = _setting(0.5, "MAC budget: fraction of the base MACs per image")
    """MAC budget: the cap on each image's backbone MAC fraction."""
    param_budget: float | None = _setting(
        None, "stored-parameter budget of the static agent (fraction of the base backbone)"
    )
    """Stored-parameter budget of the static agent (fraction of the base backbone), or ``None``."""
    tradeoff: float = _setting(0.5, "R_r in joint mode: share of pruning done at runtime (Chen et al.: 0.5)")
    """R_r of the trade-off pruner in ``joint`` mode (1 in ``runtime`` mode, 0 in ``static`` mode)."""
    rounds: int = _setting(2, "repeats of {RL phase, CNN phase}")
    """Repeats of {RL phase, CNN phase}."""
    gate_epochs: tuple[float, float] = _setting(
        (0.2, 0.0), "gate-stage passes over the training set (predictors; then u_s too); fractions allowed"
    )
    """Gate-stage passes over the training set: backbone + predictors (``u_s`` frozen), then ``u_s`` too."""
    gate_prune: bool = _setting(
        True, "train the gate stage under the uniform plan at the budget (off: the paper's unpruned one)"
    )
    """Train the gate stage under pruning: one uniform keep ratio that meets the budget (runtime ratio when the
    mode trains a runtime agent, else a static L1 plan), so the predictors learn which channels to keep under
    the cut they will face. ``False`` is the paper's gate stage (no pruning: ``u_r`` then barely moves from γ)."""
    runtime_steps: int = _setting(40_000, "runtime-agent timesteps per RL phase")
    """Runtime-agent timesteps per RL phase (one step = one unit of one image)."""
    static_steps: int = _setting(1800, "static-agent timesteps per RL phase")
    """Static-agent timesteps per RL phase (one step = one unit; an episode scores ``num_val`` images)."""
    cnn_epochs: float = _setting(0.4, "passes over the training set per CNN phase")
    """Passes over the training set per CNN phase (fractions allowed: a seeded subset). With the defaults the run
    trains the CNN for 0.2 + 2 × 0.4 = 1 epoch in all (:attr:`cnn_budget_epochs`)."""
    cnn_lr: float = _setting(
        0.01, "peak lr of the run's one SGD schedule (Nesterov 0.9, cosine over the gate stage and all CNN phases)"
    )
    """Peak learning rate of the run's one SGD schedule (Nesterov, momentum 0.9), annealed by a cosine over all
    its CNN-training steps: gate stage and CNN phases together (:attr:`cnn_budget_epochs`)."""
    weight_decay: float = _setting(1e-4, "L2 on weights in every CNN-training phase")
    """L2 on conv, linear and predictor weights during every CNN-training phase."""
    distill: float = _setting(0.0, "distil from the unpruned base with this weight in every CNN-training step")
    """Weight of knowledge distillation from :class:`JointTrainer`'s ``teacher`` (the unpruned base) in every
    CNN-training phase (:func:`pruning.train.distillation_loss`); 0: labels only."""
    distill_temperature: float = _setting(4.0, "softmax temperature of the distillation term")
    """Softmax temperature of the distillation term."""
    bn_recalibration: int = _setting(
        256, "images that re-estimate BatchNorm statistics under the masks before each RL phase (0: off)"
    )
    """Images whose train-mode forward passes re-estimate the BatchNorm statistics under the current masks
    before each RL phase (and that the static env uses per episode, from ``val`` outside its scored subset).
    0 turns it off."""
    runtime_budget: str = _setting(
        "image", "runtime reward's budget: a cap per image (paper) or a Lagrangian on the batch-mean MAC fraction"
    )
    """How the runtime agent's reward holds the MAC budget: ``"image"`` (Chen et al.'s steep penalty above the cap,
    per image) or ``"mean"`` (:class:`envs.rewards.MeanBudgetTerm`: a Lagrange multiplier on the batch-mean MAC
    fraction, so hard images may spend more and easy ones less; the budget guard then meets the mean)."""
    static_min_keep: float | None = _setting(
        None, "smallest keep ratio of the static agent's action (the static env's min_keep; default min(0.2, B/2))"
    )
    """Smallest keep ratio the static agent's action maps to (the static env's ``min_keep``), also the floor of
    the budget guard's static offset and of the static uniform reference. ``None``: ``min(0.2, budget / 2)``
    (:attr:`static_floor`): AMC's 0.2 where the budget leaves room around it, else half the budget, so the
    agent can always halve a unit's uniform share (at B = 0.25 a ResNet-20 unit's uniform ratio is ~0.24)."""
    runtime_order: str = _setting(
        "u_r",
        "which channels a runtime keep count keeps: u_r (each image's top-k) or prefix (the first k of the static "
        "ranking: contiguous slices after export)",
    )
    """Which channels a runtime keep count keeps (:attr:`pruning.plan.PruningPlan.runtime_order`): ``"u_r"``
    (Chen et al.: each image its top-k by ``u_r``) or ``"prefix"`` (the first k of one fixed order per unit, the
    static ranking, or :attr:`static_criterion`'s scores of the base model where there is no static plan yet:
    per image only the width changes, and the export computes it as a slice of the weights)."""
    static_criterion: str = _setting(
        "l1", "which channels a static keep ratio keeps: l1 (filter norm) or u_s (learned static importance)"
    )
    """Which channels a static keep ratio keeps (a :mod:`pruning.criteria` name): ``"l1"`` (filter norm) or
    ``"u_s"`` (the paper's learned static importance). The ranking is frozen when the static agent is scored."""
    batch_size: int = _setting(128, "images per CNN/gate step")
    """Images per CNN/gate step."""
    grad_clip: float | None = _setting(40.0, "gradient-norm clip of the CNN/gate phases (None: no clip)")
    """Gradient-norm clip of the CNN/gate phases (the released code's 40); ``None`` does not clip."""
    n_envs: int = _setting(64, "images per runtime-env batch")
    """Images per runtime-env batch (``RuntimePruningVecEnv`` episodes run together)."""
    num_val: int = _setting(256, "validation images per static-env episode")
    """Validation images the static env scores per episode."""
    static_envs: int = _setting(1, "static-env episodes run side by side (> 1: one worker process each)")
    """Static episodes the static agent collects side by side: the static RL phase's envs
    (``prunegym/StaticPruning-v0``), env ``i`` seeded with the round's seed + ``i``. 1 (the default) runs one
    env in this process. N > 1 runs N envs as :attr:`static_vec` says (by default each in a forked worker
    process: episodes score in parallel, one torch thread per worker); the agent then collects N episodes per
    step, so its rollouts, and the run, differ from a run with another N (the same with either
    :attr:`static_vec`). Costs per env: a copy of the CNN and of the ``num_val`` + ``bn_recalibration`` cached
    images, and its own running loss scale. Workers are forked from this process, so N > 1 with
    ``static_vec="subproc"`` needs ``device="cpu"`` and an OS that forks (Linux, macOS)."""
    static_vec: str = _setting(
        "subproc", "how --static-envs > 1 envs run: subproc (a forked worker each) or dummy (in turn, here)"
    )
    """How :attr:`static_envs` > 1 envs run (:data:`STATIC_VEC_ENVS`): ``"subproc"`` (stable-baselines3's
    ``SubprocVecEnv``, one forked worker process per env) or ``"dummy"`` (``DummyVecEnv``: one after another in
    this process, with the same results). Ignored for one env."""
    static_select: int = _setting(
        8, "best-rewarded static episodes re-scored on val against the deterministic one (0: deterministic)"
    )
    """How many of a static RL phase's best-rewarded episodes compete with the agent's deterministic episode
    for the static plan. At the phase's end each of them is re-scored on :data:`SELECT_IMAGES` validation
    images (BN re-estimated under its plan on as many training images; no weight changes) and the lowest
    validation loss wins, as AMC (He et al., ECCV 2018) exports the best episode of its search rather than the
    last policy. Measured on ResNet-20 at B = 0.25 (1 800 static steps = 200 episodes): the episode reward
    hardly rises over the phase (-0.99 ± 0.01), so the deterministic episode is about the initial policy mean
    plus drift, while the proxy itself ranks plans consistently (three plans, three val subsets). 0 takes the
    deterministic episode (Chen et al.)."""
    checkpoint_every: int = _setting(10_000, "RL timesteps between checkpoints")
    """RL timesteps between checkpoints inside an RL phase."""
    seed: int = _setting(0, "seed of agents, data order and envs")
    """Seeds the agents, the data order and the envs."""
    device: str = _setting("cpu", "where the CNN runs: cpu, cuda or cuda:N")
    """Where the CNN runs."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if not (math.isfinite(self.budget) and 0.0 < self.budget <= 1.0):
            raise ValueError(f"budget must be a MAC fraction in (0, 1], got {self.budget}")
        if self.param_budget is not None:
            if not (math.isfinite(self.param_budget) and 0.0 < self.param_budget <= 1.0):
                raise ValueError(f"param_budget must be a fraction in (0, 1], got {self.param_budget}")
            if self.mode == "runtime":
                raise ValueError("a parameter budget needs a static agent: use mode='static' or 'joint'")
        if not 0.0 <= self.tradeoff <= 1.0:
            raise ValueError(f"tradeoff R_r must be in [0, 1], got {self.tradeoff}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if len(self.gate_epochs) != 2 or min(self.gate_epochs) < 0:
            raise ValueError(f"gate_epochs takes two numbers >= 0, got {self.gate_epochs}")
        for key in ("runtime_steps", "static_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.cnn_epochs < 0:
            raise ValueError(f"cnn_epochs must be >= 0, got {self.cnn_epochs}")
        if not (math.isfinite(self.cnn_lr) and self.cnn_lr > 0):
            raise ValueError(f"cnn_lr must be a positive number, got {self.cnn_lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.bn_recalibration < 0:
            raise ValueError(f"bn_recalibration must be >= 0 images, got {self.bn_recalibration}")
        if self.runtime_budget not in ("image", "mean"):
            raise ValueError(f"runtime_budget must be 'image' or 'mean', got {self.runtime_budget!r}")
        if self.static_min_keep is not None and not (
            math.isfinite(self.static_min_keep) and 0.0 < self.static_min_keep <= 1.0
        ):
            raise ValueError(f"static_min_keep must be a keep ratio in (0, 1], got {self.static_min_keep}")
        if self.runtime_order not in RUNTIME_ORDERS:
            raise ValueError(f"runtime_order must be one of {RUNTIME_ORDERS}, got {self.runtime_order!r}")
        get_criterion(self.static_criterion)  # unknown names: ValueError naming the close matches
        if not (math.isfinite(self.distill) and 0.0 <= self.distill <= 1.0):
            raise ValueError(f"distill must be a weight in [0, 1], got {self.distill}")
        if self.static_select < 0:
            raise ValueError(f"static_select must be >= 0 episodes, got {self.static_select}")
        for key in ("n_envs", "num_val", "static_envs", "checkpoint_every", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if self.static_vec not in STATIC_VEC_ENVS:
            raise ValueError(f"static_vec must be one of {sorted(STATIC_VEC_ENVS)}, got {self.static_vec!r}")
        if self.static_envs > 1 and self.static_vec == "subproc":
            if "fork" not in mp.get_all_start_methods():
                raise ValueError(
                    "static_envs > 1 with static_vec='subproc' forks worker processes, which this OS cannot: "
                    "use static_vec='dummy' or static_envs=1"
                )
            if torch.device(self.device).type != "cpu":
                raise ValueError(
                    f"static_envs > 1 with static_vec='subproc' forks worker processes, which cannot use "
                    f"device={self.device!r} (a forked child cannot re-initialise CUDA): use device='cpu', "
                    "static_vec='dummy' or static_envs=1"
                )

    @property
    def cnn_budget_epochs(self) -> float:
        """Epochs of CNN training the run spends (every weight-changing step): gate stage + all CNN phases."""
        return float(sum(self.gate_epochs)) + self.rounds * float(self.cnn_epochs)

    @property
    def static_floor(self) -> float:
        """The static keep floor in force: :attr:`static_min_keep`, or ``min(0.2, budget / 2)`` when it is ``None``."""
        if self.static_min_keep is not None:
            return float(self.static_min_keep)
        return min(STATIC_MIN_KEEP, 0.5 * self.budget)

    @property
    def trains_runtime(self) -> bool:
        """Whether a runtime agent is trained."""
        return MODES[self.mode][0]

    @property
    def trains_static(self) -> bool:
        """Whether a static agent is trained."""
        return MODES[self.mode][1]

    @property
    def effective_tradeoff(self) -> float:
        """R_r used by the trade-off pruner: 1 (runtime), 0 (static) or :attr:`tradeoff` (joint)."""
        return {"runtime": 1.0, "static": 0.0}.get(self.mode, self.tradeoff)

    def phases(self) -> list[Phase]:
        """The phases this config runs, in order (zero-length phases are left out)."""
        gate = zip(("gate_predictor", "gate_static"), self.gate_epochs, strict=True)
        out = [Phase(kind, 0, e) for kind, e in gate if e > 0]
        for r in range(self.rounds):
            if self.trains_runtime and self.runtime_steps > 0:
                out.append(Phase("rl_runtime", r, self.runtime_steps))
            if self.trains_static and self.static_steps > 0:
                out.append(Phase("rl_static", r, self.static_steps))
            if self.cnn_epochs > 0:
                out.append(Phase("cnn", r, self.cnn_epochs))
        return out


#: Schedule settings that differ by mode from :class:`ScheduleConfig`'s defaults (what ``train_agent.py`` uses when
#: they are not given). ``static`` learns one plan on the base model and trains the CNN under it for the whole
#: epoch: no gate stage (nothing is predicted per input) and one round (a second RL phase would only re-learn
#: the plan on a CNN already fitted to the first one).
MODE_DEFAULTS: dict[str, dict[str, Any]] = {"static": {"gate_epochs": (0.0, 0.0), "rounds": 1, "cnn_epochs": 1.0}}


def schedule_defaults(mode: str) -> dict[str, Any]:
    """``gate_epochs``, ``rounds`` and ``cnn_epochs`` for ``mode``: :data:`MODE_DEFAULTS` over the dataclass's."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    out = {k: getattr(ScheduleConfig, k) for k in ("gate_epochs", "rounds", "cnn_epochs")}
    out.update(MODE_DEFAULTS.get(mode, {}))
    return out


@dataclass
class AgentSpec:
    """An agent to train: algorithm name (or ``package.module:Class``) and resolved hyperparameters."""

    algo: str
    hyperparams: dict[str, Any] = field(default_factory=dict)


def run_episode(env: Any, agent: Any, *, deterministic: bool = True, seed: int | None = None) -> dict[str, Any]:
    """Run one episode of a single (non-vectorised) env with ``agent.predict``; return the last ``info``.

    A recurrent agent's state is carried through the episode (``episode_start`` is true at the first step).
    """
    obs, _ = env.reset(seed=seed)
    state: Any = None
    start = np.ones(1, dtype=bool)
    done, info = False, {}
    while not done:
        action, state = agent.predict(obs[None], state=state, episode_start=start, deterministic=deterministic)
        start = np.zeros(1, dtype=bool)
        obs, _, terminated, truncated, info = env.step(np.asarray(action)[0])
        done = terminated or truncated
    return info


# -----------------------------------------------------------------------------------------------------------
# logging: one SB3 Logger for the whole run
# -----------------------------------------------------------------------------------------------------------


class ResumableCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV writer that continues an existing ``progress.csv`` instead of truncating it.

    stable-baselines3 opens the file with mode ``w+``; a resumed run must keep the rows written before the
    kill, so the file is reopened, cut to its last complete row, and its header becomes the known keys.
    """

    def __init__(self, filename: str | os.PathLike[str], keep_rows: int | None = None) -> None:
        path = Path(filename)
        if not path.is_file() or path.stat().st_size == 0:
            super().__init__(str(path))
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        lines = [ln for ln in lines if ln.endswith("\n")]  # a row cut by a kill is dropped
        if keep_rows is not None:
            lines = lines[: keep_rows + 1]
        path.write_text("".join(lines), encoding="utf-8")
        self.file = open(path, "r+")  # noqa: SIM115 - closed by close(), as SB3's writer does
        self.file.seek(0, os.SEEK_END)
        self.keys = next(csv.reader([lines[0]])) if lines else []
        self.separator = ","
        self.quotechar = '"'

    def rows(self) -> int:
        """Data rows written so far."""
        self.file.flush()
        with open(self.file.name, encoding="utf-8") as f:
            return max(0, sum(1 for _ in f) - 1)


class RunLogger(Logger):
    """An SB3 ``Logger`` shared by both agents and the CNN phases of one run.

    Keys get the current :attr:`prefix` (``"runtime/"``, ``"static/"``) so the two agents' ``train/loss`` stay
    apart, and every dump is placed at the run's global step (:attr:`offset` + the agent's own step).
    """

    def __init__(self, folder: str | os.PathLike[str], keep_rows: int | None = None) -> None:
        self.csv = ResumableCSVOutputFormat(Path(folder) / "progress.csv", keep_rows)
        super().__init__(str(folder), [self.csv, TensorBoardOutputFormat(str(folder))])
        self.prefix = ""
        self.offset = 0
        self._pending: int | None = None

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:  # noqa: D102
        super().record(self._key(key), value, exclude)

    def record_mean(self, key: str, value: float | None, exclude: str | tuple[str, ...] | None = None) -> None:  # noqa: D102
        super().record_mean(self._key(key), value, exclude)

    def _key(self, key: str) -> str:
        return key if not self.prefix or key.startswith(("pruning/", "reward/", "eval/")) else self.prefix + key

    def dump(self, step: int = 0) -> None:  # noqa: D102
        super().dump(self.offset + int(step))

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        """TensorBoard-writer interface for :func:`pruning.train.train`: scalars of one step share one row."""
        step = int(global_step or 0)
        if self._pending is not None and self._pending != step:
            self.flush_scalars()
        self.record(tag, float(scalar_value))
        self._pending = step

    def flush_scalars(self) -> None:
        """Dump the scalars :meth:`add_scalar` has collected for its last step."""
        if self._pending is not None:
            self.dump(self._pending)
            self._pending = None


class _PruningStats(BaseCallback):
    """Logs what finished episodes pruned (``pruning/*``, ``reward/*``) and advances a progress bar."""

    def __init__(self, bar: tqdm | None) -> None:
        super().__init__()
        self.bar = bar
        self.values: dict[str, list[float]] = {}

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(int(self.training_env.num_envs))
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if not done or "reward_parts" not in info:
                continue
            # the end-of-episode keys both envs report (envs.rewards.EPISODE_INFO_KEYS); top-1 is on val images
            self._add("pruning/macs_fraction", info["macs_fraction"])
            self._add("pruning/params_fraction", info["params_fraction"])
            self._add("pruning/val_top1", info["top1"])
            for k, v in info["reward_parts"].items():
                self._add(f"reward/{k}", v)
        return True

    def _add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(float(value))

    def _on_rollout_end(self) -> None:
        for key, vals in self.values.items():
            self.logger.record(key, float(np.mean(vals)))
        self.values = {}


class _EpisodeArchive(BaseCallback):
    """Appends each finished static episode's applied keep ratios and reward to ``episodes`` (checkpointed)."""

    def __init__(self, episodes: list[dict[str, Any]]) -> None:
        super().__init__()
        self.episodes = episodes

    def _on_step(self) -> bool:
        # float32, what the agent learns from: DummyVecEnv holds rewards in float32, SubprocVecEnv in float64
        rewards = np.asarray(self.locals["rewards"], dtype=np.float32)
        for i, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"], strict=True)):
            if done and "applied_keeps" in info:
                self.episodes.append({"keep": [float(k) for k in info["applied_keeps"]], "reward": float(rewards[i])})
        return True


class _Checkpoints(BaseCallback):
    """Calls ``save()`` every ``every`` timesteps of the agent."""

    def __init__(self, every: int, save: Any) -> None:
        super().__init__()
        self.every, self.save = int(every), save
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last >= self.every:
            self.last = self.num_timesteps
            self.save()
        return True


# -----------------------------------------------------------------------------------------------------------
# the trainer
# -----------------------------------------------------------------------------------------------------------


class JointTrainer:
    """Runs a :class:`ScheduleConfig` on a gated CNN with up to two agents, checkpointing as it goes.

    Args:
        model: The gated model (``pruning.gating.gate_model``), trained in place.
        arch: Its registry name (stored in checkpoints).
        num_classes: Classifier outputs.
        data: ``{"train", "val"}`` splits normalised for the model (the test split is never used here).
        config: The schedule.
        runtime_agent: Algorithm + hyperparameters of the runtime agent (needed when the mode trains one).
        static_agent: Algorithm + hyperparameters of the static agent.
        run_dir: Where checkpoints, agents and logs go.
        progress: Show progress bars.
        teacher: The model the CNN phases distil from when ``config.distill > 0`` (the unpruned base; never
            changed, not checkpointed: pass it again to resume).

    After :meth:`run`: :attr:`model` (the fine-tuned CNN, no plan set), :attr:`runtime_model` /
    :attr:`static_model` (the agents, or ``None``), :attr:`static_keep` (the static plan or ``None``) and
    :attr:`history` (per-phase records).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        arch: str,
        num_classes: int,
        data: Mapping[str, ImageDataset],
        config: ScheduleConfig,
        runtime_agent: AgentSpec | None,
        static_agent: AgentSpec | None,
        run_dir: str | os.PathLike[str],
        progress: bool = True,
        teacher: nn.Module | None = None,
    ) -> None:
        if config.distill > 0 and teacher is None:
            raise ValueError(f"config.distill={config.distill} needs a teacher: pass teacher=<the unpruned base model>")
        if config.trains_runtime and runtime_agent is None:
            raise ValueError(f"mode {config.mode!r} trains a runtime agent: pass runtime_agent=AgentSpec(...)")
        if config.trains_static and static_agent is None:
            raise ValueError(f"mode {config.mode!r} trains a static agent: pass static_agent=AgentSpec(...)")
        for spec in (runtime_agent, static_agent):
            if spec is not None:
                get_algo(spec.algo)  # unknown names fail before any work
        self.model = model.to(config.device)
        self.arch, self.num_classes = arch, int(num_classes)
        self.data = dict(data)
        self.config = config
        self.specs = {"runtime": runtime_agent, "static": static_agent}
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.teacher = teacher
        self.phases = config.phases()
        self.runtime_model: Any = None
        self.static_model: Any = None
        self.static_keep: list[float] | None = None
        self.history: dict[str, Any] = {}
        self.global_step = 0
        self._generation = 0
        self.logger: RunLogger | None = None
        self.cost_model = CostModel(self.model)
        self._round = 0  # round of the phase being run (seeds its envs)
        #: Channel scores the static plan ranks by, frozen when the static agent was scored (``None``: ``u_s``).
        self.static_scores: list[list[float]] | None = None
        #: Added to every runtime action (the budget guard's shift, :meth:`guard_budget`).
        self.action_offset = 0.0
        #: Finished episodes of the static RL phase in progress (:attr:`ScheduleConfig.static_select`).
        self.static_episodes: list[dict[str, Any]] = []
        #: SGD state carried from one CNN-training phase to the next (one optimizer for the whole run).
        self._optimizer_state: dict[str, Any] | None = None
        self._optimizer_params = ""

    # -- plans ----------------------------------------------------------------------------------------------
    @property
    def tradeoff(self) -> float:
        """R_r of this run."""
        return self.config.effective_tradeoff

    def runtime_source(self, model: nn.Module | None = None, *, deterministic: bool = True) -> PolicyRuntimeSource:
        """The trained runtime agent as a :class:`PolicyRuntimeSource` bound to ``model`` (default: the CNN)."""
        if self.runtime_model is None:
            raise RuntimeError("no runtime agent yet")
        source = PolicyRuntimeSource(
            self.runtime_model, self.model, budget=self.config.budget, min_keep=RUNTIME_MIN_KEEP,
            deterministic=deterministic, action_offset=self.action_offset,
        )  # fmt: skip
        return source.bind(model) if model is not None else source

    def frozen_scores(self) -> list[torch.Tensor] | None:
        """The static ranking the static agent was scored with (one score vector per unit), or ``None``."""
        if self.static_scores is None:
            return None
        return [torch.tensor(v, dtype=torch.float32) for v in self.static_scores]

    def order_scores(self) -> list[torch.Tensor] | None:
        """The channel scores the plans rank by: the frozen static ranking, or ``None`` (``u_r`` order, no static plan).

        With the prefix runtime order they also order the runtime choice; where no static agent has chosen a
        ranking yet, :attr:`ScheduleConfig.static_criterion`'s scores of the model are frozen the first time.
        """
        if self.config.runtime_order != "prefix":
            return self.frozen_scores() if self.static_keep is not None else None
        if self.static_scores is None:
            self.static_scores = [[float(v) for v in sc] for sc in self._criterion_scores()]
        return self.frozen_scores()

    def plan(self, *, deterministic: bool = True) -> PruningPlan:
        """The agents' current plan (static keep ratios, runtime source, R_r) for the CNN.

        Without a static plan yet (round 0 of ``joint`` mode) nothing is stored-pruned and the runtime agent's
        ratios are applied as they are (R_r = 1): R_r < 1 with nothing pruned statically would keep half of
        what the runtime agent drops, a budget the agent could never reach. The static plan ranks channels by
        the scores it was chosen with (:meth:`frozen_scores`), so the stored set cannot drift while the CNN
        trains.
        """
        return self._plan_with(self.static_keep, deterministic=deterministic)

    def _plan_with(
        self, static: Sequence[float] | None, *, deterministic: bool = True, model: nn.Module | None = None
    ) -> PruningPlan:
        """:meth:`plan` with ``static`` in place of :attr:`static_keep`, its runtime agent bound to ``model``.

        ``model`` (default: the run's CNN) is the model the plan will be set on: the runtime agent charges each
        unit's MACs from the kept counts of that model's units, so a plan for a copy must be bound to the copy.
        """
        static = None if static is None else [float(k) for k in static]
        runtime = None
        if self.runtime_model is not None:
            runtime = self.runtime_source(model if model is not None else self.model, deterministic=deterministic)
        if runtime is None and static is None:
            return PruningPlan()
        order = self.config.runtime_order
        if static is None:
            return PruningPlan(
                runtime_keep=runtime, tradeoff=1.0, static_scores=self.order_scores(), runtime_order=order
            )
        # a static side ranks by the frozen ranking whenever there is one, also before static_keep is set (the
        # static phase's selection scores its candidates with the channels the static env scored them with)
        scores = self.frozen_scores() if self.static_scores is not None else self.order_scores()
        return PruningPlan(
            static_keep=static, runtime_keep=runtime, tradeoff=self.tradeoff if runtime else None,
            static_scores=scores, runtime_order=order,
        )  # fmt: skip

    def uniform_plan(self, ratio: float) -> PruningPlan:
        """The hand-designed reference of this run's kind at one keep ratio for every unit (and image).

        ``static`` mode: one static keep ratio, channels ranked by :attr:`ScheduleConfig.static_criterion`;
        otherwise one runtime ratio (FBS-style top-k by ``u_r``) under the run's static plan and R_r, if any.
        """
        if self.config.mode == "static":
            return PruningPlan(static_keep=[ratio] * len(self.cost_model.units), static_scores=self._criterion_scores())
        order = self.config.runtime_order
        if self.static_keep is None:
            return PruningPlan(runtime_keep=ratio, tradeoff=1.0, static_scores=self.order_scores(), runtime_order=order)
        return PruningPlan(
            static_keep=self.static_keep, runtime_keep=ratio, tradeoff=self.tradeoff,
            static_scores=self.order_scores(), runtime_order=order,
        )  # fmt: skip

    def _criterion_scores(self) -> list[torch.Tensor]:
        crit = get_criterion(self.config.static_criterion)
        return [torch.as_tensor(crit(self.model, u), dtype=torch.float32).detach().cpu() for u in self.cost_model.units]

    def measure_plan(self, plan: PruningPlan, data: ImageDataset) -> dict[str, float]:
        """Top-1, loss and measured MAC/param fractions of the CNN under ``plan`` on ``data`` (plan cleared after)."""
        clear_plan(self.model)
        set_plan(self.model, plan)
        try:
            return evaluate(self.model, data, cost_model=self.cost_model)
        finally:
            clear_plan(self.model)

    def uniform_ratio(self, target: float, dataset: ImageDataset, *, halvings: int = 12) -> float:
        """The largest uniform ratio (:meth:`uniform_plan`) whose mean MAC fraction on ``dataset`` is <= ``target``.

        Bisection on ``[min_keep, 1]`` (:func:`pruning.budget.bisect_monotone`: the MAC fraction grows with the
        ratio); keep counts are a step function of the ratio, so ``halvings`` = 12 resolves every step of a unit
        of up to 4 096 channels.
        """
        lo = RUNTIME_MIN_KEEP if self.config.mode != "static" else self.config.static_floor

        def fits(ratio: float) -> bool:
            return bool(self.measure_plan(self.uniform_plan(ratio), dataset)["macs_fraction"] <= target)

        return bisect_monotone(fits, lo, 1.0, steps=halvings)

    def _probe(self, images: int) -> ImageDataset:
        return self.data["val"].strided(images)

    def recalibrate(self, plan: PruningPlan | None = None) -> int:
        """Re-estimate the CNN's BatchNorm statistics under ``plan`` (default: the agents' current plan).

        Uses :attr:`ScheduleConfig.bn_recalibration` evenly spaced training images (no augmentation, no
        gradients: no weight changes). Returns the number of images used (0 when turned off).
        """
        n = self.config.bn_recalibration
        if n <= 0:
            return 0
        train_set = self.data["train"]
        idx = np.linspace(0, len(train_set), num=min(n, len(train_set)), endpoint=False).astype(np.int64)
        clear_plan(self.model)
        set_plan(self.model, self.plan(deterministic=True) if plan is None else plan)
        try:
            subset = train_set.subset(torch.from_numpy(idx))
            return recalibrate_bn(self.model, subset, batch_size=self.config.batch_size)
        finally:
            clear_plan(self.model)

    def guard_budget(
        self, dataset: ImageDataset | None = None, *, max_images: int = GUARD_IMAGES, halvings: int = 14
    ) -> dict[str, Any]:
        """Make the agents' deterministic plan meet the MAC budget in mean per-image MAC fraction.

        The learned plan is shifted as a whole, by one number found by bisection: with a runtime agent, an
        additive offset on every runtime action (:attr:`action_offset`, in ``[-2, 2]``: -2 sends every action
        to the floor); in ``static`` mode, an additive offset on every static keep ratio (clipped to
        ``[static_floor, 1]``). The offset is the largest whose mean MAC fraction on ``dataset`` (default:
        ``max_images`` evenly spaced validation images) is at most the budget, so a plan under its budget
        spends what is left and one over it is cut back. The agents' relative allocation is kept.

        Returns:
            ``{"offset", "kind" ("runtime"/"static"/"none"), "before", "after"}`` (MAC fractions on the
            probe). ``kind == "none"`` when there is nothing to shift (no agent).
        """
        budget = self.config.budget
        data = self._probe(max_images) if dataset is None else dataset
        if self.runtime_model is None and self.static_keep is None:
            return {"offset": 0.0, "kind": "none", "before": None, "after": None}
        kind = "runtime" if self.runtime_model is not None else "static"
        base_keep = list(self.static_keep) if self.static_keep is not None else None
        start = self.action_offset
        floor = self.config.static_floor

        def macs(offset: float) -> float:
            if kind == "runtime":
                self.action_offset = offset  # absolute: the guard replaces an earlier guard's shift
            else:
                assert base_keep is not None
                self.static_keep = [min(1.0, max(floor, k + offset)) for k in base_keep]
            return float(self.evaluate_plan(data)["macs_fraction"])

        before = macs(start if kind == "runtime" else 0.0)
        lo, hi = (-2.0, 2.0) if kind == "runtime" else (-1.0, 1.0)
        if macs(lo) > budget:
            log.warning("the budget guard cannot bring the plan to the budget %.4f (%.4f at the floor)", budget,
                        macs(lo))  # fmt: skip
        else:
            lo = bisect_monotone(lambda offset: macs(offset) <= budget, lo, hi, steps=halvings)
        after = macs(lo)
        record = {"offset": lo, "kind": kind, "before": before, "after": after}
        self.history.setdefault("budget_guard", []).append(record)
        log.info("budget guard: %s offset %+.4f, MAC fraction %.4f -> %.4f (budget %.4f)", kind, lo, before, after,
                 budget)  # fmt: skip
        return record

    # -- envs -----------------------------------------------------------------------------------------------
    def _env_settings(self) -> EnvSettings:
        """What both envs of a phase share (one object, so the two kinds cannot drift apart).

        The CNN as it is now, the validation split, the budget, the runtime order and the device.
        """
        cfg = self.config
        return EnvSettings(
            model=self.model, dataset=self.data["val"], budget=cfg.budget, runtime_order=cfg.runtime_order,
            device=cfg.device,
        )  # fmt: skip

    def _runtime_env(self) -> Any:
        """The runtime RL phase's batched env (``envs.make_batched`` on the runtime id), seeded per round."""
        cfg = self.config
        static = self.static_keep  # None in round 0 of joint mode: nothing stored-pruned, R_r = 1 (see plan())
        settings = self._env_settings()
        if cfg.runtime_budget == "mean":
            settings = dataclasses.replace(settings, budget_term=MeanBudgetTerm())
        env = make_batched(
            RUNTIME_ENV_ID, cfg.n_envs, seed=cfg.seed + 1000 * self._round, settings=settings, static_keep=static,
            tradeoff=self.tradeoff if static is not None else None, min_keep=RUNTIME_MIN_KEEP,
            static_scores=self.order_scores(),
        )  # fmt: skip
        return VecMonitor(env)

    def _static_env(self) -> VecEnv:
        """The static RL phase's :attr:`ScheduleConfig.static_envs` envs, vectorised as ``static_vec`` says.

        One env is always a ``DummyVecEnv`` in this process. Every env is built from the CNN as it is now: the
        phase builds its envs anew, so a worker never scores a CNN older than the last CNN phase.
        """
        n = self.config.static_envs
        fns: list[Callable[[], gym.Env]] = [functools.partial(self._make_static_env, i) for i in range(n)]
        return DummyVecEnv(fns) if n == 1 else STATIC_VEC_ENVS[self.config.static_vec](fns)

    def _make_static_env(self, index: int) -> gym.Env:
        """Static env ``index`` of the phase (``prunegym/StaticPruning-v0``), reset with the round's seed + ``index``.

        Runs where the env will live (a forked worker builds its own): the env copies the CNN, and a runtime
        agent in the loop (``joint`` mode) gets a source of its own, bound to that copy.
        """
        cfg = self.config
        runtime = None
        if self.runtime_model is not None and cfg.mode == "joint":
            runtime = self.runtime_source()
        num_val = min(cfg.num_val, len(self.data["val"]))
        kwargs: dict[str, Any] = dict(
            settings=self._env_settings(), num_val=num_val, val_seed=cfg.seed, param_budget=cfg.param_budget,
            runtime=runtime, tradeoff=self.tradeoff if runtime is not None else None,
            criterion=cfg.static_criterion, min_keep=cfg.static_floor,
            bn_recalibration=min(cfg.bn_recalibration, len(self.data["val"]) - num_val),
        )  # fmt: skip
        try:
            env = gym.make(STATIC_ENV_ID, budget_mode="clamp", **kwargs)
        except ValueError:
            if runtime is None:
                raise
            # With a runtime agent in the loop, clamp mode's wall must assume the agent may keep every stored
            # channel, so at R_r = 0.5 a ResNet-20 cannot be walled below ~0.62 of its MACs. Chen et al. hold their
            # static agent to the budget with the reward's penalty instead: so do we, and per-image MACs then
            # rest on both agents (results.json reports the measured mean and maximum).
            if index == 0:
                log.warning(
                    "the MAC budget is out of reach of clamp mode's wall with a runtime agent in the "
                    "loop; the static agent learns with the budget penalty (Chen et al.) instead"
                )
            env = gym.make(STATIC_ENV_ID, budget_mode="penalty", **kwargs)
        if isinstance(runtime, PolicyRuntimeSource):
            runtime.bind(env.unwrapped.model)  # type: ignore[attr-defined]
        env.reset(seed=cfg.seed + 1000 * self._round + index)
        return Monitor(env)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _agent_path(self, role: str, generation: int) -> Path:
        return self.run_dir / "checkpoints" / f"{role}_agent_{generation}.zip"

    def save_checkpoint(self, phase_index: int, position: Mapping[str, Any] | None = None) -> Path:
        """Write the run's state atomically: agents first (new files), then ``checkpoint.pt`` naming them.

        Args:
            phase_index: The phase to continue with (``len(phases)`` once all are done).
            position: Progress inside that phase: ``{"timesteps": done}`` (RL) or ``{"epoch": done,
                "optimizer": state}`` (CNN and gate phases); ``None`` at a phase boundary.
        """
        self._generation += 1
        gen = self._generation
        agents: dict[str, str | None] = {}
        for role, agent in (("runtime", self.runtime_model), ("static", self.static_model)):
            if agent is None:
                agents[role] = None
                continue
            path = self._agent_path(role, gen)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.zip")
            agent.save(str(tmp))
            os.replace(tmp, path)
            agents[role] = path.name
        position = dict(position or {})
        state = {
            "format": CHECKPOINT_FORMAT,
            "phase_index": int(phase_index),
            "phase": self.phases[phase_index].name if phase_index < len(self.phases) else "done",
            "position": position,
            "model": model_record(self.model, arch=self.arch, num_classes=self.num_classes),
            "agents": agents,
            "static_keep": None if self.static_keep is None else [float(s) for s in self.static_keep],
            "static_scores": self.static_scores,
            "action_offset": float(self.action_offset),
            "static_episodes": self.static_episodes,
            "optimizer": self._optimizer_state,
            "optimizer_params": self._optimizer_params,
            "history": self.history,
            "global_step": int(self.global_step),
            "generation": gen,
            "progress_rows": self.logger.csv.rows() if self.logger is not None else 0,
            "rng": rng_state(),
            "time": time.time(),
        }
        check_plain(state, where="agent checkpoint")
        path = atomic_save(state, self.run_dir / CHECKPOINT_FILE)
        for old in (self.run_dir / "checkpoints").glob("*_agent_*.zip"):  # older generations are no longer named
            if not old.name.endswith(f"_{gen}.zip"):
                old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self) -> dict[str, Any]:
        """Read ``checkpoint.pt`` and restore the CNN, the agents, the plan and the random state.

        Raises:
            FileNotFoundError: no checkpoint in the run directory.
            ValueError: the file is not an agent checkpoint, or it does not fit this schedule.
        """
        path = self.run_dir / CHECKPOINT_FILE
        state = load_checkpoint_file(path)
        if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a PruneGym agent-training checkpoint (format {CHECKPOINT_FORMAT!r})")
        i = int(state["phase_index"])
        names = [p.name for p in self.phases]
        if i < len(names) and names[i] != state["phase"]:
            raise ValueError(
                f"cannot resume: the checkpoint is in phase {state['phase']!r} but these settings run "
                f"{names[i] if i < len(names) else 'nothing'} at that position; resume with the run's own settings"
            )
        model = model_from_record(state["model"], source=str(path))
        self.model.load_state_dict(model.state_dict())
        self.static_keep = state["static_keep"]
        self.static_scores = state.get("static_scores")
        self.action_offset = float(state.get("action_offset", 0.0))
        self.static_episodes = list(state.get("static_episodes", []))
        self._optimizer_state = state.get("optimizer")
        self._optimizer_params = str(state.get("optimizer_params", ""))
        self.history = dict(state["history"])
        self.global_step = int(state["global_step"])
        self._generation = int(state["generation"])
        for role, name in state["agents"].items():
            if name is None:
                continue
            spec = self.specs[role]
            if spec is None:
                raise ValueError(f"the checkpoint holds a {role} agent but this mode does not train one")
            agent_path = self.run_dir / "checkpoints" / name
            if not agent_path.is_file():
                raise FileNotFoundError(f"the checkpoint names {agent_path}, which is missing")
            agent = get_algo(spec.algo).load(agent_path, device="cpu")  # its env is set by its phase
            if role == "runtime":
                self.runtime_model = agent
            else:
                self.static_model = agent
        set_rng_state(state["rng"])
        return dict(state)

    # -- phases ---------------------------------------------------------------------------------------------
    def _new_agent(self, role: str, env: Any) -> Any:
        spec = self.specs[role]
        assert spec is not None
        agent, _ = make_model(spec.algo, env, spec.hyperparams, seed=self.config.seed + (0 if role == "runtime" else 1))
        return agent

    def build_agents(self) -> None:
        """Create the agents the mode trains (on freshly built envs), so bad settings fail before any training.

        Raises:
            ValueError: the algorithm does not support the envs' action space, or a value cannot be converted.
            TypeError: a hyperparameter is not a constructor argument of the algorithm.
        """
        if self.config.trains_runtime and self.runtime_model is None:
            self.runtime_model = self._new_agent("runtime", self._runtime_env())
        if self.config.trains_static and self.static_model is None:
            env = self._static_env()
            try:
                self.static_model = self._new_agent("static", env)
            finally:
                env.close()  # its workers, if any: every static phase builds its envs anew

    def refit_prior(self, *, images: int = PRIOR_FIT_IMAGES) -> tuple[float, float, float] | None:
        """Refit a budget-residual runtime agent's MAC curve under the static plan and R_r in force.

        The curve ``c0 + c1·r + c2·r²`` (:func:`agents.policies.uniform_macs_curve`) is exact for the full-width
        model; under a static plan with R_r < 1 the trade-off pruner makes the MAC fraction of a uniform runtime
        ratio a different function of ``r``. It is measured on ``images`` validation images at
        :data:`PRIOR_FIT_RATIOS` and fitted by least squares with ``c1, c2 >= 0``, so the prior action again
        meets the budget. Returns the new curve, or ``None`` (no such agent, or no static plan).
        """
        policy = getattr(self.runtime_model, "policy", None)
        if policy is None or not is_budget_residual(type(policy)) or self.static_keep is None:
            return None
        probe = self._probe(images)
        ratios = np.asarray(PRIOR_FIT_RATIOS, dtype=np.float64)
        fractions = np.asarray([self.measure_plan(self.uniform_plan(float(r)), probe)["macs_fraction"] for r in ratios])
        curve = fit_macs_curve(ratios.tolist(), fractions.tolist())
        policy.macs_curve = curve
        self.history.setdefault("prior_fits", []).append({"round": self._round, "macs_curve": list(curve)})
        return curve

    def _rl_phase(self, index: int, phase: Phase, done_steps: int) -> None:
        role = "runtime" if phase.kind == "rl_runtime" else "static"
        if role == "runtime":
            self.refit_prior()
        self.recalibrate()  # rewards on a CNN whose BN statistics fit the masks it is scored under
        env = self._runtime_env() if role == "runtime" else self._static_env()
        agent = self.runtime_model if role == "runtime" else self.static_model
        if agent is None:
            agent = self._new_agent(role, env)
        else:
            agent.set_env(env)
        if role == "runtime":
            self.runtime_model = agent
        else:
            self.static_model = agent
        assert self.logger is not None
        agent.set_logger(self.logger)
        self.logger.prefix = f"{role}/"
        start_agent_steps = int(agent.num_timesteps) - done_steps
        # the run's global step at the last checkpoint was offset + the agent's own step count then
        self.logger.offset = self.global_step - int(agent.num_timesteps)
        remaining = int(phase.length) - done_steps
        bar = tqdm(
            total=int(phase.length), initial=done_steps, desc=phase.name, unit="step", file=sys.stderr,
            disable=not self.progress, leave=False,
        )  # fmt: skip

        def save() -> None:
            assert self.logger is not None
            self.global_step = self.logger.offset + int(agent.num_timesteps)
            self.save_checkpoint(index, {"timesteps": int(agent.num_timesteps) - start_agent_steps})

        t0 = time.perf_counter()
        try:
            if remaining > 0:
                callbacks = CallbackList([_PruningStats(bar), _Checkpoints(self.config.checkpoint_every, save)])
                if role == "static":
                    if done_steps == 0:
                        self.static_episodes = []
                    callbacks.callbacks.append(_EpisodeArchive(self.static_episodes))
                agent.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=False)
        finally:
            bar.close()
            if isinstance(env, SubprocVecEnv):
                env.close()  # its workers; the deterministic episode below runs in this process
        self.global_step = self.logger.offset + int(agent.num_timesteps)
        record: dict[str, Any] = {
            "timesteps": int(agent.num_timesteps) - start_agent_steps,
            "time_s": time.perf_counter() - t0,
        }
        if role == "static":
            # in the phase's first env, or in one built alike where that one lived in a worker
            inner: Any = (env.envs[0] if isinstance(env, DummyVecEnv) else self._make_static_env(0)).unwrapped
            info = run_episode(inner, agent, deterministic=True, seed=self.config.seed)
            # the ranking the agent was scored with: later CNN phases must not re-rank the stored channels
            self.static_scores = [[float(v) for v in sc] for sc in inner.static_scores]
            selection = self.select_static([float(k) for k in info["applied_keeps"]], self.static_episodes)
            self.static_keep = selection["keep"]
            self.static_episodes = []
            record.update(
                static_keep=self.static_keep,
                deterministic_keep=[float(k) for k in info["applied_keeps"]],
                macs_fraction=float(info["macs_fraction"]),
                params_fraction=float(info["params_fraction"]),
                val_top1_subset=float(info["top1"]),
                selection=selection,
            )
        self.history[phase.name] = record

    def select_static(self, deterministic: Sequence[float], episodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The static plan of an RL phase: the deterministic episode or one of the best-rewarded explored ones.

        The :attr:`ScheduleConfig.static_select` episodes of highest reward (duplicates dropped) and the
        deterministic episode are each scored on :data:`SELECT_IMAGES` evenly spaced validation images, with
        BatchNorm re-estimated under the plan on as many evenly spaced training images (on a copy of the CNN:
        no weight of the run changes). Candidates over the MAC budget (+0.005, measured on those images) are
        dropped unless none meets it; the lowest validation loss wins (the quantity the static reward is built
        on), ties to the deterministic episode.

        Returns:
            ``{"keep", "chosen" ("deterministic" or the episode's rank by reward), "candidates": [{"keep",
            "reward", "val_loss", "val_top1", "macs_fraction"}, ...]}``.
        """
        keep = [float(k) for k in deterministic]
        ranked = sorted(episodes, key=lambda e: -float(e["reward"]))
        pool: list[tuple[str, list[float], float | None]] = [("deterministic", keep, None)]
        seen = {tuple(round(k, 6) for k in keep)}
        for rank, episode in enumerate(ranked):
            if len(pool) > self.config.static_select:
                break
            key = tuple(round(float(k), 6) for k in episode["keep"])
            if key not in seen:
                seen.add(key)
                pool.append((str(rank), [float(k) for k in episode["keep"]], float(episode["reward"])))
        if len(pool) == 1:
            return {"keep": keep, "chosen": "deterministic", "candidates": []}
        probe = self._probe(SELECT_IMAGES)
        train_set = self.data["train"]
        idx = np.linspace(0, len(train_set), num=min(SELECT_IMAGES, len(train_set)), endpoint=False)
        calib = train_set.subset(torch.from_numpy(idx.astype(np.int64)))
        candidates: list[dict[str, Any]] = []
        model = copy.deepcopy(self.model)  # one copy: recalibrate_bn resets the statistics for every plan
        for name, plan_keep, reward in pool:
            clear_plan(model)
            set_plan(model, self._plan_with(plan_keep, model=model))  # the agent reads the copy's units
            recalibrate_bn(model, calib, batch_size=self.config.batch_size)
            scored = evaluate(model, probe, cost_model=self.cost_model)
            candidates.append({
                "name": name, "keep": plan_keep, "reward": reward, "val_loss": float(scored["loss"]),
                "val_top1": float(scored["top1"]), "macs_fraction": float(scored["macs_fraction"]),
            })  # fmt: skip
        meeting = [c for c in candidates if c["macs_fraction"] <= self.config.budget + BUDGET_TOLERANCE]
        best = min(meeting or candidates, key=lambda c: c["val_loss"])  # min keeps the first (deterministic) on ties
        log.info("static plan: %s episode (val loss %.4f; the deterministic one %.4f)", best["name"],
                 best["val_loss"], candidates[0]["val_loss"])  # fmt: skip
        return {"keep": list(best["keep"]), "chosen": best["name"], "candidates": candidates}

    def _cnn_phase_steps(self) -> dict[int, tuple[int, int]]:
        """``{phase index: (first step, steps)}`` of every CNN-training phase on the run's one schedule."""
        out: dict[int, tuple[int, int]] = {}
        step = 0
        for i, phase in enumerate(self.phases):
            if phase.is_rl:
                continue
            train_set, epochs = fractional_epochs(self.data["train"], phase.length, seed=self._phase_seed(i))
            n = epochs * -(-len(train_set) // self.config.batch_size)
            out[i] = (step, n)
            step += n
        return out

    def _phase_seed(self, index: int) -> int:
        return self.config.seed + 7919 * (index + 1)

    def _gate_plan(self) -> PruningPlan:
        """What the gate stage trains under: the uniform plan at the budget, or nothing (``gate_prune=False``)."""
        if not self.config.gate_prune:
            return PruningPlan()
        ratio = self.uniform_ratio(self.config.budget, self._probe(PRIOR_FIT_IMAGES))
        self.history.setdefault("gate_ratio", ratio)
        return self.uniform_plan(ratio)

    def _train_phase(self, index: int, phase: Phase, position: Mapping[str, Any]) -> None:
        cfg = self.config
        assert self.logger is not None
        self.logger.prefix = ""
        seed = self._phase_seed(index)
        train_set, epochs = fractional_epochs(self.data["train"], phase.length, seed=seed)
        first_step, _ = self._cnn_phase_steps()[index]
        total_steps = sum(n for _, n in self._cnn_phase_steps().values())
        config = TrainConfig(
            epochs=epochs, batch_size=cfg.batch_size, optimizer="sgd", lr=cfg.cnn_lr, momentum=0.9, nesterov=True,
            weight_decay=cfg.weight_decay, schedule="cosine", grad_clip=cfg.grad_clip, seed=seed, device=cfg.device,
            distill=cfg.distill, distill_temperature=cfg.distill_temperature,
        )  # fmt: skip
        params: list[nn.Parameter] | None = None
        if phase.kind.startswith("gate"):
            stage = {st.name: st for st in gate_schedule(predictor_epochs=epochs, static_epochs=epochs)}[phase.kind]
            if not position and stage.prepare is not None:
                self.model = stage.prepare(self.model)
            params = stage.select(self.model) if stage.select is not None else None
            prefix = stage.log_prefix
            plan = self._gate_plan()
        else:
            if self.runtime_model is not None or self.static_keep is not None:
                self.guard_budget()  # the CNN trains under the plan that will be deployed
            plan = self.plan(deterministic=True)
            prefix = "cnn/"
            if cfg.mode == "static":  # no runtime pruning: u_r stays the constant γ, so the model stays static
                params = [p for n, p in self.model.named_parameters() if not n.endswith("predictor.weight")]
        # phases that train the same parameters share one optimizer state (momentum carries over)
        group = "all" if params is None else (phase.kind if phase.kind.startswith("gate") else "cnn_static")
        optimizer_state = position.get("optimizer")
        if optimizer_state is None and self._optimizer_params == group:
            optimizer_state = self._optimizer_state  # one SGD run: momentum carries over between phases
        steps_per_epoch = -(-len(train_set) // config.batch_size)
        offset = self.global_step

        class _Writer:
            def add_scalar(_, tag: str, value: float, step: int | None = None) -> None:  # noqa: N805
                assert self.logger is not None
                self.logger.offset = offset
                self.logger.add_scalar(tag, value, step)

        def on_epoch_end(epoch: int, record: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
            self.global_step = offset + (epoch + 1) * steps_per_epoch
            self.history.setdefault(phase.name, {"epochs": []})["epochs"].append(record)
            self._optimizer_state, self._optimizer_params = optimizer.state_dict(), group
            if epoch + 1 < config.epochs:
                self.save_checkpoint(index, {"epoch": epoch + 1, "optimizer": optimizer.state_dict()})

        t0 = time.perf_counter()
        clear_plan(self.model)
        set_plan(self.model, plan)
        try:
            train(
                self.model, train_set, config, params=params, writer=_Writer(), progress=self.progress,
                start_epoch=int(position.get("epoch", 0)), optimizer_state=optimizer_state,
                on_epoch_end=on_epoch_end, log_prefix=prefix, desc=phase.name,
                schedule_steps=(first_step, total_steps), teacher=self.teacher,
            )  # fmt: skip
        finally:
            clear_plan(self.model)
            self.logger.flush_scalars()
        self.global_step = offset + config.epochs * steps_per_epoch
        record = self.history.setdefault(phase.name, {"epochs": []})
        record["time_s"] = time.perf_counter() - t0
        record["steps"] = config.epochs * steps_per_epoch

    def evaluate_plan(self, dataset: ImageDataset, *, max_images: int | None = None) -> dict[str, float]:
        """Top-1, loss and measured MAC/param fractions of the CNN under the agents' deterministic plan."""
        if max_images is not None and max_images < len(dataset):
            idx = np.linspace(0, len(dataset), num=max_images, endpoint=False).astype(np.int64)
            dataset = dataset.subset(torch.from_numpy(idx))
        clear_plan(self.model)
        set_plan(self.model, self.plan(deterministic=True))
        try:
            return evaluate(self.model, dataset, cost_model=self.cost_model)
        finally:
            clear_plan(self.model)

    def _log_phase_end(self, phase: Phase) -> None:
        if self.runtime_model is None and self.static_keep is None:
            return
        result = self.evaluate_plan(self.data["val"], max_images=PHASE_EVAL_IMAGES)
        assert self.logger is not None
        self.logger.prefix = ""
        self.logger.offset = self.global_step
        self.logger.record("eval/val_top1", result["top1"])
        self.logger.record("eval/macs_fraction", result["macs_fraction"])
        self.logger.record("eval/params_fraction", result["params_fraction"])
        self.logger.dump(0)
        self.history.setdefault(phase.name, {})["after"] = result
        log.info(
            "%s done: val top-1 %.2f%% (%d images), MAC fraction %.4f, params fraction %.4f",
            phase.name, result["top1"], result["n"], result["macs_fraction"], result["params_fraction"],
        )  # fmt: skip

    # -- run ------------------------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Run every phase (continuing from ``checkpoint.pt`` when ``resume`` and it exists).

        Returns:
            :attr:`history`.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] | None = None
        if resume and (self.run_dir / CHECKPOINT_FILE).is_file():
            state = self.load_checkpoint()
        self.logger = RunLogger(self.run_dir, keep_rows=None if state is None else int(state["progress_rows"]))
        start = int(state["phase_index"]) if state is not None else 0
        position: dict[str, Any] = dict(state["position"]) if state is not None else {}
        if state is None:
            self.build_agents()
            self.save_checkpoint(0)
        try:
            for i in range(start, len(self.phases)):
                phase = self.phases[i]
                self._round = phase.round
                log.info("phase %d/%d: %s", i + 1, len(self.phases), phase.name)
                if phase.is_rl:
                    self._rl_phase(i, phase, int(position.get("timesteps", 0)))
                else:
                    self._train_phase(i, phase, position)
                self._log_phase_end(phase)
                position = {}
                self.save_checkpoint(i + 1)
            if self.runtime_model is not None or self.static_keep is not None:
                self.guard_budget()  # every run meets its budget on val, whatever the agents learned
                self.save_checkpoint(len(self.phases))
        finally:
            self.logger.close()
        return self.history


def config_from_dict(values: Mapping[str, Any]) -> ScheduleConfig:
    """A :class:`ScheduleConfig` from a plain mapping (unknown keys are ignored, lists become tuples)."""
    known = {f for f in ScheduleConfig.__dataclass_fields__}
    kwargs = {k: v for k, v in values.items() if k in known}
    if "gate_epochs" in kwargs:
        kwargs["gate_epochs"] = tuple(float(v) for v in kwargs["gate_epochs"])
    return ScheduleConfig(**kwargs)


def config_to_dict(config: ScheduleConfig) -> dict[str, Any]:
    """Plain-typed view of a :class:`ScheduleConfig`."""
    out = asdict(config)
    out["gate_epochs"] = list(config.gate_epochs)
    return out


def phase_names(config: ScheduleConfig) -> Sequence[str]:
    """Names of the phases ``config`` runs."""
    return [p.name for p in config.phases()]
