"""Does a runtime pruning policy really prune per input? Per-image statistics and the shuffled-observation test.

A runtime policy (Chen, Chen & Pan, "Storage Efficient and Dynamic Flexible Runtime Channel Pruning
via Deep Reinforcement Learning", NeurIPS 2020) is meant to choose each image's channels from that image. A
mean MAC fraction and a top-1 cannot show it: a policy that spends the same channels on every image reaches
the same two numbers. :func:`per_input_report` runs a gated model under a plan over a test split and answers
four questions with plain-Python numbers (JSON-serialisable):

1. **Does the kept fraction vary across images?** Per unit: mean, std, min and max over images of the kept
   channels / unit channels, read from the masks the forward pass applied
   (:func:`pruning.gating.applied_masks`).
2. **How is the cost spread?** The per-image MAC fraction (:class:`pruning.accounting.CostModel` of each
   image's applied masks): mean, std, min, max, percentiles 5/25/50/75/95 and a histogram.
3. **Does it spend more on hard images?** The images are split by a difficulty that does not come from the
   pruned model's own decisions (the unpruned model's cross-entropy, or whether the unpruned model is right);
   top-1 and mean MAC fraction of each half, and the rank correlation of cost with difficulty.
4. **Does it use the image at all?** The same policy, but each unit's source sees the observation (GAP and
   ``u_r`` rows) of another image of the batch while the CNN computes on the true image
   (:class:`ShuffledObservationSource`). If top-1 does not drop, the decisions do not depend on the image.

:func:`format_report` renders a report as markdown, :func:`plot_report` as a two-panel PNG.

Example:
    >>> import torch
    >>> from pruning.accounting import CostModel
    >>> from pruning.data import get_dataset
    >>> from pruning.gating import gate_model
    >>> from pruning.models import get_model
    >>> from pruning.plan import PruningPlan
    >>> from pruning.train import dataset_for_model
    >>> model = gate_model(get_model("resnet8")).eval()
    >>> cost_model = CostModel(model)
    >>> test = dataset_for_model(get_dataset("synthetic", split="test", size=32), model)
    >>> report = per_input_report(model, PruningPlan(runtime_keep=0.5), test, cost_model=cost_model)
    >>> report["units"][0]["kept_std"], report["shuffled"]["top1_drop"]
    (0.0, 0.0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pruning.accounting import CostModel
from pruning.data import ImageDataset, iterate_batches
from pruning.gating import applied_masks, clear_plan, gated_units, set_plan, stored_masks
from pruning.plan import PruningPlan, RuntimeSource
from pruning.train import check_normalization

__all__ = [
    "EASY_HARD_MEASURES",
    "PERCENTILES",
    "PerImageResults",
    "ShuffledObservationSource",
    "format_report",
    "per_image_results",
    "per_input_report",
    "plot_report",
]

log = logging.getLogger(__name__)

#: Percentiles of the per-image MAC fraction that :func:`per_input_report` reports (keys ``"p5"`` ... ``"p95"``).
PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)

#: Difficulty measures for the easy/hard split of :func:`per_input_report`.
EASY_HARD_MEASURES: tuple[str, ...] = ("base_loss", "correct")


class ShuffledObservationSource:
    """A :data:`~pruning.plan.RuntimeSource` that decides image ``i``'s keep ratios from another image's observation.

    For every batch a fixed permutation ``perm`` is drawn at unit 0 (the start of a forward pass) and kept for
    all units of that batch. At each unit, the inner source is called with the rows of ``gap`` and ``u_r``
    permuted (``gap[perm]``, ``u_r[perm]``) and its ratios are returned **as they are**: ratio row ``i``, decided
    on image ``perm[i]``'s observation, is applied to image ``i``. The CNN still computes on the true images, and
    which channels image ``i`` keeps is still ranked by its own ``u_r``; only *how many* comes from the other
    image. This is the shuffled-observation ablation: if a policy's accuracy does not drop under it, its
    decisions do not depend on the image.

    A stateful inner source (:class:`envs.runtime.PolicyRuntimeSource`: recurrent state, MAC fraction committed
    so far) stays consistent row by row: row ``i`` of its state is the trajectory whose decisions image ``i``
    receives, so the committed MACs it reads back from the model's units are those of its own decisions.

    ``perm`` is a single cycle through the whole batch (a uniformly random cyclic permutation), so for batches
    of two or more images no image ever sees its own observation. Successive batches draw successive
    permutations from one generator seeded with ``seed``: the same seed and the same batch sizes give the same
    permutations; :meth:`reset` starts the sequence again.

    Args:
        inner: The source whose decisions are shuffled (any :data:`~pruning.plan.RuntimeSource`).
        seed: Seed of the permutations. Default 0.

    Attributes:
        perm: The current batch's permutation, long ``(N,)`` (``None`` before the first batch).
        batches: Batches seen since construction or the last :meth:`reset`.

    Example:
        >>> import torch
        >>> seen = []
        >>> def inner(unit, gap, u_r):
        ...     seen.append(gap[:, 0].clone())
        ...     return torch.full((gap.shape[0],), 0.5, dtype=torch.float64)
        >>> source = ShuffledObservationSource(inner, seed=0)
        >>> _ = source(0, torch.arange(4.0).unsqueeze(1), torch.zeros(4, 2))
        >>> bool((seen[0] == source.perm.double()).all()), bool((source.perm != torch.arange(4)).all())
        (True, True)
    """

    def __init__(self, inner: RuntimeSource, seed: int = 0) -> None:
        if not callable(inner):
            raise TypeError(
                f"inner must be a RuntimeSource callable fn(unit_index, gap, u_r) -> ratios; got "
                f"{type(inner).__name__} (fixed ratios do not read the observation, so there is nothing to shuffle)"
            )
        self.inner = inner
        self.seed = int(seed)
        self.perm: torch.Tensor | None = None
        self.batches = 0
        self._generator = torch.Generator().manual_seed(self.seed)

    def reset(self) -> None:
        """Restart the permutation sequence (the next batch gets the first permutation of ``seed`` again)."""
        self._generator = torch.Generator().manual_seed(self.seed)
        self.perm = None
        self.batches = 0

    def _draw(self, n: int) -> torch.Tensor:
        order = torch.randperm(n, generator=self._generator)
        perm = torch.empty_like(order)
        perm[order] = order.roll(-1)  # one cycle: order[j] sees order[j + 1]
        return perm

    def __call__(self, unit_index: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        """Ratios ``(N,)`` of the inner source called on the permuted rows of ``gap`` and ``u_r``."""
        n = int(gap.shape[0])
        if int(unit_index) == 0:
            self.perm = self._draw(n)
            self.batches += 1
        elif self.perm is None or self.perm.numel() != n:
            raise RuntimeError(
                f"unit {unit_index} was called with {n} inputs before unit 0 of that batch; "
                "a forward pass must run the units in index order, starting at unit 0"
            )
        perm = self.perm.to(gap.device)
        return self.inner(unit_index, gap[perm], u_r[perm.to(u_r.device)])


@dataclass(frozen=True)
class PerImageResults:
    """What one pass over a dataset gives per image (numpy arrays, images in dataset order).

    Attributes:
        loss: Cross-entropy of each image, float64 ``(N,)``.
        correct: Whether the top-1 prediction is right, bool ``(N,)``.
        macs_fraction: Backbone MAC fraction of each image from its applied masks, float64 ``(N,)``; ``None``
            when no cost model was given.
        kept: Kept channels of each unit for each image, int64 ``(N, L)``; ``None`` without a cost model.
        channels: Channels of each unit (the width of its masks), int64 ``(L,)``; ``None`` without a cost model.
        params_fraction: Stored backbone parameters as a fraction of the base model's; ``None`` without a cost
            model.
    """

    loss: np.ndarray
    correct: np.ndarray
    macs_fraction: np.ndarray | None = None
    kept: np.ndarray | None = None
    channels: np.ndarray | None = None
    params_fraction: float | None = None


def _device(model: nn.Module) -> torch.device:
    tensor: torch.Tensor | None = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


@torch.no_grad()
def per_image_results(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int = 500,
    cost_model: CostModel | None = None,
) -> PerImageResults:
    """Run ``model`` once over ``dataset`` (eval mode, no gradient, dataset order) and keep every image's results.

    The per-image counterpart of :func:`pruning.train.evaluate`: the same batches, the same costing (each
    image's :class:`~pruning.accounting.CostModel` cost from :func:`~pruning.gating.applied_masks` and
    :func:`~pruning.gating.stored_masks`), but nothing is averaged, so the means of the returned arrays are
    ``evaluate``'s ``top1`` / 100, ``loss`` and ``macs_fraction``. Whatever plan a gated model carries is
    applied as it is; the model's training mode is restored afterwards.

    Args:
        model: The classifier (gated when ``cost_model`` is given). It runs where its parameters are.
        dataset: The split to score, normalised for the model (:func:`pruning.train.dataset_for_model`; a
            warning is logged when its statistics differ from those the model expects).
        batch_size: Images per forward pass. Default 500. A runtime source sees one batch at a time, so a
            source whose decisions depend on the batch (ranks within it) depends on this too.
        cost_model: The ``CostModel`` of the gated ``model`` (built before a runtime source was set on it).
            ``None`` (default): only losses and correctness.

    Returns:
        A :class:`PerImageResults`.

    Raises:
        ValueError: ``batch_size`` is not positive or the dataset is empty; ``cost_model`` is given for a model
            that is not gated.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive number of images, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name}/{dataset.split} is empty; nothing to analyse")
    if cost_model is not None:
        gated_units(model)  # raises with the fix when the model is not gated
    check_normalization(dataset, model)
    was_training = model.training
    model.eval()
    losses: list[torch.Tensor] = []
    correct: list[torch.Tensor] = []
    macs: list[torch.Tensor] = []
    kept: list[torch.Tensor] = []
    channels: list[int] = []
    params_fraction: float | None = None
    try:
        for x, y in iterate_batches(dataset, batch_size, shuffle=False, augment=False, device=_device(model)):
            logits = model(x)
            losses.append(F.cross_entropy(logits, y, reduction="none").double().cpu())
            correct.append((logits.argmax(dim=1) == y).cpu())
            if cost_model is not None:
                masks = applied_masks(model)
                cost = cost_model.from_masks(masks, stored_masks(model))
                macs.append(cost.macs_fraction.expand(int(y.shape[0])).cpu())
                kept.append(torch.stack([m.sum(-1).cpu() for m in masks], dim=-1).expand(int(y.shape[0]), -1))
                channels = [int(m.shape[-1]) for m in masks]
                params_fraction = float(cost.params_fraction)
    finally:
        model.train(was_training)
    if cost_model is None:
        return PerImageResults(torch.cat(losses).numpy(), torch.cat(correct).numpy())
    return PerImageResults(
        loss=torch.cat(losses).numpy(),
        correct=torch.cat(correct).numpy(),
        macs_fraction=torch.cat(macs).double().numpy(),
        kept=torch.cat(kept).long().numpy(),
        channels=np.asarray(channels, dtype=np.int64),
        params_fraction=params_fraction,
    )


