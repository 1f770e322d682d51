"""GatedConv, channel ranking, the trade-off pruner (Chen et al., NeurIPS 2020, Eqs. 3-5) and plan validation."""

from __future__ import annotations

import math

import pytest
import torch
from _nets import images, randomize_, randomize_gates_
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pruning.gating import (
    GatedConv,
    applied_masks,
    clear_plan,
    gate_model,
    gated_units,
    is_gated,
    rank_desc,
    set_plan,
    stored_masks,
    tradeoff_pruned,
)
from pruning.models import get_model
from pruning.plan import PruningPlan, keep_count
from pruning.units import get_units

ALL_MODELS = ["tiny_cnn", "resnet8", "resnet20", "resnet56", "vgg16_bn", "m_cifarnet"]

# ---------------------------------------------------------------------------------------------------------
# A freshly gated model is the base model
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=ALL_MODELS)
def base_model(request):
    return request.param, randomize_(get_model(request.param), seed=11)


@pytest.mark.parametrize("predictor", [True, False])
def test_fresh_gated_model_equals_base(base_model, predictor):
    name, model = base_model
    gated = gate_model(model, predictor=predictor).eval()
    assert is_gated(gated) and not is_gated(model)
    units = gated_units(gated)
    assert len(units) == len(get_units(model)) > 0
    assert all((g.predictor is not None) == predictor for g in units)
    x = images(3, seed=1)
    with torch.no_grad():
        expected = model(x)
        got = gated(x)
    assert expected.abs().max() > 0.1  # not vanishing logits, so atol means something
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # no plan: every unit keeps every channel
    assert all(m.all() and m.shape == (3, g.full_channels) for m, g in zip(applied_masks(gated), units, strict=True))


def test_fresh_gated_model_equals_base_in_train_mode():
    # BN_noaffine(z)·γ + β is BN with batch statistics too, and the running statistics move the same way
    base = randomize_(get_model("resnet8"), seed=2)
    gated = gate_model(base)
    base.train()
    gated.train()
    x = images(8, seed=3)
    torch.testing.assert_close(gated(x), base(x), rtol=1e-4, atol=1e-5)
    bn = base.layer1[0].bn1
    torch.testing.assert_close(gated.layer1[0].conv1.bn.running_var, bn.running_var)


def test_gate_model_does_not_modify_input_and_refuses_gated():
    base = get_model("tiny_cnn")
    gated = gate_model(base)
    assert not is_gated(base)
    with pytest.raises(ValueError, match="gated already"):
        gate_model(gated)
    inplace = gate_model(base, inplace=True)
    assert inplace is base and is_gated(base)


def test_gated_units_of_plain_model_raises():
    with pytest.raises(ValueError, match="gate_model"):
        gated_units(get_model("tiny_cnn"))


def test_applied_masks_before_forward_raises():
    with pytest.raises(ValueError, match="no forward pass"):
        applied_masks(gate_model(get_model("tiny_cnn")))


# ---------------------------------------------------------------------------------------------------------
# Ranking and counts
# ---------------------------------------------------------------------------------------------------------


def test_rank_desc_ties_go_to_lower_index():
    assert rank_desc(torch.tensor([0.2, 0.9, 0.2])).tolist() == [1, 0, 2]
    assert rank_desc(torch.zeros(5)).tolist() == [0, 1, 2, 3, 4]
    assert rank_desc(torch.tensor([1.0, float("-inf"), 3.0, float("-inf")])).tolist() == [1, 2, 0, 3]
    rows = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.0, 0.0, 5.0, 0.0]])
    assert rank_desc(rows).tolist() == [[0, 2, 1, 3], [1, 2, 0, 3]]


