"""Training, evaluation, checkpoints, the gate stage, and the ``prunegym pretrain`` command."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning.train as train_mod
from pruning import cli, pretrain
from pruning.checkpoint import atomic_save, load_model, save_model
from pruning.data import ImageDataset, get_dataset
from pruning.gating import gate_model, gated_units
from pruning.models import IMAGENET_NORMALIZATION, get_model
from pruning.train import (
    TrainConfig,
    dataset_for_model,
    evaluate,
    gate_stage,
    load_training_state,
    param_groups,
    rng_state,
    set_rng_state,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine are 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(split: str, size: int | None = None) -> ImageDataset:
    return get_dataset("synthetic", split=split, size=size)


def _model(name: str = "tiny_cnn", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return get_model(name)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Recorder:
    """A stand-in for SummaryWriter that records the tags it is given."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int | None]] = []

    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        self.scalars.append((tag, float(value), step))

    @property
    def tags(self) -> set[str]:
        return {t for t, _, _ in self.scalars}


# ----------------------------------------------------------------------------------------------------
# train / evaluate
# ----------------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_logs() -> None:
    model = _model()
    train_set, val_set = _data("train"), _data("val")
    before = evaluate(model, val_set)
    writer = _Recorder()
    hist = train(
        model, train_set, TrainConfig(epochs=3, batch_size=64, lr=0.05, log_every=4), val_set=val_set,
        writer=writer, progress=False,
    )  # fmt: skip
    after = evaluate(model, val_set)
    assert after["loss"] < before["loss"] - 0.1
    assert after["top1"] > before["top1"] + 10
    assert [r["epoch"] for r in hist["epochs"]] == [0, 1, 2]
    assert hist["epochs"][-1]["train_loss"] < hist["epochs"][0]["train_loss"]
    assert hist["epochs"][-1]["val_top1"] == pytest.approx(after["top1"])
    assert {"train/loss", "train/top1", "train/lr", "val/top1", "val/loss"} <= writer.tags
    lrs = [v for t, v, _ in writer.scalars if t == "train/lr"]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] < 0.01  # cosine annealing, per step


