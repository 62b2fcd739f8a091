"""Ditto: Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization".

Client ``k`` solves, beside the global objective, its personal one
``min_v  F_k(v) + (λ/2) ‖v - w*‖²``. Algorithm 1 of the paper, per round: the global model
``w_t`` is updated as FedAvg updates it (local SGD from ``w_t``, ``Δ_k = y_k - w_t``, averaged by
the server), and the client's personal model takes local steps
``v_k ← v_k - η (∇F_k(v_k) + λ (v_k - w_t))`` — the plan's linear gradient term with
``prox_mu = λ`` and ``anchor = w_t``. ``v_k`` starts from the first global model the client sees
and lives in the client's state. ``λ = 0`` is pure local training; large ``λ`` ties ``v_k`` to
``w_t``. The global half is FedAvg's bit for bit (the personal steps draw from their own stream).
"""

from __future__ import annotations

import dataclasses
import math

from fedkit.algorithm import LocalPlan
from fedkit.algorithms.fedavg import ModelMessage
from fedkit.algorithms.two_models import PersonalModel, TwoModels
from fedkit.local import LocalTraining


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ditto(TwoModels):
    """FedAvg plus λ-regularised personal models (see module docstring).

    Attributes:
        lam: the regularisation strength ``λ`` (>= 0).
        personal: the personal model's optimiser settings (``local``'s when unset).
    """

    lam: float = 0.1
    personal: LocalTraining | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam!r}")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "ditto"

    def personal_plan(self, msg: ModelMessage, state: PersonalModel | None) -> LocalPlan[None]:
        """Steps on ``F_k(v) + (λ/2)‖v - w_t‖²`` from the client's ``v_k`` (``w_t`` at first)."""
        start = msg.params if state is None else state.params
        local = self.local if self.personal is None else self.personal
        return LocalPlan(start=start, local=local, prox_mu=self.lam, anchor=msg.params)


__all__ = ["Ditto"]
