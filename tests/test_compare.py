"""``compare``: policy specs × budgets on one base model (static, runtime and training-based policies), the
results.csv / results.md / pareto.png outputs, and the CLI."""

from __future__ import annotations

import copy
import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from _nets import randomize_, randomize_gates_
from torch import nn

import agents.baselines.base as baselines_base
import agents.compare as compare_module
import pruning.train as training
from agents.baselines import (
    BuiltModel,
    PruningTarget,
    TrainContext,
    TrainedBaseline,
    get_baseline,
    list_baselines,
    register_baseline,
)
from agents.compare import (
    CSV_FIELDS,
    CompareSettings,
    compare,
    default_policies,
    main,
    measure_latency,
    parse_policy,
    read_csv,
    run_cell,
)
from envs import RUNTIME_ENV_ID, STATIC_ENV_ID
from envs.runtime import RuntimePruningEnv
from envs.static import StaticPruningEnv
from pruning import cli
from pruning.accounting import model_cost
from pruning.checkpoint import save_model
from pruning.data import ImageDataset, get_dataset
from pruning.export import export_static
from pruning.gating import gate_model, gated_units
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.train import dataset_for_model, evaluate
from pruning.units import get_units

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL: dict[str, Any] = {
    "model": "tiny_cnn",
    "weights": None,
    "dataset": "synthetic",
    "num_val": 16,
    "test_images": 32,
    "progress": False,
}


def _table_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")][2:]  # skip the header and the rule
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_compare_writes_table_csv_and_plot(tmp_path: Path) -> None:
    policies, budgets = ["l1", "uniform", "neuron_merging", "l1:allocation=global"], [0.5, 0.7]
    rows = compare(policies, budgets, out_dir=tmp_path, latency=True, **SMALL)
    assert len(rows) == len(policies) * len(budgets)
    for row in rows:
        assert row["kind"] == "static" and row["model"] == "tiny_cnn"
        assert row["mac_fraction"] <= row["budget"] + 1e-12
        assert 0 < row["params_fraction"] <= 1
        assert row["latency_b1_ms"] > 0 and row["latency_b128_ms"] > 0
        assert row["test_images"] == 32 and row["train_epochs"] == 0.0
        assert json.loads(row["info"])["criterion"] == "l1"
        if row["policy"] != "neuron_merging":  # merging changes the weights after the env scored the plan
            assert row["val_top1"] == pytest.approx(row["val_top1_env"])
    # keep ratios are kept / full channels of every unit
    channels = [u.out_channels for u in get_units(get_model("tiny_cnn"))]
    for row in rows:
        counts = [float(r) * c for r, c in zip(row["keep_ratios"].split(), channels, strict=True)]
        assert all(abs(k - round(k)) < 0.01 for k in counts)
    # the two allocations give different plans at the same budget
    ratios = {(r["policy"], r["budget"]): r["keep_ratios"] for r in rows}
    assert ratios[("l1", 0.5)] != ratios[("l1:allocation=global", 0.5)]

    csv_rows = _csv(tmp_path / "results.csv")
    assert list(csv_rows[0]) == CSV_FIELDS and len(csv_rows) == len(rows)
    back = read_csv(tmp_path / "results.csv")  # numbers come back as numbers
    assert [{k: r[k] for k in ("policy", "seed", "params", "info")} for r in back] == [
        {k: r[k] for k in ("policy", "seed", "params", "info")} for r in rows
    ]
    assert all(b["test_top1"] == pytest.approx(r["test_top1"]) for b, r in zip(back, rows, strict=True))
    assert all(float(r["mac_fraction"]) <= float(r["budget"]) + 1e-12 for r in csv_rows)

    table = _table_rows((tmp_path / "results.md").read_text())
    assert sorted((r[0], float(r[1])) for r in table) == sorted((p, b) for p in policies for b in budgets)

    png = tmp_path / "pareto.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(str(png))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def _test_split(net: nn.Module) -> ImageDataset:
    data = dataset_for_model(get_dataset("synthetic", split="test"), net)
    return data.subset(torch.from_numpy(np.linspace(0, len(data), num=32, endpoint=False).astype(np.int64)))


