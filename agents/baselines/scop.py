"""SCOP (Tang et al., NeurIPS 2020) as a training-based baseline: knockoff-controlled scores, uniform rate.

:meth:`SCOPBaseline.build` trains the control factors ``β`` on a copy of the base model against knockoff inputs
(:func:`pruning.methods.scop.train_control_factors`; Gaussian model-X knockoffs unless a sampler is given),
scores every channel ``|γ|·(2β − 1)``, and removes the lowest-scored channels of every unit at one rate, as
the paper does (``--prune_rate``, the same for every layer). The rate is not a free parameter here: it is the
smallest uniform rate (largest keep ratio) whose exact MACs meet the budget, solved by bisection on
:class:`pruning.accounting.CostModel` (:class:`agents.baselines.policies.UniformBaseline`'s solver). The pruned
model is physically sliced (:func:`pruning.export.export_static`), so MACs and parameters are those of a plain
static plan. The paper then fine-tunes (120 epochs); that is left to the caller, as for every baseline.
"""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from pruning.accounting import model_cost
from pruning.export import export_static
from pruning.methods.scop import SCOP_ADAM_BETAS, SCOP_LR, KnockoffSampler, train_control_factors
from pruning.plan import PruningPlan

from .base import BuiltModel, PruningTarget, TrainContext, TrainedBaseline, register_baseline
from .policies import UniformBaseline

__all__ = ["SCOPBaseline", "uniform_keep_counts"]


def uniform_keep_counts(base: nn.Module, budget: float) -> np.ndarray:
    """Per-unit keep counts of the largest uniform keep ratio whose exact MACs meet ``budget`` (at least 1 each).

    Args:
        base: The plain model to prune.
        budget: MAC fraction of the base model.

    Raises:
        ValueError: the budget is below what one channel per unit costs.
    """
    target = PruningTarget.of_model(base, budget)
    return UniformBaseline(budget=budget).allocate(target, budget)


@register_baseline("scop")
class SCOPBaseline(TrainedBaseline):
    """SCOP: train knockoff control factors for ``context.epochs``, prune the lowest scores at a uniform rate.

    What :meth:`build` does, in order (``train_seconds`` covers steps 1-2):

    1. fits Gaussian knockoffs to ``fit_images`` training images (PCA rank ``rank`` + isotropic residual;
       model-X with the equicorrelated ``s``, or independent draws; see :mod:`pruning.methods.scop`), unless
       ``knockoffs`` is given;
    2. trains only the control factors ``β`` of a copy of ``base`` on ``[X ; X̃]`` batches for
       ``context.epochs`` passes (Adam, lr 0.004, betas (0.5, 0.9), β clamped to [0, 1]);
    3. solves the uniform keep ratio for the budget and keeps each unit's top channels by ``|γ|·(2β − 1)``;
    4. slices ``base`` to that plan (``base`` itself is never modified).

    Args:
        budget: MAC budget; ``None`` (default) uses ``context.budget``.
        knockoffs: A knockoff sampler ``fn(x, generator) -> x̃`` (e.g. a GAN); ``None`` (default): Gaussian.
        rank: PCA rank of the Gaussian knockoffs. Default 32.
        conditional_knockoffs: ``True``: Gaussian model-X knockoffs of each image. ``False`` (default):
            independent draws from the same Gaussian, like the paper's GAN samples; on CIFAR-10 these rank
            channels far better, on val as on test (:mod:`pruning.methods.scop` gives the measurements).
        fit_images: Training images the Gaussian model is fitted to. Default 10000.
        batch_size: Real images per step (the network sees twice as many). Default 128.
        lr: Adam learning rate of ``β``. Default 0.004 (released code).
        adam_betas: Adam betas. Default (0.5, 0.9) (released code).

    ``info`` of the result: the knockoff construction (``knockoffs``, ``knockoff_rank``, ``knockoff_noise_var``,
    ``knockoff_s``), ``prune_rate`` (fraction of all unit channels removed; every unit removes the same
    fraction up to rounding), ``beta_mean`` and ``beta_above_half`` (fraction of factors > 0.5 after training), and
    ``train_top1`` (real-stream accuracy on the augmented training batches of the last epoch).
    """

    def __init__(
        self,
        *,
        budget: float | None = None,
        knockoffs: KnockoffSampler | None = None,
        rank: int = 32,
        conditional_knockoffs: bool = False,
        fit_images: int = 10000,
        batch_size: int = 128,
        lr: float = SCOP_LR,
        adam_betas: tuple[float, float] = SCOP_ADAM_BETAS,
    ) -> None:
        super().__init__(budget=budget)
        self.knockoffs = knockoffs
        self.rank = int(rank)
        self.conditional_knockoffs = bool(conditional_knockoffs)
        self.fit_images = int(fit_images)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.adam_betas = (float(adam_betas[0]), float(adam_betas[1]))

    def build(self, base: nn.Module, context: TrainContext) -> BuiltModel:
        """Train the control factors on a copy of ``base``, prune at the uniform rate for the budget, slice.

        Raises:
            ValueError: the budget cannot be met even with one channel per unit, or the knockoff fit fails.
        """
        budget = context.budget if self.budget is None else self.budget
        start = time.perf_counter()
        factors = train_control_factors(
            base, context.train_set, knockoffs=self.knockoffs, epochs=context.epochs, batch_size=self.batch_size,
            lr=self.lr, adam_betas=self.adam_betas, rank=self.rank, fit_images=self.fit_images,
            conditional=self.conditional_knockoffs, seed=context.seed, device=context.device, progress=context.progress,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        counts = uniform_keep_counts(base, budget)
        channels = [int(s.numel()) for s in factors.scores]
        ratios = [int(k) / c for k, c in zip(counts, channels, strict=True)]
        plan = PruningPlan(static_keep=ratios, static_scores=factors.scores)
        pruned = export_static(base, plan)
        cost = model_cost(base, plan)
        beta = np.concatenate([b.numpy() for b in factors.beta])
        epochs = factors.history.get("epochs") or [{}]
        info = dict(factors.info)
        info.update(
            prune_rate=1.0 - float(sum(counts)) / sum(channels),
            beta_mean=float(beta.mean()), beta_above_half=float((beta > 0.5).mean()),
            train_top1=epochs[-1].get("train_top1", float("nan")),
        )  # fmt: skip
        return BuiltModel(
            model=pruned, macs_fraction=float(cost.macs_fraction[0]), params_fraction=cost.params_fraction,
            keep_ratios=ratios, train_seconds=seconds, info=info,
        )  # fmt: skip
