"""The static pruning environment ``prunegym/StaticPruning-v0``: one episode decides every unit's static keep ratio.

AMC-like (He et al., ECCV 2018, ``mit-han-lab/amc`` ``env/channel_pruning_env.py``) with the rewards and the
optional runtime policy of Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel Pruning via
Deep Reinforcement Learning" (NeurIPS 2020, Sec. 3.3). The class docstring of :class:`StaticPruningEnv` is the manual.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from pruning.accounting import CostModel
from pruning.budget import action_wall, unit_feasible
from pruning.criteria import Criterion, get_criterion, l1_criterion, l2_criterion, us_criterion
from pruning.data import ImageDataset, normalize
from pruning.gating import applied_masks, gated_units, is_gated, set_plan, stored_masks
from pruning.models import input_normalization
from pruning.plan import RATIO_EPS, PruningPlan, RuntimeSource, keep_count
from pruning.train import recalibrate_bn
from pruning.units import Unit

from .common import DEFAULTS, EnvSettings, TargetSpec, accepts_settings, build_env_model, load_reward_split
from .render import RENDER_FPS, RENDER_MODES, EpisodeFrame, UnitFrame, check_render_mode, render_frame
from .rewards import (
    LOSS_CAP,
    BudgetTerm,
    EpisodeResult,
    MeanBudgetTerm,
    RewardFn,
    RunningLossScale,
    call_reward,
    episode_infos,
    resolve_reward,
)

__all__ = [
    "Criterion",
    "DESCRIPTOR_NAMES",
    "StaticPruningEnv",
    "l1_criterion",
    "l2_criterion",
    "us_criterion",
]

log = logging.getLogger(__name__)

#: Per-unit descriptors of the observation, in order (each min-max normalised over the model's units).
DESCRIPTOR_NAMES: tuple[str, ...] = ("index", "c_in", "c_out", "kernel", "stride", "out_hw", "params", "macs")


def _stored_counts(c: int, k_s: np.ndarray, tradeoff: float) -> np.ndarray:
    """Stored channels for static keep counts ``k_s``: ``C - floor((1 - R_r)(C - k_s))`` (as :mod:`pruning.gating`)."""
    return c - np.floor((1.0 - tradeoff) * (c - k_s) + RATIO_EPS).astype(np.int64)


def _computed_bound(c: int, k_s: np.ndarray, tradeoff: float, k_r: int | None) -> np.ndarray:
    """Most channels a unit can compute for one image, for each static keep count in ``k_s``.

    ``k_r`` is the runtime keep count of a fixed runtime ratio, or ``None`` when there is no runtime policy
    (the unit computes exactly its stored channels) or the policy is a callable (it may keep every stored
    channel). With a fixed ratio the trade-off pruner (Chen et al., Eqs. 3-5, :func:`pruning.gating.tradeoff_pruned`)
    prunes ``o + floor(R_r(n_r - o)) + floor((1 - R_r)(n_s - o))`` channels, where the overlap ``o`` of the
    static and runtime pruned sets depends on the image; the bound is the maximum over every overlap the
    pruner allows (at least the stored-pruned channels, at most ``min(n_r, n_s)``).
    """
    stored = _stored_counts(c, k_s, tradeoff)
    if k_r is None:
        return stored
    n_r = (c - np.minimum(k_r, stored))[:, None]
    n_s = (c - k_s)[:, None]
    n_rem = (c - stored)[:, None]
    o = np.arange(c + 1)[None, :]
    lo = np.maximum(np.maximum(n_rem, n_r + n_s - c), 0)
    hi = np.minimum(n_r, n_s)
    pruned = (
        o
        + np.floor(tradeoff * (n_r - o) + RATIO_EPS).astype(np.int64)
        + np.floor((1.0 - tradeoff) * (n_s - o) + RATIO_EPS).astype(np.int64)
    )
    kept = np.where((o >= lo) & (o <= hi), c - pruned, -1)
    return kept.max(axis=1)


class StaticPruningEnv(gym.Env[np.ndarray, np.ndarray]):
    """Static channel pruning of a CIFAR CNN, one prunable unit per step (``prunegym/StaticPruning-v0``).

    ## Description

    AMC's MDP (He et al., ECCV 2018) with Chen et al.'s rewards (NeurIPS 2020): the agent walks once through
    the prunable units of a fixed network and gives each a **static keep ratio** (the fraction of its output
    channels kept for every input, chosen by a channel criterion); then the pruned model is scored on a fixed
    validation subset. The MAC budget (and an optional parameter budget) is enforced by AMC's action wall
    (`budget_mode="clamp"`) or charged by Chen et al.'s penalty (`"penalty"`). A runtime policy may run in the
    loop (`runtime=`). Derivations and the arguments in detail: `docs/envs.md`, "StaticPruningEnv".

    ## Action Space

    A `float32` `ndarray` of shape `(1,)` (`(2,)` with `learn_split=True`), in `[-1, 1]`:

    | Num | Action                              | Maps to                                                       |
    |-----|-------------------------------------|---------------------------------------------------------------|
    | 0   | static keep ratio of unit t         | `min_keep + (a + 1) / 2 · (1 - min_keep)`, in `[min_keep, 1]` |
    | 1   | R_r of unit t (`learn_split` only)  | `(a + 1) / 2` in `[0, 1]` (0 = pure static, 1 = pure runtime) |

    Values outside `[-1, 1]` are clipped; NaN, infinite values or a wrong size raise `ValueError`. A ratio `a`
    keeps `k = clamp(ceil(a·C), 1, C)` channels; in `clamp` mode the action wall lowers `k` (and R_r) to the
    most that still meets the budgets for every image with every later unit at `min_keep`.

    ## Observation Space

    A `float32` `ndarray` of shape `(13,)` (`(14,)` with `learn_split`), every entry in `[0, 1]`; entries 0-7
    are AMC's layer embedding of the unit to decide (min-max normalised over the units), 8-9 are costed:

    | Num | Observation                                                      | Min | Max |
    |-----|------------------------------------------------------------------|-----|-----|
    | 0-5 | unit t's index, C_in, C_out, kernel size, stride, output H × W   | 0   | 1   |
    | 6-7 | unit t's conv weights k²·C_in·C_out and MACs k²·H·W·C_in·C_out   | 0   | 1   |
    | 8   | MACs already removed, fraction of the base MACs                  | 0   | 1   |
    | 9   | MACs still removable by units t.., fraction of the base MACs     | 0   | 1   |
    | 10  | MAC budget, fraction of the base MACs (1 when there is none)     | 0   | 1   |
    | 11  | parameter budget, fraction of the base params (1 when none)      | 0   | 1   |
    | 12  | previous applied keep ratio (1 at t = 0)                         | 0   | 1   |
    | 13  | previous applied R_r (`learn_split` only; `tradeoff` at t = 0)   | 0   | 1   |

    ## Rewards

    0 at every step but the last, where the pruned model (runtime policy in the loop, if any) is scored and
    `reward=` is called on an `envs.rewards.EpisodeResult`: `"paper"` (default, Chen et al.: `-CE / β` plus a
    steep penalty over the budget, a small bonus under it), `"accuracy"` (AMC: `0.01·top1`), `"acc_log_macs"`
    (AMC), a registered name or a callable. Never NaN. `docs/envs.md`: "Rewards and info".

    ## Starting State

    Unit 0, nothing pruned; no randomness (the subset is drawn once). `reset(options={"budget": b,
    "param_budget": p})` changes the budgets from this episode on.

    ## Episode End

    1. Termination: the last unit has been decided (one step per unit).
    2. Truncation: never.

    `info` at every step: `unit`, `requested_keep`, `applied_keep`, `keep_count`, `wall_keep`; at the last step
    also the keys both envs report (`envs.rewards.EPISODE_INFO_KEYS`) and per-unit lists (`docs/envs.md`).

    ## Arguments

    All keyword-only; `gymnasium.make("prunegym/StaticPruning-v0", **kwargs)` passes them through. Those both
    envs take, one by one or as `settings=envs.common.EnvSettings(...)`, are documented there: `model`,
    `weights`, `dataset`, `data_dir`, `split`, `dataset_kwargs`, `budget` (0.5; here `None` is allowed with a
    `param_budget`), `reward`, `budget_term`, `loss_scale`, `runtime_order`, `device`. This env's own:

    | Parameter          | Default   | Description                                                              |
    |--------------------|-----------|--------------------------------------------------------------------------|
    | `num_val`          | `512`     | size of the fixed reward subset (`None`: the whole split)                |
    | `val_seed`         | `0`       | seed of the one-time draw of the subset                                  |
    | `batch_size`       | `128`     | images per forward pass when scoring                                     |
    | `param_budget`     | `None`    | parameter budget, fraction of the base backbone parameters               |
    | `budget_mode`      | `"clamp"` | `"clamp"` (AMC's action wall; `ValueError` if unreachable) or `"penalty"`|
    | `min_keep`         | `0.2`     | smallest keep ratio an action maps to (AMC's floor)                      |
    | `criterion`        | `None`    | a `pruning.criteria` name or `fn(model, unit)`; `None`: `u_s` or `l1`    |
    | `runtime`          | `None`    | runtime policy in the loop: a ratio, one per unit, or a `RuntimeSource`  |
    | `tradeoff`         | `None`    | R_r; `None` = 0 without a runtime policy, 0.5 with one (Chen et al.)     |
    | `learn_split`      | `False`   | add each unit's R_r as a second action dimension (needs `runtime`)       |
    | `bn_recalibration` | `0`       | images (outside the subset) that re-estimate BatchNorm before scoring    |
    | `render_mode`      | `None`    | `None`, `"rgb_array"` (a `(360, 640, 3)` `uint8` picture) or `"ansi"`    |

    ```python
    >>> import gymnasium as gym
    >>> import envs
    >>> env = gym.make("prunegym/StaticPruning-v0", num_val=64, budget=0.5)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype, env.action_space
    ((13,), dtype('float32'), Box(-1.0, 1.0, (1,), float32))
    >>> terminated = False
    >>> while not terminated:  # ask to keep everything: the wall cuts what the budget cannot afford
    ...     obs, reward, terminated, truncated, info = env.step(env.action_space.high)
    >>> info["macs_fraction"] <= 0.5, len(info["applied_keeps"]), info["applied_keeps"][0]
    (True, 3, 1.0)

    ```

    ## Version History

    * v0: Initial version. Render modes, pickling and fork-safe workers (`docs/envs.md`) came without a bump.
    """

    metadata: dict[str, Any] = {"render_modes": list(RENDER_MODES), "render_fps": RENDER_FPS}

    @accepts_settings
    def __init__(
        self,
        *,
        settings: EnvSettings | None = None,
        model: str | nn.Module = DEFAULTS.model,
        weights: str | Path | None = DEFAULTS.weights,
        dataset: str | ImageDataset = DEFAULTS.dataset,
        data_dir: str | Path | None = DEFAULTS.data_dir,
        split: str = DEFAULTS.split,
        num_val: int | None = 512,
        val_seed: int = 0,
        batch_size: int = 128,
        budget: float | None = DEFAULTS.budget,
        param_budget: float | None = None,
        budget_mode: str = "clamp",
        reward: str | RewardFn = DEFAULTS.reward,
        min_keep: float = 0.2,
        criterion: str | Criterion | None = None,
        runtime: float | Sequence[float] | torch.Tensor | RuntimeSource | None = None,
        tradeoff: float | None = None,
        learn_split: bool = False,
        runtime_order: str = DEFAULTS.runtime_order,
        budget_term: BudgetTerm | MeanBudgetTerm | None = DEFAULTS.budget_term,
        loss_scale: RunningLossScale | float | None = DEFAULTS.loss_scale,
        device: str | torch.device = DEFAULTS.device,
        dataset_kwargs: Mapping[str, Any] | None = DEFAULTS.dataset_kwargs,
        render_mode: str | None = None,
        bn_recalibration: int = 0,
    ) -> None:
        del settings  # merged into the keywords by @accepts_settings
        super().__init__()
        self.render_mode = check_render_mode(render_mode, "StaticPruningEnv")
        if budget_mode not in ("clamp", "penalty"):
            raise ValueError(
                f"budget_mode must be 'clamp' (AMC's action wall) or 'penalty' (Chen et al.), got {budget_mode!r}"
            )
        if not (math.isfinite(min_keep) and 0.0 < min_keep <= 1.0):
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.budget_mode = budget_mode
        self.min_keep = float(min_keep)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.learn_split = bool(learn_split)

        # -- data: a fixed reward subset, drawn once ---------------------------------------------------------
        kwargs = dict(dataset_kwargs or {})
        if dataset == "synthetic" and num_val is not None:
            kwargs.setdefault("size", num_val)
        data = load_reward_split(dataset, data_dir, split, augment=False, **kwargs)
        # -- model: a private copy, gated (maskable) ---------------------------------------------------------
        self.model_name = model if isinstance(model, str) else type(model).__name__
        self.gated_input = isinstance(model, nn.Module) and is_gated(model)
        work = build_env_model(model, weights, data.num_classes, predictor=False)
        self._model = work.to(self.device).eval()
        self.cost_model = CostModel(self._model)
        self.units: list[Unit] = self.cost_model.units
        if not self.units:
            raise ValueError(f"model {self.model_name} has no prunable units")
        self.num_units = len(self.units)
        self.channels = np.array([u.out_channels for u in self.units], dtype=np.int64)
        self._val_x, self._val_y = self._cache_subset(data, num_val, val_seed, input_normalization(self._model))
        self._calib_x = self._calibration_subset(data, int(bn_recalibration), input_normalization(self._model))
        self._bn_state = {
            k: v.clone() for k, v in self._model.state_dict().items() if k.endswith(("running_mean", "running_var"))
        }

        # -- channel criterion -------------------------------------------------------------------------------
        if criterion is None:
            criterion = "u_s" if self.gated_input else "l1"
        if isinstance(criterion, str):
            if criterion == "u_s" and not self.gated_input:
                raise ValueError(
                    "criterion 'u_s' needs a gated model (Chen et al.'s learned static importance); this model is "
                    "plain: use criterion='l1', or gate it (pruning.gating.gate_model) and train u_s first"
                )
            crit = get_criterion(criterion)  # unknown names: ValueError with close matches
            self.criterion_name = criterion
        elif callable(criterion):
            self.criterion_name = getattr(criterion, "__name__", type(criterion).__name__)
            crit = criterion
        else:
            raise TypeError(f"criterion must be a name or a callable, got {type(criterion).__name__}")
        self.static_scores = [
            torch.as_tensor(crit(self._model, u), dtype=torch.float32).detach().flatten().cpu() for u in self.units
        ]

        # -- runtime policy and R_r --------------------------------------------------------------------------
        self.runtime = self._check_runtime(runtime)
        if self.runtime is None and (tradeoff not in (None, 0, 0.0) or self.learn_split):
            raise ValueError(
                "tradeoff R_r and learn_split split pruning between runtime and static; they need a runtime "
                "policy in the loop (runtime=<ratio, per-unit ratios or a RuntimeSource>)"
            )
        self.tradeoff = float(tradeoff) if tradeoff is not None else (0.0 if self.runtime is None else 0.5)
        self.runtime_order = runtime_order
        if not (math.isfinite(self.tradeoff) and 0.0 <= self.tradeoff <= 1.0):
            raise ValueError(f"tradeoff R_r must be in [0, 1], got {tradeoff}")
        probe = PruningPlan(
            static_keep=[1.0] * self.num_units, runtime_keep=self.runtime, tradeoff=self.tradeoff,
            static_scores=self.static_scores, runtime_order=runtime_order,
        )  # fmt: skip
        probe.validate(self.num_units, [int(c) for c in self.channels])
        # Runtime keep counts of a fixed runtime policy, taken through the same path as the forward pass
        # (PruningPlan.runtime_for_unit, then GatedConv's float64 keep_count), so the wall's bound follows it.
        self._runtime_counts: list[int | None] = []
        self._runtime_ratios: list[float | None] = []  # a fixed runtime policy's ratio per unit (rendering)
        for t, c in enumerate(self.channels):
            ratio = probe.runtime_for_unit(t, self.num_units)
            if ratio is None or callable(ratio):
                self._runtime_counts.append(None)
                self._runtime_ratios.append(None)
            else:
                self._runtime_counts.append(int(keep_count(torch.as_tensor(ratio, dtype=torch.float64), int(c))))
                self._runtime_ratios.append(float(ratio))

        # -- reward ------------------------------------------------------------------------------------------
        self.reward_fn: RewardFn
        self.reward_fn, self.reward_name = resolve_reward(reward)
        self.budget_term = budget_term if budget_term is not None else BudgetTerm()
        if loss_scale is None:
            self.loss_scale: RunningLossScale | float = RunningLossScale()
        elif isinstance(loss_scale, RunningLossScale):
            self.loss_scale = loss_scale
        else:
            if not (math.isfinite(loss_scale) and loss_scale > 0):
                raise ValueError(f"a fixed loss_scale must be a positive number, got {loss_scale}")
            self.loss_scale = float(loss_scale)

        # -- budgets, spaces ---------------------------------------------------------------------------------
        self._min_counts = np.array([int(keep_count(self.min_keep, int(c))) for c in self.channels])
        # What the wall assumes of an undecided unit: min_keep at the default R_r (at R_r = 0 with learn_split,
        # the split that computes the fewest channels for a fixed static count).
        witness_r = 0.0 if self.learn_split else self.tradeoff
        self._witness = [self._counts(t, self._min_counts[t : t + 1], witness_r) for t in range(self.num_units)]
        self._full = [self._counts(t, self.channels[t : t + 1], self.tradeoff) for t in range(self.num_units)]
        least = self.cost_model.from_counts(
            torch.from_numpy(np.concatenate([w[0] for w in self._witness]))[None],
            torch.from_numpy(np.concatenate([w[1] for w in self._witness])),
        )
        #: Smallest MAC fraction the wall can guarantee (every unit at ``min_keep``): the lowest ``clamp`` budget.
        self.min_macs_fraction = float(least.macs[0]) / self.cost_model.base_macs
        #: Smallest parameter fraction at ``min_keep``: the lowest ``clamp`` parameter budget.
        self.min_params_fraction = least.params / self.cost_model.base_params
        self.budget: float | None = None
        self.param_budget: float | None = None
        self._set_budgets(budget, param_budget)
        self._descriptors = self._unit_descriptors()
        obs_dim = len(DESCRIPTOR_NAMES) + 5 + int(self.learn_split)
        self.observation_space = spaces.Box(0.0, 1.0, (obs_dim,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2 if self.learn_split else 1,), np.float32)
        self._reset_episode()
        self._t = -1  # reset() first

    # ------------------------------------------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------------------------------------------

    def _cache_subset(
        self, data: ImageDataset, num_val: int | None, seed: int, norm: tuple[Sequence[float], Sequence[float]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(data)
        if num_val is None:
            num_val = n
        if not (0 < num_val <= n):
            raise ValueError(
                f"num_val={num_val} but the {data.name}/{data.split} split has {n} images; "
                f"choose num_val in [1, {n}] (or a larger val_size in dataset_kwargs)"
            )
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:num_val]
        self.val_indices = idx
        mean, std = norm
        x = normalize(data.images[idx], mean, std).to(self.device)
        return x, data.labels[idx].to(self.device)

    def _calibration_subset(
        self, data: ImageDataset, count: int, norm: tuple[Sequence[float], Sequence[float]]
    ) -> torch.Tensor | None:
        if count < 0:
            raise ValueError(f"bn_recalibration must be >= 0 images, got {count}")
        if count == 0:
            return None
        rest = torch.ones(len(data), dtype=torch.bool)
        rest[self.val_indices] = False
        pool = rest.nonzero().flatten()
        if count > len(pool):
            raise ValueError(
                f"bn_recalibration={count} but the {data.name}/{data.split} split has only {len(pool)} images "
                f"outside the {len(self.val_indices)} scored ones; lower bn_recalibration or num_val"
            )
        idx = pool[torch.linspace(0, len(pool) - 1, count).round().long()]
        mean, std = norm
        return normalize(data.images[idx], mean, std).to(self.device)

    def _check_runtime(
        self, runtime: float | Sequence[float] | torch.Tensor | RuntimeSource | None
    ) -> float | torch.Tensor | RuntimeSource | None:
        if runtime is None or callable(runtime):
            return runtime
        t = torch.as_tensor(runtime, dtype=torch.float64)
        if t.ndim == 0:
            value = float(t)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"runtime keep ratio must be in [0, 1], got {value}")
            return value
        if t.shape != (self.num_units,):
            raise ValueError(
                f"runtime has shape {tuple(t.shape)}; give one ratio, one per unit ({self.num_units},), "
                "or a RuntimeSource callable (per-image ratios depend on the batch and are not accepted here)"
            )
        return t

    def _counts(self, t: int, k_s: np.ndarray, tradeoff: float) -> tuple[np.ndarray, np.ndarray]:
        """``(computed bound, stored)`` channel counts of unit ``t`` for static keep counts ``k_s``."""
        c = int(self.channels[t])
        k_s = np.asarray(k_s, dtype=np.int64)
        return _computed_bound(c, k_s, tradeoff, self._runtime_counts[t]), _stored_counts(c, k_s, tradeoff)

    def _unit_descriptors(self) -> np.ndarray:
        raw = np.array(
            [
                [u.index, u.in_channels, u.out_channels, u.kernel_size, u.stride, u.out_hw[0] * u.out_hw[1],
                 u.params, u.macs]
                for u in self.units
            ],
            dtype=np.float64,
        )  # fmt: skip
        lo, hi = raw.min(axis=0), raw.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return ((raw - lo) / span).astype(np.float32)

    def _set_budgets(self, budget: float | None, param_budget: float | None) -> None:
        for name, value in (("budget", budget), ("param_budget", param_budget)):
            if value is not None and not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be a fraction in (0, 1] of the base model, or None; got {value}")
        if budget is None and param_budget is None:
            raise ValueError("give a MAC budget (budget=) or a parameter budget (param_budget=), or both")
        if self.budget_mode == "clamp":
            if budget is not None and self.min_macs_fraction > budget + 1e-12:
                raise ValueError(
                    f"budget={budget} MAC fraction cannot be met: with every unit at min_keep={self.min_keep} the "
                    f"model keeps {self.min_macs_fraction:.4f} of its MACs (layers that are not units are never "
                    "pruned). Raise the budget, lower min_keep, or use budget_mode='penalty'"
                )
            if param_budget is not None and self.min_params_fraction > param_budget + 1e-12:
                raise ValueError(
                    f"param_budget={param_budget} cannot be met: with every unit at min_keep={self.min_keep} the "
                    f"model keeps {self.min_params_fraction:.4f} of its parameters. Raise it, lower min_keep, or "
                    "use budget_mode='penalty'"
                )
        self.budget = None if budget is None else float(budget)
        self.param_budget = None if param_budget is None else float(param_budget)

    # ------------------------------------------------------------------------------------------------------
    # episode state
    # ------------------------------------------------------------------------------------------------------
    def _reset_episode(self) -> None:
        self._t = 0
        self._requested: list[float] = []
        self._applied: list[float] = []
        self._keep_counts: list[int] = []
        self._requested_r: list[float] = []
        self._tradeoffs: list[float] = []
        self._eff = np.zeros(self.num_units, dtype=np.int64)
        self._stored = np.zeros(self.num_units, dtype=np.int64)
        self._scored: tuple[float, float] | None = None  # (MAC, params fraction) of the scored episode

    def _plan_counts(self, t: int, undecided: str) -> tuple[np.ndarray, np.ndarray]:
        """Counts of units ``< t`` as decided and ``>= t`` at ``undecided`` (``"full"`` or ``"witness"``)."""
        table = self._full if undecided == "full" else self._witness
        eff = self._eff.copy()
        stored = self._stored.copy()
        for u in range(t, self.num_units):
            eff[u], stored[u] = int(table[u][0][0]), int(table[u][1][0])
        return eff, stored

    def _macs(self, eff: np.ndarray) -> np.ndarray:
        keep = torch.from_numpy(np.atleast_2d(eff))
        cost = self.cost_model.from_counts(keep, torch.from_numpy(np.atleast_2d(eff)[0]))
        return cost.macs.numpy()

    def _observation(self) -> np.ndarray:
        t = min(self._t, self.num_units - 1)
        base = self.cost_model.base_macs
        full_eff, _ = self._plan_counts(self._t, "full")
        min_eff, _ = self._plan_counts(self._t, "witness")
        macs = self._macs(np.stack([full_eff, min_eff]))
        removed = 1.0 - macs[0] / base
        removable = (macs[0] - macs[1]) / base
        prev_keep = self._applied[-1] if self._applied else 1.0
        extra = [
            removed,
            removable,
            1.0 if self.budget is None else self.budget,
            1.0 if self.param_budget is None else self.param_budget,
            prev_keep,
        ]
        if self.learn_split:
            extra.append(self._tradeoffs[-1] if self._tradeoffs else self.tradeoff)
        obs = np.concatenate([self._descriptors[t], np.asarray(extra, dtype=np.float32)])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------------------------------------------
    # the wall
    # ------------------------------------------------------------------------------------------------------
    def _feasible(self, t: int, k_s: np.ndarray, tradeoff: float) -> np.ndarray:
        """For each static keep count in ``k_s`` of unit ``t`` (at R_r ``tradeoff``): do the budgets still fit?

        Earlier units are as decided, later units at the wall's assumption (``min_keep``); the candidates are
        costed exactly by :func:`pruning.budget.unit_feasible`.
        """
        eff_c, stored_c = self._counts(t, k_s, tradeoff)
        eff, stored = self._plan_counts(t + 1, "witness")
        return unit_feasible(
            self.cost_model, eff, stored, t, eff_c, stored_c, budget=self.budget, param_budget=self.param_budget
        )

    def _wall(self, t: int, k_req: int, tradeoff: float) -> tuple[int, float, int]:
        """Largest feasible ``k <= k_req`` (and R_r, lowered if needed); also the wall's largest feasible count."""
        candidates = [tradeoff]
        if self.learn_split:
            candidates += [float(r) for r in np.linspace(tradeoff, 0.0, 21)[1:]]
        clamped = action_wall(
            lambda ks, r: self._feasible(t, ks, r), int(self._min_counts[t]), int(self.channels[t]), k_req, candidates
        )
        if clamped is not None:
            return clamped
        raise AssertionError("the action wall found no feasible keep count; this is a bug in StaticPruningEnv")

    # ------------------------------------------------------------------------------------------------------
    # Gymnasium API
    # ------------------------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode at unit 0 (see "Starting State"); ``options`` may set ``budget``/``param_budget``."""
        super().reset(seed=seed)
        if options:
            unknown = set(options) - {"budget", "param_budget"}
            if unknown:
                raise ValueError(f"unknown reset options {sorted(unknown)}; known: budget, param_budget")
            self._set_budgets(options.get("budget", self.budget), options.get("param_budget", self.param_budget))
        self._reset_episode()
        return self._observation(), {"unit": 0}

    def _parse_action(self, action: Any) -> np.ndarray:
        dim = 2 if self.learn_split else 1
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"action must be numbers, got {action!r}") from err
        if a.size != dim or a.ndim > 1:
            raise ValueError(f"action must have shape ({dim},), got shape {a.shape}")
        a = a.reshape(dim)
        if not np.isfinite(a).all():
            raise ValueError(f"action contains NaN or inf: {a.tolist()}")
        return np.clip(a, -1.0, 1.0)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current unit's keep ratio (and R_r); the last unit's step scores the pruned model."""
        if self._t < 0 or self._t >= self.num_units:
            raise RuntimeError("the episode is over (or never started); call reset() first")
        a = self._parse_action(action)
        t = self._t
        c = int(self.channels[t])
        requested = self.min_keep + (float(a[0]) + 1.0) / 2.0 * (1.0 - self.min_keep)
        requested = min(max(requested, self.min_keep), 1.0)
        requested_r = (float(a[1]) + 1.0) / 2.0 if self.learn_split else self.tradeoff
        k_req = int(keep_count(requested, c))
        if self.budget_mode == "clamp":
            k, r, wall = self._wall(t, k_req, requested_r)
        else:
            k, r, wall = k_req, requested_r, c
        applied = requested if k == k_req else k / c
        eff, stored = self._counts(t, np.array([k]), r)
        self._eff[t], self._stored[t] = int(eff[0]), int(stored[0])
        self._requested.append(requested)
        self._applied.append(applied)
        self._keep_counts.append(k)
        self._requested_r.append(requested_r)
        self._tradeoffs.append(r)
        info: dict[str, Any] = {
            "unit": t,
            "requested_keep": requested,
            "applied_keep": applied,
            "keep_count": k,
            "wall_keep": wall / c,
        }
        if self.learn_split:
            info["requested_tradeoff"] = requested_r
            info["applied_tradeoff"] = r
        self._t += 1
        reward = 0.0
        terminated = self._t == self.num_units
        if terminated:
            reward = self._finish(info)
        return self._observation(), reward, terminated, False, info

    def render(self) -> np.ndarray | str | None:
        """The plan of the episode so far: an RGB array, a text table or ``None`` (see Rendering)."""
        return render_frame(self.episode_frame(), self.render_mode)

    def episode_frame(self) -> EpisodeFrame:
        """What :meth:`render` draws: every unit's decided ratios and counts, the costs against the budgets.

        Costs are those of the decided units with the later ones unpruned (per-image upper bounds with a
        runtime policy in the loop, as in the observation) until the last step; then the scored means.
        """
        t = max(self._t, 0)
        if self._scored is not None:
            macs, params = self._scored
        else:
            eff, stored = self._plan_counts(t, "full")
            cost = self.cost_model.from_counts(torch.from_numpy(eff)[None], torch.from_numpy(stored))
            macs, params = float(cost.macs_fraction[0]), float(cost.params_fraction)
        units = [
            UnitFrame(int(c), int(self._stored[u]), int(self._eff[u]), self._applied[u], self._runtime_ratios[u])
            if u < t
            else UnitFrame(int(c))
            for u, c in enumerate(self.channels)
        ]
        label = "scored" if self._scored is not None else "decided units, later ones unpruned"
        return EpisodeFrame(
            title=f"StaticPruning {self.model_name}", units=tuple(units), macs_fraction=macs, budget=self.budget,
            params_fraction=params, param_budget=self.param_budget, macs_label=label,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------------
    # scoring
    # ------------------------------------------------------------------------------------------------------
    @property
    def validation_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached reward subset: normalised images ``(N, 3, H, W)`` and labels ``(N,)`` (do not modify)."""
        return self._val_x, self._val_y

    @property
    def model(self) -> nn.Module:
        """The env's private gated copy of the model (its plan is the last scored episode's)."""
        return self._model

    @property
    def budget_index(self) -> int:
        """Position of the MAC budget in the observation (1.0 there when the env has no MAC budget)."""
        return len(DESCRIPTOR_NAMES) + 2

    def final_plan(self) -> PruningPlan:
        """The plan of the episode so far (decided units; undecided ones keep everything).

        With ``learn_split`` the per-unit R_r cannot be written in a :class:`~pruning.plan.PruningPlan` (its
        ``tradeoff`` is one number): the plan carries the default ``tradeoff`` and :meth:`apply_plan` sets
        each unit's R_r on the model. Without ``learn_split`` the plan is complete.
        """
        keeps = self._applied + [1.0] * (self.num_units - len(self._applied))
        return PruningPlan(
            static_keep=keeps,
            runtime_keep=self.runtime,
            tradeoff=self.tradeoff if self.runtime is not None else None,
            static_scores=self.static_scores,
            runtime_order=self.runtime_order,
        )

    def apply_plan(self, model: nn.Module | None = None) -> nn.Module:
        """Set the episode's plan on a gated model (default: the env's own copy) and return the model.

        :func:`pruning.gating.set_plan` applies :meth:`final_plan`; then, with ``learn_split``, each
        ``GatedConv.tradeoff`` is set to that unit's chosen R_r directly (``PruningPlan`` holds one R_r).
        """
        target = self._model if model is None else model
        set_plan(target, self.final_plan())
        if self.learn_split:
            for g, r in zip(gated_units(target), self._tradeoffs, strict=False):
                g.tradeoff = r
        return target

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        """Top-1 (%), mean CE, per-image kept counts ``(N, L)`` and stored counts ``(L,)`` of the applied plan."""
        model = self.apply_plan()
        if self._calib_x is not None:
            recalibrate_bn(model, self._calib_x, batch_size=self.batch_size)
        try:
            return self._score(model)
        finally:
            if self._calib_x is not None:  # the env's copy keeps the statistics it was built with
                model.load_state_dict(self._bn_state, strict=False)

    def _score(self, model: nn.Module) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        model.eval()
        correct = 0
        loss_sum = 0.0
        keeps = []
        n = int(self._val_y.shape[0])
        for start in range(0, n, self.batch_size):
            x = self._val_x[start : start + self.batch_size]
            y = self._val_y[start : start + self.batch_size]
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            if self.runtime is not None:
                keeps.append(torch.stack([m.sum(-1).cpu() for m in applied_masks(model)], dim=-1))
        stored = torch.tensor([int(s.sum()) for s in stored_masks(model)])
        keep = torch.cat(keeps) if keeps else stored.unsqueeze(0)
        return 100.0 * correct / n, loss_sum / n, keep, stored

    def _finish(self, info: dict[str, Any]) -> float:
        top1, loss, keep, stored = self._evaluate()
        capped = not math.isfinite(loss)
        if capped:
            log.warning("validation loss is %s (non-finite logits?); using %g for the reward", loss, LOSS_CAP)
            loss = LOSS_CAP
        loss = min(loss, LOSS_CAP)
        cost = self.cost_model.from_counts(keep, stored)
        macs_per_image = cost.macs.double()
        macs = float(macs_per_image.mean())
        if isinstance(self.loss_scale, RunningLossScale):
            scale = self.loss_scale.update(loss)
        else:
            scale = self.loss_scale
        result = EpisodeResult(
            top1=top1,
            loss=loss,
            macs_fraction=macs / cost.base_macs,
            params_fraction=cost.params_fraction,
            macs=macs,
            params=float(cost.params),
            budget=self.budget,
            param_budget=self.param_budget,
            loss_scale=scale,
            budget_term=self.budget_term,
        )
        reward, parts = call_reward(self.reward_fn, self.reward_name, result)
        self._scored = (float(result.macs_fraction), float(result.params_fraction))
        info.update(episode_infos(result, parts, capped, 1)[0])
        info.update(
            macs_fraction_max=float(macs_per_image.max()) / cost.base_macs,
            requested_keeps=list(self._requested),
            applied_keeps=list(self._applied),
            keep_counts=list(self._keep_counts),
            tradeoffs=list(self._tradeoffs),
        )
        return float(reward)

    # ------------------------------------------------------------------------------------------------------
    # the env protocol
    # ------------------------------------------------------------------------------------------------------
    def pruning_target(self) -> TargetSpec:
        """What an agent needs to know of this env, as plain data (:class:`envs.common.TargetSpec`).

        Works through wrappers (``env.unwrapped.pruning_target()``) and vector envs
        (``venv.env_method("pruning_target", indices=[0])[0]``, in worker processes too).
        """
        channels = tuple(int(c) for c in self.channels)
        return TargetSpec(
            kind="static", channels=channels, stored=channels, min_keep=self.min_keep, budget=self.budget,
            param_budget=self.param_budget, budget_index=self.budget_index, action_dim=2 if self.learn_split else 1,
            tradeoff=self.tradeoff, criterion=self.criterion_name, runtime_in_loop=self.runtime is not None,
            macs=self.cost_model.mac_coefficients(),
        )  # fmt: skip
