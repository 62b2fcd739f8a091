"""FedProx: Li et al. 2020, "Federated Optimization in Heterogeneous Networks".

Each client approximately minimises ``F_i(w) + (μ/2)‖w - w_t‖²`` from the global model ``w_t``;
the server aggregates exactly as FedAvg. The proximal term enters local training as the plan's
linear gradient term ``μ (w - w_t)`` on every parameter — the exact gradient of the term — so
FedProx is FedAvg plus that term, and ``μ = 0`` reproduces FedAvg bit for bit. Partial work from
stragglers (``work_fraction < 1``) is accepted, as in the paper's systems-heterogeneity setting.
"""

from __future__ import annotations

import dataclasses
import math

from fedkit.algorithm import ClientContext, ClientData, LocalPlan
from fedkit.algorithms.fedavg import FedAvg, ModelMessage


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedProx(FedAvg):
    """FedAvg with a proximal term of strength ``mu`` (>= 0)."""

    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.mu >= 0 and math.isfinite(self.mu)):
            raise ValueError(f"mu must be a finite number >= 0, got {self.mu!r}")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "fedprox"

    def client_init(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: None
    ) -> LocalPlan[None]:
        """Local SGD from ``w_t`` with ``grad += μ (w - w_t)`` on every trainable parameter."""
        return LocalPlan(start=msg.params, local=self.local, prox_mu=self.mu)