def test_training_is_deterministic_for_a_seed() -> None:
    train_set = _data("train", size=128)
    states = []
    for _ in range(2):
        model = _model()
        train(model, train_set, TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=3), progress=False)
        states.append(_state(model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    model = _model()
    train(model, train_set, TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=4), progress=False)
    assert not torch.equal(_state(model)["classifier.weight"], states[0]["classifier.weight"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_params_freezes_everything_else(optimizer: str) -> None:
    model = _model()
    model.features[0].weight.requires_grad_(False)  # a flag that must survive the call
    before = _state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    head = [model.classifier.weight, model.classifier.bias]
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, optimizer=optimizer, weight_decay=1e-2)
    train(model, _data("train", size=128), cfg, params=head, bn_eval=True, progress=False)
    after = _state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Only the selected parameters moved; with bn_eval the BN running statistics stayed put too.
    assert changed == {"classifier.weight", "classifier.bias"}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training  # restored (models are built in train mode)


def test_params_without_bn_eval_updates_only_running_statistics() -> None:
    model = _model()
    before = _state(model)
    train(model, _data("train", size=64), TrainConfig(epochs=1, batch_size=32), params=[model.classifier.bias],
          progress=False)  # fmt: skip
    after = _state(model)
    params = {n for n, _ in model.named_parameters()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed & params == {"classifier.bias"}
    assert all("running" in k or "num_batches" in k for k in changed - params)


def test_params_must_belong_to_the_model() -> None:
    model = _model()
    with pytest.raises(ValueError, match="do not belong"):
        train(model, _data("train", size=32), TrainConfig(), params=[nn.Parameter(torch.zeros(1))], progress=False)
    with pytest.raises(ValueError, match="empty"):
        train(model, _data("train", size=32), TrainConfig(), params=[], progress=False)


def test_weight_decay_only_on_multidimensional_parameters() -> None:
    g = gate_model(_model())
    groups = param_groups(list(g.parameters()), 5e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    unit = gated_units(g)[0]
    assert id(unit.predictor.weight) in decayed and id(unit.conv.weight) in decayed
    for p in (unit.beta, unit.static_importance, unit.predictor.bias):
        assert id(p) not in decayed


def test_evaluate_matches_a_hand_loop() -> None:
    model = _model()
    train(model, _data("train", size=128), TrainConfig(epochs=1, batch_size=32, lr=0.05), progress=False)
    val = _data("val")
    model.train()
    got = evaluate(model, val, batch_size=50)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(val.normalize(val.images))
    expect_top1 = 100.0 * (logits.argmax(1) == val.labels).float().mean().item()
    expect_loss = F.cross_entropy(logits, val.labels).item()
    assert got["n"] == len(val) == 128
    assert got["top1"] == pytest.approx(expect_top1, abs=1e-9)
    assert got["loss"] == pytest.approx(expect_loss, rel=1e-5)
    part = evaluate(model, val, batch_size=50, max_batches=2)
    assert part["n"] == 100
    assert part["top1"] == pytest.approx(100.0 * (logits[:100].argmax(1) == val.labels[:100]).float().mean().item())


def test_dataset_for_model_uses_the_weights_normalization() -> None:
    model = _model()
    model.normalization = IMAGENET_NORMALIZATION
    ds = _data("val")
    view = dataset_for_model(ds, model)
    assert view.mean == IMAGENET_NORMALIZATION[0] and view.std == IMAGENET_NORMALIZATION[1]
    assert view.images is ds.images and ds.mean != view.mean  # shared pixels, original untouched


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    atomic_save(rng_state(), tmp_path / "rng.pt")
    expect = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expect


# ----------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize("gated", [False, True])
def test_save_load_round_trip_gives_identical_logits(tmp_path: Path, arch: str, gated: bool) -> None:
    model = _model(arch)
    if gated:
        model = gate_model(model)
        for unit in gated_units(model):  # make u_r and u_s non-trivial
            torch.nn.init.normal_(unit.predictor.weight, std=0.1)
            torch.nn.init.uniform_(unit.static_importance, 0.5, 1.5)
    model.normalization = IMAGENET_NORMALIZATION
    train(model, _data("train", size=64), TrainConfig(epochs=1, batch_size=32), progress=False)  # BN stats
    path = save_model(tmp_path / "model.pt", model, arch=arch, num_classes=10, gated=gated, predictor=gated,
                      test_top1=12.5, recipe={"epochs": 1})  # fmt: skip
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == arch and raw["gated"] is gated and raw["test_top1"] == 12.5
    assert raw["normalization"]["mean"] == list(IMAGENET_NORMALIZATION[0])
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.normalization == IMAGENET_NORMALIZATION
    x = torch.randn(8, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded(x))
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]


def test_save_model_checks_its_arguments(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(ValueError, match="not gated"):
        save_model(tmp_path / "m.pt", model, arch="tiny_cnn", num_classes=10, gated=True, predictor=True)
    with pytest.raises(TypeError, match="weights_only"):
        save_model(tmp_path / "m.pt", model, arch="tiny_cnn", num_classes=10, gated=False, predictor=False,
                   scores=np.zeros(3))  # fmt: skip
    with pytest.raises(ValueError, match="overwrite"):
        save_model(tmp_path / "m.pt", model, arch="tiny_cnn", num_classes=10, gated=False, predictor=False,
                   arch_note=1, state_dict={})  # fmt: skip
    assert not list(tmp_path.iterdir())


class Payload:
    """A custom class: pickling it into a model file must make the file unreadable for load_model."""

    def __init__(self) -> None:
        self.x = 1


def test_load_model_reads_with_weights_only_and_explains_errors(tmp_path: Path) -> None:
    model = _model()
    record = {"state_dict": model.state_dict(), "arch": "tiny_cnn", "num_classes": 10, "gated": False,
              "predictor": False, "payload": Payload()}  # fmt: skip
    torch.save(record, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(tmp_path / "garbage.pt")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a PruneGym model file"):
        load_model(tmp_path / "bare.pt")
    torch.save({**record, "payload": 0, "arch": "resnet8"}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not fit resnet8"):
        load_model(tmp_path / "wrong.pt")


def test_atomic_save_never_leaves_partial_files(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    atomic_save({"v": torch.arange(3)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    old = path.read_bytes()
    with pytest.raises(Exception, match="[Pp]ickle|lambda|local object"):
        atomic_save({"v": torch.arange(5), "f": lambda: 0}, path)  # unpicklable: fails mid-write
    assert path.read_bytes() == old  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # and no temp file is left
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.arange(3))
    atomic_save({"v": torch.arange(4)}, tmp_path / "sub" / "new.pt")  # parents are created
    assert torch.load(tmp_path / "sub" / "new.pt", weights_only=True)["v"].numel() == 4


# ----------------------------------------------------------------------------------------------------
# the gate stage
# ----------------------------------------------------------------------------------------------------


def test_gate_stage_freezes_static_importance_in_phase_a_and_trains_it_in_phase_b() -> None:
    model = gate_model(_model())
    train_set = _data("train", size=128)
    us0 = [u.static_importance.detach().clone() for u in gated_units(model)]
    pw0 = [u.predictor.weight.detach().clone() for u in gated_units(model)]
    conv0 = [u.conv.weight.detach().clone() for u in gated_units(model)]
    writer = _Recorder()
    hist = gate_stage(model, train_set, predictor_epochs=1, static_epochs=0, batch_size=32, writer=writer,
                      progress=False)  # fmt: skip
    units = gated_units(model)
    assert all(torch.equal(u.static_importance, s) for u, s in zip(units, us0, strict=True))
    assert all(not torch.equal(u.predictor.weight, w) for u, w in zip(units, pw0, strict=True))
    assert all(not torch.equal(u.conv.weight, w) for u, w in zip(units, conv0, strict=True))
    assert all(u.static_importance.requires_grad for u in units)  # flags restored
    assert len(hist["gate_predictor"]["epochs"]) == 1 and not hist["gate_static"]["epochs"]

    gate_stage(model, train_set, predictor_epochs=0, static_epochs=1, batch_size=32, writer=writer, progress=False)
    assert all(not torch.equal(u.static_importance, s) for u, s in zip(units, us0, strict=True))
    assert {"gate/predictor/train/loss", "gate/static/train/loss", "gate/static/train/lr"} <= writer.tags
    assert all(t.startswith("gate/") for t in writer.tags)


def test_gate_stage_requires_a_gated_model() -> None:
    with pytest.raises(ValueError, match="gate_model"):
        gate_stage(_model(), _data("train", size=32), predictor_epochs=1, static_epochs=1, progress=False)


# ----------------------------------------------------------------------------------------------------
# prunegym pretrain
# ----------------------------------------------------------------------------------------------------

QUICK = ["--model", "tiny_cnn", "--dataset", "synthetic", "--batch-size", "64", "-q"]


def test_pretrain_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert pretrain.main([*QUICK, "--epochs", "1", "--gate-epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "val top-1" in printed and "test top-1" in printed and str(out / "model.pt") in printed
    assert {"model.pt", "results.json", "config.json", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    results = json.loads((out / "results.json").read_text())
    assert results["gated"] is True
    assert set(results["stages"]) == {"base", "gate_predictor", "gate_static"}
    for key in ("base", "final"):
        assert set(results[key]) == {"val", "test"}
    assert results["times"]["total_s"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["gate_epochs"] == [1, 1] and config["command"].startswith("prunegym pretrain")
    model = load_model(out / "model.pt")
    assert len(gated_units(model)) == 3 and all(u.predictor is not None for u in gated_units(model))
    val = _data("val")
    assert evaluate(model, dataset_for_model(val, model))["top1"] == pytest.approx(results["final"]["val"]["top1"])


def test_pretrain_without_gate_writes_a_plain_model(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    assert pretrain.main([*QUICK, "--epochs", "1", "--no-gate", "--eval-batches", "1", "--out", str(out)]) == 0
    model = load_model(out / "model.pt")
    assert not any(type(m).__name__ == "GatedConv" for m in model.modules())
    results = json.loads((out / "results.json").read_text())
    assert results["final"]["val"]["n"] == 128 and list(results["stages"]) == ["base"]


def test_pretrain_missing_data_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = pretrain.main(["--model", "tiny_cnn", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"),
                          "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("prunegym pretrain: error:") and "--data-dir" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_stage", ["base", "gate_predictor"])
def test_pretrain_resume_after_a_crash_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_stage: str
) -> None:
    args = [*QUICK, "--epochs", "2", "--gate-epochs", "2", "1", "--seed", "5"]
    assert pretrain.main([*args, "--out", str(tmp_path / "straight")]) == 0

    real_save = train_mod.save_training_state

    def save_then_crash(*a: object, **kw: object) -> Path:
        path = real_save(*a, **kw)  # type: ignore[arg-type]
        if kw["stage"] == crash_stage and kw["epoch"] == 1:
            raise _Crash  # the process dies right after the checkpoint of the stage's first epoch
        return path

    monkeypatch.setattr(train_mod, "save_training_state", save_then_crash)
    run = tmp_path / "crashed"
    with pytest.raises(_Crash):
        pretrain.main([*args, "--out", str(run)])
    monkeypatch.undo()
    assert not (run / "model.pt").exists()
    _, state = load_training_state(run / "checkpoint.pt")
    assert (state["stage"], state["epoch"]) == (crash_stage, 1)

    assert pretrain.main(["--resume", str(run), "-q"]) == 0
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = json.loads((run / "results.json").read_text())
    assert results["resumed"] is True
    assert [r["epoch"] for r in results["stages"][crash_stage]["epochs"]] == [0, 1]
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert results["final"] == straight["final"] and results["base"] == straight["base"]
    config = json.loads((run / "config.json").read_text())
    assert config["resume_commands"] == [f"prunegym pretrain --resume {run} -q"]


def test_pretrain_resume_extends_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    assert pretrain.main([*QUICK, "--epochs", "1", "--no-gate", "--out", str(run)]) == 0
    first = json.loads((run / "results.json").read_text())["stages"]["base"]["epochs"]
    caplog.set_level("INFO")
    assert pretrain.main(["--resume", str(run), "--epochs", "2"]) == 0
    assert "resuming" in caplog.text and "stage base after 1 epochs" in caplog.text
    epochs = json.loads((run / "results.json").read_text())["stages"]["base"]["epochs"]
    assert [r["epoch"] for r in epochs] == [0, 1] and epochs[0] == first[0]  # epoch 0 was not run again
    assert json.loads((run / "config.json").read_text())["args"]["epochs"] == 2
    assert pretrain.main(["--resume", str(run), "--model", "resnet8"]) == 2  # a run's identity is fixed


def test_pretrain_as_a_module_and_through_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pruning.pretrain", *QUICK, "--epochs", "1", "--gate-epochs", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.pt").is_file() and (out / "results.json").is_file()
    proc = subprocess.run([sys.executable, "-m", "pruning.cli", "pretrain", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0 and "--gate-epochs" in proc.stdout


# ----------------------------------------------------------------------------------------------------
# prunegym (the command registry)
# ----------------------------------------------------------------------------------------------------


def test_cli_dispatches_registered_commands(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_COMMANDS", cli._COMMANDS.copy())
    seen: list[list[str]] = []

    def echo(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    cli.register_command("echo-test", echo, "echo the arguments")
    with pytest.raises(ValueError, match="already registered"):
        cli.register_command("echo-test", echo)
    assert cli.main(["echo-test", "a", "--b"]) == 7 and seen == [["a", "--b"]]
    assert cli.main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert "pretrain" in listing and "echo-test" in listing
    assert cli.main(["pretrian"]) == 2
    assert "Did you mean pretrain" in capsys.readouterr().err
    assert cli.get_command("pretrain").target == "pruning.pretrain:main"


@pytest.mark.realdata
@pytest.mark.slow
def test_evaluate_reproduces_the_published_top1_of_the_shared_model(cifar10_dir: Path, shared_models_dir: Path) -> None:
    path = shared_models_dir / "resnet20_cifar10jpeg.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model = get_model("resnet20", weights=path)
    test = dataset_for_model(get_dataset("cifar10", split="test", root=cifar10_dir.parent), model)
    expected = torch.load(path, weights_only=True)["test_top1"]
    assert evaluate(model, test)["top1"] == pytest.approx(expected, abs=0.01)


# ----------------------------------------------------------------------------------------------------
# knowledge distillation
# ----------------------------------------------------------------------------------------------------


def test_distillation_loss_is_the_hinton_mixture() -> None:
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    T, alpha = 3.0, 0.7
    p_t = torch.softmax(t / T, dim=1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, dim=1))).sum(1).mean()
    expected = (1 - alpha) * F.cross_entropy(s, y) + alpha * T * T * kl
    assert train_mod.distillation_loss(s, t, y, alpha, T).item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(train_mod.distillation_loss(s, t, y, 0.0, T), F.cross_entropy(s, y))
    assert train_mod.distillation_loss(s, s, y, 1.0, T).item() == pytest.approx(0.0, abs=1e-6)


def test_training_distils_from_the_teacher() -> None:
    teacher = _model(seed=1).eval()
    losses = {}
    for alpha in (0.0, 1.0):
        student = _model(seed=1)
        student.load_state_dict(teacher.state_dict())  # the teacher's copy: nothing to distil at alpha = 1
        config = TrainConfig(epochs=1, batch_size=64, lr=0.01, distill=alpha)
        hist = train(student, _data("train"), config, teacher=teacher, bn_eval=True, progress=False)
        losses[alpha] = hist["epochs"][0]["train_loss"]
    assert losses[1.0] < 1e-3 < 0.5 < losses[0.0]  # alpha = 1 trains on the teacher's outputs, not the labels
    with pytest.raises(ValueError, match="needs a teacher"):
        train(_model(), _data("train"), TrainConfig(epochs=1, distill=0.5), progress=False)
    with pytest.raises(ValueError, match="distill must be a weight"):
        TrainConfig(distill=1.5)
