"""Noisy clients: corrupted data without malice (a broken sensor, careless labelling).

Not attacks in intent but run through the same seam, so a study can give a fraction of clients
corrupted data and compare aggregators that down-weight them (:mod:`fedkit.robust.reweight`):

* :class:`LabelNoise` — symmetric label noise (the noise model of Natarajan et al. 2013): each
  training label is replaced, with probability ``p``, by a class drawn uniformly from all ``C``.
* :class:`InputNoise` — additive Gaussian input noise ``x + N(0, σ²)`` on every training example.
"""

from __future__ import annotations

import dataclasses

import torch

from fedkit.algorithm import ClientData
from fedkit.attacks.base import Attack
from fedkit.attacks.label_flip import check_num_classes, needed_classes


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelNoise(Attack):
    """Each label replaced with probability ``p`` by a uniform class (module docstring).

    Attributes:
        p: the replacement probability.
        num_classes: ``C`` (the runner fills in the dataset's when unset).
    """

    p: float = 0.5
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {self.p!r}")
        check_num_classes(self.num_classes)

    def poison(self, data: ClientData, stream: torch.Generator) -> ClientData:
        """The data with noisy labels."""
        y = data.y_train
        c = needed_classes(self.num_classes, y, "label_noise")
        hit = torch.rand(y.shape, generator=stream) < self.p
        random = torch.randint(0, c, y.shape, generator=stream, dtype=y.dtype)
        return dataclasses.replace(data, y_train=torch.where(hit & (y >= 0), random, y))


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputNoise(Attack):
    """Every training input plus ``N(0, std²)`` noise (module docstring).

    Attributes:
        std: the noise's standard deviation ``σ > 0``.
    """

    std: float = 1.0

    def __post_init__(self) -> None:
        if not (self.std > 0.0 and self.std < float("inf")):
            raise ValueError(f"std must be positive and finite, got {self.std!r}")

    def poison(self, data: ClientData, stream: torch.Generator) -> ClientData:
        """The data with noisy inputs."""
        x = data.x_train
        if not x.is_floating_point():
            raise ValueError(f"input_noise needs float inputs, got {x.dtype}")
        noise = torch.randn(x.shape, generator=stream, dtype=x.dtype) * self.std
        return dataclasses.replace(data, x_train=x + noise)
