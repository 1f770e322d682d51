"""CIFAR ResNets (He et al., CVPR 2016, Sec. 4.2) with option-A shortcuts, state-dict compatible with akamaster.

The layout follows ``akamaster/pytorch_resnet_cifar10`` so its public checkpoints load as they are: a 3×3 stem
(``conv1``/``bn1``, 16 channels), three stages ``layer1..3`` of ``n`` basic blocks with 16/32/64 channels, global
average pooling and ``linear``. Option A: when a block halves the resolution and doubles the width, the
shortcut subsamples by 2 and zero-pads the new channels (no parameters), so depth 6n+2 has exactly the
published parameter counts (ResNet-20: 0.27 M).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .weights import IMAGENET_NORMALIZATION, Weights, load_weights

__all__ = [
    "BasicBlock",
    "ResNetCifar",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "RESNET_WEIGHTS",
]

_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{}"
_SOURCE = "akamaster/pytorch_resnet_cifar10 (README table); trained on original CIFAR-10"


def _meta(top1: float) -> dict:
    return {"top1_published": top1, "source": _SOURCE, "normalization": IMAGENET_NORMALIZATION}


#: Public CIFAR-10 checkpoints. ``top1_published`` is the akamaster README's test error, turned into accuracy.
RESNET_WEIGHTS: dict[int, Weights] = {
    20: Weights(_URL.format("resnet20-12fca82f.th"), 10, _meta(91.73)),
    32: Weights(_URL.format("resnet32-d509ac18.th"), 10, _meta(92.63)),
    44: Weights(_URL.format("resnet44-014dd654.th"), 10, _meta(93.10)),
    56: Weights(_URL.format("resnet56-4bfd9763.th"), 10, _meta(93.39)),
    110: Weights(_URL.format("resnet110-1d1ed7c2.th"), 10, _meta(93.68)),
}


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad ``pad`` channels on each side."""

    def __init__(self, stride: int, pad: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3×3 conv + BN layers with an identity or option-A shortcut.

    ``conv1``'s outputs feed only ``conv2``: that is the block's prunable unit (see ``pruning.units``).
    ``forward`` applies ``relu(bn1(conv1(x)))`` as three separate calls so ``pruning.gating`` can swap
    ``conv1`` for a gated conv (which already applies ReLU; ReLU is idempotent) and ``bn1`` for ``Identity``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1: nn.Module = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1: nn.Module = nn.BatchNorm2d(planes)
        self.conv2: nn.Module = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(stride, (planes - in_planes) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth ``6n + 2``.

    Args:
        depth: 20, 32, 44, 56, 110, ... (``(depth - 2) % 6 == 0``).
        num_classes: Classifier outputs.
    """

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _resnet(depth: int, num_classes: int, weights: str | Path | None) -> ResNetCifar:
    model = ResNetCifar(depth, num_classes)
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        entry = RESNET_WEIGHTS.get(depth)
        if entry is None:
            raise ValueError(f"no public weights for resnet{depth}; pass weights=None or a local path")
        if num_classes != entry.num_classes:
            raise ValueError(
                f"the public resnet{depth} weights are for {entry.num_classes} classes, not {num_classes}; "
                "pass num_classes=10, or weights=None to train from scratch"
            )
        return load_weights(model, entry, source_name=f"resnet{depth}")
    return load_weights(model, weights, source_name=f"resnet{depth}")


@register_model()
def resnet20(*, num_classes: int = 10, weights: str | Path | None = None) -> ResNetCifar:
    """ResNet-20 for CIFAR (0.27 M params, 40.6 M MACs). ``weights="DEFAULT"``: akamaster, 91.73% published."""
    return _resnet(20, num_classes, weights)


@register_model()
def resnet32(*, num_classes: int = 10, weights: str | Path | None = None) -> ResNetCifar:
    """ResNet-32 for CIFAR (0.46 M params). ``weights="DEFAULT"``: akamaster, 92.63% published."""
    return _resnet(32, num_classes, weights)


@register_model()
def resnet44(*, num_classes: int = 10, weights: str | Path | None = None) -> ResNetCifar:
    """ResNet-44 for CIFAR (0.66 M params). ``weights="DEFAULT"``: akamaster, 93.10% published."""
    return _resnet(44, num_classes, weights)


@register_model()
def resnet56(*, num_classes: int = 10, weights: str | Path | None = None) -> ResNetCifar:
    """ResNet-56 for CIFAR (0.85 M params, 125 M MACs). ``weights="DEFAULT"``: akamaster, 93.39% published."""
    return _resnet(56, num_classes, weights)


@register_model()
def resnet110(*, num_classes: int = 10, weights: str | Path | None = None) -> ResNetCifar:
    """ResNet-110 for CIFAR (1.7 M params). ``weights="DEFAULT"``: akamaster, 93.68% published."""
    return _resnet(110, num_classes, weights)


@register_model()
def resnet8(*, num_classes: int = 10, weights: str | Path | None = None) -> ResNetCifar:
    """ResNet-8 (one block per stage, 78 k params): a small residual net for tests and quick experiments."""
    return _resnet(8, num_classes, weights)
