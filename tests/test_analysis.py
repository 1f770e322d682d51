"""Per-input analysis of runtime pruning: spread, costs, easy/hard split and the shuffled-observation ablation."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import agents.analysis as analysis_module
from agents.analysis import (
    PERCENTILES,
    ShuffledObservationSource,
    format_report,
    per_image_results,
    per_input_report,
    plot_report,
)
from pruning.accounting import CostModel
from pruning.data import ImageDataset, get_dataset, iterate_batches
from pruning.gating import applied_masks, clear_plan, gate_model, gated_units, set_plan, stored_masks
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.train import dataset_for_model, evaluate
from tests._nets import randomize_, randomize_gates_

BATCH = 24  # 64 test images: two full batches and a partial one


class RankSource:
    """Image-dependent and batch-stateful: at unit 0 each image gets a ratio from the rank of its GAP mean.

    The ratio is kept for every later unit of the batch (shifted per unit), so an image's decisions depend only
    on its own unit-0 observation: shuffling that observation moves the decisions to other images unchanged.
    """

    def __init__(self) -> None:
        self.ratios = torch.zeros(0, dtype=torch.float64)

    def __call__(self, unit_index: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        if unit_index == 0:
            n = gap.shape[0]
            rank = torch.argsort(torch.argsort(gap.mean(dim=1))).double()
            self.ratios = 0.15 + 0.8 * rank / max(n - 1, 1)
        return (self.ratios * (1.0 - 0.05 * unit_index)).clamp(0.05, 1.0)


def constant_source(unit_index: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
    return torch.full((gap.shape[0],), 0.5, dtype=torch.float64)


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, CostModel, ImageDataset]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = randomize_gates_(gate_model(randomize_(get_model("resnet8"), seed=3)).eval(), seed=3)
    cost_model = CostModel(model)
    test = dataset_for_model(get_dataset("synthetic", split="test", size=64), model)
    return model, cost_model, test


def by_hand(model: nn.Module, cost_model: CostModel, data: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """Kept fractions (N, L) and MAC fractions (N,) of the model's current plan, straight from applied_masks."""
    fractions, macs = [], []
    with torch.no_grad():
        for x, _ in iterate_batches(data, BATCH, shuffle=False, augment=False):
            model(x)
            masks = applied_masks(model)
            fractions.append(torch.stack([m.double().mean(-1) for m in masks], dim=-1))
            macs.append(cost_model.from_masks(masks, stored_masks(model)).macs_fraction.expand(x.shape[0]))
    clear_plan(model)
    return torch.cat(fractions).numpy(), torch.cat(macs).numpy()


def test_module_doctest() -> None:
    result = doctest.testmod(analysis_module)
    assert result.attempted >= 2 and result.failed == 0


def test_constant_plan_has_no_spread(setup: tuple[nn.Module, CostModel, ImageDataset]) -> None:
    model, cost_model, test = setup
    for plan in (PruningPlan(runtime_keep=0.5), PruningPlan(runtime_keep=constant_source)):
        report = per_input_report(model, plan, test, cost_model=cost_model, batch_size=BATCH)
        assert report["n_images"] == len(test)
        for unit in report["units"]:
            assert unit["kept_min"] == unit["kept_max"] == pytest.approx(unit["kept_mean"])
            assert unit["kept_std"] == pytest.approx(0.0, abs=1e-12)
            assert unit["kept_mean"] == pytest.approx(np.ceil(0.5 * unit["channels"]) / unit["channels"])
        m = report["macs_fraction"]
        assert m["min"] == m["max"] == pytest.approx(m["mean"]) and m["max"] < 1.0  # one value for every image
        assert m["std"] == pytest.approx(0.0, abs=1e-12)
        assert sum(m["histogram"]["counts"]) == len(test) and max(m["histogram"]["counts"]) == len(test)
        s = report["shuffled"]
        assert s["top1_drop"] == 0.0 and s["decisions_changed"] == 0.0
        assert s["macs_fraction_mean_shuffled"] == s["macs_fraction_mean_true"]
    assert all(g.runtime is None for g in gated_units(model))  # the model's previous (empty) plan is back


