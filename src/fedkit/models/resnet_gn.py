"""ResNet-18 with GroupNorm (Reddi et al. 2021, "Adaptive Federated Optimization").

He et al. 2016's ResNet-18 (four stages of two basic blocks, 64-128-256-512 channels) with every
BatchNorm replaced by GroupNorm, as Reddi et al. do for CIFAR-10/100 (following Hsieh et al. 2020):
batch statistics are meaningless across non-IID clients and running buffers break functional,
vectorised execution. Each norm layer uses ``num_groups`` groups (2, as in Reddi et al.'s code).

``stem="cifar"`` (default) is the usual 32×32 stem: conv3×3 64 stride 1, no max-pool (11,173,962
parameters for 10 classes). ``stem="imagenet"`` is the original conv7×7 stride 2 + max-pool stem.

:func:`resnet18_bn` is the same network with He et al.'s BatchNorm, for the comparison Hsieh et
al. 2020 ("The Non-IID Data Quagmire of Decentralized Machine Learning") make: batch statistics
averaged across non-IID clients hurt FedAvg; GroupNorm avoids them, and FedBN (Li et al. 2021)
keeps them local instead. Its BatchNorm layers carry running statistics (buffers), so it runs
client by client (not vectorised).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNetGN", "resnet18_bn", "resnet18_gn"]

Norm = Callable[[int], nn.Module]
"""A normalisation layer for ``c`` channels."""


class BasicBlock(nn.Module):
    """conv3×3-norm-ReLU-conv3×3-norm plus a (projected when needed) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.norm2 = norm(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Residual block output."""
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        result: Tensor = self.relu(out + self.shortcut(x))
        return result


class ResNetGN(nn.Module):
    """ResNet-18 with GroupNorm (or, given ``norm``, another normalisation); logits
    ``(N, num_classes)`` for images ``(N, C, H, W)``."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        groups: int,
        stem: Literal["cifar", "imagenet"],
        norm: Norm | None = None,
    ) -> None:
        super().__init__()
        if norm is None:
            norm = functools.partial(nn.GroupNorm, groups)
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                norm(64),
                nn.ReLU(),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                norm(64),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        blocks: list[nn.Module] = []
        c_in = 64
        for i, c_out in enumerate((64, 128, 256, 512)):
            for j in range(2):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride, norm))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of images."""
        out: Tensor = self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
        return out


def resnet18_gn(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    num_groups: int = 2,
    stem: Literal["cifar", "imagenet"] = "cifar",
) -> nn.Module:
    """ResNet-18 with GroupNorm.

    Args:
        num_classes: Output classes.
        input_shape: ``(C, H, W)``, e.g. ``(3, 32, 32)``.
        num_groups: Groups per GroupNorm layer (must divide 64); 2 as in Reddi et al. 2021.
        stem: ``"cifar"`` (conv3×3, no max-pool) or ``"imagenet"`` (conv7×7 stride 2 + max-pool).
    """
    if len(input_shape) != 3:
        raise ValueError(f"model 'resnet18_gn': input_shape must be (C, H, W), got {input_shape}")
    if (
        isinstance(num_groups, bool)
        or not isinstance(num_groups, int)
        or num_groups < 1
        or 64 % num_groups
    ):
        raise ValueError(
            f"model 'resnet18_gn': num_groups must be a positive divisor of 64, got {num_groups!r}"
        )
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"model 'resnet18_gn': stem must be 'cifar' or 'imagenet', got {stem!r}")
    return ResNetGN(
        in_channels=input_shape[0], num_classes=num_classes, groups=num_groups, stem=stem
    )


def resnet18_bn(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    stem: Literal["cifar", "imagenet"] = "cifar",
) -> nn.Module:
    """ResNet-18 with BatchNorm (He et al. 2016), otherwise as :func:`resnet18_gn`.

    Args:
        num_classes: Output classes.
        input_shape: ``(C, H, W)``, e.g. ``(3, 32, 32)``.
        stem: ``"cifar"`` (conv3×3, no max-pool) or ``"imagenet"``.
    """
    if len(input_shape) != 3:
        raise ValueError(f"model 'resnet18_bn': input_shape must be (C, H, W), got {input_shape}")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"model 'resnet18_bn': stem must be 'cifar' or 'imagenet', got {stem!r}")
    return ResNetGN(
        in_channels=input_shape[0],
        num_classes=num_classes,
        groups=1,
        stem=stem,
        norm=nn.BatchNorm2d,
    )