def test_neuron_merging_row_scores_the_transformed_model(tmp_path: Path) -> None:
    """compare scores ``policy.transform(base, plan)``: Neuron Merging's compensated model, not the sliced one."""
    net = randomize_(get_model("tiny_cnn"), seed=2)
    spec = "neuron_merging:criterion=l2_gm,threshold=0.0"
    rows = compare(["l1", spec], [0.5], out_dir=tmp_path, latency=False, **{**SMALL, "model": net, "weights": None})
    merged = rows[1]
    assert json.loads(merged["info"])["criterion"] == "l2_gm"
    assert merged["params"] == rows[0]["params"]  # same shapes as plain pruning at the same uniform ratio
    policy = get_baseline("neuron_merging", criterion="l2_gm", threshold=0.0)
    env = StaticPruningEnv(model=net, dataset="synthetic", num_val=16, budget=0.5, criterion="l2_gm")
    policy.prepare(env)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, _, done, _, _ = env.step(policy.predict(obs)[0])
    model = policy.transform(net, env.final_plan())
    assert merged["test_top1"] == evaluate(model, _test_split(net))["top1"]
    sliced = export_static(net, env.final_plan())
    x = env.validation_data[0]
    with torch.no_grad():
        assert not torch.allclose(model(x), sliced(x))  # what was scored is not plain slicing


def test_seeds_give_mean_and_std_for_stochastic_policies(tmp_path: Path) -> None:
    rows = compare(["random", "l2", "pfp"], [0.5], seeds=(0, 1, 2), out_dir=tmp_path, latency=False, **SMALL)
    assert [r["seed"] for r in rows if r["policy"] == "random"] == [0, 1, 2]
    assert [r["seed"] for r in rows if r["policy"] == "pfp"] == [0, 1, 2]  # PFP samples its channels
    assert [r["seed"] for r in rows if r["policy"] == "l2"] == [0]  # deterministic: once
    assert json.loads(rows[-1]["info"])["criterion"] in ("pfp_sampled", "pfp_sampled_criterion")
    table = {r[0]: r for r in _table_rows((tmp_path / "results.md").read_text())}
    assert table["random"][2] == "3" and "±" in table["random"][6]
    assert table["l2"][2] == "1" and "±" not in table["l2"][6]


def test_parse_policy() -> None:
    spec = parse_policy("neuron_merging:criterion=l2_gm, threshold=0.2,lam=1")
    assert spec.label == "neuron_merging:criterion=l2_gm, threshold=0.2,lam=1"
    assert (spec.name, spec.kind) == ("neuron_merging", "static")
    assert spec.kwargs == {"criterion": "l2_gm", "threshold": 0.2, "lam": 1} and not spec.repeats
    assert parse_policy("pfp").repeats and not parse_policy("pfp:deterministic=true").repeats
    assert not parse_policy("random:seed=4").repeats  # a fixed seed: once
    assert parse_policy("fbs").kind == "runtime"
    with pytest.raises(ValueError, match="unknown baseline 'l3'"):
        parse_policy("l3")
    with pytest.raises(ValueError, match="allocation"):
        parse_policy("l1:allocation=local")
    with pytest.raises(ValueError, match="unexpected keyword argument 'colour'.*UniformBaseline"):
        parse_policy("uniform:colour=red")
    with pytest.raises(ValueError, match="key=value"):
        parse_policy("uniform:budget")
    assert default_policies() == list_baselines()


