"""FedProx: Li et al. 2020, "Federated Optimization in Heterogeneous Networks".

Each client approximately minimises ``F_i(w) + (μ/2)‖w - w_t‖²`` from the global model ``w_t``;
the server aggregates exactly as FedAvg. The proximal term enters local training as a gradient
hook adding ``μ (w - w_t)`` to every parameter's gradient — the exact gradient of the term — so
FedProx is FedAvg plus that hook, and ``μ = 0`` reproduces FedAvg bit for bit. Partial work from
stragglers (``work_fraction < 1``) is accepted, as in the paper's systems-heterogeneity setting.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from fedkit.algorithms.fedavg import FedAvg, ModelMessage
from fedkit.local import GradHook


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

    def gradient_hook(self, msg: ModelMessage) -> GradHook:
        """``grad += μ (w - w_t)`` for every trainable parameter."""
        anchor = msg.params
        mu = self.mu

        def proximal(model: nn.Module) -> None:
            for name, p in model.named_parameters():
                if p.grad is not None:
                    p.grad.add_(p.detach() - anchor[name], alpha=mu)

        return proximal
