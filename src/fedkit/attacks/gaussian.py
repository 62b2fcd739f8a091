"""Gaussian Byzantine updates (Blanchard et al. 2017, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", §5): the attacker sends a vector whose coordinates are
drawn i.i.d. from ``N(0, σ²)``, unrelated to its data (the paper uses σ = 200 on gradients).
The draws come from the attacker's own stream.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedkit.attacks.base import Attack, AttackContext, map_update


@dataclasses.dataclass(frozen=True, kw_only=True)
class GaussianNoise(Attack):
    """Send ``N(0, std²)`` in every coordinate (module docstring).

    Attributes:
        std: the standard deviation ``σ > 0``.
    """

    std: float = 1.0

    def __post_init__(self) -> None:
        if not (self.std > 0.0 and self.std < float("inf")):
            raise ValueError(f"std must be positive and finite, got {self.std!r}")

    def forge(self, actx: AttackContext) -> Any:
        """Random coordinates of the honest update's shapes."""
        g, s = actx.stream, self.std

        def draw(t: torch.Tensor) -> torch.Tensor:
            return (torch.randn(t.shape, generator=g, dtype=torch.float64) * s).to(t.dtype)

        return map_update(actx.honest, draw)
