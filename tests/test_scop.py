"""SCOP (pruning.methods.scop, agents.baselines.scop): knockoff moments, control factors, scores, the baseline."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch
from _nets import images, randomize_
from torch import nn

import pruning.methods.scop as scop_module
from agents.baselines import TrainContext, get_baseline
from agents.baselines.scop import SCOPBaseline, uniform_keep_counts
from pruning.accounting import CostModel
from pruning.data import ImageDataset, get_dataset
from pruning.methods.scop import GaussianKnockoffs, KnockoffNet, scop_scores, train_control_factors
from pruning.models import get_model
from pruning.train import TrainConfig, evaluate, train
from pruning.units import get_units, unit_conv


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_module_doctest() -> None:
    result = doctest.testmod(scop_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _low_rank_gaussian(n: int, p: int, r: int, seed: int = 0) -> torch.Tensor:
    """Samples of N(μ, A Aᵀ + 0.49 I): exactly the knockoff model's family (rank r + isotropic residual)."""
    g = torch.Generator().manual_seed(seed)
    a = 2.0 * torch.randn(p, r, generator=g, dtype=torch.float64)
    mu = torch.randn(p, generator=g, dtype=torch.float64)
    return mu + torch.randn(n, r, generator=g, dtype=torch.float64) @ a.T + 0.7 * torch.randn(
        n, p, generator=g, dtype=torch.float64
    )


def test_knockoffs_have_the_first_two_moments_and_the_swap_property() -> None:
    p, r = 10, 3
    x = _low_rank_gaussian(200_000, p, r)
    ko = GaussianKnockoffs.fit(x, rank=r)
    # equicorrelated s: one value, as large as 2Σ − D ⪰ 0 allows (λ_min(Σ) = σ²), capped by the variances
    sigma = ko.covariance()
    assert ko.s == pytest.approx(min(2 * ko.noise_var, float(sigma.diagonal().min())))
    assert float(torch.linalg.eigvalsh(2 * sigma - ko.s * torch.eye(p, dtype=sigma.dtype)).min()) > -1e-9
    xk = ko(x, torch.Generator().manual_seed(1))
    assert xk.shape == x.shape and xk.dtype == x.dtype
    scale = float(torch.cov(x.T).abs().max())
    # first two moments of the knockoffs = those of the real samples
    assert torch.allclose(xk.mean(0), x.mean(0), atol=0.02 * scale**0.5)
    assert torch.allclose(torch.cov(xk.T), torch.cov(x.T), atol=0.01 * scale)
    # cross-covariance cov(X, X̃) = Σ − diag(s), and swapping coordinates leaves the joint second moments unchanged
    joint = torch.cov(torch.cat([x, xk], 1).T)
    expected_cross = torch.cov(x.T) - ko.s * torch.eye(p, dtype=x.dtype)
    assert torch.allclose(joint[:p, p:], expected_cross, atol=0.01 * scale)
    swap = torch.tensor([0, 3, 4, 8])
    xs, xks = x.clone(), xk.clone()
    xs[:, swap], xks[:, swap] = xk[:, swap], x[:, swap]
    swapped = torch.cov(torch.cat([xs, xks], 1).T)
    assert torch.allclose(swapped, joint, atol=0.01 * scale)
    # and the knockoff really differs from the sample: cov(X_j − X̃_j) = 2 s
    assert torch.allclose(torch.var(x - xk, dim=0), torch.full((p,), 2 * ko.s, dtype=x.dtype), rtol=0.03)


def test_independent_draws_have_the_moments_and_no_cross_covariance() -> None:
    p, r = 10, 3
    x = _low_rank_gaussian(200_000, p, r)
    ko = GaussianKnockoffs.fit(x, rank=r, conditional=False)
    xk = ko(x, torch.Generator().manual_seed(1))
    scale = float(torch.cov(x.T).abs().max())
    assert torch.allclose(xk.mean(0), x.mean(0), atol=0.02 * scale**0.5)
    assert torch.allclose(torch.cov(xk.T), torch.cov(x.T), atol=0.01 * scale)
    cross = torch.cov(torch.cat([x, xk], 1).T)[:p, p:]
    assert float(cross.abs().max()) < 0.01 * scale
    assert "independent" in ko.describe()["knockoffs"]