@pytest.mark.parametrize(
    ("ratio", "channels", "expected"),
    [
        (0.7, 10, 7),  # 0.7 * 10 = 7.000000000000001 in floating point: still 7
        (0.3, 10, 3),  # 3.0000000000000004
        (0.71, 10, 8),  # ceil
        (0.5, 16, 8),  # not floor(a·C) + 1 = 9 as in the released code
        (0.0, 16, 1),  # at least one channel
        (0.01, 16, 1),
        (1.0, 16, 16),
        (0.999, 16, 16),
        (1 / 3, 3, 1),
        (2 / 3, 3, 2),
    ],
)
def test_keep_count(ratio, channels, expected):
    assert int(keep_count(ratio, channels)) == expected


def test_keep_count_vectorised():
    assert keep_count(torch.tensor([0.0, 0.25, 0.26, 1.0]), 8).tolist() == [1, 2, 3, 8]


# ---------------------------------------------------------------------------------------------------------
# The trade-off pruner against hand-worked examples
# ---------------------------------------------------------------------------------------------------------

# C = 8 channels.
# u_s order, most to least important: 3, 0, 5, 1, 7, 2, 6, 4  ->  static rank per channel:
STATIC_RANK = torch.tensor([1, 3, 5, 0, 7, 2, 6, 4])
# static keep k_s = 3 (channels 3, 0, 5): M_s = {1, 7, 2, 6, 4}
M_S = {1, 2, 4, 6, 7}
# Sample 0: u_r order 7, 6, 0, 3, 1, 4, 2, 5 -> rank [2, 4, 6, 3, 5, 7, 1, 0]; keep k_r = 4 (7, 6, 0, 3):
#   M_r = {1, 4, 2, 5}
# Sample 1: u_r order 1, 2, 4, 6, 7, 5, 0, 3 -> rank [6, 0, 1, 7, 2, 5, 3, 4]; keep k_r = 3 (1, 2, 4):
#   M_r = {6, 7, 5, 0, 3}
RUNTIME_RANK = torch.tensor([[2, 4, 6, 3, 5, 7, 1, 0], [6, 0, 1, 7, 2, 5, 3, 4]])
M_R = [{1, 2, 4, 5}, {0, 3, 5, 6, 7}]
#
# Sample 0: M_o = M_s ∧ M_r = {1, 2, 4}; runtime-only M_r - M_o = {5} (1 channel); static-only M_s - M_o = {6, 7}.
#   R_r = 0.5:  floor(0.5·1) = 0 runtime-only;  floor(0.5·2) = 1 static-only, the lowest u_s of {6 (rank 6),
#               7 (rank 4)} = 6                                                  -> {1, 2, 4, 6}
#   R_r = 0.75: floor(0.75·1) = 0;  floor(0.25·2) = 0                             -> {1, 2, 4}
#   R_r = 0.25: floor(0.25·1) = 0;  floor(0.75·2) = 1 -> 6                        -> {1, 2, 4, 6}
#   R_r = 1:    floor(1·1) = 1 -> 5;  floor(0·2) = 0                               -> {1, 2, 4, 5} = M_r
#   R_r = 0:    0 runtime-only;  floor(1·2) = 2 -> 6, 7                            -> {1, 2, 4, 6, 7} = M_s
# Sample 1: M_o = {6, 7}; runtime-only = {0, 3, 5} (u_r ranks 6, 7, 5); static-only = {1, 2, 4} (u_s ranks 3, 5, 7).
#   R_r = 0.5:  floor(1.5) = 1 runtime-only: lowest u_r = 3;  floor(1.5) = 1 static-only: lowest u_s = 4
#                                                                                -> {6, 7, 3, 4}
#   R_r = 0.75: floor(2.25) = 2 runtime-only: 3, 0;  floor(0.75) = 0               -> {6, 7, 3, 0}
#   R_r = 0.25: floor(0.75) = 0;  floor(2.25) = 2 static-only: 4, 2                -> {6, 7, 4, 2}
#   R_r = 1:    all runtime-only                                                  -> {0, 3, 5, 6, 7} = M_r
#   R_r = 0:    all static-only                                                   -> {1, 2, 4, 6, 7} = M_s
HAND_WORKED = {
    0.0: [{1, 2, 4, 6, 7}, {1, 2, 4, 6, 7}],
    0.25: [{1, 2, 4, 6}, {2, 4, 6, 7}],
    0.5: [{1, 2, 4, 6}, {3, 4, 6, 7}],
    0.75: [{1, 2, 4}, {0, 3, 6, 7}],
    1.0: [{1, 2, 4, 5}, {0, 3, 5, 6, 7}],
}


