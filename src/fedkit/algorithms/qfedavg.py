"""q-FedAvg: Li, Sanjabi, Beirami and Smith 2020, "Fair Resource Allocation in Federated
Learning" (Algorithm 2).

The q-FFL objective ``min_w Σ_k p_k F_k^{q+1}(w) / (q+1)`` weights clients with a large loss
more; ``q = 0`` is FedAvg's objective, larger ``q`` is fairer (a more uniform accuracy across
clients). Round ``t``: the server sends ``w_t``; each selected client ``k``

* computes its own loss at the global model, ``F_k(w_t)`` (mean over its training data);
* runs local SGD from ``w_t`` to ``w̄_k`` (FedAvg's local training);
* forms ``Δw_k = L (w_t - w̄_k)`` with ``L`` the Lipschitz estimate — the paper sets ``L = 1/η``
  for the local learning rate ``η`` (``lipschitz`` unset) —,
  ``Δ_k = F_k^q(w_t) Δw_k`` and ``h_k = q F_k^{q-1}(w_t) ‖Δw_k‖² + L F_k^q(w_t)``;

and the server steps ``w_{t+1} = w_t - Σ_k Δ_k / Σ_k h_k``. The update carries ``Δ_k`` and
``h_k``; aggregated with equal weights (the paper samples clients by ``p_k`` and averages
uniformly), the aggregate's ratio is ``Σ Δ_k / Σ h_k``. With ``q = 0``: ``Δ_k = L (w_t - w̄_k)``,
``h_k = L``, and the step is ``w_t - mean (w_t - w̄_k) = mean w̄_k`` — FedAvg with uniform
weights, whatever ``L``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from fedkit.aggregate import Aggregator, WeightedMean
from fedkit.algorithm import (
    ClientContext,
    ClientData,
    ClientResult,
    LocalOutcome,
    LocalPlan,
    PersonalAccess,
    RoundInfo,
)
from fedkit.algorithms.fedavg import ModelMessage
from fedkit.evaluate import evaluate
from fedkit.local import LocalTraining
from fedkit.params import Params, clone, load_params, zeros_like


@dataclasses.dataclass(frozen=True)
class QUpdate:
    """Client → server: ``Δ_k = F_k^q Δw_k`` and ``h_k`` (a one-element tensor)."""

    delta: Params
    h: Tensor


@dataclasses.dataclass(frozen=True)
class QState:
    """Server state: the global parameters."""

    params: Params


def q_terms(
    loss: float, lipschitz: float, q: float, step: Params, names: frozenset[str]
) -> tuple[Params, float]:
    """``(Δ_k, h_k)`` from ``F_k(w_t)``, ``L``, ``q`` and ``Δw_k`` (the norm over ``names``).

    ``F^q`` is ``1`` at ``q = 0`` (also for a zero loss), and the ``q F^{q-1}`` term vanishes.
    """
    fq = 1.0 if q == 0.0 else loss**q
    sq = sum(float((step[k].double() ** 2).sum()) for k in names)
    h = lipschitz * fq + (0.0 if q == 0.0 else q * loss ** (q - 1.0) * sq)
    return {k: v * fq for k, v in step.items()}, h


@dataclasses.dataclass(frozen=True, kw_only=True)
class QFedAvg:
    """q-FedAvg (see module docstring).

    Attributes:
        local: client optimiser settings (``η = local.lr``).
        q: the fairness parameter (>= 0; 0 = FedAvg).
        lipschitz: the Lipschitz estimate ``L`` (> 0); unset: ``1 / local.lr``.
        aggregator: how the ``(Δ_k, h_k)`` are combined (a mean with weight 1 per client).
    """

    local: LocalTraining = dataclasses.field(default_factory=LocalTraining)
    q: float = 1.0
    lipschitz: float | None = None
    aggregator: Aggregator[Any, Any, Any] = dataclasses.field(default_factory=WeightedMean)

    def __post_init__(self) -> None:
        if not (self.q >= 0 and math.isfinite(self.q)):
            raise ValueError(f"q must be a finite number >= 0, got {self.q!r}")
        if self.lipschitz is not None and not (
            self.lipschitz > 0 and math.isfinite(self.lipschitz)
        ):
            raise ValueError(f"lipschitz must be a finite number > 0, got {self.lipschitz!r}")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "qfedavg"

    @property
    def lipschitz_estimate(self) -> float:
        """``L``: the configured estimate, or ``1 / η``."""
        return 1.0 / self.local.lr if self.lipschitz is None else self.lipschitz

    def init_state(self, params: Params) -> QState:
        """The global parameters."""
        return QState(params=clone(params))

    def broadcast(self, state: QState, info: RoundInfo) -> ModelMessage:
        """Send ``w_t``."""
        return ModelMessage(params=state.params)

    def client_init(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: None
    ) -> LocalPlan[float]:
        """``F_k(w_t)`` on the local training data, then local SGD from ``w_t``."""
        load_params(ctx.model, msg.params)
        loss = evaluate(ctx.model, data.x_train, data.y_train).loss
        return LocalPlan(start=msg.params, local=self.local, carry=loss)

    def client_final(
        self, ctx: ClientContext, msg: ModelMessage, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[QUpdate, None]:
        """``Δ_k`` and ``h_k`` from the paper's formulas, weight 1."""
        loss = plan.carry
        assert loss is not None
        lip = self.lipschitz_estimate
        step = {k: lip * (v - outcome.trained[k]) for k, v in msg.params.items()}
        delta, h = q_terms(float(loss), lip, self.q, step, frozenset(ctx.param_names))
        return ClientResult(
            update=QUpdate(delta=delta, h=torch.tensor([h], dtype=torch.float64)),
            weight=1.0,
            num_examples=outcome.num_examples,
            stats=outcome.stats,
        )

    def update_template(self, params: Params) -> QUpdate:
        """``Δ`` shaped like the parameters, ``h`` one float64."""
        return QUpdate(delta=zeros_like(params), h=torch.zeros(1, dtype=torch.float64))

    def server_update(self, state: QState, aggregate: QUpdate, info: RoundInfo) -> QState:
        """``w_{t+1} = w_t - Σ Δ_k / Σ h_k`` (the aggregate's means, whose ratio is the same)."""
        h = float(aggregate.h.sum())
        params = {
            k: (w - (aggregate.delta[k].double() / h).to(w.dtype)) if w.is_floating_point() else w
            for k, w in state.params.items()
        }
        return QState(params=params)

    def global_params(self, state: QState) -> Params:
        """The global parameters."""
        return state.params

    def client_state_template(self, params: Params) -> None:
        """q-FedAvg keeps no client state."""
        return None

    def personal_params(
        self, global_params: Params, state: None, local: PersonalAccess | None = None
    ) -> None:
        """No personal model."""
        return None


__all__ = ["QFedAvg", "QState", "QUpdate", "q_terms"]
