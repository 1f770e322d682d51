"""agents.fused: a trained agent fused into plain PyTorch decides exactly as SB3's predict does."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from _nets import images, randomize_, randomize_gates_

from agents.algos import make_model
from agents.fused import FusedAgent, FusedRuntimeSource, NotFusableError, fuse_policy, runtime_source
from envs.runtime import PolicyRuntimeSource, RuntimePruningVecEnv
from pruning.export import DynamicModel, export_static
from pruning.gating import applied_masks, gate_model, set_plan
from pruning.models import get_model
from pruning.plan import PruningPlan

#: (algorithm, policy) pairs that fuse; tiny networks so that each builds in a fraction of a second
POLICIES = [
    ("ppo", "MlpPolicy"),
    ("ppo", "BudgetResidualPolicy"),
    ("a2c", "BudgetResidualPolicy"),
    ("recurrent_ppo", "MlpLstmPolicy"),
    ("recurrent_ppo", "BudgetResidualLstmPolicy"),
    ("sac", "MlpPolicy"),
    ("td3", "MlpPolicy"),
]
STATIC = [0.75, 0.5, 1.0]


@pytest.fixture(scope="module")
def gated() -> torch.nn.Module:
    return randomize_gates_(gate_model(randomize_(get_model("tiny_cnn"), seed=3)), seed=3).eval()


@pytest.fixture(scope="module")
def venv(gated: torch.nn.Module) -> RuntimePruningVecEnv:
    return RuntimePruningVecEnv(2, model=gated, budget=0.5, num_images=8)


def _agent(algo: str, policy: str, env: RuntimePruningVecEnv, seed: int = 0):
    """An agent whose actions vary with the image and unit (random weights ~ N(0, 1/fan_in))."""
    hp: dict = {"policy": policy, "policy_kwargs": {"net_arch": [16]}}
    if algo in ("ppo", "a2c", "recurrent_ppo"):
        hp["n_steps"] = 8
    if algo in ("ppo", "recurrent_ppo"):
        hp["batch_size"] = 8
    if algo == "recurrent_ppo":
        hp["policy_kwargs"]["lstm_hidden_size"] = 8
    agent, _ = make_model(algo, env, hp, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agent.policy.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5 if p.ndim == 2 else 1.0))
    return agent


def _inputs(n: int) -> torch.Tensor:
    """Images of very different scales, so that GAP, u_r and the agent's actions differ between them."""
    return images(n, seed=1) * torch.linspace(0.2, 3.0, n).view(n, 1, 1, 1)


def _recording(source):
    """A runtime source that records every ratio ``source`` returns."""
    seen: list[torch.Tensor] = []

    def record(t: int, gap: torch.Tensor, u_r: torch.Tensor) -> torch.Tensor:
        r = source(t, gap, u_r)
        seen.append(torch.as_tensor(r).clone())
        return r

    return record, seen


