"""Provable Filter Pruning (Liebenwein, Baykal, Lang, Feldman & Rus, ICLR 2020) as a keep-count baseline.

PFP scores every output channel of a unit by its empirical sensitivity ``s_j`` on a calibration batch
(criterion ``"pfp_sensitivity"``, :mod:`pruning.criteria.pfp`), samples channels with probability
``p_j = s_j / S`` (``S = Σ_j s_j``) and draws, for a relative error ``ε``,

    m(ε) = ⌈3 · (6 + 2ε) · S / ε²⌉

samples per unit. One global ``ε`` is solved for the budgets (:func:`agents.baselines.solve_budget`): a smaller
``ε`` keeps more channels in every unit, so the bisection finds the smallest ``ε`` whose plan meets them.

Two variants:

* **sampled** (``deterministic=False``, default; PFP itself): each unit keeps the channels drawn at least once
  in ``m(ε)`` seeded draws from ``p``. The draw is fixed by ``seed`` before ``ε`` is known: every channel's
  first-appearance index in an endless sequence of draws (:func:`pruning.criteria.pfp.first_draws`), so the
  channels of ``m`` draws are those with ``first ≤ m`` and a unit keeps ``#{first ≤ m(ε)}`` channels. The
  same order is the criterion ``pfp_sampled``: an env built with it keeps exactly the sampled set (its top-k).
* **deterministic** (``PFPTop``): the channels with ``p_j ≥ 1/m(ε)``, i.e. the top of the sensitivity ranking
  (criterion ``pfp_sensitivity``).

The env's actions are keep ratios; *which* channels are kept is the env's criterion ranking (top-k). Build the
static env with :meth:`PFPBaseline.channel_criterion` so that the ranking is PFP's::

    policy = get_baseline("pfp", seed=3)
    env = StaticPruningEnv(criterion=policy.channel_criterion(x), budget=0.5)  # binds x[:64] for calibration
    policy.prepare(env)  # same calibration batch, same draw: the env keeps the sampled channel sets

:meth:`PFPBaseline.prepare` checks that the env ranks by the variant's criterion (by name, and for the sampled
variant by comparing the ranking with its own draw). :meth:`PFPBaseline.draw` gives the multiplicities of the
same draw (channels with ``n_j > 0`` are the kept set), for the unbiased reweighting ``n_j / (m · p_j)`` outside
the env. Without a calibration batch (``inputs=None`` and no :meth:`~PFPBaseline.channel_criterion` call) the
baseline takes the first ``num_calibration`` images of the env's own data and only allocates counts; channels
are then ranked by whatever criterion the env was built with. In the runtime env channels are ranked by
``u_r`` whatever the baseline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.unwrap import pruning_target, unwrap_env
from envs.common import TargetSpec
from pruning.budget import SOLVE_STEPS, bisect_monotone
from pruning.criteria import Criterion
from pruning.criteria.pfp import (
    draw_generator,
    first_draws,
    pfp_sampled_criterion,
    pfp_sensitivity_criterion,
    sampled_order_scores,
)
from pruning.units import Unit

from .base import BaselinePolicy, PruningTarget, register_baseline, solve_budget

__all__ = ["PFPBaseline", "expected_unique", "sample_filters", "sample_size"]

#: PFP's constant ``K`` in ``m(ε) = ⌈K · (6 + 2ε) · S / ε²⌉`` (torchprune's ``k_constant``).
K_CONSTANT = 3.0
#: The bisection range of ``ε``: ``[1e-6, 1e6]`` (``m`` from practically unbounded down to 1).
_EPS_RANGE = (1e-6, 1e6)
#: Names an env reports for PFP's criteria (registered name, or the function's name when bound with options).
_CRITERION_NAMES = {
    True: ("pfp_sensitivity", pfp_sensitivity_criterion.__name__),
    False: ("pfp_sampled", pfp_sampled_criterion.__name__),
}


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
    """Expected number of distinct channels in ``m`` draws with replacement from ``p``: ``Σ_j 1 − (1 − p_j)^m``.

    The mean over seeds of the sampled variant's keep count (before the ``min_keep`` floor).
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if m <= 0:
        return 0.0
    with np.errstate(divide="ignore"):
        miss = np.where(p >= 1.0, 0.0, np.exp(m * np.log1p(-np.minimum(p, 1.0 - 1e-16))))
    return float(np.sum(np.where(p > 0, 1.0 - miss, 0.0)))