def test_knockoffs_of_images_keep_the_shape_and_are_seeded() -> None:
    data = get_dataset("synthetic", split="train", size=64)
    ko = GaussianKnockoffs.from_dataset(data, rank=4, max_images=64)
    x = data.normalize(data.images[:5])
    a = ko(x, torch.Generator().manual_seed(3))
    b = ko(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, ko(x, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="rank"):
        GaussianKnockoffs.fit(x, rank=10)


def test_control_factors_mix_real_and_knockoff_features() -> None:
    model = randomize_(get_model("tiny_cnn"), seed=1)
    x = images(4)
    net = KnockoffNet(model, lambda batch, generator: batch.flip(0) * 0.5 + 0.1).eval()
    with torch.no_grad():
        for b in net.control_factors():
            b.fill_(1.0)
        assert torch.allclose(net(x), model(x), atol=1e-5)  # β = 1: the real stream never sees the knockoffs
        net.control_factors()[0].fill_(0.0)
        # plain net, β = 0 at the first unit: the real stream is the knockoff's from there on
        assert torch.allclose(net(x), model(x.flip(0) * 0.5 + 0.1), atol=1e-5)
    # only the copy carries the factors: the model itself is untouched
    assert all(isinstance(model.get_submodule(u.conv), nn.Conv2d) for u in get_units(model))


def _with_noise_plane(split: str, size: int, seed: int) -> ImageDataset:
    """Synthetic images whose blue plane is replaced by uniform noise (no label information)."""
    data = get_dataset("synthetic", split=split, size=size)
    imgs = data.images.clone()
    imgs[:, 2] = torch.randint(0, 256, imgs[:, 2].shape, generator=torch.Generator().manual_seed(seed),
                               dtype=torch.uint8)  # fmt: skip
    return ImageDataset(imgs, data.labels, classes=data.classes, name="noisy", split=split)


def test_channels_fed_only_noise_get_the_lowest_scores() -> None:
    torch.manual_seed(0)
    model = get_model("tiny_cnn")
    conv = unit_conv(model.get_submodule(get_units(model)[0].conv))
    mask = torch.ones_like(conv.weight)
    mask[:4, :2] = 0  # channels 0-3 read only the noise plane
    mask[4:, 2] = 0  # channels 4-7 read only the informative planes

    def keep_pattern(_: nn.Module) -> None:
        conv.weight.mul_(mask)

    with torch.no_grad():
        keep_pattern(model)
    train(model, _with_noise_plane("train", 1024, 1), TrainConfig(epochs=6, batch_size=64, lr=0.05, weight_decay=5e-3),
          progress=False, after_step=keep_pattern)  # fmt: skip
    assert evaluate(model, _with_noise_plane("val", 256, 2))["top1"] > 60.0
    # β trained on images the model has not memorised, so the noise channels carry nothing there
    result = train_control_factors(model, _with_noise_plane("test", 512, 3), epochs=2, batch_size=64, rank=8)
    scores = result.scores[0]
    assert set(scores.argsort()[:4].tolist()) == {0, 1, 2, 3}
    assert all(bool(((b >= 0) & (b <= 1)).all()) for b in result.beta)
    assert result.info["knockoff_rank"] == 8 and result.history["steps"] == 16


def test_scores_are_abs_gamma_times_two_beta_minus_one() -> None:
    model = randomize_(get_model("tiny_cnn"), seed=2)
    units = get_units(model)
    beta = [torch.rand(u.out_channels, generator=torch.Generator().manual_seed(u.index)) for u in units]
    scores = scop_scores(model, beta)
    for u, b, s in zip(units, beta, scores, strict=True):
        gamma = model.get_submodule(u.bn).weight.detach()
        assert torch.allclose(s, gamma.abs() * (b - (1 - b)))
    with pytest.raises(ValueError, match="units"):
        scop_scores(model, beta[:1])


def test_baseline_builds_a_pruned_model_that_meets_the_budget_and_leaves_base_alone() -> None:
    base = randomize_(get_model("tiny_cnn"), seed=0)
    before = copy.deepcopy(base.state_dict())
    train_set = get_dataset("synthetic", split="train", size=256)
    context = TrainContext(train_set=train_set, val_set=get_dataset("synthetic", split="val", size=64), budget=0.5,
                           epochs=0.5, seed=3)  # fmt: skip
    policy = get_baseline("scop", rank=4, batch_size=32)
    assert isinstance(policy, SCOPBaseline)
    built = policy.build(base, context)
    # base untouched
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    # costs as defined: exact MACs of the sliced model, at most the budget; parameters of the sliced model
    cm_base = CostModel(base)
    assert built.macs_fraction == pytest.approx(CostModel(built.model).base_macs / cm_base.base_macs)
    assert built.macs_fraction <= 0.5
    n_params = sum(p.numel() for p in built.model.parameters())
    assert built.params_fraction == pytest.approx(n_params / sum(p.numel() for p in base.parameters()))
    # one uniform rate for all units (up to rounding), the tightest that meets the budget
    counts = uniform_keep_counts(base, 0.5)
    assert built.keep_ratios == [int(k) / u.out_channels for k, u in zip(counts, get_units(base), strict=True)]
    # each unit kept its best-scored channels (the same seed gives the same factors)
    factors = train_control_factors(base, train_set, epochs=0.5, batch_size=32, rank=4, seed=3)
    for u, pu, s, k in zip(get_units(base), get_units(built.model), factors.scores, counts, strict=True):
        kept = torch.sort(torch.argsort(s, descending=True, stable=True)[: int(k)]).values
        w = unit_conv(base.get_submodule(u.conv)).weight.detach()[kept]
        if u.producer is not None:
            w = w[:, torch.sort(torch.argsort(factors.scores[u.producer], descending=True, stable=True)
                                [: int(counts[u.producer])]).values]  # fmt: skip
        assert torch.equal(unit_conv(built.model.get_submodule(pu.conv)).weight.detach(), w)
    assert built.info["knockoffs"].startswith("gaussian") and 0.0 < built.info["prune_rate"] < 1.0
    assert built.train_seconds > 0
    with torch.no_grad():
        assert built.model.eval()(images(2)).shape == (2, 10)