def _as_mask(sets: list[set[int]], c: int = 8) -> torch.Tensor:
    return torch.tensor([[ch in s for ch in range(c)] for s in sets])


def test_hand_worked_masks_match_their_ranks():
    # the M_s / M_r sets written above are what the ranks and keep counts say
    assert _as_mask([M_S])[0].tolist() == (STATIC_RANK >= 3).tolist()
    assert _as_mask(M_R).tolist() == (RUNTIME_RANK >= torch.tensor([[4], [3]])).tolist()


@pytest.mark.parametrize("rate", sorted(HAND_WORKED))
def test_tradeoff_pruned_hand_worked(rate):
    pruned = tradeoff_pruned(STATIC_RANK >= 3, _as_mask(M_R), STATIC_RANK, RUNTIME_RANK, rate)
    assert pruned.dtype == torch.bool and pruned.shape == (2, 8)
    assert [set(row.nonzero().flatten().tolist()) for row in pruned] == HAND_WORKED[rate]


def test_tradeoff_extremes_are_pure_runtime_and_pure_static():
    s, r = STATIC_RANK >= 3, _as_mask(M_R)
    assert torch.equal(tradeoff_pruned(s, r, STATIC_RANK, RUNTIME_RANK, 1.0), r)
    assert torch.equal(tradeoff_pruned(s, r, STATIC_RANK, RUNTIME_RANK, 0.0), s.expand(2, 8))
    # per-sample rows differ whenever the runtime side has a say
    for rate in (0.5, 0.75, 1.0):
        rows = tradeoff_pruned(s, r, STATIC_RANK, RUNTIME_RANK, rate)
        assert not torch.equal(rows[0], rows[1])


# ---------------------------------------------------------------------------------------------------------
# GatedConv under a plan, with importances chosen by the test
# ---------------------------------------------------------------------------------------------------------


def _unit(channels: int, seed: int = 0) -> tuple[nn.Sequential, GatedConv]:
    """One gated 1×1 unit whose runtime importance is its input: ``u_r = I·GAP(x) + 0``.

    With 1×1 inputs the GAP is the input itself, so a test sets ``u_r`` exactly by choosing ``x``.
    """
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 1.5 + 0.5)
        bn.running_mean.copy_(torch.randn(channels, generator=g) * 0.1)
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g) * 0.1)
    unit = GatedConv(conv, bn)
    unit.unit_index = 0
    assert unit.predictor is not None
    with torch.no_grad():
        unit.predictor.weight.copy_(torch.eye(channels))
        unit.predictor.bias.zero_()
    return nn.Sequential(unit).eval(), unit


def _inputs(u_r: torch.Tensor) -> torch.Tensor:
    return u_r[:, :, None, None].clone()


def _set_us(unit: GatedConv, u_s: torch.Tensor) -> None:
    assert unit.static_importance is not None
    with torch.no_grad():
        unit.static_importance.copy_(u_s)


def _top(scores: torch.Tensor, k: int) -> set[int]:
    return set(rank_desc(scores).lt(k).nonzero().flatten().tolist())


U_S = torch.tensor([0.9, 1.4, 0.6, 1.1, 0.7, 1.3, 0.5, 1.0, 1.2, 0.8])  # distinct, C = 10