def test_saved_agent_files_are_refused_with_the_way_forward(tmp_path: Path) -> None:
    agent = tmp_path / "ppo_agent.zip"
    agent.write_bytes(b"")
    for spec in (str(agent), "runs/ppo_resnet20", "agent.zip", str(tmp_path)):
        with pytest.raises(ValueError, match="saved agents join compare as the run directory train_agent.py wrote"):
            compare([spec], [0.5], out_dir=tmp_path / "out", **SMALL)
    with pytest.raises(ValueError, match="unknown baseline"):
        compare(["l3"], [0.5], out_dir=tmp_path / "out", **SMALL)
    assert not (tmp_path / "out").exists()


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = [
        "--policies", "l1", "random", "--budgets", "0.6", "--model", "tiny_cnn", "--weights", "none",
        "--dataset", "synthetic", "--num-val", "16", "--test-images", "16", "--seeds", "0", "1",
        "--out", str(out), "--no-progress", "--no-latency",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| policy |" in printed and "| random | 0.6 | 2 |" in printed
    assert "| base | 1 | 1 | 1.0000 |" in printed  # the unpruned reference comes first
    base = _csv(out / "results.csv")[0]
    assert (base["policy"], base["kind"], float(base["params_fraction"])) == ("base", "base", 1.0)
    assert all((out / name).is_file() for name in ("results.csv", "results.md", "pareto.png"))
    assert main([argv[0], str(tmp_path / "agent.zip"), *argv[3:]]) == 2
    assert "train_agent run directory" in capsys.readouterr().err  # not a run directory: the way forward


def test_registered_as_prunegym_command() -> None:
    assert cli.get_command("compare").target == "agents.compare:main"


def test_envs_are_made_by_their_registered_ids() -> None:
    settings = CompareSettings(
        model="tiny_cnn", weights=None, gated_model=None, dataset="synthetic", data_dir=None, num_val=16,
        test_images=32, finetune_epochs=0, finetune_images=None, train_epochs=0.0, latency=False,
        latency_threads=None, device="cpu", progress=False,
    )  # fmt: skip
    for label in ("l1", "fbs"):
        assert isinstance(run_cell(settings, parse_policy(label), 0.5, 0), dict)
    bench = compare_module._PROCESS_CELLS[settings.key].bench
    assert [env.spec.id for env in bench.static_envs.values()] == [STATIC_ENV_ID]
    assert [env.spec.id for env in bench.runtime_envs.values()] == [RUNTIME_ENV_ID]


def test_equal_finetune_runs_on_a_fixed_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int, int, nn.Module]] = []

    def spy(model: nn.Module, data: ImageDataset, config: Any, **kw: Any) -> dict[str, Any]:
        seen.append((data.split, len(data), config.epochs, model))
        return training.train(model, data, config, **kw)

    monkeypatch.setattr("agents.compare.train", spy)
    rows = compare(["l1", "fbs"], [0.5], finetune_epochs=1, finetune_images=32, out_dir=tmp_path, latency=False,
                   **SMALL)  # fmt: skip
    assert [r["finetune_epochs"] for r in rows] == [1, 1] and rows[0]["mac_fraction"] <= 0.5
    # the same fine-tune for both, on the same 32 training images; the runtime model with its plan in place
    assert [s[:3] for s in seen] == [("train", 32, 1), ("train", 32, 1)]
    assert all(g.runtime is not None for g in gated_units(seen[1][3]))
    with pytest.raises(ValueError, match="finetune_epochs"):
        compare(["l1"], [0.5], finetune_epochs=-1, out_dir=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="finetune_images"):
        compare(["l1"], [0.5], finetune_epochs=1, finetune_images=0, out_dir=tmp_path, **SMALL)


# ------------------------------------------------------------------------------------------------------------
# training-based methods
# ------------------------------------------------------------------------------------------------------------

_CALLS: list[tuple[float, int, float, int]] = []


class _HalfWidth(TrainedBaseline):
    """A stand-in training-based method: keeps the L1-top half of every unit and trains for ``epochs``."""

    def build(self, base: nn.Module, context: TrainContext) -> BuiltModel:
        before = {k: v.clone() for k, v in base.state_dict().items()}
        n = len(model_cost(base).macs)
        plan = PruningPlan(static_keep=[0.5] * 3)
        model = export_static(base, plan)
        steps = round(context.epochs * len(context.train_set) / 16)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(context.seed)
        for _ in range(steps):
            idx = torch.randint(len(context.train_set), (16,), generator=g)
            x = context.train_set.normalize(context.train_set.images[idx])
            loss = nn.functional.cross_entropy(model.train()(x), context.train_set.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        _CALLS.append((context.budget, context.seed, context.epochs, len(context.val_set)))
        assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items()) and n == 1
        cost = model_cost(base, plan)
        return BuiltModel(
            model=model.eval(), macs_fraction=float(cost.macs_fraction[0]), params_fraction=cost.params_fraction,
            keep_ratios=[0.5] * 3, info={"steps": steps, "note": "half width"},
        )  # fmt: skip


@pytest.fixture
def half_width() -> Iterator[str]:
    """Register ``_HalfWidth`` as ``half_width`` in a copy of the baseline registry, for one test."""
    saved = baselines_base._BASELINES
    baselines_base._BASELINES = saved.copy()
    try:
        register_baseline("half_width")(_HalfWidth)
        yield "half_width"
    finally:
        baselines_base._BASELINES = saved


