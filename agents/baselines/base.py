"""The baseline policy protocol, the baseline registry and what a baseline reads of an environment.

A baseline is a fixed rule that gives every prunable unit a keep ratio. It implements stable-baselines3's
``PolicyPredictor`` protocol (``predict(observation, state, episode_start, deterministic) -> (action,
state)``), so ``stable_baselines3.common.evaluation.evaluate_policy`` scores a baseline with the same code
as a trained agent. Before it predicts, :meth:`BaselinePolicy.prepare` reads the environment (its units,
its cost model and its budget) and solves the per-unit keep counts once; ``predict`` then only reads the
unit index from the observation and returns that unit's action.

Budgets: a baseline meets the env's MAC budget and, in the static env, its parameter budget too
(``param_budget``): :func:`pruning.budget.solve_budget` (re-exported here) costs every candidate allocation
exactly on both axes through :class:`PruningTarget`. After the episode, :meth:`BaselinePolicy.transform` turns
the plan into the model that is scored (plain slicing by default; Neuron Merging compensates the pruned
channels instead).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from agents.unwrap import pruning_target, unwrap_env
from envs import RUNTIME_ENV_ID, STATIC_ENV_ID
from envs.common import TargetSpec
from pruning.accounting import Cost, CostModel
from pruning.budget import solve_budget
from pruning.criteria import Criterion
from pruning.export import export_static
from pruning.plan import PruningPlan, keep_count
from pruning.registry import Registry
from pruning.units import Unit

__all__ = [
    "BaselinePolicy",
    "BuiltModel",
    "PruningTarget",
    "TrainContext",
    "TrainedBaseline",
    "baseline_class",
    "get_baseline",
    "list_baselines",
    "register_baseline",
    "solve_budget",
]

B = TypeVar("B", bound=type["BaselinePolicy"])

_BASELINES: Registry[type[BaselinePolicy]] = Registry("baseline")


def register_baseline(name: str) -> Callable[[B], B]:
    """Register a :class:`BaselinePolicy` subclass under ``name`` (a class decorator; sets ``cls.name``).

    Raises:
        ValueError: a baseline named ``name`` is already registered.
    """

    def wrapper(cls: B) -> B:
        _BASELINES.add(name, cls)
        cls.name = name
        return cls

    return wrapper


def list_baselines() -> list[str]:
    """Names of the registered baselines, sorted."""
    return _BASELINES.names()


def baseline_class(name: str) -> type[BaselinePolicy]:
    """The class registered as ``name`` (to read its class attributes without building it).

    Raises:
        ValueError: ``name`` is unknown; the message suggests close matches and lists every registered name.
    """
    return _BASELINES.get(name)


def get_baseline(name: str, **kwargs: Any) -> BaselinePolicy:
    """Build the baseline registered as ``name`` with ``kwargs`` (e.g. ``get_baseline("l1", allocation="global")``).

    Raises:
        ValueError: ``name`` is unknown; the message suggests close matches and lists every registered name.
    """
    return _BASELINES.get(name)(**kwargs)


@dataclass(frozen=True)
class PruningTarget:
    """What a baseline needs to know of an environment: its :class:`envs.common.TargetSpec` and its live objects.

    The plain data (kind, channels, budgets, ``min_keep``, action size, R_r, criterion) is the env's answer to
    ``pruning_target()``, held as :attr:`spec`; the attributes below read it (``target.budget`` is
    ``target.spec.budget``), with the per-unit tuples as int64 arrays. What plain data cannot carry is held
    beside it: the env's model (criteria score it) and its cost model (every allocation is costed exactly).
    Build one with :meth:`of` (from an env) or :meth:`of_model` (a plain model, without an env).

    Attributes:
        spec: The env's answer to ``pruning_target()`` (plain data; it pickles and compares by value).
        model: The env's gated copy of the model (criteria score it).
        cost_model: The env's :class:`pruning.accounting.CostModel` (its units are :attr:`units`).
    """

    spec: TargetSpec
    model: nn.Module
    cost_model: CostModel

    # -- the spec's plain data, as baselines read it -----------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"static"`` (:data:`envs.STATIC_ENV_ID`) or ``"runtime"`` (:data:`envs.RUNTIME_ENV_ID`)."""
        return self.spec.kind

    @cached_property
    def channels(self) -> np.ndarray:
        """Full output channels per unit, int64 ``(L,)`` (read-only)."""
        return _frozen_array(self.spec.channels)

    @cached_property
    def stored(self) -> np.ndarray:
        """Stored channels per unit, int64 ``(L,)`` (read-only).

        The runtime env's fixed static plan; all channels for the static env, whose stored counts are the plan.
        """
        return _frozen_array(self.spec.stored)

    @cached_property
    def min_counts(self) -> np.ndarray:
        """Fewest channels an action can keep per unit (``keep_count(min_keep, C)``), int64 ``(L,)`` (read-only)."""
        return _frozen_array(int(keep_count(self.spec.min_keep, int(c))) for c in self.spec.channels)

    @property
    def min_keep(self) -> float:
        """The env's smallest keep ratio."""
        return self.spec.min_keep

    @property
    def budget(self) -> float | None:
        """The env's MAC budget (fraction of the base MACs), or ``None``."""
        return self.spec.budget

    @property
    def param_budget(self) -> float | None:
        """The static env's parameter budget (fraction of the base backbone parameters), or ``None``.

        Always ``None`` for the runtime env, whose stored channels are fixed.
        """
        return self.spec.param_budget

    @property
    def action_dim(self) -> int:
        """Size of the env's action (2 for a static env with ``learn_split``)."""
        return self.spec.action_dim

    @property
    def tradeoff(self) -> float:
        """The env's R_r."""
        return self.spec.tradeoff

    @property
    def criterion(self) -> str | None:
        """The static env's channel criterion (its name), or ``None`` (the runtime env; a target without an env)."""
        return self.spec.criterion

    @property
    def num_units(self) -> int:
        """L: the number of prunable units."""
        return self.spec.num_units

    @property
    def units(self) -> list[Unit]:
        """The prunable units, in order (the cost model's)."""
        return list(self.cost_model.units)

    # -- exact costs -------------------------------------------------------------------------------------------
    def cost(self, counts: np.ndarray) -> Cost:
        """Exact cost when unit ``t`` keeps ``counts[t]`` channels (static env: also stores only those)."""
        keep = np.minimum(np.asarray(counts, dtype=np.int64), self.stored)
        stored = keep if self.kind == "static" else self.stored
        return self.cost_model.from_counts(torch.from_numpy(keep)[None], torch.from_numpy(np.array(stored)))

    def macs_fraction(self, counts: np.ndarray) -> float:
        """MAC fraction of the base model when unit ``t`` keeps ``counts[t]`` channels (exact, per image)."""
        return float(self.cost(counts).macs_fraction[0])

    def params_fraction(self, counts: np.ndarray) -> float:
        """Stored backbone parameters over the base model's for these keep counts (as the static env costs them)."""
        return self.cost(counts).params_fraction

    def fits(self, counts: np.ndarray, budget: float | None) -> bool:
        """Whether ``counts`` meet the MAC ``budget`` (``None``: no MAC budget) and :attr:`param_budget`."""
        cost = self.cost(counts)
        if budget is not None and float(cost.macs_fraction[0]) > budget + 1e-12:
            return False
        return self.param_budget is None or cost.params <= self.param_budget * cost.base_params * (1 + 1e-12)

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def of(cls, env: Any) -> PruningTarget:
        """Read a static or runtime env, a wrapped one, or a ``VecEnv`` of them (the first env is read).

        The plain data is the env's ``pruning_target()`` (:func:`agents.unwrap.pruning_target`); the model and
        its cost model are the env's own objects, so the env must live in this process (not in a
        ``SubprocVecEnv``'s workers).

        Raises:
            TypeError: ``env`` is none of those, or its envs live in other processes (use a ``DummyVecEnv``).
            ValueError: the env's setting is one the baselines cannot cost exactly (see the message).
        """
        try:
            spec = pruning_target(env)
        except TypeError as err:
            raise TypeError(
                f"baselines run in {STATIC_ENV_ID} or {RUNTIME_ENV_ID} (or a VecEnv of them); got "
                f"{type(env).__name__} ({err})"
            ) from err
        if spec.runtime_in_loop:
            raise ValueError(
                "baselines choose static keep ratios for a StaticPruningEnv without a runtime policy in the loop "
                "(runtime=None); build the env without runtime= to evaluate a baseline"
            )
        if spec.kind == "runtime" and spec.tradeoff != 1.0:
            raise ValueError(
                f"baselines cost the runtime env exactly only for pure runtime pruning (R_r = 1); this env has "
                f"R_r = {spec.tradeoff}. Build it with static_keep=None (or tradeoff=1)"
            )
        inner = unwrap_env(env)  # the live model: criteria score it
        return cls(spec=spec, model=inner.model, cost_model=inner.cost_model)

    @classmethod
    def of_model(
        cls,
        model: nn.Module,
        budget: float | None,
        *,
        min_keep: float = 0.0,
        param_budget: float | None = None,
        criterion: str | None = None,
    ) -> PruningTarget:
        """A static target on a plain (or gated) ``model`` without an env: every channel stored, R_r = 0.

        What a method that prunes outside the envs (e.g. a training-based baseline's own plan) solves its keep
        counts on. The spec is what a :data:`envs.STATIC_ENV_ID` env on ``model`` would answer for these budgets
        (a one-number action; ``budget_index`` -1: there is no observation).

        Args:
            model: The model to cost (:class:`pruning.accounting.CostModel` is built on it).
            budget: MAC budget (fraction of the model's MACs), or ``None``.
            min_keep: The smallest keep ratio; the default 0 keeps at least one channel per unit.
            param_budget: Parameter budget (fraction of the backbone parameters), or ``None``.
            criterion: The channel criterion the counts are meant for (a name, or ``None``).
        """
        cost_model = CostModel(model)
        channels = tuple(int(c) for c in cost_model.channels.tolist())
        spec = TargetSpec(
            kind="static", channels=channels, stored=channels, min_keep=float(min_keep), budget=budget,
            param_budget=param_budget, budget_index=-1, action_dim=1, tradeoff=0.0, criterion=criterion,
            runtime_in_loop=False, macs=cost_model.mac_coefficients(),
        )  # fmt: skip
        return cls(spec=spec, model=model, cost_model=cost_model)


