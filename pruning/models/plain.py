"""Plain (non-residual) CIFAR nets: VGG-16-BN and M-CifarNet. No public weights: they must be trained.

Both keep their convolutions in one ``features`` ``nn.Sequential`` of ``Conv2d, BatchNorm2d, ReLU`` triples
(plus pooling), so every conv but the last feeds the next conv: those are the prunable units
(``pruning.units``), and a unit's kept outputs are the next unit's inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .registry import register_model
from .weights import load_weights

__all__ = ["PlainConvNet", "vgg16_bn", "m_cifarnet", "VGG16_CFG", "M_CIFARNET_CFG"]

#: VGG-16 conv widths; ``"M"`` is a 2×2 max-pool (Simonyan & Zisserman 2015, the CIFAR variant with one FC).
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
#: M-CifarNet (FBS, Gao et al. ICLR 2019; the CIFAR model of Chen, Chen & Pan, "Storage Efficient and Dynamic
#: Flexible Runtime Channel Pruning via Deep Reinforcement Learning", NeurIPS 2020): ``(width, stride)`` per 3×3 conv.
M_CIFARNET_CFG: list[tuple[int, int]] = [
    (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (192, 2), (192, 1), (192, 1)
]  # fmt: skip


class PlainConvNet(nn.Module):
    """A stack of ``Conv2d(3×3) → BatchNorm2d → ReLU`` (with optional max-pools), global average pool, one FC.

    Args:
        layers: Sequence of ``(out_channels, stride)`` for a conv, or ``"M"`` for a 2×2 max-pool.
        num_classes: Classifier outputs.
    """

    def __init__(self, layers: list[tuple[int, int] | str], num_classes: int = 10) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c_in = 3
        for spec in layers:
            if spec == "M":
                mods.append(nn.MaxPool2d(2))
                continue
            assert isinstance(spec, tuple)
            c_out, stride = spec
            mods += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out)]
            mods.append(nn.ReLU(inplace=False))
            c_in = c_out
        self.features = nn.Sequential(*mods)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model()
def vgg16_bn(*, num_classes: int = 10, weights: str | Path | None = None) -> PlainConvNet:
    """VGG-16 with batch norm for 32×32 inputs (13 convs, 512→num_classes FC; 14.7 M params, 313 M MACs)."""
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        raise ValueError("vgg16_bn has no public weights; train it (prunegym pretrain) or pass a local path")
    layers = [(c, 1) if c != "M" else "M" for c in VGG16_CFG]
    return load_weights(PlainConvNet(layers, num_classes), weights, source_name="vgg16_bn")  # type: ignore[arg-type]


@register_model()
def m_cifarnet(*, num_classes: int = 10, weights: str | Path | None = None) -> PlainConvNet:
    """M-CifarNet: 8 convs 64-64-128-128-128-192-192-192 (strides 2 at the 3rd and 6th), GAP, FC."""
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        raise ValueError("m_cifarnet has no public weights; train it (prunegym pretrain) or pass a local path")
    return load_weights(PlainConvNet(list(M_CIFARNET_CFG), num_classes), weights, source_name="m_cifarnet")  # type: ignore[arg-type]


@register_model()
def tiny_cnn(*, num_classes: int = 10, weights: str | Path | None = None) -> PlainConvNet:
    """A 4-conv 8-16-16-32 net for tests and quick experiments (plain-net unit rules apply)."""
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        raise ValueError("tiny_cnn has no public weights; train it (prunegym pretrain) or pass a local path")
    return load_weights(
        PlainConvNet([(8, 1), (16, 2), (16, 1), (32, 2)], num_classes), weights, source_name="tiny_cnn"
    )