def test_identical_models_are_fine_tuned_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[str] = []

    def spy(model: nn.Module, data: ImageDataset, config: Any, **kw: Any) -> dict[str, Any]:
        trained.append(kw["desc"])
        return training.train(model, data, config, **kw)

    monkeypatch.setattr("agents.compare.train", spy)
    ft = {"finetune_epochs": 1, "finetune_images": 32, "latency": False, **SMALL}
    rows = compare(["uniform", "random", "l1"], [0.5], out_dir=tmp_path / "all", **ft)
    # uniform ranks by L1 on a plain model: l1 is the same model and reuses its fine-tune; random is trained
    assert trained == ["finetune uniform", "finetune random"]
    by = {r["policy"]: r for r in rows}
    alone = compare(["l1"], [0.5], out_dir=tmp_path / "alone", **ft)[0]
    assert trained[-1] == "finetune l1"
    for key in ("val_top1", "test_top1", "mac_fraction", "params"):
        assert by["l1"][key] == by["uniform"][key] == alone[key]
    assert by["random"]["params"] != by["l1"]["params"]


def test_training_based_baseline_runs_through_build(tmp_path: Path, half_width: str) -> None:
    assert half_width in list_baselines() and parse_policy(half_width).kind == "trained"
    _CALLS.clear()
    start = time.perf_counter()
    rows = compare([half_width, "uniform"], [0.7], seeds=(0, 1), train_epochs=0.5, out_dir=tmp_path, latency=False,
                   **SMALL)  # fmt: skip
    trained = [r for r in rows if r["policy"] == half_width]
    assert [r["seed"] for r in trained] == [0, 1]  # trained methods repeat over seeds, like stochastic ones
    assert [c[:3] for c in _CALLS] == [(0.7, 0, 0.5), (0.7, 1, 0.5)]  # one shared budget, seed and epochs each
    assert _CALLS[0][3] > 0  # a validation split is handed over
    row = trained[0]
    assert row["kind"] == "trained" and row["train_epochs"] == 0.5
    assert 0 < row["train_seconds"] < time.perf_counter() - start  # build()'s wall time (the method gave none)
    assert json.loads(row["info"]) == {"steps": 16, "note": "half width"}  # 0.5 · 512 images / 16 per step
    assert row["keep_ratios"] == "0.500 0.500 0.500"
    base_params = sum(p.numel() for p in get_model("tiny_cnn").parameters())
    assert 0 < row["mac_fraction"] < 0.7 and row["params"] == round(row["params_fraction"] * base_params)
    assert row["val_top1_env"] != row["val_top1_env"]  # NaN: no env scored it
    csv_row = next(r for r in _csv(tmp_path / "results.csv") if r["policy"] == half_width)
    assert json.loads(csv_row["info"])["note"] == "half width" and float(csv_row["train_epochs"]) == 0.5
    md = (tmp_path / "results.md").read_text()
    assert "training-based methods 0.5 epoch(s)" in md
    table = {r[0]: r for r in _table_rows(md)}
    assert table[half_width][9] != "–" and table["uniform"][9] == "–"


def test_training_based_baseline_is_gone_after_its_test() -> None:
    assert "half_width" not in list_baselines()


def test_training_based_scores_equal_a_direct_evaluation(tmp_path: Path, half_width: str) -> None:
    """The returned model is scored like every other: the env's val subset and the test split, as returned."""
    net = randomize_(get_model("tiny_cnn"), seed=3)
    rows = compare([half_width], [0.7], train_epochs=0.0, out_dir=tmp_path, latency=False,
                   **{**SMALL, "model": net, "weights": None})  # fmt: skip
    row = rows[0]
    model = export_static(net, PruningPlan(static_keep=[0.5] * 3))  # no training step at 0 epochs
    assert row["test_top1"] == evaluate(model, _test_split(net))["top1"]
    val_x, val_y = StaticPruningEnv(model=net, dataset="synthetic", num_val=16, budget=1.0).validation_data
    with torch.no_grad():
        assert row["val_top1"] == 100.0 * float((model(val_x).argmax(1) == val_y).float().mean())


# ------------------------------------------------------------------------------------------------------------
# runtime policies
# ------------------------------------------------------------------------------------------------------------


