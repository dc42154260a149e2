"""CIFAR ResNets (He et al. 2016, section 4.2) with every width passed in.

The layout and names follow torchvision's ``resnet.py`` (``conv1``, ``bn1``, ``layer1..3``, ``fc``,
blocks with ``conv1/bn1/conv2/bn2/downsample``) so that the supernet and finalization treat CIFAR and
ImageNet ResNets the same way, and a pruned model is this same class built with smaller numbers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The 1x1 conv + BN shortcut used where the residual stream changes shape (option B)."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


def init_resnet_weights(model: nn.Module) -> None:
    """He init for convs, identity BN: torchvision's ResNet init, shared by every model we build."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs; ``inner`` is the width of conv1's output, ``planes`` the stream width."""

    def __init__(
        self,
        inplanes: int,
        inner: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, inner, stride)
        self.bn1 = nn.BatchNorm2d(inner)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(inner, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ProjectionBlock(nn.Module):
    """What remains of a block whose residual branch was pruned away but whose shortcut is a projection.

    ``relu(downsample(x))`` is exactly what the original block computes when its branch contributes 0.
    Used by both CIFAR and torchvision families.
    """

    def __init__(self, downsample: nn.Module) -> None:
        super().__init__()
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.downsample(x))


class CifarResNet(nn.Module):
    """A 3-stage CIFAR ResNet built from explicit widths.

    ``stages`` holds, per stage, ``(stream_width, stride, blocks)`` where each block is
    ``(inner_width_or_None, has_projection)``; ``inner=None`` means the residual branch is gone and only
    the projection remains (a :class:`ProjectionBlock`).
    """

    def __init__(
        self,
        stem_width: int,
        stages: Sequence[tuple[int, int, Sequence[tuple[int | None, bool]]]],
        num_classes: int = 10,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(3, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        in_width = stem_width
        self.num_stages = len(stages)
        for index, (width, stride, blocks) in enumerate(stages, start=1):
            layers: list[nn.Module] = []
            for position, (inner, has_projection) in enumerate(blocks):
                block_stride = stride if position == 0 else 1
                down = projection(in_width, width, block_stride) if has_projection else None
                if inner is None:
                    if down is None:
                        raise ValueError(f"layer{index}[{position}]: a block without a branch needs a projection")
                    layers.append(ProjectionBlock(down))
                else:
                    layers.append(BasicBlock(in_width, inner, width, block_stride, down))
                in_width = width
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_width, num_classes)
        init_resnet_weights(self)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017), as in torchvision
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def cifar_resnet(depth: int, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 zero_init_residual: bool = False) -> CifarResNet:
    """The dense He et al. CIFAR ResNet of ``depth = 6n + 2`` layers."""
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    stages = []
    in_width = widths[0]
    for index, width in enumerate(widths):
        stride = 1 if index == 0 else 2
        blocks = [(width, position == 0 and (stride != 1 or in_width != width)) for position in range(n)]
        stages.append((width, stride, blocks))
        in_width = width
    return CifarResNet(widths[0], stages, num_classes=num_classes, zero_init_residual=zero_init_residual)
