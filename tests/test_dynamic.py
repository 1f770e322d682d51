"""DynamicModel's batch-1 path: the masked model's keep sets, counts as integers, masks only when read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import images, randomize_, randomize_gates_

from envs.runtime import action_to_ratio
from pruning.export import DynamicModel, export_static, last_kept_count
from pruning.gating import applied_masks, clear_plan, gate_model, gated_units, set_plan, stored_masks
from pruning.models import get_model
from pruning.plan import PruningPlan


def _gated(name: str, seed: int = 4) -> torch.nn.Module:
    return randomize_gates_(gate_model(randomize_(get_model(name), seed=seed)), seed=seed).eval()


@pytest.mark.parametrize("order", ["u_r", "prefix"])
@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize(
    ("static", "tradeoff"), [(None, 1.0), (None, 0.5), ([0.5, 0.25, 0.75], 1.0), ([0.5, 0.25, 0.75], 0.3)]
)
def test_batch1_keep_sets_equal_masked(name: str, static: list[float] | None, tradeoff: float, order: str) -> None:
    """Every branch of the keep-set computation (prefix of the u_r order, or the trade-off pruner on lists), for
    both runtime orders (prefix: slices of the export's channel order instead of gathers)."""
    gated = _gated(name)
    n_units = len(stored_masks(gated))
    static_keep = None if static is None else (static * n_units)[:n_units]
    g = torch.Generator().manual_seed(1)
    ratios = torch.rand(6, n_units, generator=g, dtype=torch.float64)
    ratios[0] = 1.0
    ratios[1] = 0.0
    plan = PruningPlan(static_keep=static_keep, runtime_keep=ratios, tradeoff=tradeoff, runtime_order=order)
    set_plan(gated, plan)
    x = images(6, seed=2)
    with torch.no_grad():
        masked = gated(x)
    masks, stored = applied_masks(gated), stored_masks(gated)
    exported = export_static(gated)
    clear_plan(gated)
    for i in range(len(x)):
        dyn = DynamicModel(exported, ratios[i].tolist())
        with torch.no_grad():
            torch.testing.assert_close(dyn(x[i : i + 1]), masked[i : i + 1], rtol=1e-4, atol=1e-5)
        for unit, mask, st in zip(dyn.units, masks, stored, strict=True):
            assert last_kept_count(unit) == int(mask[i].sum()) and isinstance(last_kept_count(unit), int)
            # the export stores channel frozen_out_index[j] at j: ascending for u_r, the static order for prefix
            assert sorted(unit.frozen_out_index.tolist()) == st.nonzero().squeeze(1).tolist()
            assert torch.equal(unit.last_keep[0], mask[i][unit.frozen_out_index])


@pytest.mark.parametrize("order", ["u_r", "prefix"])
@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize(("static", "tradeoff"), [(None, 1.0), ([0.5, 0.25, 0.75], 0.3)])
def test_batched_path_computes_only_the_channels_the_batch_keeps(
    name: str, static: list[float] | None, tradeoff: float, order: str
) -> None:
    """A batch: the masked model's logits and keep masks, while every unit's conv and its reader see only the
    channels some image keeps (prefix order: the longest kept prefix; u_r order: the union, gathered)."""
    gated = _gated(name)
    n_units = len(stored_masks(gated))
    static_keep = None if static is None else (static * n_units)[:n_units]
    ratios = 0.1 + 0.5 * torch.rand(6, n_units, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plan = PruningPlan(static_keep=static_keep, runtime_keep=ratios, tradeoff=tradeoff, runtime_order=order)
    set_plan(gated, plan)
    x = images(6, seed=2)
    with torch.no_grad():
        masked = gated(x)
    masks = applied_masks(gated)
    exported = export_static(gated)
    clear_plan(gated)
    dyn = DynamicModel(exported, ratios)
    # every reader of a unit (its consumer conv, or the next unit of a plain net): the width of its input
    readers = [m for m in dyn.modules() if getattr(m, "source", None) is not None]
    widths: dict[int, int] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: widths.__setitem__(id(mod), args[0].shape[1])) for m in readers
    ]
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), masked, rtol=1e-4, atol=1e-5)
    for h in hooks:
        h.remove()
    computed = {}
    for unit, mask in zip(dyn.units, masks, strict=True):
        keep = mask[:, unit.frozen_out_index]
        assert torch.equal(unit.last_keep, keep)
        assert torch.equal(last_kept_count(unit), keep.sum(1))
        used = keep.any(0).nonzero().squeeze(1)
        if order == "prefix":  # the longest kept prefix, sliced
            assert unit.last_idx is None and unit.last_prefix == int(used.max()) + 1
            computed[id(unit)] = unit.last_prefix
        else:  # the union of the images' kept channels, gathered
            assert unit.last_prefix is None and torch.equal(unit.last_idx, used)
            computed[id(unit)] = len(used)
    assert readers and all(widths[id(m)] == computed[id(m.source)] for m in readers)  # readers get only those
    assert any(computed[id(u)] < u.conv.out_channels for u in dyn.units)


