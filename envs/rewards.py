"""Reward pieces shared by PruneGym's environments: paper 7's budget term and its running loss scale.

Reward functions of the static environment are a registry (:func:`register_reward`, :func:`get_reward`), so a
user can add their own without touching the environment.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = [
    "BudgetTerm",
    "RunningLossScale",
    "budget_term",
    "get_reward",
    "list_rewards",
    "register_reward",
]

T = TypeVar("T", float, torch.Tensor)


def budget_term(fraction: T, cap: float, *, scale: float = 1.2, temperature: float = 0.03, bonus: float = 0.1) -> T:
    """Paper 7's budget reward on a resource fraction ``B`` with cap ``cap`` (released code, methods.md §7.3).

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


class RunningLossScale:
    """β_b of paper 7 (Eqs. 7-9): the running mean of the cross-entropy that normalises ``-CE / β_b``.

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


RewardFn = Callable[..., Any]
_REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a static-environment reward function under ``name`` (duplicates raise ``ValueError``)."""

    def wrapper(fn: RewardFn) -> RewardFn:
        if name in _REWARDS:
            raise ValueError(f"a reward named {name!r} is already registered")
        _REWARDS[name] = fn
        return fn

    return wrapper


def list_rewards() -> list[str]:
    """Names of the registered reward functions."""
    return sorted(_REWARDS)


def get_reward(name: str) -> RewardFn:
    """The reward function registered as ``name``; unknown names suggest close matches."""
    try:
        return _REWARDS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REWARDS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown reward {name!r}.{hint} Registered: {', '.join(list_rewards())}") from None
