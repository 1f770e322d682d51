"""Provable Filter Pruning (Liebenwein, Baykal, Lang, Feldman & Rus, ICLR 2020) as a keep-count baseline.

PFP scores every output channel of a unit by its empirical sensitivity ``s_j`` on a calibration batch
(criterion ``"pfp_sensitivity"``, :mod:`pruning.criteria.pfp`), samples channels with probability
``p_j = s_j / S`` (``S = Σ_j s_j``) and draws, for a relative error ``ε``,

    m(ε) = ⌈3 · (6 + 2ε) · S / ε²⌉

samples per unit. One global ``ε`` is solved for the MAC budget: a unit keeps the expected number of unique
channels in ``m(ε)`` draws, ``Σ_j (1 − (1 − p_j)^m)`` (rounded up), or, in the deterministic variant
(``PFPTop``), the channels with ``p_j ≥ 1/m``. A smaller ``ε`` keeps more channels in every unit, so the
bisection finds the smallest ``ε`` whose plan meets the budget (:func:`agents.baselines.solve_budget`).

What this baseline decides, and what it leaves to the env:
    The env's actions are keep ratios; *which* channels are kept is the env's criterion ranking (top-k).
    Build the static env with PFP's criterion on the same calibration batch to rank by sensitivity::

        x = env_data[:64]  # normalised images
        env = StaticPruningEnv(criterion=get_criterion("pfp_sensitivity", inputs=x), budget=0.5)
        policy = get_baseline("pfp", inputs=x).prepare(env)

    The deterministic variant then matches PFP exactly (the channels with ``p_j ≥ 1/m`` are the top ``k`` by
    sensitivity). The sampled variant is simplified: it decides the *counts* by the expected number of unique
    draws and keeps the top of the sensitivity ranking rather than a random draw (:meth:`PFPBaseline.draw`
    gives PFP's actual seeded draws, with the unbiased reweighting, for use outside the env).

    Without ``inputs`` the baseline takes the first ``num_calibration`` images of the env's own data (the
    static env's reward subset, the runtime env's dataset) and only allocates counts; channels are then ranked
    by whatever criterion the env was built with (its ``criterion`` attribute is ``None``, as for ``uniform``).
    With ``inputs`` given and a static env, :meth:`PFPBaseline.prepare` checks that the env ranks by
    ``pfp_sensitivity`` (the name a bound ``get_criterion("pfp_sensitivity", ...)`` reports), the way the
    criterion baselines check theirs. In the runtime env channels are ranked by ``u_r`` whatever the baseline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from envs.static import StaticPruningEnv
from pruning.criteria import get_criterion
from pruning.criteria.pfp import pfp_sensitivity_criterion

from .base import BaselinePolicy, PruningTarget, _unwrap, register_baseline, solve_budget

__all__ = ["PFPBaseline", "expected_unique", "sample_filters", "sample_size"]

#: PFP's constant ``K`` in ``m(ε) = ⌈K · (6 + 2ε) · S / ε²⌉`` (torchprune's ``k_constant``).
K_CONSTANT = 3.0
#: The bisection range of ``ε``: ``[1e-6, 1e6]`` (``m`` from practically unbounded down to 1).
_EPS_RANGE = (1e-6, 1e6)
_PFP_NAMES = ("pfp_sensitivity", pfp_sensitivity_criterion.__name__)


def sample_size(eps: float, total: float, constant: float = K_CONSTANT) -> int:
    """PFP's per-unit sample size ``m(ε) = ⌈constant · (6 + 2ε) · S / ε²⌉`` (0 when ``S = 0``).

    Args:
        eps: The relative error ``ε > 0``.
        total: The unit's total sensitivity ``S = Σ_j s_j``.
        constant: ``K`` (3 in PFP).
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return int(math.ceil(constant * (6.0 + 2.0 * eps) * float(total) / eps**2))


