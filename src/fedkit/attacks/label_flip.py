"""Label flipping (Fang et al. 2020, "Local Model Poisoning Attacks to Byzantine-Robust Federated
Learning"; Tolpegin et al. 2020, "Data Poisoning Attacks Against Federated Learning Systems").

The attacker trains honestly on its own inputs with every label ``y`` replaced by ``C - 1 - y``
(``C`` classes), so its update pulls every class towards its mirror image. Labels below 0 (the
padding of sequence tasks) are kept.
"""

from __future__ import annotations

import dataclasses

import torch

from fedkit.algorithm import ClientData
from fedkit.attacks.base import Attack


def check_num_classes(num_classes: int | None) -> None:
    """Refuse a class count below 2 (``None``, the dataset's, is filled in by the runner)."""
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")


def needed_classes(num_classes: int | None, y: torch.Tensor, what: str) -> int:
    """The class count to poison with: refused when unset or when a label is not below it."""
    if num_classes is None:
        raise ValueError(f"{what} needs num_classes (the dataset's number of classes)")
    check_labels(y, num_classes, what)
    return num_classes


def check_labels(y: torch.Tensor, num_classes: int, what: str) -> None:
    """Refuse labels at or above ``num_classes`` (the attack would make them negative)."""
    if y.numel() and int(y.max()) >= num_classes:
        raise ValueError(
            f"{what}: label {int(y.max())} is not below num_classes = {num_classes}; "
            "set the attack's num_classes to the dataset's"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelFlip(Attack):
    """Every training label ``y`` becomes ``num_classes - 1 - y`` (module docstring).

    Attributes:
        num_classes: the number of classes ``C`` (the runner fills in the dataset's when unset).
    """

    num_classes: int | None = None

    def __post_init__(self) -> None:
        check_num_classes(self.num_classes)

    def poison(self, data: ClientData, stream: torch.Generator) -> ClientData:
        """The client's data with flipped labels."""
        y = data.y_train
        c = needed_classes(self.num_classes, y, "label_flip")
        flipped = torch.where(y >= 0, c - 1 - y, y)
        return dataclasses.replace(data, y_train=flipped)