@pytest.mark.parametrize("ratio", [0.0, 0.15, 0.3, 0.5, 0.7, 0.95, 1.0])
def test_static_plan_keeps_top_ks_by_us(ratio):
    model, unit = _unit(10)
    _set_us(unit, U_S)
    set_plan(model, PruningPlan(static_keep=[ratio]))
    u_r = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(_inputs(u_r))
    k_s = max(1, math.ceil(round(ratio * 10, 9)))
    keep = applied_masks(model)[0]
    assert keep.shape == (4, 10)
    for row in keep:
        assert set(row.nonzero().flatten().tolist()) == _top(U_S, k_s)
    assert stored_masks(model)[0].tolist() == keep[0].tolist()
    # pruned channels output exactly 0; kept ones are untouched
    clear_plan(model)
    with torch.no_grad():
        full = model(_inputs(u_r))
    assert torch.all(out[:, ~keep[0]] == 0)
    torch.testing.assert_close(out[:, keep[0]], full[:, keep[0]])


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_runtime_plan_keeps_top_per_sample_by_ur(ratio):
    model, unit = _unit(8)
    _set_us(unit, U_S[:8])
    u_r = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    set_plan(model, PruningPlan(runtime_keep=ratio))  # R_r defaults to 1
    with torch.no_grad():
        model(_inputs(u_r))
    k_r = max(1, math.ceil(round(ratio * 8, 9)))
    keep = applied_masks(model)[0]
    for i in range(5):
        assert set(keep[i].nonzero().flatten().tolist()) == _top(u_r[i], k_r)
    assert stored_masks(model)[0].all()  # nothing is stored-pruned without a static plan
    if 0 < ratio < 1:
        assert len({tuple(r.tolist()) for r in keep}) > 1  # samples choose differently


def test_per_sample_runtime_ratios():
    model, _ = _unit(8)
    u_r = torch.randn(3, 8, generator=torch.Generator().manual_seed(3))
    ratios = torch.tensor([[0.25], [0.5], [1.0]])
    set_plan(model, PruningPlan(runtime_keep=ratios))
    with torch.no_grad():
        model(_inputs(u_r))
    keep = applied_masks(model)[0]
    assert keep.sum(1).tolist() == [2, 4, 8]
    assert set(keep[0].nonzero().flatten().tolist()) == _top(u_r[0], 2)


def test_stored_channels_half_tradeoff():
    # C = 10, k_s = ceil(0.3·10) = 3, R_r = 0.5: floor(0.5·7) = 3 channels of lowest u_s are never computed
    model, unit = _unit(10)
    _set_us(unit, U_S)
    set_plan(model, PruningPlan(static_keep=[0.3], runtime_keep=0.4, tradeoff=0.5))
    stored = stored_masks(model)[0]
    lowest3 = {6, 2, 4}  # u_s = 0.5, 0.6, 0.7
    assert set((~stored).nonzero().flatten().tolist()) == lowest3
    u_r = torch.randn(16, 10, generator=torch.Generator().manual_seed(4))
    u_r[:, 6] = 100.0  # the best runtime channel everywhere, yet not stored
    with torch.no_grad():
        out = model(_inputs(u_r))
    keep = applied_masks(model)[0]
    assert not keep[:, ~stored].any()
    assert torch.all(out[:, ~stored] == 0)
    # runtime off: exactly the stored channels
    set_plan(model, PruningPlan(static_keep=[0.3], tradeoff=0.5))
    with torch.no_grad():
        model(_inputs(u_r))
    assert torch.equal(applied_masks(model)[0], stored.expand(16, 10))