@pytest.mark.parametrize(("algo", "policy"), POLICIES, ids=[f"{a}-{p}" for a, p in POLICIES])
def test_fused_ratios_equal_predict(algo: str, policy: str, gated, venv) -> None:
    agent = _agent(algo, policy, venv)
    x = _inputs(6)
    ratios, masks, logits = {}, {}, {}
    for name, cls in (("predict", PolicyRuntimeSource), ("fused", FusedRuntimeSource)):
        source = cls(agent, gated, budget=0.5, min_keep=0.1, action_offset=0.05)
        record, seen = _recording(source)
        set_plan(gated, PruningPlan(static_keep=STATIC, runtime_keep=record, tradeoff=0.5))
        with torch.no_grad():
            logits[name] = gated(x)
        ratios[name], masks[name] = seen, [m.clone() for m in applied_masks(gated)]
    spread = torch.cat(ratios["predict"]).unique().numel()
    assert spread > 6, "the test agent should choose different ratios for different images and units"
    for t, (a, b) in enumerate(zip(ratios["predict"], ratios["fused"], strict=True)):
        assert torch.equal(a, b), f"unit {t}: fused ratios {b.tolist()} differ from predict's {a.tolist()}"
        assert torch.equal(masks["predict"][t], masks["fused"][t])
    assert torch.equal(logits["predict"], logits["fused"])

    # DynamicModel at batch 1: the kept counts arrive as integers, the decisions stay the same
    dyn = DynamicModel(export_static(gated), None)
    out = {}
    for name, cls in (("predict", PolicyRuntimeSource), ("fused", FusedRuntimeSource)):
        source = cls(agent, gated, budget=0.5, min_keep=0.1, action_offset=0.05).bind(dyn)
        record, seen = _recording(source)
        dyn.set_runtime(record)
        with torch.no_grad():
            out[name] = torch.cat([dyn(x[i : i + 1]) for i in range(len(x))])
        ratios[name] = seen
    assert all(torch.equal(a, b) for a, b in zip(ratios["predict"], ratios["fused"], strict=True))
    assert torch.equal(out["predict"], out["fused"])
    torch.testing.assert_close(out["fused"], logits["fused"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("algo", "policy"), [POLICIES[1], POLICIES[4]], ids=["mlp", "lstm"])
def test_scripted_and_eager_agree(algo: str, policy: str, gated, venv) -> None:
    agent = _agent(algo, policy, venv, seed=2)
    eager = fuse_policy(agent, gated, budget=0.4)
    scripted = fuse_policy(agent, gated, budget=0.4, script=True)
    assert isinstance(eager, FusedAgent) and isinstance(scripted, torch.jit.ScriptModule)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # TorchScript's profiling executor optimises after the first calls
        h1, c1 = eager.initial_state(5)
        h2, c2 = scripted.initial_state(5)
        for t, (cin, cout) in enumerate(((3, 16), (16, 16), (16, 16))):
            gap, u_r = torch.randn(5, cin, generator=g), torch.randn(5, cout, generator=g)
            committed = torch.rand(5, generator=g, dtype=torch.float64)
            r1, h1, c1 = eager(t, gap, u_r, committed, h1, c1)
            r2, h2, c2 = scripted(t, gap, u_r, committed, h2, c2)
            assert r1.dtype == torch.float64 and torch.equal(r1, r2)


def test_fused_agent_uses_no_sb3_module(gated, venv) -> None:
    agent = fuse_policy(_agent("recurrent_ppo", "BudgetResidualLstmPolicy", venv), gated, budget=0.5)
    assert all(type(m).__module__.startswith(("torch.", "agents.fused")) for m in agent.modules())


class _PredictOnly:
    """A policy with SB3's predict protocol and nothing to fuse."""

    def predict(self, obs, state=None, episode_start=None, deterministic=True):  # noqa: D102
        return np.zeros((len(obs), 1), dtype=np.float32), state


def test_fallback_warns_and_still_prunes(gated, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agents.fused"):
        source = runtime_source(_PredictOnly(), gated, budget=0.5)
    assert type(source) is PolicyRuntimeSource
    assert any("predict" in r.getMessage() and "_PredictOnly" in r.getMessage() for r in caplog.records)
    set_plan(gated, PruningPlan(runtime_keep=source, tradeoff=1.0))
    with torch.no_grad():
        gated(_inputs(2))
    assert source.calls == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agents.fused"):  # sampling is predict's job: no warning
        assert type(runtime_source(_PredictOnly(), gated, budget=0.5, deterministic=False)) is PolicyRuntimeSource
    assert not caplog.records


def test_unsupported_policies_are_refused(gated, venv) -> None:
    from stable_baselines3.common.policies import ActorCriticPolicy

    class Custom(ActorCriticPolicy):
        pass

    agent, _ = make_model("ppo", venv, {"policy": Custom, "n_steps": 8, "batch_size": 8}, seed=0)
    with pytest.raises(NotFusableError, match="Custom cannot be fused"):
        fuse_policy(agent, gated, budget=0.5)
    sde, _ = make_model("ppo", venv, {"use_sde": True, "n_steps": 8, "batch_size": 8}, seed=0)
    with pytest.raises(NotFusableError, match="gSDE"):
        fuse_policy(sde, gated, budget=0.5)
    with pytest.raises(NotFusableError, match="deterministically"):
        FusedRuntimeSource(_agent("ppo", "MlpPolicy", venv), gated, budget=0.5, deterministic=False)
    wide = gate_model(get_model("resnet8"))
    with pytest.raises(ValueError, match="another architecture"):
        fuse_policy(_agent("ppo", "MlpPolicy", venv), wide, budget=0.5)


def test_non_finite_features_raise(venv) -> None:
    broken = randomize_gates_(gate_model(randomize_(get_model("tiny_cnn"), seed=3)), seed=3).eval()
    source = FusedRuntimeSource(_agent("ppo", "MlpPolicy", venv), broken, budget=0.5)
    set_plan(broken, PruningPlan(runtime_keep=source, tradeoff=1.0))
    with torch.no_grad(), pytest.raises(RuntimeError, match="non-finite activations at the input of unit 0"):
        broken(torch.full((1, 3, 32, 32), float("nan")))


def test_load_run_fuses_the_runtime_agent(tmp_path: Path, gated, venv) -> None:
    from agents.cli import load_run
    from pruning.checkpoint import save_model
    from pruning.export import save_exported

    agent = _agent("ppo", "BudgetResidualPolicy", venv)
    agent.save(str(tmp_path / "runtime_agent.zip"))
    save_model(tmp_path / "model.pt", gated, arch="tiny_cnn", num_classes=10, gated=True, predictor=True)
    exported = export_static(gated, PruningPlan(tradeoff=1.0))  # runtime only: R_r = 1
    save_exported(tmp_path / "exported.pt", exported, arch="tiny_cnn", num_classes=10)
    (tmp_path / "config.json").write_text(json.dumps({"agents": {"runtime": {"algo": "ppo"}}}))
    (tmp_path / "results.json").write_text(json.dumps({"budget": 0.5, "static_keep": None, "tradeoff": 1.0}))
    dyn, _ = load_run(tmp_path)
    masked, _ = load_run(tmp_path, dynamic=False)
    assert isinstance(dyn.units[0].runtime, FusedRuntimeSource)
    x = _inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([dyn(x[i : i + 1]) for i in range(3)]), masked(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_count_thresholds_reproduce_the_keep_count_exactly(seed: int) -> None:
    """``base + #{θ ≤ a}`` is the Python keep count of every float32 action, at and around each threshold too."""
    from agents.fused import action_ratio, count_thresholds
    from pruning.export import prefix_count
    from pruning.plan import RATIO_EPS

    rng = np.random.default_rng(seed)
    full = int(rng.integers(4, 70))
    stored = int(rng.integers(1, full + 1))
    active = int(rng.integers(1, stored + 1))
    tradeoff = float(rng.choice([1.0, 0.5, 0.3, 0.0]))
    offset, min_keep = float(rng.normal(0, 0.1)), float(rng.choice([0.1, 0.2]))

    def count(a: float) -> int:
        return prefix_count(action_ratio(a, offset, min_keep, 6), full, stored, active, tradeoff, RATIO_EPS)

    base, table = count_thresholds(count)
    assert table.dtype == torch.float32 and bool((table[1:] >= table[:-1]).all())
    below = np.nextafter(table.numpy(), np.float32(-np.inf))
    probes = np.concatenate([rng.uniform(-1.5, 1.5, 3000), table.numpy(), below, [-3e38, 3e38, 0.0, -1.0, 1.0]])
    probes = torch.from_numpy(probes.astype(np.float32))
    got = base + torch.searchsorted(table, probes, right=True)
    assert got.tolist() == [count(float(a)) for a in probes]
