"""Rewards of PruneGym's environments: Chen et al.'s budget term and loss scale, and the reward registry.

Reward functions of both environments (:class:`envs.static.StaticPruningEnv`,
:class:`envs.runtime.RuntimePruningEnv` and its vector env, argument ``reward=``) are a registry
(:func:`register_reward`, :func:`get_reward`, :func:`list_rewards`), so a user can add their own without touching
an environment. A reward function takes one :class:`EpisodeResult` (what the pruned model scored and what it
costs) and returns ``(reward, parts)``: the reward and a dict of its named parts, which the environment reports
in ``info["reward_parts"]`` (the parts of every built-in reward sum to the reward). The static env passes floats
(one episode); the runtime env passes a batch, ``B`` episodes at once, with the per-episode fields as float64
tensors of shape ``(B,)``, and expects a tensor ``(B,)`` (or a float for every episode) back: write a reward with
arithmetic that works on both (``+ - * /``, :func:`budget_term`) and it serves both envs, one batched call per
step. Built in (each works on both):

* ``"paper"`` (both envs' default) — Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel
  Pruning via Deep Reinforcement Learning" (NeurIPS 2020, Eqs. 7-11 and 14-15):
  ``-CE / β_b`` + :func:`budget_term` on the MAC fraction + (with a parameter budget) the same term on the
  parameter fraction with no under-budget bonus. In the runtime env ``CE`` is the image's cross-entropy and the
  MAC fraction the image's (its parts ``accuracy`` and ``budget_macs``);
* ``"accuracy"`` — AMC's ``acc_reward`` (He et al., ECCV 2018, ``mit-han-lab/amc`` ``env/rewards.py``):
  top-1 (percent) × 0.01;
* ``"acc_log_macs"`` — AMC's ``acc_flops_reward``: ``-error · log(MACs)``, error in [0, 1], MACs per image in
  absolute units.

Example — a reward that trades accuracy against the MAC fraction linearly; register it with
``@register_reward("linear")`` to select it by name (``reward="linear"``), or pass the function itself
(``reward=linear``):

    >>> from envs.rewards import EpisodeResult, get_reward
    >>> def linear(result: EpisodeResult) -> tuple[float, dict[str, float]]:
    ...     parts = {"top1": result.top1 / 100, "macs": -result.macs_fraction}
    ...     return sum(parts.values()), parts
    >>> result = EpisodeResult(top1=90.0, loss=0.3, macs_fraction=0.5, params_fraction=0.6, macs=2e7,
    ...                        params=1e5, budget=0.5, param_budget=None, loss_scale=0.3)
    >>> linear(result)
    (0.4, {'top1': 0.9, 'macs': -0.5})
    >>> get_reward("paper")(result)
    (-1.0, {'accuracy': -1.0, 'budget_macs': 0.0})

The same function on a batch of two runtime episodes (tensor fields) gives a reward per episode:

    >>> import torch
    >>> batch = EpisodeResult(top1=torch.tensor([100.0, 0.0], dtype=torch.float64), loss=torch.tensor([0.1, 2.0],
    ...                       dtype=torch.float64), macs_fraction=torch.tensor([0.4, 0.6], dtype=torch.float64),
    ...                       params_fraction=1.0, macs=2e7, params=1e5, budget=0.5, param_budget=None, loss_scale=1.0)
    >>> linear(batch)[0]
    tensor([ 0.6000, -0.6000], dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeAlias, TypeVar

import torch

from pruning.registry import Registry

__all__ = [
    "EPISODE_INFO_KEYS",
    "LOSS_CAP",
    "LOSS_SCALE_FLOOR",
    "BudgetTerm",
    "EpisodeResult",
    "MeanBudgetTerm",
    "RewardFn",
    "RewardValue",
    "RunningLossScale",
    "acc_log_macs_reward",
    "accuracy_reward",
    "budget_term",
    "call_reward",
    "episode_infos",
    "get_reward",
    "list_rewards",
    "paper_reward",
    "register_reward",
    "resolve_reward",
]

T = TypeVar("T", float, torch.Tensor)
#: A reward or a reward part: a float (one episode) or a float64 tensor ``(B,)`` (a batch of runtime episodes).
RewardValue: TypeAlias = float | torch.Tensor


def budget_term(fraction: T, cap: float, *, scale: float = 1.2, temperature: float = 0.03, bonus: float = 0.1) -> T:
    """Chen et al.'s budget reward on a resource fraction ``B`` with cap ``cap`` (their released code).

    ``-scale·(exp((B - cap)/temperature) - 1)`` if ``B > cap`` (a steep penalty), else ``+bonus·(cap - B)``
    (a small bonus for staying under). The exponent is capped at 50 so the penalty stays finite (about
    -6e21·scale at most) for any input; below that cap the formula is exact.

    Args:
        fraction: ``B``, a float or a tensor of per-sample fractions.
        cap: The budget, same unit as ``B``.
        scale: Penalty scale (1.2 in the released code).
        temperature: Penalty temperature (0.03 in the released code, i.e. α1 ≈ 33.3).
        bonus: Slope of the under-budget bonus (0.1 in the released code; 0 for the static agent's param term).
    """
    if isinstance(fraction, torch.Tensor):
        over = fraction > cap
        expo = torch.clamp((fraction - cap) / temperature, max=50.0)
        return torch.where(over, -scale * torch.expm1(expo), bonus * (cap - fraction))
    if fraction > cap:
        return -scale * math.expm1(min((fraction - cap) / temperature, 50.0))
    return bonus * (cap - fraction)


@dataclass
class BudgetTerm:
    """:func:`budget_term` with its coefficients bound (an environment argument)."""

    scale: float = 1.2
    temperature: float = 0.03
    bonus: float = 0.1

    def __call__(self, fraction: T, cap: float) -> T:  # noqa: D102
        return budget_term(fraction, cap, scale=self.scale, temperature=self.temperature, bonus=self.bonus)


class MeanBudgetTerm:
    """A budget on the **mean** MAC fraction of a batch, held by a Lagrange multiplier (instead of a per-image cap).

    Chen et al.'s :class:`BudgetTerm` caps every image: all images cost about the same (measured on ResNet-20 at 0.5:
    mean 0.492, max 0.501), so an easy image cannot give its MACs to a hard one. This term charges each image
    ``-λ·(B - cap)`` (linear: spending more is worth it where it lowers the cross-entropy by more than ``λ``
    per unit of MAC fraction) and, after every call, moves ``λ`` by dual ascent on the batch mean:
    ``λ ← clip(λ + lr·(mean(B) - cap), 0, max_multiplier)``. Over many batches the mean MAC fraction settles at
    the cap while individual images spread around it; the training schedule's budget guard then makes the
    deterministic policy meet the mean budget exactly. Stateful (the multiplier), so give each env its own.

    Args:
        multiplier: Initial ``λ`` (>= 0).
        lr: Dual-ascent step (>= 0; 0 keeps ``λ`` fixed).
        max_multiplier: Upper clip of ``λ``.
    """

    def __init__(self, multiplier: float = 5.0, lr: float = 10.0, max_multiplier: float = 1000.0) -> None:
        for name, v in (("multiplier", multiplier), ("lr", lr), ("max_multiplier", max_multiplier)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        self.multiplier = float(multiplier)
        self.lr = float(lr)
        self.max_multiplier = float(max_multiplier)

    def __call__(self, fraction: T, cap: float) -> T:
        """Per-image ``-λ·(B - cap)`` with the current ``λ``; then ``λ`` takes one dual-ascent step."""
        lam = self.multiplier
        if isinstance(fraction, torch.Tensor):
            out = -lam * (fraction - cap)
            mean = float(fraction.double().mean())
        else:
            out = -lam * (fraction - cap)
            mean = float(fraction)
        self.multiplier = min(self.max_multiplier, max(0.0, lam + self.lr * (mean - cap)))
        return out  # type: ignore[return-value]


class RunningLossScale:
    """β_b of Chen et al. (Eqs. 7-9): the running mean of the cross-entropy that normalises ``-CE / β_b``.

    As in the released code: the cumulative mean of the per-batch mean loss over the first ``warmup``
    (200) batches, then an exponential moving average ``β ← decay·β + (1 - decay)·loss`` (decay 0.995).
    Before any update the scale is 1. The state round-trips through :meth:`state_dict` (plain floats).
    """

    def __init__(self, warmup: int = 200, decay: float = 0.995) -> None:
        self.warmup = warmup
        self.decay = decay
        self.count = 0
        self.value = 1.0

    def update(self, batch_mean_loss: float) -> float:
        """Fold in one batch's mean loss and return the new scale."""
        if not math.isfinite(batch_mean_loss):
            raise ValueError(f"loss is {batch_mean_loss}; the running loss scale takes finite losses only")
        self.count += 1
        if self.count == 1:
            self.value = batch_mean_loss
        elif self.count <= self.warmup:
            self.value += (batch_mean_loss - self.value) / self.count
        else:
            self.value = self.decay * self.value + (1.0 - self.decay) * batch_mean_loss
        return self.value

    def state_dict(self) -> dict[str, float | int]:  # noqa: D102
        return {"count": self.count, "value": self.value, "warmup": self.warmup, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.count, self.value = int(state["count"]), float(state["value"])
        self.warmup, self.decay = int(state["warmup"]), float(state["decay"])


@dataclass(frozen=True)
class EpisodeResult:
    """What an episode produced (static env), or a batch of ``B`` episodes (runtime env): every reward's input.

    In the static env every field is a float. In the runtime env one result holds the ``B`` episodes that end
    at the same step: the per-episode fields (``top1``, ``loss``, ``macs_fraction``, ``macs``, ``loss_scale``)
    are float64 tensors of shape ``(B,)``, and the stored structure (``params``, ``params_fraction``) is one
    float (the static plan is fixed). Every number is checked finite on construction (``ValueError``
    otherwise), so a reward built from these fields with finite arithmetic is finite too.

    Attributes:
        top1: Top-1 accuracy in percent (0..100): of the pruned model on the validation subset (static), of each
            image (runtime: 100 if it is classified correctly, else 0).
        loss: Mean cross-entropy per image (static), each image's cross-entropy (runtime); finite: the
            environments cap a non-finite loss at :data:`LOSS_CAP`.
        macs_fraction: Backbone MACs per image as a fraction of the unpruned model's (static: the mean over
            images when a runtime policy is in the loop).
        params_fraction: Stored backbone parameters as a fraction of the unpruned model's.
        macs: Backbone MACs per image, absolute (static: the mean over images with a runtime policy).
        params: Stored backbone parameters, absolute.
        budget: MAC budget as a fraction of the base MACs, or ``None`` (no MAC budget).
        param_budget: Parameter budget as a fraction of the base parameters, or ``None`` (always ``None`` in
            the runtime env).
        loss_scale: β_b, the running mean of the loss that normalises ``-CE / β_b`` (this episode included).
        budget_term: Chen et al.'s budget term (its coefficients), or the runtime env's
            :class:`MeanBudgetTerm` (stateful: call it once per result).
    """

    top1: RewardValue
    loss: RewardValue
    macs_fraction: RewardValue
    params_fraction: float
    macs: RewardValue
    params: float
    budget: float | None
    param_budget: float | None
    loss_scale: RewardValue
    budget_term: BudgetTerm | MeanBudgetTerm = field(default_factory=BudgetTerm)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                finite = bool(torch.isfinite(value).all())
            elif isinstance(value, int | float):
                finite = math.isfinite(value)
            else:
                continue
            if not finite:
                raise ValueError(f"EpisodeResult.{f.name} is {value}; every field must be finite")


#: A reward function: ``fn(result) -> (reward, parts)`` (see the module docstring for floats vs. batches).
RewardFn = Callable[[EpisodeResult], tuple[RewardValue, Mapping[str, RewardValue]]]
_REWARDS: Registry[RewardFn] = Registry("reward")

#: What both environments add to ``info`` at an episode's last step (:func:`episode_infos`), besides their own keys.
EPISODE_INFO_KEYS: tuple[str, ...] = (
    "macs",
    "macs_fraction",
    "params",
    "params_fraction",
    "top1",
    "loss",
    "loss_scale",
    "loss_capped",
    "reward_parts",
)

#: Smallest β_b the ``paper`` reward divides by: a model with zero loss would otherwise divide by zero.
LOSS_SCALE_FLOOR = 1e-8
#: A non-finite loss (logits that overflow) is replaced by this value before any reward is computed.
LOSS_CAP = 1e4


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a reward function of both environments under ``name`` (a decorator).

    The function takes an :class:`EpisodeResult` and returns ``(reward, parts)``: floats for a static episode,
    float64 tensors ``(B,)`` for a batch of runtime episodes (see the module docstring). An environment refuses
    a non-finite reward with a ``ValueError`` naming the function.

    Raises:
        ValueError: a reward named ``name`` is already registered.
    """
    return _REWARDS.register(name)


def list_rewards() -> list[str]:
    """Names of the registered reward functions, sorted."""
    return _REWARDS.names()


def get_reward(name: str) -> RewardFn:
    """The reward function registered as ``name``.

    Raises:
        ValueError: ``name`` is unknown; the message suggests close matches and lists every registered name.
    """
    return _REWARDS.get(name)


def resolve_reward(reward: str | RewardFn) -> tuple[RewardFn, str]:
    """An environment's ``reward=`` argument as ``(function, name)``: a registered name or a callable.

    Raises:
        ValueError: an unknown name (with close matches).
        TypeError: ``reward`` is neither a name nor a callable.
    """
    if isinstance(reward, str):
        return get_reward(reward), reward
    if callable(reward):
        return reward, getattr(reward, "__name__", type(reward).__name__)
    raise TypeError(f"reward must be a registered name or a callable, got {type(reward).__name__}")


def call_reward(fn: RewardFn, name: str, result: EpisodeResult) -> tuple[RewardValue, dict[str, RewardValue]]:
    """``fn(result)``, checked: the reward (a float, or one value per episode) must be finite.

    Raises:
        ValueError: a non-finite reward, naming the function ``name`` and the result.
    """
    reward, parts = fn(result)
    if not bool(torch.isfinite(torch.as_tensor(reward, dtype=torch.float64)).all()):  # a float, tensor or array
        raise ValueError(f"reward function {name!r} returned {reward} for {result}; rewards must be finite")
    return reward, dict(parts)


def episode_infos(
    result: EpisodeResult, parts: Mapping[str, RewardValue], loss_capped: bool | Sequence[bool], num: int
) -> list[dict[str, Any]]:
    """The ``info`` entries both environments report at an episode's end (:data:`EPISODE_INFO_KEYS`).

    One dict per episode of ``result`` (``num``: 1 for the static env, ``B`` for a runtime batch): the costs
    (``macs``, ``macs_fraction``, ``params`` (an int), ``params_fraction``), ``top1``, ``loss``, ``loss_scale``,
    ``loss_capped`` and ``reward_parts`` (a dict of floats), every value a plain Python number.
    """

    def column(value: RewardValue) -> list[float]:
        return torch.as_tensor(value, dtype=torch.float64).expand(num).tolist()

    cols = {k: column(getattr(result, k)) for k in ("macs", "macs_fraction", "params_fraction", "top1", "loss")}
    scale = column(result.loss_scale)
    capped = [bool(loss_capped)] * num if isinstance(loss_capped, bool) else [bool(c) for c in loss_capped]
    part_cols = {k: column(v) for k, v in parts.items()}
    return [
        {
            **{k: v[i] for k, v in cols.items()},
            "params": int(result.params),
            "loss_scale": scale[i],
            "loss_capped": capped[i],
            "reward_parts": {k: v[i] for k, v in part_cols.items()},
        }
        for i in range(num)
    ]


def _plain(value: Any) -> RewardValue:
    """A tensor as it is, anything else (a float, a numpy scalar) as a Python float."""
    return value if isinstance(value, torch.Tensor) else float(value)


@register_reward("paper")
def paper_reward(result: EpisodeResult) -> tuple[RewardValue, dict[str, RewardValue]]:
    """Chen et al.'s reward (Eqs. 7-11 runtime, 14-15 static; released code): accuracy term + budget terms.

    Parts (their sum is the reward):

    * ``accuracy`` = ``-loss / max(loss_scale, LOSS_SCALE_FLOOR)``;
    * ``budget_macs`` = ``result.budget_term(macs_fraction, budget)`` (steep penalty over, small bonus under);
      absent without a MAC budget;
    * ``budget_params`` = the same penalty on ``params_fraction`` against ``param_budget`` with no bonus
      (the released code's parameter term); absent without a parameter budget.

    The penalty's exponent is capped (:func:`budget_term`), so the reward is finite for any finite result.
    Floats give floats; a runtime batch gives tensors (one value per episode, ``budget_term`` called once).

    Raises:
        TypeError: a parameter budget with a :class:`MeanBudgetTerm` (the parameter term takes
            :class:`BudgetTerm`'s coefficients).
    """
    loss, scale = result.loss, result.loss_scale
    if isinstance(scale, torch.Tensor):
        parts: dict[str, RewardValue] = {"accuracy": -loss / scale.clamp(min=LOSS_SCALE_FLOOR)}
    else:
        parts = {"accuracy": -loss / max(scale, LOSS_SCALE_FLOOR)}
    term = result.budget_term
    if result.budget is not None:
        parts["budget_macs"] = _plain(term(result.macs_fraction, result.budget))  # type: ignore[type-var]
    if result.param_budget is not None:
        if not isinstance(term, BudgetTerm):
            raise TypeError(f"a parameter budget needs a BudgetTerm's coefficients, got {type(term).__name__}")
        parts["budget_params"] = float(
            budget_term(
                result.params_fraction, result.param_budget, scale=term.scale, temperature=term.temperature, bonus=0.0
            )
        )
    return _plain(sum(parts.values())), parts


@register_reward("accuracy")
def accuracy_reward(result: EpisodeResult) -> tuple[RewardValue, dict[str, RewardValue]]:
    """AMC's ``acc_reward``: top-1 (percent) × 0.01, no budget term (AMC enforces the budget by its action wall).

    Use it with ``budget_mode="clamp"``; under ``"penalty"``, or in the runtime env (which has no wall), nothing
    would stop the agent from keeping every channel.
    """
    acc = 0.01 * result.top1
    return acc, {"accuracy": acc}


@register_reward("acc_log_macs")
def acc_log_macs_reward(result: EpisodeResult) -> tuple[RewardValue, dict[str, RewardValue]]:
    """AMC's ``acc_flops_reward``: ``-error · log(MACs)``, error = ``1 - top1/100``, MACs per image, absolute.

    ``log`` is taken of ``max(MACs, 1)`` so it is finite. Fewer MACs and fewer errors both raise the reward,
    so this reward pushes below the budget without a wall; AMC pairs it with its wall all the same.
    """
    error = 1.0 - 0.01 * result.top1
    macs = result.macs
    log_macs = torch.log(macs.clamp(min=1.0)) if isinstance(macs, torch.Tensor) else math.log(max(macs, 1.0))
    value = -error * log_macs
    return value, {"acc_log_macs": value}