def test_fbs_runs_on_the_base_gated_with_fresh_predictors(tmp_path: Path) -> None:
    """u_r = γ: every image keeps the same channels, so the measured mean equals the planned MAC fraction."""
    net = randomize_(get_model("tiny_cnn"), seed=0)
    kw = {**SMALL, "model": net, "weights": None}
    rows = compare(["fbs", "bn_scale"], [0.4], out_dir=tmp_path, latency=True, **kw)
    fbs, bn = rows
    assert fbs["kind"] == "runtime" and json.loads(fbs["info"])["predictors"].startswith("fresh")
    env = RuntimePruningEnv(model=gate_model(net), budget=0.4)
    policy = get_baseline("fbs").prepare(env)
    target = PruningTarget.of(env)
    assert fbs["mac_fraction"] == pytest.approx(target.macs_fraction(policy.keep_counts))  # type: ignore[arg-type]
    assert fbs["mac_fraction"] <= 0.4 + 1e-12 and json.loads(fbs["info"])["mac_fraction_max"] <= 0.4 + 1e-12
    assert fbs["keep_ratios"] == " ".join(f"{r:.3f}" for r in policy.keep_ratios())
    assert fbs["params_fraction"] > 1.0  # every backbone channel is stored, plus the predictors
    assert fbs["latency_b1_ms"] > 0 and fbs["latency_b128_ms"] > 0
    assert bn["kind"] == "static" and bn["params_fraction"] < 1.0


