"""Provable Filter Pruning: the sensitivity criterion, the sample size, the budget baseline, the ε guarantee."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _nets import images, randomize_
from stable_baselines3.common.evaluation import evaluate_policy
from torch import nn

from agents.baselines import PFPBaseline, PruningTarget, get_baseline
from agents.baselines.pfp import expected_unique, sample_filters, sample_size
from envs.static import StaticPruningEnv
from pruning.criteria import get_criterion
from pruning.criteria.pfp import draw_generator, first_draws, unit_activations
from pruning.gating import gate_model, stored_masks
from pruning.models import get_model
from pruning.units import get_units, unit_conv


def _net(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # the conv weights come from the global generator: one net per seed, whatever ran before
    return randomize_(get_model(name), seed=seed)


def _zero_channel(model: nn.Module, conv: str, bn: str, c: int) -> None:
    """Make output channel ``c`` of a plain unit constantly 0 (zero filter, BN mean, β)."""
    with torch.no_grad():
        layer = model.get_submodule(conv)
        assert isinstance(layer, nn.Conv2d)
        layer.weight[c] = 0
        if layer.bias is not None:
            layer.bias[c] = 0
        norm = model.get_submodule(bn)
        assert isinstance(norm, nn.BatchNorm2d)
        assert norm.running_mean is not None
        norm.running_mean[c] = 0
        norm.bias[c] = 0


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
@pytest.mark.parametrize("gated", [False, True])
def test_zeroed_channel_has_zero_sensitivity_and_ranks_lowest(name: str, gated: bool) -> None:
    net = _net(name)
    unit = get_units(net)[1]
    _zero_channel(net, unit.conv, unit.bn, 3)
    model = gate_model(net, predictor=False) if gated else net
    scores = get_criterion("pfp_sensitivity", inputs=images(8))(model, get_units(net)[1])
    assert scores.shape == (unit.out_channels,)
    assert scores[3] == 0 and int(scores.argmin()) == 3 and bool((scores[torch.arange(len(scores)) != 3] > 0).all())


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8"])
def test_sensitivities_are_relative_contributions_in_unit_interval(name: str) -> None:
    net = _net(name)
    crit = get_criterion("pfp_sensitivity", inputs=images(6))
    small_chunks = get_criterion("pfp_sensitivity", inputs=images(6), max_chunk_elements=1)
    for unit in get_units(net):
        s = crit(net, unit)
        assert s.dtype == torch.float32 and ((s >= 0) & (s <= 1 + 1e-6)).all()
        assert torch.allclose(s, small_chunks(net, unit))  # chunking (one image at a time) changes nothing


def test_sole_positive_feeder_has_sensitivity_one() -> None:
    net = _net("resnet8")
    unit = get_units(net)[0]
    consumer = unit_conv(net.get_submodule(unit.consumer))
    a = unit_activations(net, unit, images(4))
    j = int(a.amax(dim=(0, 2, 3)).argmax())  # a channel that is positive somewhere
    with torch.no_grad():
        consumer.weight[0] = 0
        consumer.weight[0, j] = 0.5  # output 0 of the consumer reads channel j alone, with positive weights
    s = get_criterion("pfp_sensitivity", inputs=images(4))(net, unit)
    assert s[j] == pytest.approx(1.0)


def test_the_criterion_needs_a_calibration_batch() -> None:
    net = _net("tiny_cnn")
    with pytest.raises(ValueError, match="calibration batch"):
        get_criterion("pfp_sensitivity")(net, get_units(net)[0])


def test_sample_size_and_expected_unique_by_hand() -> None:
    # m(ε) = ⌈3·(6 + 2ε)·S/ε²⌉: ε = 0.5, S = 2 → 3·7·2/0.25 = 168; ε = 0.3, S = 1.5 → 3·6.6·1.5/0.09 = 330
    assert sample_size(0.5, 2.0) == 168
    assert sample_size(0.3, 1.5) == 330
    assert sample_size(0.5, 0.0) == 0
    p = np.array([0.5, 0.25, 0.25, 0.0])
    assert expected_unique(p, 2) == pytest.approx((1 - 0.5**2) + 2 * (1 - 0.75**2))
    assert expected_unique(p, 10**12) == pytest.approx(3.0)  # zero-probability channels are never drawn
    n = sample_filters(p, 50, np.random.default_rng(0))
    assert n.sum() == 50 and n[3] == 0


def _pfp_env(budget: float, policy: PFPBaseline | None = None) -> tuple[StaticPruningEnv, torch.Tensor]:
    """A static env ranking by ``policy``'s PFP criterion (default: the deterministic one) on a 16-image batch."""
    x = images(16, seed=1)
    crit = get_criterion("pfp_sensitivity", inputs=x) if policy is None else policy.channel_criterion(x)
    env = StaticPruningEnv(model=_net("resnet8"), num_val=16, budget=budget, criterion=crit)
    return env, x


