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
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes!r}")

    def poison(self, data: ClientData, stream: torch.Generator) -> ClientData:
        """The client's data with flipped labels."""
        c = self.num_classes
        if c is None:
            raise ValueError("label_flip needs num_classes (the dataset's number of classes)")
        y = data.y_train
        check_labels(y, c, "label_flip")
        flipped = torch.where(y >= 0, c - 1 - y, y)
        return dataclasses.replace(data, y_train=flipped)
