"""Test helpers: give models realistic-scale random weights (not the near-identity values of a fresh init)."""

from __future__ import annotations

import torch
from torch import nn

from pruning.gating import gated_units


def randomize_(model: nn.Module, seed: int = 0, *, batch: int = 8) -> nn.Module:
    """Give ``model`` trained-looking BatchNorm statistics and classifier weights, in place; return it in eval mode.

    Every BN gets weight ~ U[0.5, 1.5] and bias ~ N(0, 0.1). Its running statistics are first measured on one
    batch of noise images (so activations stay O(1) even through the 27 residual blocks of ResNet-56, whose
    stream otherwise doubles its variance per block) and then the running variance is multiplied by a factor
    in [0.5, 2] per channel, so BN is not an exact normalisation. The classifier gets weights ~ N(0, 1/fan_in)
    and biases ~ N(0, 0.1), so logits are O(1) to O(10).
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved_momentum = [bn.momentum for bn in bns]
    with torch.no_grad():
        for bn in bns:
            c = bn.num_features
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch sets the statistics exactly
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = linears[-1]
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * head.in_features**-0.5)
        head.bias.copy_(torch.randn(head.out_features, generator=g) * 0.1)
        model.train()
        model(torch.randn(batch, 3, 32, 32, generator=g))
        for bn, momentum in zip(bns, saved_momentum, strict=True):
            bn.momentum = momentum
            bn.running_var.mul_(torch.rand(bn.num_features, generator=g) * 1.5 + 0.5)
    return model.eval()


def randomize_gates_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Predictor weights ~ N(0, 0.01) (bias stays = BN γ) and ``u_s`` ~ U[0.5, 1.5] in every gated unit."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for unit in gated_units(model):
            if unit.predictor is not None:
                unit.predictor.weight.copy_(torch.randn(unit.predictor.weight.shape, generator=g) * 0.01)
            assert unit.static_importance is not None
            unit.static_importance.copy_(torch.rand(unit.static_importance.shape, generator=g) + 0.5)
    return model


def images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` normalised-looking random CIFAR-sized inputs."""
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 7))