def test_image_dependent_source_spread_matches_applied_masks(setup: tuple[nn.Module, CostModel, ImageDataset]) -> None:
    model, cost_model, test = setup
    plan = PruningPlan(runtime_keep=RankSource())
    report = per_input_report(model, plan, test, cost_model=cost_model, batch_size=BATCH)
    set_plan(model, plan)
    fractions, macs = by_hand(model, cost_model, test)
    assert fractions.std(axis=0).min() > 0.05  # different images really keep different fractions
    for t, unit in enumerate(report["units"]):
        assert unit["kept_min"] == pytest.approx(fractions[:, t].min())
        assert unit["kept_max"] == pytest.approx(fractions[:, t].max())
        assert unit["kept_mean"] == pytest.approx(fractions[:, t].mean())
        assert unit["kept_std"] == pytest.approx(fractions[:, t].std())
    m = report["macs_fraction"]
    assert m["std"] > 0.0
    assert (m["mean"], m["min"], m["max"]) == pytest.approx((macs.mean(), macs.min(), macs.max()))
    assert m["percentiles"]["p50"] == pytest.approx(np.median(macs))
    # the per-image loop agrees with pruning.train.evaluate's averages
    set_plan(model, PruningPlan(runtime_keep=RankSource()))
    ref = evaluate(model, test, batch_size=BATCH, cost_model=cost_model)
    clear_plan(model)
    assert report["top1"] == pytest.approx(ref["top1"]) and report["loss"] == pytest.approx(ref["loss"])
    assert m["mean"] == pytest.approx(ref["macs_fraction"]) and m["max"] == pytest.approx(ref["macs_fraction_max"])


