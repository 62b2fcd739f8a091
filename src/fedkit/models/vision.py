"""Image and feature models with the papers' shapes.

- ``logreg``: multinomial logistic regression (a single linear layer on the flattened input);
  Li et al. 2020 (FedProx) use it on Synthetic(α, β) and MNIST.
- ``mlp``: McMahan et al. 2017's "2NN", 784-200-200-10 with ReLU (199,210 parameters on MNIST).
- ``cnn``: McMahan et al. 2017's CNN: conv5×5 32 → ReLU → maxpool 2 → conv5×5 64 → ReLU → maxpool
  2 → fc 512 → ReLU → fc classes, "same" padding (1,663,370 parameters on MNIST).
- ``femnist_cnn``: LEAF's FEMNIST CNN (Caldas et al. 2018): the same two "same"-padded conv blocks,
  then fc 2048 → classes (6,603,710 parameters for 62 classes).
- ``lenet5``: the CIFAR CNN of Hsu et al. 2019: conv5×5 64 → ReLU → maxpool 2 → conv5×5 64 → ReLU →
  maxpool 2 → fc 384 → fc 192 → classes. The paper does not state the padding; the default is
  LeNet's "valid" (32 → 28 → 14 → 10 → 5, 797,962 parameters for 10 classes); ``padding="same"``
  gives the TensorFlow CIFAR-10 tutorial's variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

__all__ = ["ConvNet", "cnn", "femnist_cnn", "lenet5", "logreg", "mlp"]


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r}: input_shape must be (C, H, W), got {input_shape}")
    return (input_shape[0], input_shape[1], input_shape[2])


def logreg(*, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Multinomial logistic regression: ``Linear(prod(input_shape), num_classes)``, flat inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(
    *, num_classes: int, input_shape: tuple[int, ...], hidden: Sequence[int] = (200, 200)
) -> nn.Module:
    """McMahan et al.'s 2NN: fully connected layers ``hidden`` with ReLU, then the classifier.

    Args:
        num_classes: Output classes.
        input_shape: Sample shape; it is flattened (784 for MNIST).
        hidden: Hidden layer widths; ``(200, 200)`` is the 2NN.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ValueError(f"model 'mlp': hidden widths must be ints >= 1, got {list(hidden)}")
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Two conv5×5 + ReLU + maxpool-2 blocks followed by fully connected layers.

    This one class is McMahan's CNN, LEAF's FEMNIST CNN and Hsu et al.'s CIFAR LeNet-5; they differ
    only in channel counts, padding and the fully connected widths.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int],
        channels: tuple[int, int],
        fc: Sequence[int],
        num_classes: int,
        padding: Literal["same", "valid"],
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        pad = 2 if padding == "same" else 0
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        for _ in range(2):
            h, w = (h + 2 * pad - 4) // 2, (w + 2 * pad - 4) // 2
        if h < 1 or w < 1:
            raise ValueError(f"input_shape {input_shape} is too small for two conv5x5+pool blocks")
        layers: list[nn.Module] = []
        width = channels[1] * h * w
        for f in fc:
            layers += [nn.Linear(width, f), nn.ReLU()]
            width = f
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        out: Tensor = self.classifier(self.features(x))
        return out


def cnn(*, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """McMahan et al. 2017's CNN (1,663,370 parameters for MNIST)."""
    return ConvNet(
        input_shape=_image_shape("cnn", input_shape),
        channels=(32, 64),
        fc=(512,),
        num_classes=num_classes,
        padding="same",
    )


def femnist_cnn(*, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """LEAF's FEMNIST CNN (Caldas et al. 2018), 6,603,710 parameters for 62 classes."""
    return ConvNet(
        input_shape=_image_shape("femnist_cnn", input_shape),
        channels=(32, 64),
        fc=(2048,),
        num_classes=num_classes,
        padding="same",
    )


def lenet5(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    padding: Literal["valid", "same"] = "valid",
) -> nn.Module:
    """Hsu et al. 2019's LeNet-5-like CIFAR CNN (797,962 parameters for 10 classes, "valid").

    Args:
        num_classes: Output classes.
        input_shape: ``(3, 32, 32)`` for CIFAR.
        padding: ``"valid"`` (LeNet, default) or ``"same"``.
    """
    if padding not in ("valid", "same"):
        raise ValueError(f"model 'lenet5': padding must be 'valid' or 'same', got {padding!r}")
    return ConvNet(
        input_shape=_image_shape("lenet5", input_shape),
        channels=(64, 64),
        fc=(384, 192),
        num_classes=num_classes,
        padding=padding,
    )
