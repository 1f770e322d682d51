"""Rewards of PruneGym's environments: Chen et al.'s budget term and loss scale, and the static reward registry.

Reward functions of :class:`envs.static.StaticPruningEnv` are a registry (:func:`register_reward`,
:func:`get_reward`, :func:`list_rewards`), so a user can add their own without touching the environment. A
reward function takes one :class:`EpisodeResult` (what the pruned model scored on the validation subset and
what it costs) and returns ``(reward, parts)``: the float reward and a dict of its named parts, which the
environment reports in ``info["reward_parts"]``. Built in:

* ``"paper"`` — Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel Pruning via Deep
  Reinforcement Learning" (NeurIPS 2020, Eqs. 7-11 and 14-15):
  ``-CE / β_b`` + :func:`budget_term` on the MAC fraction + (with a parameter budget) the same term on the
  parameter fraction with no under-budget bonus;
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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import torch

from pruning.registry import Registry

__all__ = [
    "LOSS_CAP",
    "LOSS_SCALE_FLOOR",
    "BudgetTerm",
    "EpisodeResult",
    "MeanBudgetTerm",
    "RewardFn",
    "RunningLossScale",
    "acc_log_macs_reward",
    "accuracy_reward",
    "budget_term",
    "get_reward",
    "list_rewards",
    "paper_reward",
    "register_reward",
]

T = TypeVar("T", float, torch.Tensor)


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
    """What one static-pruning episode produced: the input of every reward function.

    Every number is checked finite on construction (``ValueError`` otherwise), so a reward built from these
    fields with finite arithmetic is finite too.

    Attributes:
        top1: Top-1 accuracy of the pruned model on the validation subset, in percent (0..100).
        loss: Its mean cross-entropy per image (finite; the environment caps a non-finite loss, see
            :class:`envs.static.StaticPruningEnv`).
        macs_fraction: Backbone MACs per image as a fraction of the unpruned model's (the mean over images
            when a runtime policy is in the loop).
        params_fraction: Stored backbone parameters as a fraction of the unpruned model's.
        macs: Backbone MACs per image, absolute (mean over images with a runtime policy).
        params: Stored backbone parameters, absolute.
        budget: MAC budget as a fraction of the base MACs, or ``None`` (no MAC budget).
        param_budget: Parameter budget as a fraction of the base parameters, or ``None``.
        loss_scale: β_b, the running mean of the loss that normalises ``-CE / β_b`` (this episode included).
        budget_term: Coefficients of Chen et al.'s budget term (scale, temperature, under-budget bonus).
    """

    top1: float
    loss: float
    macs_fraction: float
    params_fraction: float
    macs: float
    params: float
    budget: float | None
    param_budget: float | None
    loss_scale: float
    budget_term: BudgetTerm = field(default_factory=BudgetTerm)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not math.isfinite(value):
                raise ValueError(f"EpisodeResult.{f.name} is {value}; every field must be finite")


#: A static-environment reward: ``fn(result) -> (reward, parts)``.
RewardFn = Callable[[EpisodeResult], tuple[float, dict[str, float]]]
_REWARDS: Registry[RewardFn] = Registry("reward")

#: Smallest β_b the ``paper`` reward divides by: a model with zero loss would otherwise divide by zero.
LOSS_SCALE_FLOOR = 1e-8
#: A non-finite loss (logits that overflow) is replaced by this value before any reward is computed.
LOSS_CAP = 1e4


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a static-environment reward function under ``name`` (a decorator).

    The function takes an :class:`EpisodeResult` and returns ``(reward, parts)`` (float, dict of named
    floats). The environment refuses a non-finite reward with a ``ValueError`` naming the function.

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


@register_reward("paper")
def paper_reward(result: EpisodeResult) -> tuple[float, dict[str, float]]:
    """Chen et al.'s static-agent reward (Eqs. 14-15, released code): accuracy term + budget terms.

    Parts:

    * ``accuracy`` = ``-loss / max(loss_scale, LOSS_SCALE_FLOOR)``;
    * ``budget_macs`` = ``result.budget_term(macs_fraction, budget)`` (steep penalty over, small bonus under);
      absent without a MAC budget;
    * ``budget_params`` = the same penalty on ``params_fraction`` against ``param_budget`` with no bonus
      (the released code's parameter term); absent without a parameter budget.

    The penalty's exponent is capped (:func:`budget_term`), so the reward is finite for any finite result.
    """
    parts = {"accuracy": -result.loss / max(result.loss_scale, LOSS_SCALE_FLOOR)}
    term = result.budget_term
    if result.budget is not None:
        parts["budget_macs"] = float(term(result.macs_fraction, result.budget))
    if result.param_budget is not None:
        parts["budget_params"] = float(
            budget_term(
                result.params_fraction, result.param_budget, scale=term.scale, temperature=term.temperature, bonus=0.0
            )
        )
    return float(sum(parts.values())), parts


@register_reward("accuracy")
def accuracy_reward(result: EpisodeResult) -> tuple[float, dict[str, float]]:
    """AMC's ``acc_reward``: top-1 (percent) × 0.01, no budget term (AMC enforces the budget by its action wall).

    Use it with ``budget_mode="clamp"``; under ``"penalty"`` nothing would stop the agent from keeping every
    channel.
    """
    acc = 0.01 * result.top1
    return acc, {"accuracy": acc}


@register_reward("acc_log_macs")
def acc_log_macs_reward(result: EpisodeResult) -> tuple[float, dict[str, float]]:
    """AMC's ``acc_flops_reward``: ``-error · log(MACs)``, error = ``1 - top1/100``, MACs per image, absolute.

    ``log`` is taken of ``max(MACs, 1)`` so it is finite. Fewer MACs and fewer errors both raise the reward,
    so this reward pushes below the budget without a wall; AMC pairs it with its wall all the same.
    """
    error = 1.0 - 0.01 * result.top1
    value = -error * math.log(max(result.macs, 1.0))
    return value, {"acc_log_macs": value}