def expected_unique(p: np.ndarray, m: float) -> float:
    """Expected number of distinct channels in ``m`` draws with replacement from ``p``: ``Σ_j 1 − (1 − p_j)^m``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if m <= 0:
        return 0.0
    with np.errstate(divide="ignore"):
        miss = np.where(p >= 1.0, 0.0, np.exp(m * np.log1p(-np.minimum(p, 1.0 - 1e-16))))
    return float(np.sum(np.where(p > 0, 1.0 - miss, 0.0)))


def sample_filters(p: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """PFP's importance sampling: how often each channel is drawn in ``m`` draws from ``p`` (int64 ``(C,)``).

    A channel drawn ``n_j > 0`` times is kept with weight ``n_j / (m · p_j)``, which makes the consumer's
    pre-activation an unbiased estimate of the unpruned one.
    """
    p = np.asarray(p, dtype=np.float64)
    return rng.multinomial(int(m), p / p.sum()).astype(np.int64)


@register_baseline("pfp")
class PFPBaseline(BaselinePolicy):
    """PFP's per-unit keep counts for one global ``ε`` solved for the MAC budget (see the module).

    Args:
        budget: MAC budget (fraction of the base MACs); ``None`` (default) uses the env's.
        inputs: Calibration batch (normalised images ``(N, 3, H, W)``); ``None`` (default) takes the first
            ``num_calibration`` images of the env's data in :meth:`prepare`.
        num_calibration: Images taken from the env when ``inputs`` is ``None`` (default 64).
        deterministic: ``False`` (default): counts are the expected unique channels of ``m(ε)`` draws;
            ``True``: the channels with ``p_j ≥ 1/m(ε)`` (PFP's deterministic ``PFPTop`` variant).
        seed: Seed of :meth:`draw` (PFP's sampled channel sets).

    Attributes:
        epsilon: The solved ``ε`` (after :meth:`prepare`).
        sensitivities: Per unit, the sensitivities ``s`` (float64 ``(C,)``) the counts were solved from.
    """

    criterion: str | None = None

    def __init__(
        self,
        *,
        budget: float | None = None,
        inputs: torch.Tensor | None = None,
        num_calibration: int = 64,
        deterministic: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(budget=budget)
        if num_calibration < 1:
            raise ValueError(f"num_calibration must be at least 1, got {num_calibration}")
        self.inputs = inputs
        self.num_calibration = int(num_calibration)
        self.deterministic = bool(deterministic)
        self.seed = int(seed)
        self.epsilon: float | None = None
        self.sensitivities: list[np.ndarray] | None = None
        self._calibration: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, budget={self.budget}, deterministic={self.deterministic}, "
            f"seed={self.seed})"
        )

    def prepare(self, env: Any) -> PFPBaseline:
        """Take the calibration batch (``inputs`` or the env's first images), then solve the counts.

        Raises:
            ValueError: ``inputs`` was given and the static env does not rank channels by ``pfp_sensitivity``;
                or the budget is missing or cannot be met.
            TypeError: ``env`` is not a PruneGym environment.
        """
        inner = _unwrap(env)
        if self.inputs is not None:
            if isinstance(inner, StaticPruningEnv) and inner.criterion_name not in _PFP_NAMES:
                raise ValueError(
                    f"baseline 'pfp' was given a calibration batch but the env ranks channels by "
                    f"{inner.criterion_name!r}; build the env with "
                    "criterion=get_criterion('pfp_sensitivity', inputs=x) (the same x), or leave inputs=None to "
                    "only allocate counts"
                )
            self._calibration = self.inputs
        else:
            self._calibration = _env_calibration(inner, self.num_calibration)
        super().prepare(env)
        return self

    def allocate(self, target: PruningTarget, budget: float) -> np.ndarray:
        """Keep counts of the smallest global ``ε`` whose plan meets ``budget``."""
        if self._calibration is None:
            raise RuntimeError("PFPBaseline: call prepare(env) (it takes the calibration batch)")
        crit = get_criterion("pfp_sensitivity", inputs=self._calibration)
        sens = [torch.as_tensor(crit(target.model, u), dtype=torch.float64).cpu().numpy() for u in target.units]
        totals = [float(s.sum()) for s in sens]
        probs = [s / t if t > 0 else np.zeros_like(s) for s, t in zip(sens, totals, strict=True)]

        def counts_at(log_inv_eps: float) -> np.ndarray:
            eps = math.exp(-log_inv_eps)
            return np.array([self._count(p, sample_size(eps, t)) for p, t in zip(probs, totals, strict=True)])

        lo, hi = -math.log(_EPS_RANGE[1]), -math.log(_EPS_RANGE[0])
        counts = solve_budget(target, counts_at, lo, hi, budget)
        # the solved ε: the smallest ε (largest log 1/ε) that still gives these counts
        a, b = lo, hi
        if np.array_equal(np.clip(counts_at(hi), target.min_counts, target.channels), counts):
            a = hi
        for _ in range(60):
            mid = 0.5 * (a + b)
            if (np.clip(counts_at(mid), target.min_counts, target.channels) <= counts).all():
                a = mid
            else:
                b = mid
        self.epsilon = math.exp(-a)
        self.sensitivities = sens
        return counts

    def _count(self, p: np.ndarray, m: int) -> int:
        if self.deterministic:
            return int(np.count_nonzero(p * m >= 1.0))
        return int(math.ceil(expected_unique(p, m) - 1e-9))

    def sample_sizes(self) -> list[int]:
        """``m(ε)`` of every unit at the solved ``ε``.

        Raises:
            RuntimeError: :meth:`prepare` was not called.
        """
        if self.epsilon is None or self.sensitivities is None:
            raise RuntimeError("PFPBaseline: call prepare(env) first")
        return [sample_size(self.epsilon, float(s.sum())) for s in self.sensitivities]

    def draw(self) -> list[np.ndarray]:
        """PFP's seeded importance-sampling draw at the solved ``ε``: per unit, how often each channel is drawn.

        Channels drawn at least once are PFP's kept set; reweight them by ``n_j / (m · p_j)``. The env keeps
        the top of its criterion ranking instead (see the module). Units with zero total sensitivity draw
        nothing.
        """
        rng = np.random.default_rng(self.seed)
        out = []
        for s, m in zip(self.sensitivities or [], self.sample_sizes(), strict=True):
            out.append(sample_filters(s, m, rng) if s.sum() > 0 else np.zeros(s.shape, dtype=np.int64))
        return out


def _env_calibration(env: Any, n: int) -> torch.Tensor:
    """The first ``n`` normalised images of a static env's reward subset or of a runtime env's dataset."""
    if isinstance(env, StaticPruningEnv):
        return env.validation_data[0][:n]
    dataset = getattr(env, "dataset", None)
    if dataset is None:
        raise TypeError(f"cannot take a calibration batch from {type(env).__name__}; pass inputs=")
    return dataset.normalize(dataset.images[:n])