def _reference_keep(
    u_s: list[float], u_r: list[float], a_s: float | None, a_r: float | None, rate: float
) -> tuple[set[int], set[int], int]:
    """Eqs. 3-5 of Chen et al. written out with sorted lists, plus the stored-channel rule of docs/architecture.md.

    Returns ``(kept, stored, overlap)``.
    """
    c = len(u_s)
    eps = 1e-9

    def count(a: float) -> int:
        return min(c, max(1, math.ceil(a * c - eps)))

    by_us = sorted(range(c), key=lambda ch: (-u_s[ch], ch))  # most important first, ties to lower index
    if a_s is None:
        m_s: set[int] = set()
        stored = set(range(c))
    else:
        k_s = count(a_s)
        m_s = set(by_us[k_s:])
        n_removed = math.floor((1 - rate) * (c - k_s) + eps)
        stored = set(by_us[: c - n_removed])
    if a_r is None:
        return stored, stored, 0
    k_r = min(count(a_r), len(stored))
    # non-stored channels rank after every stored one (so they are always runtime-pruned)
    by_ur = sorted(range(c), key=lambda ch: (ch not in stored, -u_r[ch] if ch in stored else 0.0, ch))
    m_r = set(by_ur[k_r:])
    m_o = m_s & m_r
    only_r = [ch for ch in by_ur if ch in m_r - m_o]  # most important first
    only_s = [ch for ch in by_us if ch in m_s - m_o]
    n_r = math.floor(rate * len(only_r) + eps)
    n_s = math.floor((1 - rate) * len(only_s) + eps)
    pruned = m_o | set(only_r[len(only_r) - n_r :]) | set(only_s[len(only_s) - n_s :])
    return set(range(c)) - pruned, stored, len(m_o)


_ratio = st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 1.0]), st.floats(0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(
    c=st.integers(2, 12),
    n=st.integers(1, 4),
    data=st.data(),
    a_s=st.one_of(st.none(), _ratio),
    a_r=st.one_of(st.none(), _ratio),
    rate=st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0)),
)
def test_gated_conv_matches_reference_pruner(c, n, data, a_s, a_r, rate):
    # importances on a coarse grid, so ties are frequent and exactly representable
    u_s = data.draw(st.lists(st.integers(2, 6), min_size=c, max_size=c))
    u_r = data.draw(st.lists(st.lists(st.integers(-8, 8), min_size=c, max_size=c), min_size=n, max_size=n))
    us_t = torch.tensor(u_s, dtype=torch.float32) / 4
    ur_t = torch.tensor(u_r, dtype=torch.float32) / 4
    model, unit = _unit(c)
    _set_us(unit, us_t)
    plan = PruningPlan(static_keep=None if a_s is None else [a_s], runtime_keep=a_r, tradeoff=rate)
    set_plan(model, plan)
    with torch.no_grad():
        out = model(_inputs(ur_t))
    keep = applied_masks(model)[0]
    stored = stored_masks(model)[0]
    assert keep.shape == (n, c)
    for i in range(n):
        kept, ref_stored, overlap = _reference_keep(us_t.tolist(), ur_t[i].tolist(), a_s, a_r, rate)
        assert set(keep[i].nonzero().flatten().tolist()) == kept
        assert set(stored.nonzero().flatten().tolist()) == ref_stored
        # Eqs. 3-5: |pruned| = o + floor(R·(n_r - o)) + floor((1 - R)·(n_s - o)), between the expected
        # R·n_r + (1 - R)·n_s (less two floors) and that value
        if a_r is not None and a_s is not None:
            n_s = c - int(keep_count(a_s, c))
            n_r = c - min(int(keep_count(a_r, c)), int(stored.sum()))
            pruned = c - len(kept)
            assert pruned == overlap + math.floor(rate * (n_r - overlap) + 1e-9) + math.floor(
                (1 - rate) * (n_s - overlap) + 1e-9
            )
            expected = rate * n_r + (1 - rate) * n_s
            assert expected - 2 < pruned <= expected + 1e-6
    # never a channel that is not stored; pruned channels output exactly zero
    assert not keep[:, ~stored].any()
    assert torch.all(out.squeeze(-1).squeeze(-1)[~keep] == 0)
    if a_s is not None:
        k_s = int(keep_count(a_s, c))
        assert int(stored.sum()) == c - math.floor((1 - rate) * (c - k_s) + 1e-9)
        assert stored[rank_desc(us_t) < k_s].all()  # the static top-k_s is always stored


