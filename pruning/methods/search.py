"""What a budget search over training runs returns (polarization's (λ, t) search, gRDA's ``c`` search)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from torch import nn

__all__ = ["SearchResult"]

TrialT = TypeVar("TrialT")


@dataclass
class SearchResult(Generic[TrialT]):
    """The trained copy closest to the target and every trial of a search, in order.

    ``TrialT`` is the search's own record of one run (its hyperparameters and the MAC fraction it reached).
    """

    model: nn.Module
    """The trained copy of the best trial (not yet pruned)."""
    best: TrialT
    """The trial closest to the target."""
    trials: list[TrialT] = field(default_factory=list)
    """All trials, in order."""
    hit: bool = False
    """Whether the best trial is within the tolerance the search was run with."""