def _assert_tight(policy: PFPBaseline, env: StaticPruningEnv, budget: float) -> None:
    target = PruningTarget.of(env)
    counts = policy.keep_counts
    assert counts is not None and ((counts >= target.min_counts) & (counts <= target.channels)).all()
    assert target.macs_fraction(counts) <= budget + 1e-12
    assert (counts < target.channels).any()
    # tight: the next smaller ε (a larger sample m(ε) per unit) goes over the budget. Counts of one unit may jump
    # by several channels at once (equal sensitivities), so "+1 channel everywhere" is not the test.
    assert policy.epsilon is not None and policy.sensitivities is not None
    eps = math.exp(-(math.log(1.0 / policy.epsilon) + 1e-6))
    nxt = []
    for t, s in enumerate(policy.sensitivities):
        m = sample_size(eps, float(s.sum()))
        if policy.first is not None:  # sampled: the channels whose first draw comes within m draws
            nxt.append(int(np.count_nonzero(policy.first[t] <= m)))
        else:  # deterministic: the channels expected at least once in m draws
            nxt.append(int(np.count_nonzero(s / s.sum() * m >= 1.0)))
    over = np.clip(np.array(nxt), target.min_counts, target.channels)
    assert (over >= counts).all() and target.macs_fraction(over) > budget


def test_baseline_meets_the_budget_tightly_in_both_variants_and_runs_under_evaluate_policy() -> None:
    budget = 0.5
    env, x = _pfp_env(budget)
    assert env.criterion_name in ("pfp_sensitivity", "pfp_sensitivity_criterion")
    sampled = get_baseline("pfp")
    assert isinstance(sampled, PFPBaseline)
    sampled_env, _ = _pfp_env(budget, sampled)
    assert sampled_env.criterion_name in ("pfp_sampled", "pfp_sampled_criterion")
    sampled.prepare(sampled_env)
    deterministic = get_baseline("pfp", inputs=x, deterministic=True).prepare(env)
    assert isinstance(deterministic, PFPBaseline)
    for policy, penv in ((sampled, sampled_env), (deterministic, env)):
        _assert_tight(policy, penv, budget)
        assert policy.epsilon is not None and policy.epsilon > 0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Monitor.*")
            rewards, lengths = evaluate_policy(policy, penv, n_eval_episodes=1, return_episode_rewards=True)
        assert lengths == [penv.num_units] and np.isfinite(rewards).all()
    assert sampled.keep_counts is not None and deterministic.keep_counts is not None
    assert not np.array_equal(sampled.keep_counts, deterministic.keep_counts)


def test_deterministic_variant_keeps_the_channels_above_one_over_m() -> None:
    env, x = _pfp_env(0.5)
    policy = get_baseline("pfp", inputs=x, deterministic=True).prepare(env)
    assert isinstance(policy, PFPBaseline) and policy.sensitivities is not None
    target = PruningTarget.of(env)
    for t, (s, m) in enumerate(zip(policy.sensitivities, policy.sample_sizes(), strict=True)):
        above = np.flatnonzero(s / s.sum() * m >= 1.0)
        k = int(policy.keep_counts[t])  # type: ignore[index]
        assert k == max(len(above), int(target.min_counts[t]))
        if len(above) >= target.min_counts[t]:  # the env's top-k by sensitivity is exactly PFP's kept set
            top = np.argsort(-env.static_scores[t].numpy(), kind="stable")[:k]
            assert set(top.tolist()) == set(above.tolist())


def test_calibration_from_the_env_and_criterion_check() -> None:
    env = StaticPruningEnv(model=_net("tiny_cnn"), num_val=16, budget=0.5, criterion="l1")
    policy = get_baseline("pfp").prepare(env)  # counts only: calibration = the env's reward subset
    assert policy.keep_counts is not None
    with pytest.raises(ValueError, match="pfp_sampled"):
        get_baseline("pfp", inputs=images(4)).prepare(env)
    with pytest.raises(ValueError, match="pfp_sensitivity"):
        get_baseline("pfp", inputs=images(4), deterministic=True).prepare(env)
    with pytest.raises(RuntimeError, match="prepare"):
        PFPBaseline().sample_sizes()


def test_sampled_layer_error_stays_within_epsilon() -> None:
    """PFP's guarantee: reweighted sampled channels keep |ẑ − z| ≤ ε·(z⁺ + z⁻) on the calibration batch."""
    net, x, eps = _net("resnet8"), images(16, seed=2), 1.0
    unit = get_units(net)[2]
    s = get_criterion("pfp_sensitivity", inputs=x)(net, unit).double().numpy()
    p = s / s.sum()
    m = sample_size(eps, float(s.sum()))
    a = unit_activations(net, unit, x).double()
    conv = unit_conv(net.get_submodule(unit.consumer))
    w = conv.weight.detach().double()

    def pre(inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inp, weight, None, conv.stride, conv.padding, conv.dilation)

    z, scale = pre(a, w), pre(a, w.abs()).clamp_min(1e-12)
    ok, kept = 0, []
    for seed in range(20):
        n = sample_filters(p, m, np.random.default_rng(seed))
        weight = torch.from_numpy(np.where(n > 0, n / (m * np.where(p > 0, p, 1.0)), 0.0))
        z_hat = pre(a * weight[None, :, None, None], w)
        ok += float(((z_hat - z).abs() / scale).amax()) <= eps
        kept.append(int(np.count_nonzero(n)))
    assert ok >= 16
    assert math.isfinite(m) and min(kept) < unit.out_channels  # it does prune