def _frozen_array(values: Iterable[int]) -> np.ndarray:
    """An int64 array that cannot be written (a target's counts are shared by every allocation that reads them)."""
    out = np.array(list(values), dtype=np.int64)
    out.setflags(write=False)
    return out


#: The env id of each kind of :class:`PruningTarget` (for messages).
_ENV_IDS = {"static": STATIC_ENV_ID, "runtime": RUNTIME_ENV_ID}


class BaselinePolicy(abc.ABC):
    """A fixed per-unit keep-ratio rule, usable wherever a trained agent's ``predict`` is.

    Subclasses implement :meth:`allocate` (keep counts per unit that meet the budget); this class turns them
    into actions and reads the unit index from observations. Call :meth:`prepare` with the env before
    :meth:`predict`; prepare again when the env's budget changes. Three hooks say how the plan becomes a
    model, each with a default that fits plain keep-ratio rules:

    * :meth:`channel_criterion`: the criterion the static env must be built with (which channels are kept);
    * :meth:`transform`: the scored model from the base model and the episode's plan (default: slicing);
    * :attr:`stochastic`: whether the plan depends on a ``seed=`` (``agents.compare`` repeats it over seeds).

    Budgets: the MAC budget is ``budget`` or the env's; the static env's ``param_budget`` is met as well. An
    env with only a parameter budget (``budget=None``) is solved for that alone.

    Args:
        budget: MAC budget (fraction of the base model's MACs) to meet; ``None`` (default) uses the env's.

    Attributes:
        name: The registry name (set by :func:`register_baseline`).
        criterion: The channel criterion the static env should be built with (a :mod:`pruning.criteria` name),
            or ``None`` for the env's default. Only the static env ranks channels by it; in the runtime env
            channels are ranked by ``u_r`` whatever the baseline.
        env_kinds: Where the baseline acts: ``"static"`` (:class:`envs.static.StaticPruningEnv`, static keep
            ratios) and/or ``"runtime"`` (:class:`envs.runtime.RuntimePruningEnv`, runtime ratios).
            :meth:`prepare` refuses the others.
    """

    name: ClassVar[str] = ""
    criterion: str | None = None
    env_kinds: ClassVar[frozenset[str]] = frozenset({"static", "runtime"})

    def __init__(self, *, budget: float | None = None) -> None:
        if budget is not None and not (0.0 < float(budget) <= 1.0):
            raise ValueError(f"budget must be a MAC fraction in (0, 1], or None for the env's; got {budget}")
        self.budget = None if budget is None else float(budget)
        self._target: PruningTarget | None = None
        self._actions: np.ndarray | None = None
        self.keep_counts: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, criterion={self.criterion!r}, budget={self.budget})"

    # -- to override ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def allocate(self, target: PruningTarget, budget: float) -> np.ndarray:
        """Keep counts per unit, int64 ``(L,)`` within ``[min_counts, channels]``, that meet the budgets.

        ``budget`` is the MAC budget (1.0 when the env has only a parameter budget); the parameter budget is
        ``target.param_budget``. :func:`solve_budget` meets both.
        """

    @property
    def stochastic(self) -> bool:
        """Whether the plan depends on a seed: then the constructor takes ``seed=`` and compare repeats it."""
        return False

    def channel_criterion(self, calibration: torch.Tensor | None = None) -> str | Criterion | None:
        """The channel criterion to build the static env with (``StaticPruningEnv(criterion=...)``).

        Args:
            calibration: Normalised images the criterion may bind (data-driven criteria such as PFP's
                sensitivity use the first few); ignored by weight-based criteria.

        Returns:
            :attr:`criterion` by default (a registered name, or ``None`` for the env's default).
        """
        del calibration
        return self.criterion

    def transform(self, base: nn.Module, plan: PruningPlan) -> nn.Module:
        """The pruned model to score: ``plan`` applied to the plain ``base`` model (never modified).

        ``plan`` is the episode's (:meth:`envs.static.StaticPruningEnv.final_plan`). The default slices the kept
        channels out (:func:`pruning.export.export_static`); a method that edits the remaining weights (Neuron
        Merging) overrides it.
        """
        return export_static(base, plan)

    # -- the protocol --------------------------------------------------------------------------------------
    def prepare(self, env: Any) -> BaselinePolicy:
        """Read ``env`` (static or runtime, wrapped, or a VecEnv of them) and solve the keep counts; return self.

        Raises:
            ValueError: the env is of a kind this baseline does not act in (:attr:`env_kinds`), it ranks
                channels by another criterion, no budget is given (here or by the env), or the budgets cannot
                be met.
            TypeError: ``env`` is not a PruneGym environment, or its envs live in other processes (a
                ``SubprocVecEnv``: a baseline reads the env's model; use a ``DummyVecEnv``).
        """
        target = PruningTarget.of(env)
        if target.kind not in self.env_kinds:
            kinds = sorted(self.env_kinds)
            raise ValueError(
                f"{self.name!r} is a {'/'.join(kinds)} baseline: it acts only in "
                f"{' or '.join(_ENV_IDS[k] for k in kinds)}, not in a {target.kind} env"
                + ("; use 'uniform' for a static plan" if kinds == ["runtime"] else "")
            )
        budget = self.budget if self.budget is not None else target.budget
        if budget is None and target.param_budget is None:
            raise ValueError("no budget: pass budget= to the baseline or give the env a budget / param_budget")
        budget = 1.0 if budget is None else budget  # a parameter budget alone: every MAC fraction is allowed
        if self.criterion is not None and target.kind == "static":
            if target.criterion != self.criterion:
                raise ValueError(
                    f"baseline {self.name!r} ranks channels by {self.criterion!r} but the env uses "
                    f"{target.criterion!r}; build the env with criterion={self.criterion!r} (baseline.criterion)"
                )
        counts = np.asarray(self.allocate(target, budget), dtype=np.int64)
        if counts.shape != (target.num_units,):
            raise ValueError(
                f"{type(self).__name__}.allocate returned shape {counts.shape}, expected ({target.num_units},)"
            )
        self._target, self.keep_counts = target, counts
        self._actions = np.stack(
            [self._action(target, int(k), int(c)) for k, c in zip(counts, target.channels, strict=True)]
        )
        return self

    def keep_ratios(self) -> list[float]:
        """The prepared keep ratio of every unit (kept / full channels)."""
        if self._target is None or self.keep_counts is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare(env) first")
        return [int(k) / int(c) for k, c in zip(self.keep_counts, self._target.channels, strict=True)]

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The action of the unit the observation is at (a batch of observations gives a batch of actions).

        Args:
            observation: One observation ``(D,)`` or a batch ``(N, D)`` of the prepared env (not normalised:
                the unit index is read from it).
            state: Unused (baselines have no recurrent state); returned as is.
            episode_start: Unused.
            deterministic: Unused (baselines are deterministic once prepared).

        Returns:
            ``(actions, state)``: actions ``(action_dim,)`` or ``(N, action_dim)``, float32.

        Raises:
            RuntimeError: :meth:`prepare` was not called.
        """
        del episode_start, deterministic
        if self._target is None or self._actions is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare(env) before predict (it reads the env's units)")
        if isinstance(observation, dict):
            raise TypeError("PruneGym observations are arrays, not dicts")
        obs = np.asarray(observation, dtype=np.float64)
        batch = obs.ndim == 2
        obs2 = np.atleast_2d(obs)
        # static env: entry 0 is the unit index min-max normalised over units (t / (L - 1));
        # runtime env: entry -3 is t / (L - 1)
        pos = obs2[:, 0] if self._target.kind == "static" else obs2[:, -3]
        last = self._target.num_units - 1
        t = np.clip(np.rint(pos * last), 0, last).astype(np.int64)
        actions = self._actions[t]
        return (actions if batch else actions[0]), state

    @staticmethod
    def _action(target: PruningTarget, k: int, c: int) -> np.ndarray:
        """The action that keeps ``k`` of ``c`` channels (and, with ``learn_split``, the env's R_r)."""
        # aim at the middle of the ratio interval that keeps k ((k-1)/C, k/C]: float32 noise cannot shift the count
        ratio = (k - 0.5) / c
        span = 1.0 - target.min_keep
        if k >= c or span <= 0:
            a = 1.0
        elif ratio <= target.min_keep:
            a = -1.0
        else:
            a = 2.0 * (ratio - target.min_keep) / span - 1.0
        out = [a]
        if target.action_dim == 2:
            out.append(2.0 * target.tradeoff - 1.0)
        return np.asarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# Training-based baselines: methods that change the weights (or the layers) before they are scored
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainContext:
    """What a training-based baseline may use to build its pruned model (the same for every method).

    Attributes:
        train_set: Training split, normalised for the base model (:func:`pruning.train.dataset_for_model`).
        val_set: Validation split (model selection, calibration); never the test split.
        budget: The MAC budget (fraction of the base model's MACs per image) the method should aim at.
        seed: Seeds the method's data order and any sampling.
        epochs: The shared short training budget, in passes over ``train_set`` (fractions allowed, e.g. 0.25
            trains on a quarter of an epoch's batches). Every training-based method gets the same value.
        device: Where to train.
        progress: Show progress bars.
        teacher: Distil from this model (the unpruned base) in the method's weight training, with weight
            ``distill`` and temperature ``distill_temperature`` (:func:`pruning.train.distillation_loss`);
            ``distill = 0`` (default) trains on labels only. Methods that train CNN weights pass it on.
        distill: Weight of the distillation term, in ``[0, 1]``.
        distill_temperature: Its softmax temperature.
    """

    train_set: Any
    val_set: Any
    budget: float
    seed: int = 0
    epochs: float = 1.0
    device: str = "cpu"
    progress: bool = False
    teacher: nn.Module | None = None
    distill: float = 0.0
    distill_temperature: float = 4.0

    @property
    def distill_weight(self) -> float:
        """``distill`` when there is a teacher, else 0 (what :class:`pruning.train.TrainConfig` takes)."""
        return self.distill if self.teacher is not None else 0.0


@dataclass
class BuiltModel:
    """A training-based baseline's result: the model to score and its costs, measured as the method defines.

    Attributes:
        model: The pruned (and trained) model, evaluated as is in eval mode on val and test, and timed.
        macs_fraction: MACs per image over the base model's (for per-input methods, the measured mean).
        params_fraction: Stored parameters over the base model's.
        keep_ratios: Per-unit static keep ratios when the method yields a channel plan, else ``None``.
        train_seconds: Wall time of the method's training.
        info: Extra plain values to report (e.g. unstructured sparsity, gate rate, the threshold chosen).
    """

    model: nn.Module
    macs_fraction: float
    params_fraction: float
    keep_ratios: list[float] | None = None
    train_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class TrainedBaseline(BaselinePolicy):
    """A baseline that trains (its regulariser, control factors, gates or optimizer) before it prunes.

    Such a method changes the weights or the layers, so it cannot act in an env whose model is fixed: it is
    scored by :mod:`agents.compare` through :meth:`build`, which returns the pruned model and its costs.
    ``prepare``/``predict`` raise with that explanation.
    """

    trains: ClassVar[bool] = True

    @property
    def stochastic(self) -> bool:
        """Training depends on ``TrainContext.seed`` (data order), so compare repeats the method over seeds."""
        return True

    @abc.abstractmethod
    def build(self, base: nn.Module, context: TrainContext) -> BuiltModel:
        """Train on ``context`` starting from a copy of ``base`` (never modified) and return the pruned model."""

    def measure(self, model: nn.Module, base: nn.Module, context: TrainContext) -> float | None:
        """The MAC fraction of a built ``model`` after its weights changed (e.g. ``compare``'s fine-tune).

        Methods whose MACs depend on the weights (Channel Gating: on the gate rates) measure again on
        ``context``; ``None`` (the default) means the MACs are fixed by the layers and ``build``'s figure stands.
        """
        return None

    def allocate(self, target: PruningTarget, budget: float) -> np.ndarray:  # noqa: D102
        raise TypeError(
            f"{self.name!r} is a training-based method: it changes the weights, so it does not act in an env with a "
            "fixed model. Score it with agents.compare (prunegym compare), which calls its build()"
        )
