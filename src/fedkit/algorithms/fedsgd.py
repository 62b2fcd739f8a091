"""FedSGD: the baseline of McMahan et al. 2017.

Each selected client computes the gradient of its loss on all its local data at the global model
(one full-batch step); the server averages the gradients weighted by examples and takes a step of
size ``η``: ``x_{t+1} = x_t - η Σ n_i g_i / Σ n_i``. In fedkit terms this is FedAvg whose local
training is one full-batch step with client lr 1 (so ``Δ_i = -g_i``) and whose server optimiser
is SGD with lr ``η`` — which is exactly how it is built here.
"""

from __future__ import annotations

import dataclasses

from fedkit.algorithms.fedavg import FedAvg
from fedkit.local import LocalTraining

FEDSGD_LOCAL = LocalTraining(lr=1.0, steps=1, batch_size=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedSGD(FedAvg):
    """FedAvg restricted to one full-batch gradient per client; set ``server=SGD(lr=η)``."""

    local: LocalTraining = FEDSGD_LOCAL

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.local != FEDSGD_LOCAL:
            raise ValueError(
                "FedSGD's local training is fixed to one full-batch step with lr 1 "
                "(local=LocalTraining(lr=1.0, steps=1, batch_size=0)); set the step size through "
                "server=SGD(lr=...), or use FedAvg for other local training"
            )

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "fedsgd"
