"""The joint schedule's recipe: one SGD cosine over every CNN-training phase, budgets that hold, frozen rankings."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.cli import agent_specs
from agents.policies import budget_prior_action, fit_macs_curve
from agents.schedule import RUNTIME_MIN_KEEP, SELECT_IMAGES, JointTrainer, ScheduleConfig
from envs.static import StaticPruningEnv
from pruning.data import get_dataset
from pruning.gating import clear_plan, gate_model, gated_units, set_plan, stored_masks
from pruning.models import get_model
from pruning.plan import PruningPlan
from pruning.train import dataset_for_model, evaluate, fractional_epochs, recalibrate_bn

HP = ["runtime.n_steps=8", "runtime.batch_size=32", "static.n_steps=12", "static.batch_size=12"]


def _trainer(tmp_path: Path, mode: str = "joint", **overrides: object) -> JointTrainer:
    torch.manual_seed(0)
    model = gate_model(get_model("resnet8", num_classes=10))
    data = {s: dataset_for_model(get_dataset("synthetic", split=s), model) for s in ("train", "val")}
    settings: dict = dict(
        mode=mode, budget=0.5, rounds=1, gate_epochs=(0.0, 0.0), cnn_epochs=0.0, runtime_steps=64, static_steps=12,
        n_envs=8, num_val=32, bn_recalibration=32, batch_size=32,
    )  # fmt: skip
    settings.update(overrides)
    config = ScheduleConfig(**settings)  # type: ignore[arg-type]
    specs = agent_specs({"algo": "ppo", "static_algo": "ppo", "mode": mode, "hyperparams": HP})
    return JointTrainer(
        model, arch="resnet8", num_classes=10, data=data, config=config, runtime_agent=specs["runtime"],
        static_agent=specs["static"], run_dir=tmp_path, progress=False,
    )  # fmt: skip


def _floor_episode_macs(trainer: JointTrainer) -> float:
    """Largest MAC fraction of a batch of runtime episodes whose every action is the floor (-1)."""
    env = trainer._runtime_env()
    env.reset()
    while True:
        _, _, dones, infos = env.step(np.full((env.num_envs, 1), -1.0, dtype=np.float32))
        if dones.all():
            return max(float(i["macs_fraction"]) for i in infos)


def _selection_score(trainer: JointTrainer, model: nn.Module) -> dict:
    """What :meth:`JointTrainer.select_static` computes for a candidate set on ``model``, done by hand."""
    train_set = trainer.data["train"]
    idx = np.linspace(0, len(train_set), num=min(SELECT_IMAGES, len(train_set)), endpoint=False)
    recalibrate_bn(
        model, train_set.subset(torch.from_numpy(idx.astype(np.int64))), batch_size=trainer.config.batch_size
    )
    return evaluate(model, trainer._probe(SELECT_IMAGES), cost_model=trainer.cost_model)


def test_joint_round_zero_runtime_env_can_reach_the_budget(tmp_path: Path) -> None:
    # nothing stored-pruned yet: with R_r = 0.5 the trade-off pruner would drop only half of what the agent drops
    trainer = _trainer(tmp_path, "joint", budget=0.3)
    trainer.build_agents()
    assert trainer.static_keep is None
    assert _floor_episode_macs(trainer) <= 0.3
    assert trainer.plan().resolved_tradeoff() == 1.0


def test_static_ranking_is_frozen_when_the_static_agent_is_scored(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "static", static_criterion="u_s")
    with torch.no_grad():  # a u_s that ranks the channels in some order (a fresh model has all ones)
        for g in gated_units(trainer.model):
            g.static_importance.copy_(torch.rand(g.full_channels, generator=torch.Generator().manual_seed(1)))
    trainer.build_agents()
    trainer.logger = None  # the phase logs nowhere
    from agents.schedule import RunLogger

    trainer.logger = RunLogger(tmp_path)
    phase = next(p for p in trainer.phases if p.kind == "rl_static")
    trainer._rl_phase(trainer.phases.index(phase), phase, 0)
    assert trainer.static_keep is not None and trainer.static_scores is not None

    def stored() -> list[torch.Tensor]:
        clear_plan(trainer.model)
        set_plan(trainer.model, trainer.plan())
        trainer.model(torch.zeros(1, 3, 32, 32))
        return stored_masks(trainer.model)

    before = stored()
    with torch.no_grad():  # what the CNN phase does to u_s: it keeps training
        for g in gated_units(trainer.model):
            g.static_importance.copy_(torch.rand(g.full_channels, generator=torch.Generator().manual_seed(2)))
    after = stored()
    assert any(not m.all() for m in before), "the plan must prune something for the test to mean anything"
    for b, a in zip(before, after, strict=True):
        assert torch.equal(b, a)
    trainer.logger.close()


def test_budget_prior_is_refitted_under_the_static_plan(tmp_path: Path) -> None:
    budget = 0.4
    trainer = _trainer(tmp_path, "joint", budget=budget)
    trainer.build_agents()
    trainer.static_keep = [0.5, 0.5, 0.5]
    trainer.static_scores = [list(map(float, torch.arange(c, 0, -1))) for c in (16, 32, 64)]
    probe = trainer._probe(128)

    def prior_macs() -> float:
        curve = trainer.runtime_model.policy.macs_curve
        action = float(budget_prior_action(torch.tensor([budget]), RUNTIME_MIN_KEEP, curve))
        ratio = RUNTIME_MIN_KEEP + (action + 1) / 2 * (1 - RUNTIME_MIN_KEEP)
        return trainer.measure_plan(trainer.uniform_plan(ratio), probe)["macs_fraction"]

    full_width_error = abs(prior_macs() - budget)
    assert trainer.refit_prior() is not None
    refit_error = abs(prior_macs() - budget)
    assert refit_error < full_width_error
    assert refit_error < 0.03


@pytest.mark.parametrize("mode", ["runtime", "static"])
@pytest.mark.parametrize("start", ["over", "under"])
def test_budget_guard_meets_the_budget_and_spends_what_is_left(tmp_path: Path, mode: str, start: str) -> None:
    budget = 0.5
    trainer = _trainer(tmp_path, mode, budget=budget)
    trainer.build_agents()
    if mode == "runtime":
        trainer.action_offset = 2.0 if start == "over" else -2.0  # every channel / the floor everywhere
    else:
        trainer.static_keep = [1.0, 1.0, 1.0] if start == "over" else [0.2, 0.2, 0.2]
    record = trainer.guard_budget()
    probe = trainer._probe(1000)
    after = trainer.evaluate_plan(probe)["macs_fraction"]
    assert after <= budget + 1e-9
    assert record["after"] == pytest.approx(after)
    if start == "over":
        assert record["before"] > budget
    else:  # a plan far under its budget is raised to use it (within one channel step of a unit)
        assert record["before"] < after and after > budget - 0.1


def test_one_sgd_cosine_spans_every_cnn_training_phase(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "runtime", gate_epochs=(0.5, 0.0), cnn_epochs=0.5, runtime_steps=16)
    trainer.run()
    gate, cnn = trainer.history["gate_predictor"], trainer.history["cnn_0"]
    n1, n2 = gate["steps"], cnn["steps"]
    total = n1 + n2
    train_set = trainer.data["train"]
    expected = sum(
        e * math.ceil(len(s) / 32) for s, e in (fractional_epochs(train_set, 0.5, seed=trainer._phase_seed(i))
                                                for i in (0, 2))
    )  # fmt: skip
    assert total == expected  # the run spends exactly gate + CNN epochs of steps
    cos = [0.01 * 0.5 * (1 + math.cos(math.pi * k / total)) for k in (n1 - 1, total - 1)]
    assert gate["epochs"][-1]["lr"] == pytest.approx(cos[0])  # the gate stage ends mid-schedule...
    assert cnn["epochs"][-1]["lr"] == pytest.approx(cos[1])  # ...and the CNN phase continues it to ~0
    assert trainer.config.cnn_budget_epochs == 1.0


def test_gate_stage_trains_under_the_budget(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "runtime", gate_epochs=(0.25, 0.0), cnn_epochs=0.0, runtime_steps=16)
    trainer.run()
    ratio = trainer.history["gate_ratio"]
    assert RUNTIME_MIN_KEEP < ratio < 1.0
    macs = trainer.measure_plan(trainer.uniform_plan(ratio), trainer._probe(500))["macs_fraction"]
    assert macs <= 0.5 + 1e-9


def test_recalibrate_bn_sets_the_batch_statistics() -> None:
    torch.manual_seed(0)
    model = get_model("resnet8", num_classes=10)
    x = torch.randn(64, 3, 32, 32)
    seen: dict[str, torch.Tensor] = {}
    bn = model.bn1 if hasattr(model, "bn1") else next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    handle = bn.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0].detach()))
    model.eval()
    with torch.no_grad():
        model(x)
    handle.remove()
    assert recalibrate_bn(model, x, batch_size=64) == 64
    assert torch.allclose(bn.running_mean, seen["x"].mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, seen["x"].var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    assert not model.training and bn.momentum == 0.1  # mode and momentum restored


def test_static_env_recalibrates_per_episode_and_restores(tmp_path: Path) -> None:
    base = get_model("resnet8", num_classes=10)
    env = StaticPruningEnv(model=base, budget=0.5, num_val=64, bn_recalibration=48, dataset_kwargs={"size": 128})
    assert env._calib_x is not None and env._calib_x.shape[0] == 48
    before = {k: v.clone() for k, v in env.model.state_dict().items() if "running" in k}
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(np.array([-1.0], dtype=np.float32))
    after = {k: v for k, v in env.model.state_dict().items() if "running" in k}
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} was not restored"
    # the reward's top-1 is that of the plan with statistics re-estimated on the 48 other images
    model = env.apply_plan(gate_model(base, predictor=False))
    recalibrate_bn(model, env._calib_x, batch_size=env.batch_size)
    model.eval()
    x, y = env.validation_data
    with torch.no_grad():
        top1 = 100.0 * float((model(x).argmax(1) == y).float().mean())
    assert info["top1"] == pytest.approx(top1)


def test_fit_macs_curve() -> None:
    r = np.linspace(0.1, 1.0, 6)
    assert fit_macs_curve(r.tolist(), (0.05 + 0.3 * r + 0.65 * r**2).tolist()) == pytest.approx((0.05, 0.3, 0.65))
    c0, c1, c2 = fit_macs_curve(r.tolist(), (0.1 + 0.9 * r - 0.05 * r**2).tolist())  # concave: linear fit
    assert c2 == 0.0 and c1 > 0
    with pytest.raises(ValueError, match="grow"):
        fit_macs_curve(r.tolist(), (1.0 - r).tolist())


@pytest.mark.parametrize(("budget", "floor"), [(0.5, 0.2), (0.25, 0.125), (0.15, 0.075)])
def test_static_floor_leaves_room_below_small_budgets(tmp_path: Path, budget: float, floor: float) -> None:
    """The static agent's floor is AMC's 0.2 unless the budget is small: then half the budget, so the agent can
    still put a unit below the uniform share (at 0.2, B = 0.25 leaves a ResNet-20 almost nothing to move)."""
    trainer = _trainer(tmp_path, "static", budget=budget)
    assert trainer.config.static_floor == floor
    env = trainer._static_env().envs[0].unwrapped
    assert env.min_keep == floor
    trainer.static_keep = [1.0, 1.0, 1.0]
    trainer.guard_budget()
    assert min(trainer.static_keep) >= floor
    assert _trainer(tmp_path, "static", budget=0.25, static_min_keep=0.2).config.static_floor == 0.2
    with pytest.raises(ValueError, match="static_min_keep"):
        ScheduleConfig(static_min_keep=0.0)


def test_prefix_order_trains_and_ranks_by_the_frozen_criterion(tmp_path: Path) -> None:
    """runtime_order="prefix" without a static plan: the plans rank by the static criterion's scores frozen on
    first use, and the runtime env keeps prefixes of that order."""
    trainer = _trainer(tmp_path, "runtime", runtime_order="prefix")
    trainer.build_agents()
    scores = trainer.order_scores()
    assert scores is not None and trainer.static_scores is not None
    plan = trainer.plan()
    assert plan.runtime_order == "prefix" and plan.static_scores is not None
    assert all(torch.equal(a, b) for a, b in zip(plan.static_scores, scores, strict=True))
    env = trainer._runtime_env()
    assert env.get_attr("runtime_order")[0] == "prefix"
    with pytest.raises(ValueError, match="runtime_order"):
        ScheduleConfig(runtime_order="slices")


def test_static_plan_is_the_best_explored_episode_that_meets_the_budget(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "static", budget=0.5, static_select=4)
    trainer.build_agents()
    trainer.static_scores = [[float(v) for v in sc] for sc in trainer._criterion_scores()]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    floor = trainer.config.static_floor
    episodes = [
        {"keep": [1.0, 1.0, 1.0], "reward": 5.0},  # the unpruned model: lowest loss, but twice the budget
        {"keep": [0.5, 0.5, 0.5], "reward": 1.0},
        {"keep": [0.5, 0.5, 0.5], "reward": 0.9},  # a duplicate is scored once
        {"keep": [floor, 0.6, 0.6], "reward": 0.5},
    ]
    out = trainer.select_static([floor, floor, floor], episodes)
    names = [c["name"] for c in out["candidates"]]
    assert names == ["deterministic", "0", "1", "3"]
    by_name = {c["name"]: c for c in out["candidates"]}
    assert by_name["0"]["macs_fraction"] > 0.5 + 0.005  # over budget ...
    meeting = [c for c in out["candidates"] if c["macs_fraction"] <= 0.505]
    assert by_name["0"]["val_loss"] < min(c["val_loss"] for c in meeting)  # ... so its lower loss must not win
    best = min(meeting, key=lambda c: c["val_loss"])
    assert out["chosen"] == best["name"] and out["keep"] == best["keep"]
    after = trainer.model.state_dict()  # scored on copies: no weight or BN statistic of the run changed
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_static_selection_scores_the_channels_the_static_env_scored(tmp_path: Path) -> None:
    """Before the static plan is set, a candidate is scored with the frozen ranking (the env's criterion), not
    with ``u_s``: its loss equals the loss of the same keep ratios under an explicit plan with those scores."""
    trainer = _trainer(tmp_path, "static", budget=0.5, static_select=2)
    trainer.build_agents()
    assert trainer.static_keep is None
    scores = [-sc for sc in trainer._criterion_scores()]  # a ranking far from u_s's index order
    trainer.static_scores = [[float(v) for v in sc] for sc in scores]
    keep = [0.5, 0.4, 0.6]
    plan = trainer._plan_with(keep)
    assert plan.static_scores is not None
    assert all(torch.equal(a, b) for a, b in zip(plan.static_scores, scores, strict=True))
    out = trainer.select_static(keep, [{"keep": [0.6, 0.5, 0.4], "reward": 1.0}])
    model = copy.deepcopy(trainer.model)
    set_plan(model, PruningPlan(static_keep=keep, static_scores=scores))
    expected = _selection_score(trainer, model)
    assert out["candidates"][0]["val_loss"] == pytest.approx(float(expected["loss"]), rel=1e-6)


@pytest.mark.parametrize("select", [0, 3])
def test_static_phase_keeps_the_selected_episode(tmp_path: Path, select: int) -> None:
    from agents.schedule import RunLogger

    trainer = _trainer(tmp_path, "static", static_steps=15, static_select=select)
    trainer.build_agents()
    trainer.logger = RunLogger(tmp_path)
    phase = next(p for p in trainer.phases if p.kind == "rl_static")
    trainer._rl_phase(trainer.phases.index(phase), phase, 0)
    record = trainer.history[phase.name]
    assert trainer.static_keep == record["static_keep"]
    if select == 0:
        assert record["static_keep"] == record["deterministic_keep"] and record["selection"]["candidates"] == []
    else:  # five explored episodes: the three best-rewarded (distinct) compete with the deterministic one
        cands = record["selection"]["candidates"]
        assert 2 <= len(cands) <= select + 1 and cands[0]["keep"] == record["deterministic_keep"]
        assert record["static_keep"] == min(cands, key=lambda c: c["val_loss"])["keep"]
    assert trainer.static_episodes == []  # consumed by the selection


def test_joint_static_selection_binds_the_runtime_agent_to_the_copy_it_scores(tmp_path: Path) -> None:
    """In joint mode the candidates are scored on a copy of the CNN with the runtime agent in the loop: the agent
    must read the kept counts of the copy's units, not those of the run's model (which last ran another batch)."""
    trainer = _trainer(tmp_path, "joint", budget=0.5, static_select=2)
    trainer.build_agents()
    assert trainer.runtime_model is not None
    set_plan(trainer.model, trainer.plan())
    with torch.no_grad():  # the run's model last saw a batch of 3: its units' masks have 3 rows
        trainer.model.eval()(trainer.data["val"][0][0].unsqueeze(0).repeat(3, 1, 1, 1))
    clear_plan(trainer.model)  # as after a static phase: the plan goes, the units' last masks stay
    assert all(g.last_keep is not None and g.last_keep.shape[0] == 3 for g in gated_units(trainer.model))
    keep = [0.6, 0.5, 0.7]
    out = trainer.select_static(keep, [{"keep": [0.7, 0.6, 0.5], "reward": 1.0}])
    model = copy.deepcopy(trainer.model)
    clear_plan(model)
    set_plan(model, trainer._plan_with(keep, model=model))
    expected = _selection_score(trainer, model)
    first = out["candidates"][0]
    assert first["macs_fraction"] == pytest.approx(float(expected["macs_fraction"]), rel=1e-9)
    assert first["val_loss"] == pytest.approx(float(expected["loss"]), rel=1e-6)