def test_prefix_order_keeps_a_prefix_of_the_static_ranking() -> None:
    """With runtime_order="prefix" an image's kept set depends only on its keep count: the top of the static
    order (u_s here), whatever u_r says; the u_r order picks different channels for different images."""
    gated = _gated("resnet8")
    with torch.no_grad():  # predictors that rank channels differently per image
        for unit in gated_units(gated):
            unit.predictor.weight.mul_(100.0)
    x = images(8, seed=5)
    kept = {}
    for order in ("u_r", "prefix"):
        set_plan(gated, PruningPlan(runtime_keep=0.5, runtime_order=order))
        with torch.no_grad():
            gated(x)
        kept[order] = applied_masks(gated)
    for unit, mask in zip(gated_units(gated), kept["prefix"], strict=True):
        k = int(mask[0].sum())
        top = torch.zeros_like(mask[0])
        top[torch.sort(unit.static_importance.detach(), descending=True, stable=True).indices[:k]] = True
        assert all(torch.equal(m, top) for m in mask)
    assert any(not torch.equal(m[0], m[i]) for m in kept["u_r"] for i in range(1, len(x)))


def test_prefix_export_slices_instead_of_gathering() -> None:
    """A prefix-order export stores each unit's channels in the static order: the batch-1 path records a
    count (no index tensor), the file round-trips the order, and a plan of the other order is refused."""
    gated = _gated("tiny_cnn")
    exported = export_static(gated, PruningPlan(static_keep=[0.75, 0.5, 1.0], tradeoff=0.5, runtime_order="prefix"))
    dyn = DynamicModel(exported, 0.4)
    with torch.no_grad():
        dyn(images(1))
    assert all(u.last_idx is None and u.last_prefix == u.last_count for u in dyn.units)
    with pytest.raises(ValueError, match="runtime_order='prefix'"):
        set_plan(exported, PruningPlan(runtime_keep=0.5))


def test_masks_are_built_only_when_read() -> None:
    dyn = DynamicModel(export_static(_gated("tiny_cnn"), PruningPlan(tradeoff=1.0)), 0.5)
    with torch.no_grad():
        dyn(images(1))
    unit = dyn.units[0]
    assert unit.__dict__["_last_keep"] is None and unit.last_count == 4  # ceil(0.5 * 8)
    keep = unit.last_keep
    assert keep.shape == (1, 8) and int(keep.sum()) == 4 and unit.last_keep is keep  # built once
    with torch.no_grad():
        dyn(images(3))  # batched: the masked path sets full masks and no count
    assert unit.last_count is None and unit.last_keep.shape == (3, 8)
    assert torch.equal(last_kept_count(unit), unit.last_keep.sum(-1))