def test_shuffled_wrapper_moves_decisions_between_images(setup: tuple[nn.Module, CostModel, ImageDataset]) -> None:
    model, cost_model, _ = setup
    x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(5))

    def masks_and_macs(source: object) -> tuple[list[torch.Tensor], torch.Tensor]:
        set_plan(model, PruningPlan(runtime_keep=source))  # type: ignore[arg-type]
        with torch.no_grad():
            model(x)
        masks = [m.clone() for m in applied_masks(model)]
        macs = cost_model.from_masks(masks, stored_masks(model)).macs_fraction.expand(BATCH)
        clear_plan(model)
        return masks, macs

    # a constant source: identical masks
    plain, _ = masks_and_macs(constant_source)
    shuffled, _ = masks_and_macs(ShuffledObservationSource(constant_source, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(plain, shuffled, strict=True))
    # an image-dependent source: other masks per image, the same decisions permuted
    true_masks, true_macs = masks_and_macs(RankSource())
    wrapper = ShuffledObservationSource(RankSource(), seed=1)
    shuf_masks, shuf_macs = masks_and_macs(wrapper)
    assert wrapper.perm is not None and wrapper.batches == 1
    perm = wrapper.perm
    assert sorted(perm.tolist()) == list(range(BATCH)) and bool((perm != torch.arange(BATCH)).all())
    assert any(not torch.equal(a, b) for a, b in zip(true_masks, shuf_masks, strict=True))
    assert sorted(shuf_macs.tolist()) == pytest.approx(sorted(true_macs.tolist()))
    assert torch.allclose(shuf_macs, true_macs[perm])  # image i got the decisions made for image perm[i]
    for a, b in zip(true_masks, shuf_masks, strict=True):
        assert torch.equal(b.sum(-1), a.sum(-1)[perm])


def test_shuffled_wrapper_is_seeded_and_checks_unit_order() -> None:
    gap, u_r = torch.randn(10, 4), torch.randn(10, 6)
    perms = []
    for _ in range(2):
        source = ShuffledObservationSource(constant_source, seed=7)
        source(0, gap, u_r)
        first = source.perm
        source(0, gap, u_r)
        perms.append((first, source.perm))
        source.reset()
        source(0, gap, u_r)
        assert torch.equal(source.perm, first)
    assert torch.equal(perms[0][0], perms[1][0]) and torch.equal(perms[0][1], perms[1][1])
    assert not torch.equal(perms[0][0], perms[0][1])  # a new permutation for every batch
    source = ShuffledObservationSource(constant_source)
    with pytest.raises(RuntimeError, match="before unit 0"):
        source(1, gap, u_r)
    with pytest.raises(TypeError, match="nothing to shuffle"):
        ShuffledObservationSource(0.5)  # type: ignore[arg-type]


def test_report_with_image_dependent_source(setup: tuple[nn.Module, CostModel, ImageDataset], tmp_path: Path) -> None:
    model, cost_model, test = setup
    report = per_input_report(
        model, PruningPlan(runtime_keep=RankSource()), test, cost_model=cost_model, batch_size=BATCH, bins=8
    )
    again = json.loads(json.dumps(report, allow_nan=False))
    assert again == report
    p = report["macs_fraction"]["percentiles"]
    values = [p[f"p{q}"] for q in PERCENTILES]
    m = report["macs_fraction"]
    assert m["min"] <= values[0] and values == sorted(values) and values[-1] <= m["max"]
    hist = m["histogram"]
    assert len(hist["counts"]) == 8 and len(hist["bin_edges"]) == 9 and sum(hist["counts"]) == len(test)
    eh = report["easy_hard"]
    assert eh["by"] == "base_loss" and eh["easy"]["n"] + eh["hard"]["n"] == len(test)
    assert eh["easy"]["n"] == len(test) // 2
    assert eh["easy"]["base_loss_mean"] <= eh["hard"]["base_loss_mean"]
    s = report["shuffled"]
    assert s["decisions_changed"] > 0.5
    assert s["top1_drop"] == pytest.approx(s["top1_true"] - s["top1_shuffled"])
    # the per-batch permutations only move decisions, so the mean cost stays the same
    assert s["macs_fraction_mean_shuffled"] == pytest.approx(s["macs_fraction_mean_true"])
    text = format_report(report)
    assert "| unit | channels |" in text and "Top-1 drop" in text and text.count("\n| ") >= len(report["units"])
    out = plot_report(report, tmp_path / "analysis.png")
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_easy_hard_uses_the_unpruned_model(setup: tuple[nn.Module, CostModel, ImageDataset]) -> None:
    model, cost_model, test = setup
    plan = PruningPlan(runtime_keep=RankSource())
    clear_plan(model)
    base = per_image_results(model, test, batch_size=BATCH)
    report = per_input_report(model, plan, test, cost_model=cost_model, batch_size=BATCH)
    eh = report["easy_hard"]
    order = np.argsort(base.loss, kind="stable")
    easy = order[: len(test) // 2]
    assert eh["easy"]["base_loss_mean"] == pytest.approx(base.loss[easy].mean())
    assert eh["base_top1"] == pytest.approx(100.0 * base.correct.mean())
    # an explicit base model: the plain network a freshly gated model was built from gives the same difficulty
    plain = randomize_(get_model("resnet8"), seed=3)
    fresh = gate_model(plain).eval()
    fresh_cost = CostModel(fresh)
    cleared = per_input_report(fresh, plan, test, cost_model=fresh_cost, batch_size=BATCH)["easy_hard"]
    explicit = per_input_report(fresh, plan, test, cost_model=fresh_cost, batch_size=BATCH, base_model=plain)
    for half in ("easy", "hard"):
        assert explicit["easy_hard"][half]["base_loss_mean"] == pytest.approx(cleared[half]["base_loss_mean"])
    by_correct = per_input_report(model, plan, test, cost_model=cost_model, batch_size=BATCH, easy_hard_by="correct")
    ec = by_correct["easy_hard"]
    assert ec["easy"]["n"] == int(base.correct.sum()) and ec["hard"]["n"] == int((~base.correct).sum())
    if ec["easy"]["n"]:
        assert ec["easy"]["base_top1"] == 100.0
    if ec["hard"]["n"]:
        assert ec["hard"]["base_top1"] == 0.0


def test_static_plan_and_errors(setup: tuple[nn.Module, CostModel, ImageDataset]) -> None:
    model, cost_model, test = setup
    report = per_input_report(model, PruningPlan(static_keep=[0.5, 0.5, 0.5]), test, cost_model=cost_model)
    assert report["shuffled"] is None and report["params_fraction"] < 1.0
    assert "not run" in format_report(report)
    with pytest.raises(ValueError, match="easy_hard_by must be one of"):
        bad: Any = "x"
        per_input_report(model, PruningPlan(runtime_keep=0.5), test, cost_model=cost_model, easy_hard_by=bad)
    with pytest.raises(ValueError, match="runtime keep ratio"):
        per_input_report(model, PruningPlan(runtime_keep=1.5), test, cost_model=cost_model)
    with pytest.raises(ValueError, match="gate_model"):
        per_image_results(get_model("resnet8"), test, cost_model=cost_model)
    assert all(g.runtime is None and g.static_keep is None for g in gated_units(model))


class GapPolicy:
    """An SB3-style policy whose action is the batch-standardised first GAP feature of its observation."""

    def predict(
        self, obs: np.ndarray, state: object = None, episode_start: object = None, deterministic: bool = True
    ) -> tuple[np.ndarray, object]:
        f = obs[:, 0].astype(np.float64)
        return np.clip((f - f.mean()) / (f.std() + 1e-6), -1.0, 1.0)[:, None], state


def test_report_on_a_policy_source(setup: tuple[nn.Module, CostModel, ImageDataset]) -> None:
    from envs.runtime import PolicyRuntimeSource

    model, cost_model, test = setup
    source = PolicyRuntimeSource(GapPolicy(), model, budget=0.5)
    report = per_input_report(model, PruningPlan(runtime_keep=source), test, cost_model=cost_model, batch_size=BATCH)
    assert max(u["kept_std"] for u in report["units"]) > 0.05
    assert report["shuffled"]["decisions_changed"] > 0.5
    json.dumps(report, allow_nan=False)
    assert all(g.runtime is None for g in gated_units(model))