def sample_filters(p: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """PFP's importance sampling: how often each channel is drawn in ``m`` draws from ``p`` (int64 ``(C,)``).

    A channel drawn ``n_j > 0`` times is kept with weight ``n_j / (m · p_j)``, which makes the consumer's
    pre-activation an unbiased estimate of the unpruned one. (An independent draw; :meth:`PFPBaseline.draw`
    gives the multiplicities of the draw its plan keeps.)
    """
    p = np.asarray(p, dtype=np.float64)
    return rng.multinomial(int(m), p / p.sum()).astype(np.int64)


def _multiplicities(p: np.ndarray, first: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities of ``m`` draws from ``p`` whose first appearances are ``first`` (as :func:`first_draws`).

    Between the ``i``-th and the ``(i+1)``-th new channel every draw is a repeat of one of the ``i`` channels
    seen so far, in proportion to ``p``: one multinomial per gap completes the draw exactly.
    """
    counts = np.zeros(len(p), dtype=np.int64)
    order = np.argsort(first, kind="stable")
    times = first[order]
    k = int(np.count_nonzero(times <= m))
    counts[order[:k]] = 1
    for i in range(k):
        stop = times[i + 1] if i + 1 < k else m + 1.0
        repeats = int(stop - times[i] - 1)
        if repeats > 0:
            seen = order[: i + 1]
            counts[seen] += rng.multinomial(repeats, p[seen] / p[seen].sum())
    return counts


@register_baseline("pfp")
class PFPBaseline(BaselinePolicy):
    """PFP's per-unit keep counts for one global ``ε`` solved for the budgets (see the module).

    Args:
        budget: MAC budget (fraction of the base MACs); ``None`` (default) uses the env's.
        inputs: Calibration batch (normalised images ``(N, 3, H, W)``); ``None`` (default) takes the batch
            bound by :meth:`channel_criterion`, else the first ``num_calibration`` images of the env's data.
        num_calibration: Images taken from the calibration data when ``inputs`` is ``None`` (default 64).
        deterministic: ``False`` (default): PFP's seeded importance sampling (the channels drawn in ``m(ε)``
            draws); ``True``: the channels with ``p_j ≥ 1/m(ε)`` (PFP's deterministic ``PFPTop`` variant).
        seed: Seed of the sampled variant's draw (default 0); the same seed gives the same channel sets.

    Attributes:
        epsilon: The solved ``ε`` (after :meth:`prepare`).
        sensitivities: Per unit, the sensitivities ``s`` (float64 ``(C,)``) the counts were solved from.
        first: Per unit, the sampled variant's first-appearance indices (float64 ``(C,)``; ``None`` for the
            deterministic variant).
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
        self.first: list[np.ndarray] | None = None
        self._calibration: torch.Tensor | None = None
        # sensitivities per (model, unit, calibration batch): the env's criterion and allocate share them
        self._sensitivity_cache: dict[tuple[int, int, int], tuple[nn.Module, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, budget={self.budget}, deterministic={self.deterministic}, "
            f"seed={self.seed})"
        )

    @property
    def stochastic(self) -> bool:
        """The sampled variant depends on its seed; the deterministic one does not."""
        return not self.deterministic

    def channel_criterion(self, calibration: torch.Tensor | None = None) -> Criterion | None:
        """PFP's channel ranking on the calibration batch: ``pfp_sampled`` (seeded) or ``pfp_sensitivity``.

        Binds ``inputs`` (or, when it is ``None``, the first ``num_calibration`` images of ``calibration``, which
        become ``inputs``); returns ``None`` (the env's default criterion, counts only) when neither is given.
        The criterion scores exactly as ``get_criterion("pfp_sampled", inputs=x, seed=seed)`` (or
        ``"pfp_sensitivity"``) and reports that name; it keeps the sensitivities it computes, so :meth:`prepare`
        on the env built with it does not compute them again.
        """
        if self.inputs is None:
            if calibration is None:
                return None
            self.inputs = calibration[: self.num_calibration]
        inputs, deterministic, seed = self.inputs, self.deterministic, self.seed

        def criterion(model: nn.Module, unit: Unit) -> torch.Tensor:
            s = self._sensitivity(model, unit, inputs)
            return s.clone() if deterministic else sampled_order_scores(s, seed, unit.index)

        criterion.__name__ = _CRITERION_NAMES[deterministic][0]
        return criterion

    def _sensitivity(self, model: nn.Module, unit: Unit, inputs: torch.Tensor) -> torch.Tensor:
        """PFP's sensitivities of ``unit`` on ``inputs`` (float32), computed once per model, unit and batch."""
        key = (id(model), unit.index, id(inputs))
        hit = self._sensitivity_cache.get(key)
        if hit is None or hit[0] is not model:
            hit = (model, pfp_sensitivity_criterion(model, unit, inputs=inputs))
            self._sensitivity_cache[key] = hit
        return hit[1]

    def prepare(self, env: Any) -> PFPBaseline:
        """Take the calibration batch (``inputs`` or the env's first images), then solve the counts.

        Raises:
            ValueError: ``inputs`` was given and the static env does not rank channels by this variant's
                criterion (for the sampled variant: by the same draw); or the budget is missing or cannot be
                met.
            TypeError: ``env`` is not a PruneGym environment.
        """
        spec = pruning_target(env)
        inner = unwrap_env(env)  # the live env: its images and channel scores
        check = self.inputs is not None and spec.kind == "static"
        if check and spec.criterion not in _CRITERION_NAMES[self.deterministic]:
            raise ValueError(
                f"baseline 'pfp' was given a calibration batch but the env ranks channels by "
                f"{spec.criterion!r}; build the env with criterion=policy.channel_criterion() (the "
                f"{_CRITERION_NAMES[self.deterministic][0]!r} criterion on the same batch), or leave inputs=None "
                "to only allocate counts"
            )
        calibration = self.inputs if self.inputs is not None else _env_calibration(inner, spec, self.num_calibration)
        self._calibration = calibration
        super().prepare(env)
        if check and not self.deterministic:
            assert self.first is not None
            for t, (first, scores) in enumerate(zip(self.first, inner.static_scores, strict=True)):
                if not np.array_equal(np.argsort(first, kind="stable"), np.argsort(-scores.numpy(), kind="stable")):
                    raise ValueError(
                        f"the env ranks unit {t}'s channels by another PFP draw (other seed or calibration batch) "
                        f"than this policy (seed={self.seed}); build the env with "
                        "criterion=policy.channel_criterion()"
                    )
        return self

    def allocate(self, target: PruningTarget, budget: float) -> np.ndarray:
        """Keep counts of the smallest global ``ε`` whose plan meets the budgets."""
        if self._calibration is None:
            raise RuntimeError("PFPBaseline: call prepare(env) (it takes the calibration batch)")
        calibration = self._calibration
        sens = [self._sensitivity(target.model, u, calibration).double().numpy() for u in target.units]
        self._sensitivity_cache.clear()
        totals = [float(s.sum()) for s in sens]
        probs = [s / t if t > 0 else np.zeros_like(s) for s, t in zip(sens, totals, strict=True)]
        first = None
        if not self.deterministic:
            units = zip(sens, target.units, strict=True)
            first = [first_draws(s, draw_generator(self.seed, u.index)) for s, u in units]

        def count(t: int, m: int) -> int:
            if first is not None:
                return int(np.count_nonzero(first[t] <= m))
            return int(np.count_nonzero(probs[t] * m >= 1.0))

        def counts_at(log_inv_eps: float) -> np.ndarray:
            eps = math.exp(-log_inv_eps)
            return np.array([count(t, sample_size(eps, total)) for t, total in enumerate(totals)])

        lo, hi = -math.log(_EPS_RANGE[1]), -math.log(_EPS_RANGE[0])
        counts = solve_budget(target, counts_at, lo, hi, budget)
        # the solved ε: the smallest ε (largest log 1/ε) that still gives these counts

        def within(log_inv_eps: float) -> bool:
            return bool((np.clip(counts_at(log_inv_eps), target.min_counts, target.channels) <= counts).all())

        self.epsilon = math.exp(-bisect_monotone(within, lo, hi, steps=SOLVE_STEPS))
        self.sensitivities = sens
        self.first = first
        return counts

    def sample_sizes(self) -> list[int]:
        """``m(ε)`` of every unit at the solved ``ε``.

        Raises:
            RuntimeError: :meth:`prepare` was not called.
        """
        if self.epsilon is None or self.sensitivities is None:
            raise RuntimeError("PFPBaseline: call prepare(env) first")
        return [sample_size(self.epsilon, float(s.sum())) for s in self.sensitivities]

    def draw(self) -> list[np.ndarray]:
        """Per unit, how often each channel is drawn in PFP's ``m(ε)`` draws at the solved ``ε``.

        For the sampled variant this is the draw the plan keeps: the channels with ``n_j > 0`` are the ones the
        env keeps (when the ``min_keep`` floor does not add more), completed with the repeat counts from a
        second generator seeded ``(seed, unit, 1)``. For the deterministic variant it is an independent seeded
        draw (:func:`sample_filters`). Reweight kept channels by ``n_j / (m · p_j)``. Units with zero total
        sensitivity draw nothing.

        Raises:
            RuntimeError: :meth:`prepare` was not called.
        """
        sizes = self.sample_sizes()
        assert self.sensitivities is not None
        out = []
        for t, (s, m) in enumerate(zip(self.sensitivities, sizes, strict=True)):
            if s.sum() <= 0:
                out.append(np.zeros(s.shape, dtype=np.int64))
            elif self.first is not None:
                rng = np.random.default_rng([self.seed, t, 1])
                out.append(_multiplicities(s / s.sum(), self.first[t], m, rng))
            else:
                out.append(sample_filters(s, m, np.random.default_rng([self.seed, t])))
        return out


def _env_calibration(env: Any, spec: TargetSpec, n: int) -> torch.Tensor:
    """The first ``n`` normalised images of a static env's reward subset or of a runtime env's dataset."""
    if spec.kind == "static":
        return env.validation_data[0][:n]
    dataset = env.dataset
    return dataset.normalize(dataset.images[:n])
