"""The runtime pruning environment ``prunegym/RuntimePruning-v0``: Chen et al.'s runtime MDP, one image per episode.

The runtime MDP of Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel Pruning via Deep
Reinforcement Learning", NeurIPS 2020, Sec. 3.3.

Two front ends share one batched implementation (:class:`_RuntimeCore`, which runs ``B`` images as ``B``
synchronous episodes): :class:`RuntimePruningEnv`, a ``gymnasium.Env`` (the core with ``B = 1``), and
:class:`RuntimePruningVecEnv`, a stable-baselines3 ``VecEnv`` whose ``num_envs`` episodes cost one batched
forward pass. The class docstring of :class:`RuntimePruningEnv` is the manual.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn
from torch import nn

from pruning.accounting import Cost, CostModel, MacCoefficients
from pruning.data import ImageDataset, crop_flip
from pruning.gating import GatedConv, gated_units, set_plan, stored_masks
from pruning.plan import RUNTIME_ORDERS, PruningPlan
from pruning.stepper import UnitStepper
from pruning.train import dataset_for_model

from .common import DEFAULTS, EnvSettings, TargetSpec, accepts_settings, build_env_model, load_reward_split
from .render import (
    RENDER_FPS,
    RENDER_MODES,
    EpisodeFrame,
    UnitFrame,
    check_render_mode,
    frame_to_rgb,
    frame_to_text,
    render_frame,
)
from .rewards import (
    LOSS_CAP,
    LOSS_SCALE_FLOOR,
    BudgetTerm,
    EpisodeResult,
    MeanBudgetTerm,
    RewardFn,
    RunningLossScale,
    call_reward,
    episode_infos,
    paper_reward,
    resolve_reward,
)

__all__ = [
    "OBS_BOUND",
    "PolicyRuntimeSource",
    "RuntimePruningEnv",
    "RuntimePruningVecEnv",
    "action_to_ratio",
    "runtime_observation",
]

#: Observation entries are clipped to ``[-OBS_BOUND, OBS_BOUND]`` so the declared Box is finite (Gymnasium's
#: checker warns on infinite bounds). GAP and ``u_r`` of a trained CIFAR net are O(1)-O(10); the clip only
#: ever acts on a broken model.
OBS_BOUND = 1e4


#: Keep ratios are rounded to this many decimals: a float32 action carries ~1e-7 of noise, which without the
#: rounding could make the action for ratio 0.5 keep 9 of 16 channels (``ceil(0.50000003·16) = 9``).
RATIO_DECIMALS = 6

#: Zero-padding of CIFAR's random crop (when a ``train`` split is augmented).
_PAD = 4


def action_to_ratio(actions: np.ndarray, min_keep: float) -> np.ndarray:
    """Keep ratio of actions (float64): ``min_keep + (clip(a, -1, 1) + 1)/2·(1 - min_keep)``, 6 decimals.

    Actions outside ``[-1, 1]`` are clipped (the env's documented behaviour); the rounding to
    :data:`RATIO_DECIMALS` removes float32 noise that would otherwise change a keep count.
    """
    a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    r = min_keep + (a + 1.0) * 0.5 * (1.0 - min_keep)
    return np.clip(np.round(r, RATIO_DECIMALS), min_keep, 1.0)


def runtime_observation(
    t: int,
    num_units: int,
    gap: torch.Tensor | None,
    u_r: torch.Tensor | None,
    gap_width: int,
    ur_width: int,
    budget: float,
    committed: np.ndarray,
) -> np.ndarray:
    """The runtime MDP's observation of ``N`` episodes at unit ``t`` (float32 ``(N, gap_width + ur_width + 3)``).

    Layout: ``GAP`` of the unit input (zero-padded to ``gap_width``), ``u_r`` (zero-padded to ``ur_width``),
    ``t / (L - 1)``, the MAC budget, the MAC fraction committed so far. ``gap``/``u_r`` are ``None`` for the
    terminal observation (``t = L``: features are zero). Features are clipped to ``±OBS_BOUND``.

    Raises:
        RuntimeError: the features are not finite (the model's weights are broken).
    """
    committed = np.asarray(committed, dtype=np.float64)
    obs = np.zeros((committed.shape[0], gap_width + ur_width + 3), dtype=np.float32)
    if gap is not None and u_r is not None:
        obs[:, : gap.shape[1]] = gap.detach().cpu().numpy()
        obs[:, gap_width : gap_width + u_r.shape[1]] = u_r.detach().cpu().numpy()
        feats = obs[:, :-3]
        if not np.isfinite(feats).all():
            raise RuntimeError(f"the model produced non-finite activations at the input of unit {t}; check its weights")
        np.clip(feats, -OBS_BOUND, OBS_BOUND, out=feats)
    obs[:, -3] = min(t / max(num_units - 1, 1), 1.0)
    obs[:, -2] = budget
    obs[:, -1] = committed
    return obs


class PolicyRuntimeSource:
    """A :data:`pruning.plan.RuntimeSource` that asks a policy for every unit's keep ratio, per input.

    The policy sees exactly the observation :class:`RuntimePruningEnv` shows it (GAP and ``u_r`` of the unit,
    unit index, budget, MAC fraction committed so far, from the kept counts of the units already run), so an
    agent trained in the env prunes a model's ordinary forward pass — in training (the CNN phase of Chen et al.'s
    schedule), in :class:`StaticPruningEnv` (``runtime=``), in :func:`pruning.train.evaluate` or in
    :class:`pruning.export.DynamicModel` — as it did in the env. A recurrent policy's state is carried from unit
    to unit and restarts at unit 0 of every forward pass.

    Args:
        policy: Anything with stable-baselines3's ``predict(obs, state, episode_start, deterministic)``: a
            trained SB3 / sb3-contrib model, a :mod:`agents.baselines` policy, a user class.
        model: The gated model the source prunes (the one the agent was trained on: its :class:`CostModel`
            defines the committed MAC fraction). Use :meth:`bind` to run the same source on an exported copy or
            a ``DynamicModel`` of it.
        budget: The MAC budget shown to the policy.
        min_keep: The env's smallest keep ratio (actions map to ``[min_keep, 1]``). Default 0.1, the env's.
        deterministic: Ask for the policy's deterministic action (evaluation, CNN phase) or a sample.
        action_offset: Added to every action the policy returns, before it is mapped to a keep ratio (and
            clipped to ``[min_keep, 1]`` as the env does): a budget guard shifts a trained agent's spending
            with it (negative = fewer channels everywhere). Default 0.

    Example:
        >>> import torch
        >>> from agents.baselines import get_baseline
        >>> from envs.runtime import PolicyRuntimeSource, RuntimePruningEnv
        >>> from pruning.gating import set_plan
        >>> from pruning.plan import PruningPlan
        >>> env = RuntimePruningEnv(budget=0.5)
        >>> policy = get_baseline("fbs").prepare(env)
        >>> source = PolicyRuntimeSource(policy, env.model, budget=0.5)
        >>> set_plan(env.model, PruningPlan(runtime_keep=source))
        >>> env.model(torch.randn(4, 3, 32, 32)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        policy: Any,
        model: nn.Module,
        *,
        budget: float,
        min_keep: float = 0.1,
        deterministic: bool = True,
        action_offset: float = 0.0,
    ) -> None:
        if not callable(getattr(policy, "predict", None)):
            raise TypeError(
                f"policy must have a predict(obs, state, episode_start, deterministic) method; "
                f"got {type(policy).__name__}"
            )
        if not (math.isfinite(budget) and 0.0 < budget <= 1.0):
            raise ValueError(f"budget must be a MAC fraction in (0, 1], got {budget}")
        if not (math.isfinite(min_keep) and 0.0 < min_keep <= 1.0):
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        self.policy = policy
        self.budget = float(budget)
        self.min_keep = float(min_keep)
        self.deterministic = bool(deterministic)
        if not math.isfinite(action_offset):
            raise ValueError(f"action_offset must be a finite number, got {action_offset}")
        self.action_offset = float(action_offset)
        plans = [(g.runtime, g.static_keep) for g in gated_units(model)]
        try:  # cost the unpruned structure: the trace must not call a source already set on the model
            for g in gated_units(model):
                g.runtime = None
            cm = CostModel(model)
        finally:
            for g, (rt, _) in zip(gated_units(model), plans, strict=True):
                g.runtime = rt
        self.base_macs = int(cm.base_macs)
        self._macs = cm.mac_coefficients()
        self.units: list[GatedConv] = []
        self.bind(model)
        self._state: Any = None
        self._committed = np.zeros(0)
        self._keep: np.ndarray = np.zeros((0, len(self.units)), dtype=np.int64)
        self.calls = 0

    @property
    def mac_coefficients(self) -> MacCoefficients:
        """The MACs of the unpruned structure as a function of the kept counts: what the committed fraction sums."""
        return self._macs

    def bind(self, model: nn.Module) -> PolicyRuntimeSource:
        """Read kept counts from ``model``'s units (an exported copy, a ``DynamicModel``); returns ``self``.

        Raises:
            ValueError: ``model`` does not have the same number of units.
        """
        units = gated_units(model)
        if self.units and len(units) != len(self.units):
            raise ValueError(f"model has {len(units)} gated units; this source prunes {len(self.units)}")
        self.units = units
        self.gap_width = max(g.full_in_channels for g in units)
        self.ur_width = max(g.full_channels for g in units)
        return self

    def __call__(self, unit_index: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        """Keep ratios ``(N,)`` (float64) of unit ``unit_index`` for a batch whose GAP and ``u_r`` are given."""
        t = int(unit_index)
        n = int(gap.shape[0])
        num_units = len(self.units)
        if t == 0:
            self._state = None
            self._committed = np.full(n, self._macs.fixed_macs, dtype=np.float64)
            self._keep = np.zeros((n, num_units), dtype=np.int64)
        elif self._committed.shape[0] != n:
            raise RuntimeError(
                f"unit {t} was called with {n} inputs before unit 0 of that batch; "
                "a forward pass must run the units in index order"
            )
        else:  # charge unit t - 1, which ran since the last call (its kept counts are on the model's unit)
            s = t - 1
            last = self.units[s].last_keep
            if last is None:
                raise RuntimeError(f"unit {s} has not run before unit {t}; units must run in index order")
            kept = np.broadcast_to(last.sum(-1).cpu().numpy().astype(np.int64).reshape(-1), (n,))
            self._committed = self._committed + self._macs.unit_macs(s, kept, self._keep.T)
            self._keep[:, s] = kept
        start = np.full(n, t == 0, dtype=bool)
        obs = runtime_observation(
            t, num_units, gap, u_r, self.gap_width, self.ur_width, self.budget, self._committed / self.base_macs
        )
        actions, self._state = self.policy.predict(
            obs, state=self._state, episode_start=start, deterministic=self.deterministic
        )
        self.calls += 1
        actions = np.asarray(actions, dtype=np.float64).reshape(n, -1)[:, 0] + self.action_offset
        ratios = action_to_ratio(actions, self.min_keep)
        return torch.from_numpy(ratios).to(u_r.device)


class _RuntimeCore:
    """``B`` synchronous runtime-pruning episodes on one model: the engine of both front ends.

    Holds the gated model, the data, the per-unit cost constants and the episode state (activations at the
    current unit, kept channel counts so far). Every episode of a batch is at the same unit, so a step is one
    batched segment of the forward pass (:class:`pruning.stepper.UnitStepper`). See
    :class:`RuntimePruningEnv` for the meaning of every argument.
    """

    def __init__(
        self,
        num_envs: int,
        *,
        model: str | nn.Module,
        weights: str | Path | None,
        dataset: str | ImageDataset,
        data_dir: str | Path | None,
        split: str,
        num_images: int | None,
        dataset_kwargs: Mapping[str, Any] | None,
        augment: bool | None,
        budget: float | None,
        static_keep: Sequence[float] | None,
        tradeoff: float | None,
        min_keep: float,
        reward: str | RewardFn,
        budget_term: BudgetTerm | MeanBudgetTerm | None,
        static_scores: Sequence[Any] | None,
        runtime_order: str,
        loss_scale: RunningLossScale | float | None,
        loss_scale_warmup: int,
        loss_scale_decay: float,
        device: str | torch.device,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if not (math.isfinite(min_keep) and 0.0 < min_keep <= 1.0):
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        if runtime_order not in RUNTIME_ORDERS:
            raise ValueError(f"runtime_order must be one of {RUNTIME_ORDERS}, got {runtime_order!r}")
        self.num_envs = int(num_envs)
        self.min_keep = float(min_keep)
        self.device = torch.device(device)
        if budget is None:
            raise TypeError("the runtime env needs a MAC budget: budget must be a fraction in (0, 1], got None")
        self.budget = budget  # validated by the setter
        self.reward_fn: RewardFn
        self.reward_fn, self.reward_name = resolve_reward(reward)
        self.budget_term = budget_term if budget_term is not None else BudgetTerm()
        self._warmup, self._decay = int(loss_scale_warmup), float(loss_scale_decay)
        self._own_scale = loss_scale is None  # only the env's own running mean restarts on a seeded reset
        # the env's own running mean is one per episode slot, each updated with its own episodes' CE only, so
        # that a VecEnv of B slots is exactly B single environments (rewards included)
        self._own_scales: list[RunningLossScale] = []
        self.loss_scale: RunningLossScale | float = 1.0
        if loss_scale is None:
            self.restart_loss_scale()
        elif isinstance(loss_scale, RunningLossScale):
            self.loss_scale = loss_scale
        else:
            if not (math.isfinite(loss_scale) and loss_scale > 0):
                raise ValueError(f"a fixed loss_scale must be a positive number, got {loss_scale}")
            self.loss_scale = float(loss_scale)

        # -- data ------------------------------------------------------------------------------------------
        data = load_reward_split(dataset, data_dir, split, **dict(dataset_kwargs or {}))
        # -- model: a private gated copy, eval mode, no gradients -------------------------------------------
        self.model = build_env_model(model, weights, data.num_classes, predictor=True).to(self.device)
        self.dataset = dataset_for_model(data, self.model)
        if num_images is not None:
            if not 0 < num_images <= len(self.dataset):
                raise ValueError(
                    f"num_images={num_images} but the {data.name}/{data.split} split has {len(self.dataset)} "
                    "images; choose num_images in that range (synthetic data: dataset_kwargs={'size': n})"
                )
            self.dataset = self.dataset.subset(range(num_images))
        self.augment = self.dataset.augment if augment is None else bool(augment)
        self._images = self.dataset.images.to(self.device)
        self._labels = self.dataset.labels.to(self.device)

        # -- plan: the fixed static side and R_r -----------------------------------------------------------
        self.units: list[GatedConv] = gated_units(self.model)
        self.num_units = len(self.units)
        exported = any(g.frozen_static is not None for g in self.units)
        if exported:
            if static_keep is not None or tradeoff is not None:
                raise ValueError(
                    "this model is exported (pruning.export.export_static): its static plan and R_r are fixed; "
                    "pass static_keep=None and tradeoff=None"
                )
        else:
            if static_keep is not None and tradeoff is None:
                raise ValueError(
                    "a static plan needs tradeoff=R_r in [0, 1] "
                    "(Chen et al. use 0.5; 1 = runtime only, 0 = static only)"
                )
            if static_scores is not None and static_keep is None and runtime_order != "prefix":
                raise ValueError(
                    "static_scores rank the channels of a static plan (or the prefix runtime order): pass static_keep "
                    "or runtime_order='prefix' too"
                )
            r = 1.0 if tradeoff is None else float(tradeoff)
            scores = None if static_scores is None else [torch.as_tensor(v, dtype=torch.float32) for v in static_scores]
            plan = PruningPlan(static_keep=static_keep, tradeoff=r, static_scores=scores, runtime_order=runtime_order)
            set_plan(self.model, plan)
        if exported and runtime_order != self.units[0].runtime_order:
            raise ValueError(
                f"this model was exported with runtime_order={self.units[0].runtime_order!r}; pass that order"
            )
        self.static_keep = None if static_keep is None else [float(s) for s in static_keep]
        self.tradeoff = self.units[0].tradeoff
        self.runtime_order = self.units[0].runtime_order
        self.stepper = UnitStepper(self.model)

        # -- accounting constants (per unit, computed once) -------------------------------------------------
        cm = CostModel(self.model)
        self.cost_model = cm
        self.base_macs = cm.base_macs
        self._stored = torch.tensor([int(s.sum()) for s in stored_masks(self.model)])
        static_cost = cm.from_counts(self._stored.unsqueeze(0), self._stored)
        self.params_fraction = float(static_cost.params_fraction)
        self.mac_coefficients = cm.mac_coefficients()
        self._full = [g.full_channels for g in self.units]

        # -- observation layout -----------------------------------------------------------------------------
        self.gap_width = max(g.full_in_channels for g in self.units)
        self.ur_width = max(g.full_channels for g in self.units)
        self.obs_dim = self.gap_width + self.ur_width + 3
        low = np.full(self.obs_dim, -OBS_BOUND, dtype=np.float32)
        high = np.full(self.obs_dim, OBS_BOUND, dtype=np.float32)
        low[-3:], high[-3:] = 0.0, 1.0
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

        # -- episode state ----------------------------------------------------------------------------------
        b = self.num_envs
        self._t = -1  # -1: never reset; num_units: the episodes are over
        self._h: torch.Tensor | None = None
        self._y = torch.zeros(b, dtype=torch.long, device=self.device)
        self._image_index: list[int] = [0] * b
        # kept channels per episode and unit, and MACs committed so far: small, kept on the CPU in numpy
        self._keep = np.zeros((b, self.num_units), dtype=np.int64)
        self._ratio = np.zeros((b, self.num_units), dtype=np.float64)  # applied keep ratios (rendering)
        self._committed = np.zeros(b, dtype=np.int64)
        # (input, (GAP, u_r)) of the current unit, computed for the observation and reused by its forward
        self._importance: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- properties ----------------------------------------------------------------------------------------
    @property
    def budget(self) -> float:
        """MAC budget: the cap on each image's backbone MAC fraction."""
        return self._budget

    @budget.setter
    def budget(self, value: float) -> None:
        value = float(value)
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError(f"budget must be a MAC fraction in (0, 1], got {value}")
        self._budget = value

    def restart_loss_scale(self) -> None:
        """Forget the env's own running loss means (a fixed or a shared ``loss_scale`` is left alone)."""
        if self._own_scale:
            self._own_scales = [RunningLossScale(self._warmup, self._decay) for _ in range(self.num_envs)]
            self.loss_scale = self._own_scales[0]  # what `env.loss_scale` shows (sub-env 0's in a VecEnv)

    def _update_loss_scales(self, ce: torch.Tensor) -> torch.Tensor:
        """Fold this batch's CE into β and return the β of every episode (float64 ``(B,)``), floored.

        Own running means: slot i is updated with episode i's CE. A shared ``RunningLossScale``: one update
        with the batch mean (Chen et al.'s per-batch β). A fixed float: unchanged.
        """
        values = ce.cpu().tolist()
        if self._own_scale:
            betas = [s.update(v) for s, v in zip(self._own_scales, values, strict=True)]
        elif isinstance(self.loss_scale, RunningLossScale):
            betas = [self.loss_scale.update(sum(values) / len(values))] * len(values)
        else:
            betas = [float(self.loss_scale)] * len(values)
        return torch.tensor(betas, dtype=torch.float64).clamp(min=LOSS_SCALE_FLOOR)

    def ratio_of(self, actions: np.ndarray) -> np.ndarray:
        """Keep ratio of clipped actions (float64): see :func:`action_to_ratio`."""
        return action_to_ratio(actions, self.min_keep)

    # -- episodes -----------------------------------------------------------------------------------------
    def reset(
        self, rngs: Sequence[np.random.Generator], image_index: Sequence[int | None]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Start ``B`` new episodes: draw each image from its own generator, run the prefix, observe unit 0."""
        n = len(self._labels)
        b = self.num_envs
        idx = np.empty(b, dtype=np.int64)
        shifts = np.empty((b, 3), dtype=np.int64)
        for i, rng in enumerate(rngs):
            forced = image_index[i]
            if forced is None:
                idx[i] = rng.integers(n)
            else:
                if not 0 <= int(forced) < n:
                    raise ValueError(f"image_index {forced} out of range: the split has {n} images")
                idx[i] = int(forced)
            if self.augment:  # crop offsets (y, x) and flip, after the image, from the same generator
                shifts[i, :2] = rng.integers(0, 2 * _PAD + 1, size=2)
                shifts[i, 2] = rng.integers(2)
        sel = torch.from_numpy(idx).to(self.device)
        images = self._images[sel]
        if self.augment:
            s = torch.from_numpy(shifts)
            images = crop_flip(images, s[:, 0], s[:, 1], s[:, 2].bool(), padding=_PAD)
        x = self.dataset.normalize(images)
        self._y = self._labels[sel]
        self._image_index = idx.tolist()
        with torch.inference_mode():
            self._h = self.stepper.prefix(x)
        self._t = 0
        self._keep[:] = 0
        self._ratio[:] = 0.0
        self._committed[:] = self.mac_coefficients.fixed_macs
        obs = self._observe(0)
        return obs, [{"image_index": i} for i in self._image_index]

    def frame(self, index: int) -> EpisodeFrame:
        """Episode ``index``'s pruning so far, for :mod:`envs.render`."""
        t = max(self._t, 0)
        units = []
        for u in range(self.num_units):
            c, stored = int(self._full[u]), int(self._stored[u])
            static = self.static_keep[u] if self.static_keep is not None else stored / c
            if u < t:
                units.append(UnitFrame(c, stored, int(self._keep[index, u]), static, float(self._ratio[index, u])))
            else:
                units.append(UnitFrame(c, stored, None, static, None))
        started = self._t >= 0
        image = f"image {self._image_index[index]}" if started else "before reset()"
        return EpisodeFrame(
            title=f"RuntimePruning {self.dataset.name}/{self.dataset.split} {image}",
            units=tuple(units),
            macs_fraction=float(self._committed[index]) / self.base_macs if started else None,
            budget=self._budget,
            params_fraction=self.params_fraction,
            macs_label="episode" if self._t >= self.num_units else "committed so far",
        )

    def _observe(self, t: int) -> np.ndarray:
        """Observation of every episode at unit ``t`` (``t = num_units``: the terminal observation)."""
        self._importance = None
        gap = u_r = None
        if t < self.num_units:
            assert self._h is not None
            g = self.units[t]
            with torch.inference_mode():
                raw = g.runtime_importance(self._h)
                gap, u_r = g.source_view(*raw)
            self._importance = (self._h, raw)
        return runtime_observation(
            t, self.num_units, gap, u_r, self.gap_width, self.ur_width, self._budget, self._committed / self.base_macs
        )

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, list[dict[str, Any]]]:
        """Apply one keep ratio per episode to the current unit and run up to the next one.

        Args:
            actions: Float64 ``(B,)``, finite (checked by the front ends).

        Returns:
            ``(obs (B, D) float32, rewards (B,) float64, terminated, infos)``; after the last unit ``obs`` is
            the terminal observation.
        """
        t = self._t
        if t < 0:
            raise RuntimeError("call reset() before step()")
        if t >= self.num_units:
            raise RuntimeError("the episode is over (the last unit was pruned); call reset() to start a new one")
        requested = self.min_keep + (actions + 1.0) * 0.5 * (1.0 - self.min_keep)
        ratio = self.ratio_of(np.clip(actions, -1.0, 1.0))
        g = self.units[t]
        g.runtime = torch.from_numpy(ratio).to(self.device)
        if self._importance is not None:
            # the observation computed GAP and u_r of this very input: the unit's forward reuses them
            h_seen, seen = self._importance

            def importance(x: torch.Tensor, g: GatedConv = g) -> tuple[torch.Tensor, torch.Tensor]:
                return seen if x is h_seen else GatedConv.runtime_importance(g, x)

            g.__dict__["runtime_importance"] = importance
        try:
            with torch.inference_mode():
                self._h = self.stepper.step(t, self._h)  # type: ignore[arg-type]
        finally:
            g.runtime = None
            g.__dict__.pop("runtime_importance", None)
            self._importance = None
        assert g.last_keep is not None
        kept = g.last_keep.sum(1).cpu().numpy()
        self._keep[:, t] = kept
        self._ratio[:, t] = ratio
        self._committed += self.mac_coefficients.unit_macs(t, kept, self._keep.T)
        self._t = t + 1
        if self._t < self.num_units:
            frac = (self._committed / self.base_macs).tolist()
            obs, rewards, done = self._observe(self._t), np.zeros(self.num_envs), False
        else:
            cost = self.cost_model.from_counts(torch.from_numpy(self._keep), self._stored)
            frac = cost.macs_fraction.tolist()  # from the final combined masks of every unit
        c, pf = self._full[t], self.params_fraction
        cols = zip(self._image_index, requested.tolist(), ratio.tolist(), kept.tolist(), frac, strict=True)
        infos = [
            {
                "unit": t,
                "image_index": i,
                "requested_ratio": rq,
                "ratio": r,
                "kept_channels": k,
                "kept_fraction": k / c,
                "macs_fraction": f,
                "params_fraction": pf,
            }
            for i, rq, r, k, f in cols
        ]
        if self._t < self.num_units:
            return obs, rewards, done, infos
        return self._finish(cost, infos)

    def _finish(
        self, cost: Cost, infos: list[dict[str, Any]]
    ) -> tuple[np.ndarray, np.ndarray, bool, list[dict[str, Any]]]:
        """The last unit ran: score the logits against the cost of the final masks, pay the reward."""
        logits = self._h
        assert logits is not None
        with torch.inference_mode():
            ce = F.cross_entropy(logits.float(), self._y, reduction="none").double()
            capped = ~torch.isfinite(ce)
            ce = torch.where(capped, torch.full_like(ce, LOSS_CAP), ce)
            correct = logits.argmax(1) == self._y
        # β is updated before the reward, as in the static env: a first episode is normalised by its own CE
        scale = self._update_loss_scales(ce)
        b = self.num_envs
        result = EpisodeResult(
            top1=100.0 * correct.cpu().double(), loss=ce.cpu(), macs_fraction=cost.macs_fraction,
            params_fraction=self.params_fraction, macs=cost.macs.double(), params=float(cost.params),
            budget=self._budget, param_budget=None, loss_scale=scale, budget_term=self.budget_term,
        )  # fmt: skip
        value, parts = call_reward(self.reward_fn, self.reward_name, result)  # one call for the whole batch
        reward = torch.as_tensor(value, dtype=torch.float64).cpu()
        if reward.numel() not in (1, b):
            raise ValueError(
                f"reward function {self.reward_name!r} returned shape {tuple(reward.shape)}; a runtime reward "
                f"returns one value per episode ({b},) or one float for all"
            )
        pred = (cost.predictor_macs.double() / self.base_macs).tolist()
        cols = {
            "predictor_macs_fraction": pred,
            "ce": ce.tolist(),
            "correct": correct.tolist(),
            "label": self._y.tolist(),
        }
        ends = episode_infos(result, parts, capped.tolist(), b)
        for i, info in enumerate(infos):
            for k, v in cols.items():
                info[k] = v[i]
            info.update(ends[i])
            if self.reward_fn is paper_reward:  # deprecated aliases of the reward's parts (see Version History)
                info["reward_accuracy"] = info["reward_parts"]["accuracy"]
                info["reward_budget"] = info["reward_parts"]["budget_macs"]
        self._committed = cost.macs.numpy()
        return self._observe(self.num_units), reward.reshape(-1).expand(b).numpy(), True, infos


def _check_actions(actions: Any, num_envs: int) -> np.ndarray:
    """Actions as float64 ``(B,)``; ``ValueError`` for a wrong shape or a non-finite value."""
    try:
        a = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"actions must be numbers (a float array of shape ({num_envs}, 1)): {e}") from e
    if num_envs == 1 and a.shape in ((), (1,), (1, 1)):
        a = a.reshape(1)
    elif a.shape in ((num_envs, 1), (num_envs,)):
        a = a.reshape(num_envs)
    else:
        want = "(1,)" if num_envs == 1 else f"({num_envs}, 1)"
        raise ValueError(f"action has shape {a.shape}; expected {want} (one keep-ratio action per episode)")
    if not np.isfinite(a).all():
        raise ValueError(
            f"action contains {a[~np.isfinite(a)][0]}; actions must be finite (values outside [-1, 1] are clipped, "
            "NaN and infinity are refused: they usually mean the policy diverged)"
        )
    return a


class _SharedAttributes:
    """Read-through properties of the core that both front ends expose."""

    _core: _RuntimeCore

    @property
    def budget(self) -> float:
        """MAC budget (fraction of the base backbone MACs per image); settable, observed from the next step."""
        return self._core.budget

    @budget.setter
    def budget(self, value: float) -> None:
        self._core.budget = value

    @property
    def min_keep(self) -> float:
        """Smallest keep ratio an action maps to."""
        return self._core.min_keep

    @property
    def num_units(self) -> int:
        """L: prunable units, i.e. steps per episode."""
        return self._core.num_units

    @property
    def runtime_order(self) -> str:
        """Which channels a keep count keeps: ``"u_r"`` (each image's top-k) or ``"prefix"`` (a fixed order)."""
        return self._core.runtime_order

    @property
    def budget_index(self) -> int:
        """Position of the MAC budget in the observation (a policy can read its target from it)."""
        return self._core.obs_dim - 2

    def episode_frame(self, index: int = 0) -> EpisodeFrame:
        """What rendering draws for episode ``index`` (a VecEnv's sub-environment; 0 for the single env).

        Every unit's static keep ratio and stored channels (fixed), and for the units already run the applied
        runtime keep ratio and the channels computed; the MAC fraction committed so far (the episode's B after
        the last unit) against the budget.
        """
        return self._core.frame(index)

    @property
    def model(self) -> nn.Module:
        """The env's gated copy of the model (eval mode, no gradients; its static plan set)."""
        return self._core.model

    @property
    def dataset(self) -> ImageDataset:
        """The images episodes are drawn from (normalised as the model's weights expect)."""
        return self._core.dataset

    @property
    def cost_model(self) -> CostModel:
        """The :class:`pruning.accounting.CostModel` of :attr:`model`."""
        return self._core.cost_model

    @property
    def base_macs(self) -> int:
        """Backbone MACs per image of the unpruned model: the denominator of every MAC fraction."""
        return self._core.base_macs

    @property
    def tradeoff(self) -> float:
        """R_r of the trade-off pruner (fixed for the env's lifetime)."""
        return self._core.tradeoff

    @property
    def static_keep(self) -> list[float] | None:
        """The fixed static keep ratio per unit, or ``None``."""
        return self._core.static_keep

    @property
    def loss_scale(self) -> RunningLossScale | float:
        """β_b: the running mean of the loss (``RunningLossScale``) or a fixed float."""
        return self._core.loss_scale

    @loss_scale.setter
    def loss_scale(self, value: RunningLossScale | float) -> None:
        if not isinstance(value, RunningLossScale) and not (math.isfinite(value) and value > 0):
            raise ValueError(f"loss_scale must be a RunningLossScale or a positive number, got {value}")
        self._core.loss_scale = value
        self._core._own_scale = False

    def action_for_ratio(self, ratio: float) -> np.ndarray:
        """The action (``float32 (1,)``) whose applied keep ratio is ``ratio`` (clipped to ``[min_keep, 1]``)."""
        r = min(max(float(ratio), self._core.min_keep), 1.0)
        span = 1.0 - self._core.min_keep
        a = 1.0 if span == 0 else 2.0 * (r - self._core.min_keep) / span - 1.0
        return np.array([a], dtype=np.float32)

    def pruning_target(self) -> TargetSpec:
        """What an agent needs to know of this env, as plain data (:class:`envs.common.TargetSpec`).

        Works through wrappers (``env.unwrapped.pruning_target()``) and on the vector env directly or inside
        VecEnv wrappers (``venv.env_method("pruning_target", indices=[0])[0]``).
        """
        model = self._core.model
        return TargetSpec(
            kind="runtime", channels=tuple(int(c) for c in self._core.cost_model.channels),
            stored=tuple(int(s.sum()) for s in stored_masks(model)), min_keep=self.min_keep, budget=self.budget,
            param_budget=None, budget_index=self.budget_index, action_dim=1, tradeoff=self.tradeoff, criterion=None,
            runtime_in_loop=False, macs=self._core.mac_coefficients,
        )  # fmt: skip


class RuntimePruningEnv(_SharedAttributes, gym.Env[np.ndarray, np.ndarray]):
    """Runtime channel pruning of one image's forward pass, one prunable unit per step (``prunegym/RuntimePruning-v0``).

    ## Description

    The runtime MDP of Chen, Chen & Pan (NeurIPS 2020, Sec. 3.3): one episode is one image's forward pass through
    a fixed, gated network whose units each predict a channel importance `u_r = FC(GAP(input))`. At step `t` the
    agent sees unit `t`'s input GAP and `u_r` and chooses the unit's **runtime keep ratio** for this image; the
    unit keeps its top channels by `u_r` (with the fixed static plan, by the trade-off pruner at rate R_r) and
    the network runs on. After the last unit the reward trades the image's cross-entropy against its MACs.
    `RuntimePruningVecEnv` (`envs.make_batched`) runs `num_envs` episodes as one batch with the same results.
    Derivations and design notes: `docs/envs.md`, "RuntimePruningEnv".

    ## Action Space

    A `float32` `ndarray` of shape `(1,)` in `[-1, 1]`: unit t's runtime keep ratio
    `min_keep + (a + 1) / 2 · (1 - min_keep)`, in `[min_keep, 1]` (`[0.1, 1]` by default, Chen et al.'s floor).
    Values outside `[-1, 1]` are clipped; NaN, infinite values or more than one number raise `ValueError`.
    The ratio keeps `k = clamp(ceil(ratio·C), 1, C)` channels, capped at the unit's stored channels.
    `action_for_ratio(r)` inverts the map.

    ## Observation Space

    A `float32` `ndarray` of shape `(G + U + 3,)`, where `G` is the widest C_in and `U` the widest C_out over
    the units (tiny_cnn: 16 + 16 + 3 = 35; ResNet-20/56: 64 + 64 + 3 = 131):

    | Num         | Observation                                                          | Min    | Max   |
    |-------------|----------------------------------------------------------------------|--------|-------|
    | 0 … G-1     | GAP of unit t's input, channel c (0 for c ≥ unit t's C_in)           | -1e4   | 1e4   |
    | G … G+U-1   | `u_r` of unit t's output channel c (0 for c ≥ C_out or not stored)   | -1e4   | 1e4   |
    | G+U         | unit index t / (L - 1)                                               | 0      | 1     |
    | G+U+1       | MAC budget (fraction of the base backbone MACs)                      | 0      | 1     |
    | G+U+2       | MAC fraction committed so far, unprunable layers included            | 0      | 1     |

    GAP and `u_r` are read at the unit's original widths (the same for a masked, an exported and a
    `DynamicModel` network). The terminal observation has zeros for GAP and `u_r`, index 1 and the final B.

    ## Rewards

    0 at every step but the last, where `reward=` (the `envs.rewards` registry, as in `StaticPruningEnv`) is
    called once on the batch of episodes that end together, one reward per image. The default, `"paper"`
    (Chen et al.), is `r = -CE(x, y) / β + budget_term(B, budget)`: β a running mean of the CE (one per env
    and per VecEnv sub-environment), B the image's backbone MAC fraction under the final masks, `budget_term`
    a steep penalty over the budget, a small bonus under it. Always finite. `docs/envs.md`: "Rewards and info".

    ## Starting State

    Unit 0 of an image drawn uniformly from the split (and its crop and flip, if augmented) by `np_random`.
    `reset(seed=s)` reseeds it **and restarts the running loss scale**, so the same seed and actions give the
    same rollout; `reset(options={"image_index": i})` runs image `i` of the split.

    ## Episode End

    1. Termination: the last unit has been pruned (`num_units` steps).
    2. Truncation: never.

    `info` at every step: `unit`, `image_index`, `requested_ratio`, `ratio`, `kept_channels`, `kept_fraction`,
    `macs_fraction` (committed so far), `params_fraction`; at the last unit also the keys both envs report
    (`envs.rewards.EPISODE_INFO_KEYS`, `reward_parts`) and `predictor_macs_fraction`, `ce`, `correct`, `label`.

    ## Arguments

    All keyword-only; `gymnasium.make("prunegym/RuntimePruning-v0", **kwargs)` passes them through. Those both
    envs take, one by one or as `settings=envs.common.EnvSettings(...)`, are documented there: `model`,
    `weights`, `dataset`, `data_dir`, `split`, `dataset_kwargs`, `budget` (0.5; settable: `env.budget = 0.3`),
    `reward`, `budget_term`, `loss_scale`, `runtime_order`, `device`. This env's own:

    | Parameter           | Default | Description                                                                |
    |---------------------|---------|----------------------------------------------------------------------------|
    | `num_images`        | `None`  | use only the split's first `num_images` images (`None`: all)               |
    | `augment`           | `None`  | CIFAR crop + flip per episode; `None`: the split's default (train only)    |
    | `static_keep`       | `None`  | fixed static keep ratio per unit (`None`: no static pruning)               |
    | `tradeoff`          | `None`  | R_r in [0, 1]; `None`: 1 (pure runtime), but required with `static_keep`   |
    | `static_scores`     | `None`  | per-unit channel scores ranking the static plan (default: `u_s`)           |
    | `min_keep`          | `0.1`   | keep ratio of action -1 (Chen et al.'s runtime floor)                      |
    | `loss_scale_warmup` | `200`   | updates averaged cumulatively before β's EMA starts (own running mean)     |
    | `loss_scale_decay`  | `0.995` | EMA weight of β's old value (own running mean)                             |
    | `render_mode`       | `None`  | `None`, `"rgb_array"` (a `(360, 640, 3)` `uint8` picture) or `"ansi"`      |

    ```python
    >>> import gymnasium as gym
    >>> import envs
    >>> env = gym.make("prunegym/RuntimePruning-v0", model="tiny_cnn", budget=0.5)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype, env.action_space
    ((35,), dtype('float32'), Box(-1.0, 1.0, (1,), float32))
    >>> terminated = False
    >>> while not terminated:  # keep half of every unit's channels
    ...     obs, reward, terminated, truncated, info = env.step(env.unwrapped.action_for_ratio(0.5))
    >>> info["unit"], info["ratio"], info["kept_channels"], round(info["macs_fraction"], 4)
    (2, 0.5, 8, 0.3423)
    >>> reward == sum(info["reward_parts"].values()), info["reward_parts"]["budget_macs"] > 0
    (True, True)

    ```

    ## Version History

    * v0: Initial version. Render modes, pickling, fork-safe workers, `reward=` and `info["reward_parts"]` came
      without a bump (`docs/envs.md`). `info["reward_accuracy"]` and `info["reward_budget"]` (the `"paper"`
      parts) are deprecated and go in the next version.
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
        num_images: int | None = None,
        dataset_kwargs: Mapping[str, Any] | None = DEFAULTS.dataset_kwargs,
        augment: bool | None = None,
        budget: float | None = DEFAULTS.budget,
        static_keep: Sequence[float] | None = None,
        tradeoff: float | None = None,
        min_keep: float = 0.1,
        reward: str | RewardFn = DEFAULTS.reward,
        budget_term: BudgetTerm | MeanBudgetTerm | None = DEFAULTS.budget_term,
        static_scores: Sequence[Any] | None = None,
        runtime_order: str = DEFAULTS.runtime_order,
        loss_scale: RunningLossScale | float | None = DEFAULTS.loss_scale,
        loss_scale_warmup: int = 200,
        loss_scale_decay: float = 0.995,
        device: str | torch.device = DEFAULTS.device,
        render_mode: str | None = None,
    ) -> None:
        del settings  # merged into the keywords by @accepts_settings
        super().__init__()
        self.render_mode = check_render_mode(render_mode, "RuntimePruningEnv")
        self._core = _RuntimeCore(
            1, model=model, weights=weights, dataset=dataset, data_dir=data_dir, split=split,
            num_images=num_images, dataset_kwargs=dataset_kwargs, augment=augment, budget=budget,
            static_keep=static_keep, tradeoff=tradeoff, min_keep=min_keep, reward=reward, budget_term=budget_term,
            static_scores=static_scores, runtime_order=runtime_order, loss_scale=loss_scale,
            loss_scale_warmup=loss_scale_warmup,
            loss_scale_decay=loss_scale_decay,
            device=device,
        )  # fmt: skip
        self.observation_space = self._core.observation_space
        self.action_space = self._core.action_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode on a new image (see Starting State).

        Args:
            seed: Reseeds ``np_random`` and restarts the running loss scale.
            options: ``{"image_index": i}`` runs image ``i`` of the split instead of a random one.

        Raises:
            ValueError: an unknown option or an image index out of range.
        """
        super().reset(seed=seed)
        if seed is not None:
            self._core.restart_loss_scale()
        options = dict(options or {})
        index = options.pop("image_index", None)
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; the only option is 'image_index'")
        obs, infos = self._core.reset([self.np_random], [index])
        return obs[0], infos[0]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Prune the current unit with ``action`` and run to the next unit (see Rewards and Episode End).

        Raises:
            ValueError: the action is not one finite number.
            RuntimeError: no episode is running (call ``reset()``).
        """
        a = _check_actions(action, 1)
        obs, rewards, terminated, infos = self._core.step(a)
        return obs[0], float(rewards[0]), terminated, False, infos[0]

    def render(self) -> np.ndarray | str | None:
        """The episode so far: an RGB array, a text table or ``None`` (see Rendering)."""
        return render_frame(self._core.frame(0), self.render_mode)


class RuntimePruningVecEnv(_SharedAttributes, VecEnv):
    """``num_envs`` runtime-pruning episodes run as one batch: a stable-baselines3 ``VecEnv``.

    The MDP, spaces, rewards and arguments are those of :class:`RuntimePruningEnv` (its docstring is the
    manual); every keyword argument is passed through. Sub-environment ``i`` is an image's episode in row
    ``i`` of a batch: all episodes are at the same unit, so each step is one batched forward segment
    (activations stay in the env between steps) and every episode ends at the same step.

    - **Auto-reset** as in SB3: at the last unit, ``dones`` are all true, each ``infos[i]`` carries
      ``terminal_observation`` (and ``TimeLimit.truncated = False``), and the returned observations are the
      first ones of the next episodes (their reset infos are in ``reset_infos``).
    - **Seeding**: each sub-environment owns a generator. ``seed(s)`` (or ``set_random_seed`` in an SB3
      algorithm) makes the next ``reset()`` seed sub-environment ``i`` with ``s + i``, exactly as a
      ``RuntimePruningEnv`` reset with ``seed=s + i``: it draws the same images, so the observations, masks,
      MAC fractions, CE and budget terms equal those of ``num_envs`` single environments. The accuracy term
      agrees too: each sub-environment keeps its own running β, updated with its own episodes' CE as a single
      env's is (a shared ``RunningLossScale`` passed as ``loss_scale`` is instead updated once per batch with
      the batch's mean CE: Chen et al.'s per-batch β). A seeded reset restarts the running loss scales, like
      the single env's.
    - ``set_options([{"image_index": i}, ...])`` fixes the images of the next ``reset()``.
    - **Attributes**: the sub-environments share one model, plan, budget and loss scale. ``get_attr(name)``
      returns the shared attribute once per index (``np_random``: each sub-environment's own generator);
      ``set_attr`` sets a shared attribute for all indices at once (a subset of indices raises ``ValueError``,
      except for ``np_random``); ``env_method(name, ...)`` calls the shared method once per index (the
      batch-wide methods ``reset``, ``step``, ``close``, ``seed`` are refused: call them on the VecEnv);
      ``env_is_wrapped`` is false (no Gymnasium wrappers inside).

    :func:`envs.make_batched` builds it from the registered id (``make_batched(RUNTIME_ENV_ID, num_envs, ...)``).

    Args:
        num_envs: Episodes per batch (B).
        settings: The arguments both envs share (:class:`envs.common.EnvSettings`), as in :class:`RuntimePruningEnv`.
        **kwargs: Keyword arguments of :class:`RuntimePruningEnv`.

    Example:
        >>> import numpy as np
        >>> from envs.runtime import RuntimePruningVecEnv
        >>> venv = RuntimePruningVecEnv(num_envs=4, model="tiny_cnn", budget=0.5)
        >>> venv.seed(0)
        [0, 1, 2, 3]
        >>> obs = venv.reset()
        >>> obs.shape
        (4, 35)
        >>> for _ in range(venv.num_units):
        ...     obs, rewards, dones, infos = venv.step(np.zeros((4, 1), dtype=np.float32))
        >>> bool(dones.all()), "terminal_observation" in infos[0], round(infos[0]["ratio"], 3)
        (True, True, 0.55)
    """

    _BATCH_METHODS = frozenset({"reset", "step", "step_async", "step_wait", "close", "seed", "set_options"})

    @accepts_settings
    def __init__(self, num_envs: int, *, settings: EnvSettings | None = None, **kwargs: Any) -> None:
        del settings  # merged into the keywords by @accepts_settings
        render_mode = check_render_mode(kwargs.pop("render_mode", None), "RuntimePruningVecEnv")
        defaults = _env_defaults()
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"unknown argument(s) {sorted(unknown)}; RuntimePruningEnv takes {sorted(defaults)}")
        self._core = _RuntimeCore(num_envs, **{**defaults, **kwargs})
        self.render_mode = render_mode  # read by VecEnv.__init__ (get_attr), which declares metadata from it
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._actions: np.ndarray | None = None
        super().__init__(num_envs, self._core.observation_space, self._core.action_space)

    # -- SB3 VecEnv API ---------------------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Start a new batch of episodes, with the seeds and options set since the last reset (used once)."""
        seeded = False
        for i, s in enumerate(self._seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(s)
                seeded |= s is not None
        if seeded:
            self._core.restart_loss_scale()
        indices: list[int | None] = []
        for opts in self._options:
            opts = dict(opts or {})
            indices.append(opts.pop("image_index", None))
            if opts:
                raise ValueError(f"unknown reset option(s) {sorted(opts)}; the only option is 'image_index'")
        obs, self.reset_infos = self._core.reset(self._generators(), indices)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions of every episode (shape ``(num_envs, 1)``) for :meth:`step_wait`."""
        self._actions = _check_actions(actions, self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        """Run the current unit of every episode; auto-reset after the last unit."""
        if self._actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        actions, self._actions = self._actions, None
        if self._core._t < 0:
            raise RuntimeError("call reset() before step()")
        obs, rewards, terminated, infos = self._core.step(actions)
        dones = np.full(self.num_envs, terminated, dtype=bool)
        if terminated:
            for i, info in enumerate(infos):
                info["terminal_observation"] = obs[i].copy()
                info["TimeLimit.truncated"] = False
            obs, self.reset_infos = self._core.reset(self._generators(), [None] * self.num_envs)
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        """Nothing to release."""
        return None

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each episode's picture (``render_mode="rgb_array"``; otherwise ``None`` each, with a warning, as SB3)."""
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"render_mode is {self.render_mode!r}; RuntimePruningVecEnv draws images with render_mode='rgb_array'",
                stacklevel=2,
            )
            return [None] * self.num_envs
        return [frame_to_rgb(self._core.frame(i)) for i in range(self.num_envs)]

    def render(self, mode: str | None = None) -> np.ndarray | str | None:  # type: ignore[override]
        """Render every episode in the construction's ``render_mode`` (SB3's ``VecEnv.render`` conventions).

        ``"rgb_array"``: the episodes' pictures tiled into one image (SB3's ``tile_images``; ``mode="human"``
        shows it with OpenCV). ``"ansi"``: the episodes' text tables, separated by blank lines (a string, as a
        Gymnasium env's ``"ansi"`` mode). A ``mode`` other than the construction's warns and returns ``None``.
        """
        if self.render_mode == "ansi" and mode in (None, "ansi"):
            return "\n\n".join(frame_to_text(self._core.frame(i)) for i in range(self.num_envs))
        return super().render(mode)

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed sub-environment ``i`` with ``seed + i`` at the next :meth:`reset` (SB3 semantics).

        Returns:
            The seeds the next reset will use (random ones when ``seed`` is ``None``).
        """
        return super().seed(seed)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attribute of each indexed sub-environment: the shared one, or each one's ``np_random``."""
        idx = self._get_indices(indices)
        if attr_name == "np_random":
            return [self._generators()[i] for i in idx]
        value = getattr(self, attr_name)
        return [value for _ in idx]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute: shared ones for all indices at once, ``np_random`` per sub-environment.

        Raises:
            ValueError: a shared attribute set for only some sub-environments.
        """
        idx = list(self._get_indices(indices))
        if attr_name == "np_random":
            for i in idx:
                self._rngs[i] = value
            return
        if sorted(idx) != list(range(self.num_envs)):
            raise ValueError(
                f"{attr_name!r} is shared by all {self.num_envs} sub-environments of a RuntimePruningVecEnv "
                "(they run as one batch); set it for all indices (indices=None)"
            )
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a shared method once per indexed sub-environment and return the results.

        Raises:
            ValueError: a batch-wide method (``reset``, ``step``, ``close``, ``seed``, ...): call it on the VecEnv.
        """
        if method_name in self._BATCH_METHODS:
            raise ValueError(
                f"{method_name!r} acts on the whole batch of a RuntimePruningVecEnv; call venv.{method_name}() directly"
            )
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Always false: the sub-environments are rows of one batch, not wrapped Gymnasium envs."""
        return [False for _ in self._get_indices(indices)]

    def _generators(self) -> list[np.random.Generator]:
        for i, rng in enumerate(self._rngs):
            if rng is None:
                self._rngs[i], _ = seeding.np_random(None)
        return self._rngs  # type: ignore[return-value]


def _env_defaults() -> dict[str, Any]:
    """Keyword defaults of :class:`RuntimePruningEnv` (but ``render_mode``), shared by the vector env."""
    import inspect

    params = inspect.signature(RuntimePruningEnv.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "settings", "render_mode")}
