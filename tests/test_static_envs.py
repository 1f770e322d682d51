"""Static episodes side by side (``ScheduleConfig.static_envs``): worker processes learn what one process learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from agents.cli import agent_specs
from agents.schedule import JointTrainer, RunLogger, ScheduleConfig
from envs import STATIC_ENV_ID
from pruning.criteria import get_criterion
from pruning.data import get_dataset
from pruning.gating import gate_model, gated_units
from pruning.models import get_model
from pruning.train import dataset_for_model

HP = ["runtime.n_steps=8", "runtime.batch_size=32", "static.n_steps=6", "static.batch_size=12"]


def _trainer(tmp_path: Path, mode: str, **overrides: Any) -> JointTrainer:
    torch.manual_seed(0)
    model = gate_model(get_model("resnet8", num_classes=10))
    data = {s: dataset_for_model(get_dataset("synthetic", split=s), model) for s in ("train", "val")}
    settings: dict[str, Any] = dict(
        mode=mode, budget=0.5, rounds=1, gate_epochs=(0.0, 0.0), cnn_epochs=0.0, runtime_steps=64, static_steps=24,
        n_envs=8, num_val=32, bn_recalibration=32, batch_size=32, static_select=1,
    )  # fmt: skip
    settings.update(overrides)
    specs = agent_specs({"algo": "ppo", "static_algo": "ppo", "mode": mode, "hyperparams": HP})
    return JointTrainer(
        model, arch="resnet8", num_classes=10, data=data, config=ScheduleConfig(**settings),
        runtime_agent=specs["runtime"], static_agent=specs["static"], run_dir=tmp_path, progress=False,
    )  # fmt: skip


def _static_phase(tmp_path: Path, mode: str, static_vec: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The static RL phase's record and the static agent's weights after it, with two envs run as ``static_vec``."""
    run_dir = tmp_path / static_vec
    run_dir.mkdir()
    trainer = _trainer(run_dir, mode, static_envs=2, static_vec=static_vec)
    trainer.build_agents()
    trainer.logger = RunLogger(run_dir)
    try:
        phase = next(p for p in trainer.phases if p.kind == "rl_static")
        trainer._rl_phase(trainer.phases.index(phase), phase, 0)
    finally:
        trainer.logger.close()
    assert trainer.static_model.n_envs == 2
    return trainer.history[phase.name], trainer.static_model.policy.state_dict()


@pytest.mark.parametrize("mode", ["static", "joint"])  # joint: the runtime agent in the loop, in every worker
def test_worker_processes_learn_what_one_process_learns(tmp_path: Path, mode: str) -> None:
    serial, serial_weights = _static_phase(tmp_path, mode, "dummy")
    parallel, parallel_weights = _static_phase(tmp_path, mode, "subproc")
    assert parallel["timesteps"] == serial["timesteps"] >= 24
    for key in ("static_keep", "deterministic_keep", "macs_fraction", "params_fraction", "val_top1_subset"):
        assert parallel[key] == serial[key], key
    # the best-rewarded explored episodes (from the workers' info dicts) and their re-scored losses
    assert len(serial["selection"]["candidates"]) >= 2
    assert parallel["selection"] == serial["selection"]
    assert serial_weights.keys() == parallel_weights.keys()
    for name, value in serial_weights.items():
        assert torch.equal(parallel_weights[name], value), name


def test_one_static_env_is_the_registered_env_in_this_process(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "static")
    env = trainer._static_env()
    assert isinstance(env, DummyVecEnv) and env.num_envs == 1
    assert env.envs[0].unwrapped.spec.id == STATIC_ENV_ID
    assert env.envs[0].unwrapped.model is not trainer.model  # a copy: the agent cannot change the run's CNN


def test_workers_score_the_cnn_as_it_is_when_the_phase_starts(tmp_path: Path) -> None:
    # every static phase builds its envs anew, so a worker holds the CNN of the last CNN phase, not an older one
    trainer = _trainer(tmp_path, "static", static_envs=2)
    with torch.no_grad():
        for g in gated_units(trainer.model):
            g.conv.weight.mul_(torch.linspace(0.1, 3.0, g.full_channels).view(-1, 1, 1, 1))
    expected = [get_criterion("l1")(trainer.model, u) for u in trainer.cost_model.units]
    env = trainer._static_env()
    try:
        assert isinstance(env, SubprocVecEnv) and env.num_envs == 2
        for scores in env.get_attr("static_scores"):
            for got, want in zip(scores, expected, strict=True):
                assert torch.allclose(got, torch.as_tensor(want, dtype=torch.float32).flatten())
    finally:
        env.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"static_envs": 0}, "static_envs must be positive"),
        ({"static_vec": "threads"}, "static_vec must be one of"),
        ({"static_envs": 2, "device": "cuda"}, "device='cpu', static_vec='dummy' or static_envs=1"),
    ],
)
def test_bad_static_env_settings_name_the_fix(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**settings)


def test_dummy_and_one_env_are_allowed_on_any_device() -> None:
    assert ScheduleConfig(static_envs=2, static_vec="dummy", device="cuda").static_envs == 2
    assert ScheduleConfig(static_envs=1, device="cuda").static_vec == "subproc"