def test_first_draws_give_the_sampled_sets_of_every_sample_size() -> None:
    """``{first ≤ m}`` is distributed as the set of channels drawn in m i.i.d. draws (checked on its marginals)."""
    p = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
    firsts = np.stack([first_draws(p, np.random.default_rng(s)) for s in range(4000)])
    assert np.isinf(firsts[:, 4]).all() and np.isfinite(firsts[:, :4]).all()
    assert (firsts.min(axis=1) == 1).all()  # the first draw is always a new channel
    for m in (1, 3, 10):
        drawn = firsts <= m
        # P(j drawn in m draws) = 1 − (1 − p_j)^m; 4000 seeds: standard error below 0.008
        np.testing.assert_allclose(drawn.mean(axis=0), 1 - (1 - p) ** m, atol=0.03)
        assert drawn.sum(axis=1).mean() == pytest.approx(expected_unique(p, m), abs=0.05)
    # the same generator state gives the same draw; the weights need not be normalised
    assert np.array_equal(first_draws(p * 7, draw_generator(3, 1)), first_draws(p, draw_generator(3, 1)))
    with pytest.raises(ValueError, match="non-negative"):
        first_draws(np.array([0.5, -0.1]), np.random.default_rng(0))


def test_pfp_sampled_criterion_orders_channels_by_the_seeded_draw() -> None:
    net, x = _net("resnet8"), images(8)
    unit = get_units(net)[1]
    scores = get_criterion("pfp_sampled", inputs=x, seed=4)(net, unit)
    s = get_criterion("pfp_sensitivity", inputs=x)(net, unit)
    first = first_draws(s, draw_generator(4, unit.index))
    assert sorted(scores.tolist()) == list(range(1, unit.out_channels + 1))  # distinct ranks: no ties
    assert np.array_equal(np.argsort(-scores.numpy(), kind="stable"), np.argsort(first, kind="stable"))
    assert torch.equal(scores, get_criterion("pfp_sampled", inputs=x, seed=4)(net, unit))
    assert not torch.equal(scores, get_criterion("pfp_sampled", inputs=x, seed=5)(net, unit))


def _episode_stored(env: StaticPruningEnv, policy: PFPBaseline) -> list[np.ndarray]:
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, _, done, _, _ = env.step(policy.predict(obs)[0])
    env.apply_plan()
    return [m.numpy() for m in stored_masks(env.model)]


def test_env_keeps_the_sampled_channel_sets() -> None:
    """The env built with the sampled variant's criterion keeps exactly the channels of PFP's seeded draw."""
    budget = 0.5
    kept: dict[int, list[np.ndarray]] = {}
    for seed in (0, 1):
        policy = get_baseline("pfp", seed=seed)
        assert isinstance(policy, PFPBaseline)
        env, _ = _pfp_env(budget, policy)
        policy.prepare(env)
        _assert_tight(policy, env, budget)
        stored = _episode_stored(env, policy)
        draws = policy.draw()
        target = PruningTarget.of(env)
        exact = 0
        for t, (mask, n, m) in enumerate(zip(stored, draws, policy.sample_sizes(), strict=True)):
            assert n.sum() == m  # the multiplicities complete the same draw of m samples
            k = int(policy.keep_counts[t])  # type: ignore[index]
            assert mask.sum() == k
            if np.count_nonzero(n) >= target.min_counts[t]:  # not raised to the min_keep floor: PFP's set exactly
                assert np.array_equal(mask, n > 0)
                exact += 1
            else:  # floored: the drawn channels and then the next ones to be drawn
                assert mask[n > 0].all()
        assert exact > 0
        kept[seed] = stored
        # the sampled set is not simply the top of the sensitivity ranking (that is the deterministic variant)
        assert policy.sensitivities is not None and policy.keep_counts is not None
        pairs = zip(policy.sensitivities, policy.keep_counts, strict=True)
        top = [set(np.argsort(-s, kind="stable")[: int(k)].tolist()) for s, k in pairs]
        assert any(set(np.flatnonzero(mask).tolist()) != tp for mask, tp in zip(stored, top, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(kept[0], kept[1], strict=True))


def test_sampled_variant_refuses_an_env_with_another_draw() -> None:
    env, x = _pfp_env(0.5, get_baseline("pfp", seed=0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="another PFP draw"):
        get_baseline("pfp", seed=1, inputs=x[:64]).prepare(env)
    assert get_baseline("pfp", seed=0, inputs=x[:64]).prepare(env).keep_counts is not None