def test_static_scores_override_us():
    model, unit = _unit(10)
    _set_us(unit, U_S)
    scores = -U_S  # the reverse order
    set_plan(model, PruningPlan(static_keep=[0.3], static_scores=[scores]))
    with torch.no_grad():
        model(_inputs(torch.randn(2, 10, generator=torch.Generator().manual_seed(5))))
    keep = applied_masks(model)[0]
    assert set(keep[0].nonzero().flatten().tolist()) == _top(scores, 3) == {6, 2, 4}
    assert set(stored_masks(model)[0].nonzero().flatten().tolist()) == {6, 2, 4}
    # later changes to the caller's tensor do not leak into the plan
    scores.fill_(0.0)
    with torch.no_grad():
        model(_inputs(torch.randn(2, 10)))
    assert set(applied_masks(model)[0][0].nonzero().flatten().tolist()) == {6, 2, 4}


def test_model_level_static_plan_counts():
    model = gate_model(randomize_(get_model("resnet8"), seed=5))
    randomize_gates_(model, seed=5)
    ratios = [0.2, 0.55, 0.9]
    set_plan(model, PruningPlan(static_keep=ratios))
    with torch.no_grad():
        model(images(2))
    for mask, ratio, g in zip(applied_masks(model), ratios, gated_units(model), strict=True):
        c = g.full_channels
        assert mask.sum(1).tolist() == [math.ceil(ratio * c)] * 2
        assert set(mask[0].nonzero().flatten().tolist()) == _top(g.static_importance.detach(), math.ceil(ratio * c))


# ---------------------------------------------------------------------------------------------------------
# Plan validation
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gated_tiny():
    return gate_model(get_model("tiny_cnn")).eval()  # 3 units of 8, 16, 16 channels


NAN = float("nan")


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        (PruningPlan(static_keep=[0.5, NAN, 0.5]), r"static keep ratio of unit 1 is not finite"),
        (PruningPlan(static_keep=[0.5, 1.5, 0.5]), r"contains 1\.5; keep ratios must lie in \[0, 1\]"),
        (PruningPlan(static_keep=[0.5, -0.1, 0.5]), r"contains -0\.1"),
        (PruningPlan(static_keep=[0.5, 0.5]), r"static_keep has 2 ratios but the model has 3 prunable units"),
        (PruningPlan(runtime_keep=NAN), r"runtime keep ratio is nan"),
        (PruningPlan(runtime_keep=1.01), r"runtime keep ratio contains 1\.01"),
        (PruningPlan(runtime_keep=[0.5, 0.5]), r"runtime_keep has shape \(2,\); expected a scalar, \(3,\)"),
        (PruningPlan(runtime_keep=torch.full((2, 3, 1), 0.5)), r"runtime_keep has shape \(2, 3, 1\)"),
        (PruningPlan(runtime_keep=torch.full((2, 4), 0.5)), r"\(batch, 3\)"),
        (PruningPlan(static_keep=[0.5] * 3, runtime_keep=0.5), r"needs tradeoff=R_r"),
        (PruningPlan(static_keep=[0.5] * 3, runtime_keep=0.5, tradeoff=1.5), r"tradeoff R_r must be in \[0, 1\]"),
        (PruningPlan(static_keep=[0.5] * 3, tradeoff=-0.1), r"tradeoff R_r must be in \[0, 1\], got -0\.1"),
        (PruningPlan(static_keep=[0.5] * 3, tradeoff=NAN), r"tradeoff R_r must be in \[0, 1\], got nan"),
        (PruningPlan(static_keep=[0.5] * 3, static_scores=[torch.ones(8)] * 2), r"static_scores has 2 entries"),
        (
            PruningPlan(static_keep=[0.5] * 3, static_scores=[torch.ones(8), torch.ones(8), torch.ones(16)]),
            r"static_scores\[1\] has shape \(8,\), expected \(16,\)",
        ),
        (
            PruningPlan(static_keep=[0.5] * 3, static_scores=[torch.ones(8), torch.ones(16), torch.full((16,), NAN)]),
            r"static_scores\[2\] contains NaN",
        ),
    ],
)
def test_bad_plans_raise_and_leave_model_unchanged(gated_tiny, plan, match):
    good = PruningPlan(static_keep=[0.25, 0.5, 0.75])
    set_plan(gated_tiny, good)
    before = [(g.static_keep, g.tradeoff, g.runtime) for g in gated_units(gated_tiny)]
    with pytest.raises(ValueError, match=match):
        set_plan(gated_tiny, plan)
    assert [(g.static_keep, g.tradeoff, g.runtime) for g in gated_units(gated_tiny)] == before


