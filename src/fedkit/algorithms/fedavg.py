"""FedAvg and the FedOpt family.

FedAvg: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data". FedOpt: Reddi et al. 2021, "Adaptive Federated Optimization".

Round ``t``: the server sends ``x_t``; each selected client ``i`` runs local SGD from ``x_t`` and
returns ``Δ_i = y_i - x_t`` with weight ``n_i`` (its number of examples; ``1`` with uniform
weighting). The server forms the pseudo-gradient ``g = -Σ n_i Δ_i / Σ n_i`` and takes one step of
its optimiser: plain FedAvg is SGD with ``lr = 1`` (``x_{t+1} = x_t + mean Δ``); FedAvgM, FedAdam,
FedYogi and FedAdagrad are the same class with ``server=SGD(momentum=…)``, ``Adam``, ``Yogi`` or
``Adagrad`` from :mod:`fedkit.server_opt`.

The client half is the core seam (:mod:`fedkit.algorithm`): ``client_init`` plans local SGD
from ``x_t`` (subclasses add a gradient term through :meth:`FedAvg.client_init`, as FedProx
does), ``client_final`` forms ``Δ_i``. The aggregator is a field (``WeightedMean`` by default,
any stage chain from :mod:`fedkit.aggregate` or the registry).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

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
from fedkit.local import LocalTraining
from fedkit.params import Params, clone, zeros_like
from fedkit.server_opt import SGD, OptState, ServerOptimizer, step_along_delta

WEIGHTINGS = ("examples", "uniform")
Weighting = Literal["examples", "uniform"]


def check_weighting(weighting: str) -> None:
    """Reject a client-weighting name other than those in :data:`WEIGHTINGS`."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def client_weight(weighting: Weighting, num_examples: int) -> float:
    """Aggregation weight of a client: its example count, or 1 with uniform weighting."""
    return float(num_examples) if weighting == "examples" else 1.0


@dataclasses.dataclass(frozen=True)
class ModelMessage:
    """Server → client: the global parameters."""

    params: Params


@dataclasses.dataclass(frozen=True)
class ModelDelta:
    """Client → server: the model update ``y_i - x_t``."""

    delta: Params


@dataclasses.dataclass(frozen=True)
class FedOptState:
    """Server state: global parameters and the server optimiser's state."""

    params: Params
    opt: OptState


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvg:
    """FedAvg with a pluggable server optimiser (see module docstring).

    Attributes:
        local: client optimiser settings.
        server: the server optimiser (``SGD()`` = plain FedAvg).
        weighting: ``"examples"`` (McMahan et al.) or ``"uniform"`` client weights.
        aggregator: how the deltas are combined (weighted mean by default).
    """

    local: LocalTraining = dataclasses.field(default_factory=LocalTraining)
    server: ServerOptimizer = dataclasses.field(default_factory=SGD)
    weighting: Weighting = "examples"
    aggregator: Aggregator[Any, Any, Any] = dataclasses.field(default_factory=WeightedMean)

    def __post_init__(self) -> None:
        check_weighting(self.weighting)
        if not (hasattr(self.server, "init") and hasattr(self.server, "step")):
            raise TypeError(
                f"server must be a server optimizer (SGD, Adam, Yogi, Adagrad), got {self.server!r}"
            )

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "fedavg"

    def init_state(self, params: Params) -> FedOptState:
        """Global parameters and fresh optimiser state."""
        return FedOptState(params=clone(params), opt=self.server.init(params))

    def broadcast(self, state: FedOptState, info: RoundInfo) -> ModelMessage:
        """Send the global parameters."""
        return ModelMessage(params=state.params)

    def client_init(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: None
    ) -> LocalPlan[None]:
        """Local SGD from the global model, with no gradient term."""
        return LocalPlan(start=msg.params, local=self.local)

    def client_final(
        self, ctx: ClientContext, msg: ModelMessage, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[ModelDelta, None]:
        """``Δ_i = y_i - x_t`` with weight ``n_i`` (or 1)."""
        n = outcome.num_examples
        return ClientResult(
            update=ModelDelta(outcome.delta(msg.params)),
            weight=client_weight(self.weighting, n),
            num_examples=n,
            stats=outcome.stats,
        )

    def update_template(self, params: Params) -> ModelDelta:
        """A zero delta shaped like the parameters."""
        return ModelDelta(zeros_like(params))

    def server_update(
        self, state: FedOptState, aggregate: ModelDelta, info: RoundInfo
    ) -> FedOptState:
        """One server-optimiser step along ``-mean Δ``."""
        params, opt = step_along_delta(self.server, state.params, aggregate.delta, state.opt)
        return FedOptState(params=params, opt=opt)

    def global_params(self, state: FedOptState) -> Params:
        """The global parameters."""
        return state.params

    def client_state_template(self, params: Params) -> None:
        """FedAvg keeps no client state."""
        return None

    def personal_params(
        self, global_params: Params, state: None, local: PersonalAccess | None = None
    ) -> None:
        """No personal model: clients use the global one."""
        return None
