"""``train_agent.py`` / ``agents.cli``: run directories, user algorithms, overrides, resume after SIGKILL, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.cli import load_run, main
from agents.schedule import CHECKPOINT_FILE, ScheduleConfig
from pruning.checkpoint import load_model
from pruning.export import load_exported

ROOT = Path(__file__).resolve().parents[1]

#: A whole joint run on the tiny model and synthetic data in a few seconds.
BASE = [
    "--model", "tiny_cnn", "--dataset", "synthetic", "--weights", "None", "--mode", "joint", "--rounds", "1",
    "--gate-epochs", "1", "0", "--cnn-epochs", "1", "--runtime-steps", "128", "--static-steps", "24",
    "--n-envs", "8", "--num-val", "32", "--no-reference", "-q",
]  # fmt: skip
#: Short PPO rollouts for both agents.
PPO_HP = ["--hyperparams", "runtime.n_steps=16", "runtime.batch_size=32", "static.n_steps=24", "static.batch_size=24"]
QUICK = [*BASE, *PPO_HP]

RUN_FILES = (
    "config.json", "progress.csv", "checkpoint.pt", "runtime_agent.zip", "static_agent.zip", "model.pt",
    "exported.pt", "results.json",
)  # fmt: skip


def _run_cli(args: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "train_agent.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_run_directory_has_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*QUICK, "--reference", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "learned (joint)" in table and "l1 (" in table and "fbs (" in table
    for name in RUN_FILES:
        assert (out / name).is_file(), f"{name} missing from the run directory"
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard events"

    config = json.loads((out / "config.json").read_text())
    assert config["args"]["mode"] == "joint" and config["command"].startswith("python train_agent.py")
    assert config["phases"] == ["gate_predictor", "rl_runtime_0", "rl_static_0", "cnn_0"]

    results = json.loads((out / "results.json").read_text())
    for part in ("base", "pruned"):
        for split in ("val", "test"):
            r = results[part][split]
            assert 0.0 <= r["top1"] <= 100.0 and 0.0 < r["macs_fraction"] <= 1.0
    # the pruned model obeys the budget per image and the uniform reference spends no more MACs
    assert results["pruned"]["test"]["macs_fraction_max"] <= 0.5 + 1e-9
    # the fair reference rows: same E of CNN training, same budget, from the same base model
    assert set(results["reference"]) == {"l1", "fbs"}
    for row in results["reference"].values():
        assert row["epochs"] == results["cnn_epochs_total"] and row["budget"] == results["budget"]
        assert row["meets_budget"] and row["mac_fraction"] <= 0.5 + 0.005
        assert row["test_images"] == results["test_images"]
    assert (out / "base.pt").is_file()  # a random base is saved so the reference rows start from it
    # joint mode (R_r = 0.5) removes stored channels
    assert results["pruned"]["test"]["params_fraction"] < 1.0
    assert len(results["static_keep"]) == 3

    with (out / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and {"pruning/macs_fraction", "reward/accuracy", "runtime/train/loss", "static/train/loss"} <= set(
        rows[0]
    )
    tags = set()
    for events in out.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"pruning/macs_fraction", "pruning/params_fraction", "pruning/val_top1", "reward/accuracy"} <= tags

    # what the run saved rebuilds the same pruned model
    exported = load_exported(out / "exported.pt")
    assert sum(p.numel() for p in exported.parameters()) < sum(
        p.numel() for p in load_model(out / "model.pt").parameters()
    )
    masked, _ = load_run(out, dynamic=False)
    dynamic, _ = load_run(out, dynamic=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.cat([dynamic(x[i : i + 1]) for i in range(2)]), masked(x), rtol=1e-4, atol=1e-5
        )


def test_user_algorithm_by_import_path(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*BASE, "--algo", "tests.fixtures.my_algo:MyAlgo", "--mode", "runtime", "--out", str(out),
            "--hyperparams", "n_steps=16"]  # fmt: skip
    proc = _run_cli(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["agents"]["runtime"]["algo"] == "tests.fixtures.my_algo:MyAlgo"
    from tests.fixtures.my_algo import MyAlgo

    agent = MyAlgo.load(str(out / "runtime_agent.zip"))
    assert agent.updates >= 1 and agent.num_timesteps >= 128


def test_overrides_reach_each_agent(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*BASE, "--out", str(out), "--hyperparams", "learning_rate=0.00123", "runtime.n_steps=16",
            "static.n_steps=24", "runtime.gamma=0.9", "batch_size=8"]  # fmt: skip
    assert main(args) == 0
    from stable_baselines3 import PPO

    runtime = PPO.load(str(out / "runtime_agent.zip"))
    static = PPO.load(str(out / "static_agent.zip"))
    assert runtime.learning_rate == static.learning_rate == 0.00123
    assert runtime.gamma == 0.9 and static.gamma != 0.9
    assert runtime.n_steps == 16 and static.n_steps == 24


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--algo", "ppoo"], "did you mean"),
        (["--algo", "dqn"], "Box"),
        (["--algo", "nosuchpkg.mod:Algo"], "nosuchpkg"),
        (["--preset", "nosuch"], "preset"),
        (["--hyperparams", "no_such_key=1"], "no_such_key"),
    ],
)
def test_bad_agent_options_fail_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main([*QUICK, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_agent.py: error:") and message.lower() in err.lower(), err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists(), "a failed start must not leave a run directory behind"


@pytest.mark.parametrize("budget", ["1.5", "0", "-0.2", "nan"])
def test_budget_outside_unit_interval(tmp_path: Path, budget: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*QUICK, "--out", str(tmp_path / "run"), "--budget", budget])
    assert exc.value.code == 2
    assert "fraction in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_data_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), "--no-download", "--out", str(out), "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_agent.py: error:") and "--download" in err
    assert not out.exists()


def test_corrupt_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*QUICK, "--out", str(out)]) == 0
    (out / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    before = sorted(p.name for p in out.iterdir())
    assert main(["--resume", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and CHECKPOINT_FILE in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_resume_after_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*QUICK, "--runtime-steps", "6000", "--checkpoint-every", "400", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_agent.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state = _checkpoint_state(out)
            if state is not None and state["phase"] == "rl_runtime_0" and state["position"].get("timesteps", 0) > 0:
                proc.send_signal(signal.SIGKILL)
                killed_at = state
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=30)
    assert killed_at is not None, "the run never reached a checkpoint inside the runtime RL phase"
    assert not (out / "results.json").exists()

    resumed = _run_cli(["--resume", str(out), "-q"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["resumed"] is True
    record = results["phases"]["rl_runtime_0"]
    # the phase finished its steps counting those done before the kill; nothing before the checkpoint is redone
    assert record["timesteps"] >= 6000
    config = json.loads((out / "config.json").read_text())
    assert len(config["resume_commands"]) == 1
    with (out / "progress.csv").open() as f:
        steps = [
            int(float(r["runtime/time/total_timesteps"]))
            for r in csv.DictReader(f)
            if r["runtime/time/total_timesteps"]
        ]
    assert steps == sorted(steps), "progress.csv rows after the resume must continue, not restart"


def _checkpoint_state(out: Path) -> dict | None:
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - being replaced right now (os.replace is atomic, but be lenient)
        return None


def test_schedule_phases_follow_the_mode() -> None:
    joint = ScheduleConfig(mode="joint", rounds=2, gate_epochs=(1, 0.5))
    assert [p.name for p in joint.phases()] == [
        "gate_predictor", "gate_static", "rl_runtime_0", "rl_static_0", "cnn_0", "rl_runtime_1", "rl_static_1",
        "cnn_1",
    ]  # fmt: skip
    runtime = ScheduleConfig(mode="runtime", rounds=1, gate_epochs=(0, 0), cnn_epochs=0)
    assert [p.name for p in runtime.phases()] == ["rl_runtime_0"]
    assert runtime.effective_tradeoff == 1.0 and ScheduleConfig(mode="static").effective_tradeoff == 0.0
    with pytest.raises(ValueError, match="static agent"):
        ScheduleConfig(mode="runtime", param_budget=0.5)
    with pytest.raises(ValueError, match="mode"):
        ScheduleConfig(mode="both")
    assert np.isclose(ScheduleConfig(tradeoff=0.3).effective_tradeoff, 0.3)


def test_saved_agents_join_compare(tmp_path: Path) -> None:
    from agents.compare import compare

    run_dir = tmp_path / "run"
    assert main([*QUICK, "--out", str(run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    rows = compare(
        [str(run_dir), "uniform"], [0.4], model="tiny_cnn", weights=None, dataset="synthetic", num_val=32,
        out_dir=tmp_path / "cmp", latency=False, progress=False,
    )  # fmt: skip
    agent = next(r for r in rows if r["kind"] == "agent")
    assert agent["budget"] == results["budget"] == 0.5  # scored once, at the budget it was trained for
    assert [r["policy"] for r in rows].count(str(run_dir)) == 1
    # the same model, plan and test split as the run's own final evaluation
    assert agent["test_top1"] == pytest.approx(results["pruned"]["test"]["top1"])
    assert agent["mac_fraction"] == pytest.approx(results["pruned"]["test"]["macs_fraction"])
    assert agent["params_fraction"] == pytest.approx(results["pruned"]["test"]["params_fraction"], rel=1e-3)
    assert (tmp_path / "cmp" / "results.csv").is_file() and (tmp_path / "cmp" / "pareto.png").is_file()
    with pytest.raises(ValueError, match="train_agent"):
        compare([str(tmp_path / "cmp")], [0.5], model="tiny_cnn", weights=None, dataset="synthetic",
                out_dir=tmp_path / "x", latency=False, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="resnet20"):
        compare([str(run_dir)], [0.5], model="resnet20", weights=None, dataset="synthetic",
                out_dir=tmp_path / "y", latency=False, progress=False)  # fmt: skip


@pytest.mark.parametrize("order", ["u_r", "prefix"])
def test_runtime_run_deploys_the_pruning_it_was_scored_with(tmp_path: Path, order: str) -> None:
    out = tmp_path / "run"
    assert main([*QUICK, "--mode", "runtime", "--runtime-order", order, "--out", str(out)]) == 0
    dynamic, results = load_run(out, dynamic=True)
    masked, _ = load_run(out, dynamic=False)
    assert {u.runtime_order for u in dynamic.units} == {order}
    if order == "prefix":  # the batch-1 path slices: it records counts, not channel indices
        with torch.no_grad():
            dynamic(torch.randn(1, 3, 32, 32))
        assert all(u.last_idx is None and u.last_prefix is not None for u in dynamic.units)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = masked(x)
        got = torch.cat([dynamic(x[i : i + 1]) for i in range(len(x))])  # the deployable model runs at batch 1
    assert torch.allclose(got, expected, atol=1e-4)
    assert results["pruned"]["test"]["macs_fraction"] < 0.9  # the agent prunes at runtime


def test_static_mode_defaults_spend_one_epoch_on_one_plan() -> None:
    from agents.cli import build_parser, resolve_config
    from agents.schedule import config_from_dict

    cfg = resolve_config(build_parser().parse_args(["--model", "tiny_cnn", "--dataset", "synthetic"]))
    assert cfg["mode"] == "static"
    schedule = config_from_dict({**cfg, "n_envs": 8})  # run() fills n_envs from the YAML
    assert [p.name for p in schedule.phases()] == ["rl_static_0", "cnn_0"] and schedule.cnn_budget_epochs == 1.0
    joint = config_from_dict({**resolve_config(build_parser().parse_args(["--mode", "joint"])), "n_envs": 8})
    assert joint.cnn_budget_epochs == 1.0 and joint.rounds == 2 and joint.gate_epochs[0] > 0


def test_distill_reaches_the_run_and_its_fair_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pruning.train as train_mod

    calls = []
    real = train_mod.distillation_loss

    def spy(logits: torch.Tensor, teacher_logits: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(1)
        return real(logits, teacher_logits, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "distillation_loss", spy)
    out = tmp_path / "run"
    args = [*QUICK, "--mode", "static", "--reference", "--distill", "0.5", "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["schedule"]["distill"] == 0.5
    results = json.loads((out / "results.json").read_text())
    assert {r["recipe"]["distill"] for r in results["reference"].values()} == {0.5}  # the table's rows alike
    steps = results["reference"]["l1"]["train_steps"] + results["reference"]["fbs"]["train_steps"]
    assert len(calls) > steps > 0  # the run's own CNN steps distilled too


def test_schedule_options_are_the_config_fields() -> None:
    import dataclasses

    from agents.cli import CLI_DEFAULTS, build_parser

    fields = {f.name: f for f in dataclasses.fields(ScheduleConfig)}
    actions = {a.dest: a for a in build_parser()._actions}
    exposed = fields.keys() & actions.keys()
    assert fields.keys() - exposed == {"distill_temperature", "batch_size", "grad_clip"}  # left out on purpose
    assert CLI_DEFAULTS.keys() <= exposed
    assert all(CLI_DEFAULTS[k] != fields[k].default for k in CLI_DEFAULTS)  # an entry only where they differ
    for name in exposed:
        action, spec = actions[name], fields[name]
        assert f"--{name.replace('_', '-')}" in action.option_strings
        assert action.default == CLI_DEFAULTS.get(name, spec.default), name
        assert spec.metadata["help"] and action.help.startswith(spec.metadata["help"]), name
    assert vars(build_parser(defaults=False).parse_args([])) == {}  # --resume applies only what was given
    args = build_parser().parse_args(["--gate-epochs", "0.1", "0", "--no-gate-prune", "--static-min-keep", "0.3"])
    assert (args.gate_epochs, args.gate_prune, args.static_min_keep) == ([0.1, 0.0], False, 0.3)


def test_no_arguments_resolve_to_the_config_defaults() -> None:
    from agents.cli import build_parser, resolve_config
    from agents.schedule import MODE_DEFAULTS, config_from_dict, config_to_dict

    device = "cuda" if torch.cuda.is_available() else "cpu"  # --device auto
    cfg = resolve_config(build_parser().parse_args([]))
    assert cfg["n_envs"] is None  # run() takes the YAML's n_envs, else the dataclass's
    schedule = config_from_dict({**cfg, "n_envs": ScheduleConfig.n_envs})
    expected = ScheduleConfig(mode="static", device=device, **MODE_DEFAULTS["static"])
    assert config_to_dict(schedule) == config_to_dict(expected)
    assert (schedule.rounds, schedule.cnn_budget_epochs, schedule.budget) == (1, 1.0, 0.5)
    joint = resolve_config(build_parser().parse_args(["--mode", "joint"]))
    assert config_to_dict(config_from_dict({**joint, "n_envs": ScheduleConfig.n_envs})) == config_to_dict(
        ScheduleConfig(device=device)
    )