@contextmanager
def _plan_restored(model: nn.Module) -> Iterator[None]:
    """Put back every unit's plan state (static ratio, R_r, runtime source, scores) on exit."""
    units = gated_units(model)
    saved = [(g.static_keep, g.tradeoff, g.runtime, g.static_scores) for g in units]
    try:
        yield
    finally:
        for g, (static_keep, tradeoff, runtime, scores) in zip(units, saved, strict=True):
            g.static_keep, g.tradeoff, g.runtime, g.static_scores = static_keep, tradeoff, runtime, scores


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..N-1 of ``values``, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    uniq, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq))
    return (sums / counts)[inverse]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties: average ranks); ``None`` when either side is constant."""
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return None if denom == 0.0 else float((ra * rb).sum()) / denom


def _histogram(values: np.ndarray, bins: int, value_range: tuple[float, float] | None) -> dict[str, list[Any]]:
    lo, hi = (float(values.min()), float(values.max())) if value_range is None else value_range
    if hi - lo < 1e-9:  # every image costs the same: one narrow bin around the value, not numpy's ±0.5
        lo, hi = lo - 0.005, hi + 0.005
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"counts": [int(c) for c in counts], "bin_edges": [float(e) for e in edges]}


def _group(pruned: PerImageResults, base: PerImageResults, index: np.ndarray) -> dict[str, Any]:
    """Top-1 and costs of the images ``index`` (``None`` entries for an empty group)."""
    assert pruned.macs_fraction is not None
    if len(index) == 0:
        return {"n": 0, "top1": None, "macs_fraction_mean": None, "base_loss_mean": None, "base_top1": None}
    return {
        "n": len(index),
        "top1": 100.0 * float(pruned.correct[index].mean()),
        "macs_fraction_mean": float(pruned.macs_fraction[index].mean()),
        "base_loss_mean": float(base.loss[index].mean()),
        "base_top1": 100.0 * float(base.correct[index].mean()),
    }


def _fixed_ratio_source(plan: PruningPlan, num_units: int) -> RuntimeSource:
    """Fixed runtime ratios as a source (they ignore the observation, so shuffling leaves them unchanged)."""

    def source(unit_index: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        ratios = plan.runtime_for_unit(unit_index, num_units)
        assert ratios is not None and not callable(ratios)
        return ratios

    return source


def per_input_report(
    model: nn.Module,
    plan: PruningPlan,
    dataset: ImageDataset,
    *,
    cost_model: CostModel,
    batch_size: int = 500,
    shuffle_seed: int = 0,
    easy_hard_by: Literal["base_loss", "correct"] = "base_loss",
    base_model: nn.Module | None = None,
    bins: int = 20,
    hist_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Per-image statistics of a (runtime) pruning plan on a split, and the shuffled-observation ablation.

    Three passes over ``dataset`` (eval mode, no gradient, dataset order, :func:`per_image_results`): the
    unpruned reference (for the difficulty of each image), ``model`` under ``plan``, and ``model`` under
    ``plan`` with its runtime source wrapped in :class:`ShuffledObservationSource`. The model's own plan (what
    it carried before the call) is put back afterwards, whatever happens.

    Args:
        model: A gated model (:func:`pruning.gating.gate_model`), on the device to run on.
        plan: The plan to analyse. Its ``runtime_keep`` is normally a :data:`~pruning.plan.RuntimeSource` (an
            agent through :class:`envs.runtime.PolicyRuntimeSource`, a baseline's source); fixed ratios work
            too and show no spread and no shuffling effect, as they must. A stateful source is called exactly as
            in :func:`pruning.train.evaluate`: units in order, restarting at unit 0 every batch.
        dataset: The split to analyse (normally ``test``), normalised for the model
            (:func:`pruning.train.dataset_for_model`).
        cost_model: The :class:`~pruning.accounting.CostModel` of ``model``, built before a runtime source was
            set on it (building one traces a forward pass, which would call the source).
        batch_size: Images per forward pass (the batch a runtime source sees and the batch each shuffling
            permutation covers). Default 500.
        shuffle_seed: Seed of the ablation's per-batch permutations. Default 0.
        easy_hard_by: How images are split into easy and hard, by the unpruned reference model only (never by
            the pruned model's decisions, which would make the split circular):

            * ``"base_loss"`` (default): sorted by the reference's cross-entropy on the image; the lower half
              (``floor(N / 2)`` images, ties by dataset order) is easy, the rest hard;
            * ``"correct"``: easy = the images the reference classifies correctly, hard = the others (the
              groups are not halves; an empty group reports ``None``).
        base_model: The unpruned reference (plain or gated), on its own device, fed the same ``dataset``.
            ``None`` (default): ``model`` itself with no plan (every stored channel computed; for a gated, not
            exported model that is the whole CNN with its current weights).
        bins: Bins of the MAC-fraction histogram. Default 20.
        hist_range: ``(low, high)`` of the histogram. ``None`` (default): the observed minimum and maximum (a
            1e-2 wide bin range around the value when every image costs the same).

    Returns:
        A dict of plain Python values (``json.dumps`` writes it), fractions in [0, 1], top-1 in percent:

        * ``n_images``, ``batch_size``, ``top1``, ``loss``, ``params_fraction``: the pruned model on the split;
        * ``units``: one dict per unit, ``index``, ``channels`` (its width in ``model``: for an exported
          model, the stored width), and the kept fraction (kept channels / ``channels``) over images:
          ``kept_mean``, ``kept_std`` (population std), ``kept_min``, ``kept_max``;
        * ``macs_fraction``: per-image backbone MAC fraction: ``mean``, ``std``, ``min``, ``max``,
          ``percentiles`` (``{"p5": ..., "p25": ..., "p50": ..., "p75": ..., "p95": ...}``, numpy's linear
          interpolation) and ``histogram`` (``counts``, ``bin_edges``: ``bins + 1`` edges);
        * ``easy_hard``: ``by``, ``easy`` and ``hard`` (each ``n``, ``top1``, ``macs_fraction_mean`` of the
          pruned model, ``base_loss_mean``, ``base_top1`` of the reference), ``base_top1`` and ``base_loss`` of
          the reference on the split, and ``macs_vs_base_loss_spearman``: the rank correlation of an image's
          MAC fraction with its reference loss (positive: harder images get more MACs; ``None`` when either is
          constant);
        * ``shuffled``: ``None`` when the plan has no runtime part, else ``seed``, ``top1_true``,
          ``top1_shuffled``, ``top1_drop`` (true - shuffled, points), ``macs_fraction_mean_true`` /
          ``_shuffled``, ``macs_fraction_max_true`` / ``_shuffled``, and ``decisions_changed``: the fraction of
          images whose kept counts differ in at least one unit.

    Raises:
        ValueError: ``easy_hard_by`` is not one of :data:`EASY_HARD_MEASURES`; ``bins`` is not positive; the plan
            does not fit the model (:func:`pruning.gating.set_plan`); ``batch_size`` is not positive or the
            dataset is empty.
    """
    if easy_hard_by not in EASY_HARD_MEASURES:
        raise ValueError(f"easy_hard_by must be one of {', '.join(EASY_HARD_MEASURES)}; got {easy_hard_by!r}")
    if bins <= 0:
        raise ValueError(f"bins must be a positive number of histogram bins, got {bins}")
    num_units = len(gated_units(model))
    with _plan_restored(model):
        set_plan(model, plan)  # validates the plan before any pass runs
        if base_model is None:
            clear_plan(model)
            base = per_image_results(model, dataset, batch_size=batch_size)
            set_plan(model, plan)
        else:
            base = per_image_results(base_model, dataset, batch_size=batch_size)
        true = per_image_results(model, dataset, batch_size=batch_size, cost_model=cost_model)
        shuffled: PerImageResults | None = None
        if plan.runtime_keep is not None:
            inner = plan.runtime_keep if callable(plan.runtime_keep) else _fixed_ratio_source(plan, num_units)
            wrapper = ShuffledObservationSource(inner, seed=shuffle_seed)
            for g in gated_units(model):
                g.runtime = wrapper
            shuffled = per_image_results(model, dataset, batch_size=batch_size, cost_model=cost_model)
    assert true.macs_fraction is not None and true.kept is not None and true.channels is not None

    fractions = true.kept / true.channels
    units = [
        {"index": t, "channels": int(c), **{f"kept_{k}": v for k, v in _summary(fractions[:, t]).items()}}
        for t, c in enumerate(true.channels)
    ]
    macs = true.macs_fraction
    macs_report: dict[str, Any] = _summary(macs)
    percentiles = np.percentile(macs, PERCENTILES)
    macs_report["percentiles"] = {f"p{q}": float(v) for q, v in zip(PERCENTILES, percentiles, strict=True)}
    macs_report["histogram"] = _histogram(macs, bins, hist_range)

    n = len(macs)
    if easy_hard_by == "base_loss":
        order = np.argsort(base.loss, kind="stable")
        easy, hard = np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    else:
        easy, hard = np.flatnonzero(base.correct), np.flatnonzero(~base.correct)
    easy_hard = {
        "by": easy_hard_by,
        "easy": _group(true, base, easy),
        "hard": _group(true, base, hard),
        "base_top1": 100.0 * float(base.correct.mean()),
        "base_loss": float(base.loss.mean()),
        "macs_vs_base_loss_spearman": _spearman(macs, base.loss),
    }

    ablation: dict[str, Any] | None = None
    if shuffled is not None:
        assert shuffled.macs_fraction is not None and shuffled.kept is not None
        top1_true, top1_shuffled = 100.0 * float(true.correct.mean()), 100.0 * float(shuffled.correct.mean())
        ablation = {
            "seed": int(shuffle_seed),
            "top1_true": top1_true,
            "top1_shuffled": top1_shuffled,
            "top1_drop": top1_true - top1_shuffled,
            "macs_fraction_mean_true": float(macs.mean()),
            "macs_fraction_mean_shuffled": float(shuffled.macs_fraction.mean()),
            "macs_fraction_max_true": float(macs.max()),
            "macs_fraction_max_shuffled": float(shuffled.macs_fraction.max()),
            "decisions_changed": float((true.kept != shuffled.kept).any(axis=1).mean()),
        }
    return {
        "n_images": n,
        "batch_size": int(batch_size),
        "top1": 100.0 * float(true.correct.mean()),
        "loss": float(true.loss.mean()),
        "params_fraction": true.params_fraction,
        "units": units,
        "macs_fraction": macs_report,
        "easy_hard": easy_hard,
        "shuffled": ablation,
    }


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """Render a :func:`per_input_report` result as a compact markdown block.

    Args:
        report: What :func:`per_input_report` returned (or the same dict read back from JSON).

    Returns:
        Markdown: a summary line, the per-image MAC fraction, a per-unit table of kept fractions, the easy/hard
        table and the shuffled-observation ablation, ending with a newline.
    """
    m = report["macs_fraction"]
    p = m["percentiles"]
    lines = [
        f"**Per-input pruning** ({report['n_images']} images, batch {report['batch_size']}): top-1 "
        f"{report['top1']:.2f}%, stored params {_num(report['params_fraction'])}",
        "",
        f"MAC fraction per image: mean {m['mean']:.3f} ± {m['std']:.3f}, range [{m['min']:.3f}, {m['max']:.3f}], "
        "percentiles " + ", ".join(f"{k} {v:.3f}" for k, v in p.items()),
        "",
        "| unit | channels | kept mean | std | min | max |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {u['index']} | {u['channels']} | {u['kept_mean']:.3f} | {u['kept_std']:.3f} | {u['kept_min']:.3f} "
        f"| {u['kept_max']:.3f} |"
        for u in report["units"]
    ]
    eh = report["easy_hard"]
    lines += [
        "",
        f"Easy vs hard (by the unpruned model's {'loss' if eh['by'] == 'base_loss' else 'correctness'}; "
        f"unpruned top-1 {eh['base_top1']:.2f}%; Spearman(MACs, unpruned loss) "
        f"{_num(eh['macs_vs_base_loss_spearman'])}):",
        "",
        "| images | n | top-1 | MAC fraction | unpruned loss |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {g['n']} | {_num(g['top1'], 2)} | {_num(g['macs_fraction_mean'])} | {_num(g['base_loss_mean'])} |"
        for name, g in (("easy", eh["easy"]), ("hard", eh["hard"]))
    ]
    s = report["shuffled"]
    lines.append("")
    if s is None:
        lines.append("Shuffled observations: not run (the plan has no runtime part).")
    else:
        lines += [
            f"Shuffled observations (seed {s['seed']}; each image pruned by the decisions made for another image "
            f"of its batch; decisions changed for {100.0 * s['decisions_changed']:.1f}% of images):",
            "",
            "| observations | top-1 | mean MACs | max MACs |",
            "|---|---:|---:|---:|",
            f"| true | {s['top1_true']:.2f} | {s['macs_fraction_mean_true']:.3f} | {s['macs_fraction_max_true']:.3f} |",
            f"| shuffled | {s['top1_shuffled']:.2f} | {s['macs_fraction_mean_shuffled']:.3f} "
            f"| {s['macs_fraction_max_shuffled']:.3f} |",
            "",
            f"Top-1 drop: {s['top1_drop']:.2f} points (none or negative: the decisions do not use the image).",
        ]
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Draw a :func:`per_input_report` result as a two-panel PNG (matplotlib's Agg backend, no display needed).

    Left: each unit's kept fraction over images, mean ± std as error bars and the min-max range as a light
    bar. Right: the histogram of the per-image MAC fraction with its mean and median marked.

    Args:
        report: What :func:`per_input_report` returned (or the same dict read back from JSON).
        path: The PNG to write (its folder must exist).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    units: Sequence[dict[str, Any]] = report["units"]
    xs = [u["index"] for u in units]
    lo = [u["kept_min"] for u in units]
    left.bar(xs, [u["kept_max"] - u["kept_min"] for u in units], bottom=lo, width=0.6, color="tab:blue",
             alpha=0.25, label="min–max over images")  # fmt: skip
    left.errorbar(xs, [u["kept_mean"] for u in units], yerr=[u["kept_std"] for u in units], fmt="o",
                  color="tab:blue", capsize=3, label="mean ± std")  # fmt: skip
    left.set_xlabel("unit")
    left.set_ylabel("kept fraction of channels")
    left.set_ylim(0.0, 1.2)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_title("kept fraction per unit across images", fontsize=10)
    left.grid(True, alpha=0.3)
    left.legend(fontsize="small", loc="upper center", ncol=2)
    m = report["macs_fraction"]
    edges = m["histogram"]["bin_edges"]
    widths = np.diff(edges)
    right.bar(edges[:-1], m["histogram"]["counts"], width=widths, align="edge", color="tab:orange",
              edgecolor="black", linewidth=0.5)  # fmt: skip
    right.axvline(m["mean"], color="black", linestyle="-", label=f"mean {m['mean']:.3f}")
    right.axvline(m["percentiles"]["p50"], color="black", linestyle="--", label=f"median {m['percentiles']['p50']:.3f}")
    right.set_xlabel("MAC fraction of the base model")
    right.set_ylabel("images")
    right.set_title(f"per-image MAC fraction ({report['n_images']} images)", fontsize=10)
    right.legend(fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(str(out), dpi=100)
    return out