def test_runtime_batch_mismatch_raises_at_forward(gated_tiny):
    set_plan(gated_tiny, PruningPlan(runtime_keep=torch.full((3, 3), 0.5)))
    with pytest.raises(ValueError, match="runtime ratios given for 3 samples, batch has 4"):
        with torch.no_grad():
            gated_tiny(images(4))
    clear_plan(gated_tiny)


def test_runtime_source_bad_output_raises(gated_tiny):
    set_plan(gated_tiny, PruningPlan(runtime_keep=lambda i, gap, u_r: torch.full((gap.shape[0],), 2.0)))
    with pytest.raises(ValueError, match=r"runtime keep ratios must be finite and in \[0, 1\]"):
        with torch.no_grad():
            gated_tiny(images(2))
    clear_plan(gated_tiny)


def test_runtime_source_sees_gap_and_ur(gated_tiny):
    seen = []

    def source(index, gap, u_r):
        seen.append((index, tuple(gap.shape), tuple(u_r.shape)))
        return torch.full((gap.shape[0],), 0.5)

    set_plan(gated_tiny, PruningPlan(runtime_keep=source))
    with torch.no_grad():
        gated_tiny(images(2))
    assert seen == [(0, (2, 3), (2, 8)), (1, (2, 8), (2, 16)), (2, (2, 16), (2, 16))]
    assert [int(m[0].sum()) for m in applied_masks(gated_tiny)] == [4, 8, 8]
    clear_plan(gated_tiny)


# ---------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------


def test_gradients_flow_through_kept_channels_only():
    torch.manual_seed(0)
    c = 8
    conv = nn.Conv2d(4, c, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.normal_(0, 0.1).add_(0.5)  # mostly positive pre-activations: ReLU passes gradients
    unit = GatedConv(conv, bn).eval()
    unit.unit_index = 0
    assert unit.predictor is not None and unit.static_importance is not None
    with torch.no_grad():
        unit.predictor.weight.normal_(0, 0.01)
        unit.static_importance.uniform_(0.5, 1.5)
    model = nn.Sequential(unit).eval()
    set_plan(model, PruningPlan(static_keep=[0.5], runtime_keep=torch.tensor([[0.25], [1.0]]), tradeoff=0.5))
    x = torch.randn(2, 4, 6, 6)
    for i in range(2):  # one sample at a time: its own mask decides its gradient
        model.zero_grad()
        out = model(x)
        keep = applied_masks(model)[0][i]
        (out[i] * torch.randn_like(out[i])).sum().backward()
        assert unit.static_importance.grad is not None and unit.predictor.weight.grad is not None
        assert torch.all(unit.static_importance.grad[~keep] == 0)
        assert torch.all(unit.static_importance.grad[keep] != 0)
        assert torch.all(unit.predictor.weight.grad[~keep] == 0)
        assert torch.all(unit.predictor.weight.grad[keep].abs().sum(1) > 0)
        assert torch.all(unit.conv.weight.grad[~keep] == 0)
        assert torch.all(unit.beta.grad[~keep] == 0)
    # k_s = 4, 2 channels never stored; sample 0 keeps 3 or 4 channels, sample 1 keeps 5 (Eqs. 3-5)
    masks = applied_masks(model)[0]
    assert masks.sum(1).tolist()[0] in (3, 4) and masks.sum(1).tolist()[1] == 5