def test_fbs_on_a_gated_model_file_measures_per_image_macs(tmp_path: Path) -> None:
    gated = randomize_gates_(gate_model(randomize_(get_model("tiny_cnn"), seed=1)))
    with torch.no_grad():  # predictors that depend on the input: channel sets (not counts) vary per image
        for g in gated_units(gated):
            assert g.predictor is not None
            g.predictor.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "gated.pt"
    save_model(path, gated, arch="tiny_cnn", num_classes=10, gated=True, predictor=True)
    rows = compare(["fbs"], [0.5], **{**SMALL, "model": path}, out_dir=tmp_path / "out", latency=False)
    row = rows[0]
    info = json.loads(row["info"])
    assert row["model"] == "gated" and info["predictors"].startswith("trained")
    assert row["mac_fraction"] <= 0.5 + 1e-12 and info["mac_fraction_max"] <= 0.5 + 1e-12
    assert info["predictor_mac_fraction"] > 0 and info["predictor_params"] > 0
    # every image keeps the policy's constant counts (which channels depends on the image)
    policy = get_baseline("fbs").prepare(RuntimePruningEnv(model=gated, budget=0.5))
    assert info["mean_kept_channels"] == policy.keep_counts.tolist()  # type: ignore[union-attr]
    # a gated model cannot serve static policies: clear error before anything runs
    with pytest.raises(ValueError, match="--gated-model"):
        compare(["l1", "fbs"], [0.5], **{**SMALL, "model": path}, out_dir=tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    # ... unless the gated model comes separately
    rows = compare(["l1", "fbs"], [0.5], **SMALL, gated_model=path, out_dir=tmp_path / "out3", latency=False)
    assert [r["kind"] for r in rows] == ["static", "runtime"]
    assert json.loads(rows[1]["info"])["predictors"] == "trained (gated_model)"
    with pytest.raises(ValueError, match="runtime predictors"):
        compare(["fbs"], [0.5], **SMALL, gated_model=copy.deepcopy(get_model("tiny_cnn")), out_dir=tmp_path / "o")


@pytest.mark.realdata
@pytest.mark.slow
def test_resnet20_on_real_data(tmp_path: Path, shared_models_dir: Path, cifar10_dir: Path) -> None:
    """The public-data path end to end: ResNet-20 at 70% of the MACs, plain L1 slicing vs Neuron Merging."""
    weights = shared_models_dir / "resnet20_cifar10jpeg.pt"
    if not weights.is_file():
        pytest.skip(f"{weights} not found")
    rows = compare(
        ["l1", "neuron_merging"], [0.7], model="resnet20", weights=weights, dataset="cifar10",
        data_dir=cifar10_dir.parent, num_val=256, test_images=1000, out_dir=tmp_path, latency=False, progress=False,
    )  # fmt: skip
    l1, merged = rows
    assert l1["test_images"] == 1000 and 0.65 < l1["mac_fraction"] <= 0.7
    assert merged["params"] == l1["params"] and merged["mac_fraction"] == l1["mac_fraction"]
    assert 30.0 < l1["test_top1"] < 88.3  # pruned without fine-tuning: below the base model's 88.2%
    assert merged["test_top1"] > l1["test_top1"]  # the compensation helps (test_neuron_merging checks it too)


def test_measure_latency_restores_the_thread_setting() -> None:
    model = get_model("tiny_cnn")
    before = torch.get_num_threads()
    assert measure_latency(model, 2, repeats=2, threads=1) > 0
    assert torch.get_num_threads() == before


def test_a_run_a_policy_cannot_do_is_skipped_and_listed(tmp_path: Path) -> None:
    # closing every gate of tiny_cnn still costs 0.53 of its MACs: channel gating cannot reach 0.4
    rows = compare(["channel_gating", "l1"], [0.7, 0.4], train_epochs=0.1, out_dir=tmp_path, latency=False, **SMALL)
    assert [(r["policy"], r["budget"]) for r in rows] == [("channel_gating", 0.7), ("l1", 0.7), ("l1", 0.4)]
    md = (tmp_path / "results.md").read_text()
    assert "Skipped" in md and "channel_gating @ 0.4 (seed 0)" in md and "below what channel gating can reach" in md
    assert len(_csv(tmp_path / "results.csv")) == 3
    with pytest.raises(ValueError, match="every run was skipped"):
        compare(["channel_gating"], [0.4], train_epochs=0.1, out_dir=tmp_path / "none", include_base=True,
                latency=False, **SMALL)  # fmt: skip


def test_built_models_are_shared_between_calls(tmp_path: Path, half_width: str) -> None:
    _CALLS.clear()
    kept: dict[tuple[Any, ...], Any] = {}
    common = {"train_epochs": 0.5, "latency": False, "built_models": kept, **SMALL}
    first = compare([half_width], [0.7, 0.5], out_dir=tmp_path / "ft0", **common)[0]
    assert len(_CALLS) == 2 and len(kept) == 2
    states = {k: {n: t.clone() for n, t in m.model.state_dict().items()} for k, (m, _) in kept.items()}
    tuned = compare([half_width], [0.7, 0.5], finetune_epochs=1, finetune_images=32, out_dir=tmp_path / "ft1",
                    **common)[0]  # fmt: skip
    assert len(_CALLS) == 2  # the second call trained nothing
    for k, (m, _) in kept.items():  # the fine-tune worked on a copy
        assert all(torch.equal(t, states[k][n]) for n, t in m.model.state_dict().items())
    assert tuned["train_seconds"] == first["train_seconds"] and tuned["mac_fraction"] == first["mac_fraction"]
    # the kept model is the one built, not the fine-tuned one: a third call without fine-tune scores the same
    again = compare([half_width], [0.7, 0.5], out_dir=tmp_path / "again", **common)[0]
    assert len(_CALLS) == 2 and again["test_top1"] == first["test_top1"] and again["val_top1"] == first["val_top1"]
    # another base model is another key
    other = randomize_(get_model("tiny_cnn"), seed=5)
    compare([half_width], [0.7], out_dir=tmp_path / "other", **{**common, "model": other, "weights": None})
    assert len(_CALLS) == 3 and len(kept) == 3


def test_channel_gating_macs_are_measured_again_after_the_fine_tune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pruning.methods.channel_gating import cg_convs

    def open_every_gate(model: nn.Module, data: ImageDataset, config: Any, **kw: Any) -> dict[str, Any]:
        with torch.no_grad():  # a "fine-tune" whose only effect is on what the MACs depend on
            for g in cg_convs(model):
                g.threshold.fill_(-1e9)
        return {"epochs": [], "steps": 0}

    monkeypatch.setattr("agents.compare.train", open_every_gate)
    kept: dict[tuple[Any, ...], Any] = {}
    common = {"train_epochs": 0.1, "latency": False, "built_models": kept, **SMALL}
    before = compare(["channel_gating", "l1"], [0.7], out_dir=tmp_path / "ft0", **common)
    after = compare(["channel_gating", "l1"], [0.7], finetune_epochs=1, out_dir=tmp_path / "ft1", **common)
    assert before[0]["mac_fraction"] <= 0.7 + 0.05
    info = json.loads(after[0]["info"])
    assert info["macs_fraction_before_finetune"] == before[0]["mac_fraction"]
    assert after[0]["mac_fraction"] == pytest.approx(1.0, abs=1e-6)  # every gate open: the full convolutions
    assert after[1]["mac_fraction"] == before[1]["mac_fraction"]  # a plain static model is not measured again
