"""A user algorithm: FedAvg whose server moves only ``step`` of the way along the mean update.

``x_{t+1} = x_t + step · (server optimiser step along -mean Δ)``; with the plain SGD server
(lr 1) this is FedAvg with server learning rate ``step``, which is what the test checks.
"""

from __future__ import annotations

import dataclasses
import math

from fedkit.algorithm import RoundInfo
from fedkit.algorithms.fedavg import FedAvg, FedOptState, ModelDelta
from fedkit.params import scale


@dataclasses.dataclass(frozen=True, kw_only=True)
class HalfStep(FedAvg):
    """FedAvg with the mean delta scaled by ``step`` in (0, 1] before the server step."""

    step: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 < self.step <= 1.0 and math.isfinite(self.step)):
            raise ValueError(f"step must be in (0, 1], got {self.step!r}")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "halfstep"

    def server_update(
        self, state: FedOptState, aggregate: ModelDelta, info: RoundInfo
    ) -> FedOptState:
        """FedAvg's server step along ``step · mean Δ``."""
        return super().server_update(state, ModelDelta(scale(aggregate.delta, self.step)), info)