class _SingleSource:
    """A runtime source with the batch-1 shortcut ``single`` (a Python float)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        self.calls.append("call")
        return torch.full((gap.shape[0],), 0.3 + 0.2 * unit, dtype=torch.float64)

    def single(self, unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> float:
        self.calls.append("single")
        assert gap.shape == (1, (3, 8, 16)[unit]) and u_r.shape == (1, (8, 16, 16)[unit])  # original widths
        return 0.3 + 0.2 * unit


def test_single_shortcut_is_used_at_batch_1_only() -> None:
    gated = _gated("tiny_cnn")
    source = _SingleSource()
    dyn = DynamicModel(export_static(gated, PruningPlan(static_keep=[0.75, 0.5, 1.0], tradeoff=0.5)), source)
    x = images(2, seed=3)
    with torch.no_grad():
        one = dyn(x[:1])
        assert source.calls == ["single"] * 3
        both = dyn(x)
        assert source.calls[3:] == ["call"] * 3
    torch.testing.assert_close(one, both[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("ratio", "error"),
    [
        (lambda u, g, r: torch.tensor([0.5, 0.5]), "given for 2 samples, batch has 1"),
        (lambda u, g, r: torch.tensor([float("nan")]), "finite and in"),
        (lambda u, g, r: torch.tensor([1.5]), "finite and in"),
    ],
)
def test_bad_ratios_at_batch_1_raise(ratio, error: str) -> None:
    dyn = DynamicModel(export_static(_gated("tiny_cnn")), ratio)
    with torch.no_grad(), pytest.raises(ValueError, match=error):
        dyn(images(1))


def test_python_ratio_mapping_is_numpy_bit_for_bit() -> None:
    """FusedRuntimeSource maps a batch-1 action in Python floats; it must equal action_to_ratio exactly."""
    from agents.fused import FusedRuntimeSource

    g = np.random.default_rng(0)
    actions = np.concatenate(
        [
            g.uniform(-1.2, 1.2, 20_000).astype(np.float32),
            (np.arange(-1000, 1001) / 1000).astype(np.float32),  # round-number ratios and their float32 noise
            np.array([-1.0, 1.0, 0.0, -0.0, 5.0, -5.0], dtype=np.float32),
        ]
    )
    for min_keep, offset in ((0.1, 0.0), (0.2, -0.07), (0.05, 0.3)):
        source = object.__new__(FusedRuntimeSource)  # only the mapping's attributes are needed
        source.min_keep, source.action_offset = min_keep, offset
        expected = action_to_ratio(actions.astype(np.float64) + offset, min_keep)
        got = np.array([source._ratio_of(float(a)) for a in actions])
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("order", ["u_r", "prefix"])
@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
def test_a_runtime_source_sees_what_it_sees_in_the_masked_model(name: str, order: str) -> None:
    """GAP and u_r reach the source at the original channel positions, also when a prefix-order export stores every
    channel in another (the static) order: the source then decides as in the masked model it was trained on."""
    gated = _gated(name)
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"masked": [], "dynamic": []}
    key = ["masked"]

    def source(unit: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        seen[key[0]].append((gap.clone(), u_r.clone()))
        return torch.full((gap.shape[0],), 0.5, dtype=torch.float64)

    plan = PruningPlan(runtime_keep=source, tradeoff=1.0, runtime_order=order)
    set_plan(gated, plan)
    x = images(1, seed=5)
    dyn = DynamicModel(export_static(gated), source)
    if order == "prefix":  # every channel stored, in the static order: no width tells the export to remap
        assert any(not torch.equal(u.frozen_out_index, torch.arange(u.full_channels)) for u in dyn.units)
    with torch.no_grad():
        gated(x)
        key[0] = "dynamic"
        dyn(x)
    assert len(seen["dynamic"]) == len(seen["masked"]) == len(dyn.units)
    for (g_m, u_m), (g_d, u_d) in zip(seen["masked"], seen["dynamic"], strict=True):
        torch.testing.assert_close(g_d, g_m, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(u_d, u_m, rtol=1e-5, atol=1e-6)
