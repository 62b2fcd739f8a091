"""SCAFFOLD: Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning" (Algorithm 1, option II).

Server state: global model ``x`` and server control variate ``c``. Client ``i`` keeps its own
control variate ``c_i`` (in the client store / on the worker — never in server state).

Client: ``y ← x``; ``K`` local steps ``y ← y - η_l (g_i(y) - c_i + c)`` (the plan's gradient
offset ``c - c_i``); then ``c_i⁺ = c_i - c + (x - y) / (K η_l)``; send ``Δy = y - x`` and
``Δc = c_i⁺ - c_i``.
Server: ``x ← x + η_g · mean Δy`` (through the server optimiser, SGD with ``lr = η_g`` in the
paper) and ``c ← c + (1/N) Σ_{i∈S} Δc_i = c + (|S|/N) · mean Δc`` where ``S`` is the set of
clients that *reported* (a client that dropped out contributes no ``Δc_i``).

The paper averages uniformly over the cohort (``weighting="uniform"``, the default here); with
``weighting="examples"`` both means are weighted by client size, as FedAvg is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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
from fedkit.algorithms.fedavg import Weighting, check_weighting, client_weight
from fedkit.local import LocalTraining
from fedkit.params import Params, clone, zeros_like
from fedkit.server_opt import SGD, OptState, ServerOptimizer, step_along_delta


@dataclasses.dataclass(frozen=True)
class ScaffoldMessage:
    """Server → client: global model and server control variate."""

    params: Params
    control: Params


@dataclasses.dataclass(frozen=True)
class ScaffoldUpdate:
    """Client → server: model delta and control-variate delta."""

    delta: Params
    control_delta: Params


@dataclasses.dataclass(frozen=True)
class ScaffoldClientState:
    """A client's own control variate ``c_i``."""

    control: Params


@dataclasses.dataclass(frozen=True)
class ScaffoldState:
    """Server state: global model, server control variate, server optimiser state."""

    params: Params
    control: Params
    opt: OptState


@dataclasses.dataclass(frozen=True, kw_only=True)
class Scaffold:
    """SCAFFOLD, option II (see module docstring)."""

    local: LocalTraining = dataclasses.field(default_factory=LocalTraining)
    server: ServerOptimizer = dataclasses.field(default_factory=SGD)
    weighting: Weighting = "uniform"
    aggregator: Aggregator[Any, Any, Any] = dataclasses.field(default_factory=WeightedMean)

    def __post_init__(self) -> None:
        check_weighting(self.weighting)

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "scaffold"

    def init_state(self, params: Params) -> ScaffoldState:
        """Global model, zero server control variate, fresh optimiser state."""
        return ScaffoldState(
            params=clone(params), control=zeros_like(params), opt=self.server.init(params)
        )

    def broadcast(self, state: ScaffoldState, info: RoundInfo) -> ScaffoldMessage:
        """Send ``x`` and ``c``."""
        return ScaffoldMessage(params=state.params, control=state.control)

    def client_init(
        self,
        ctx: ClientContext,
        msg: ScaffoldMessage,
        data: ClientData,
        state: ScaffoldClientState | None,
    ) -> LocalPlan[Params]:
        """Local SGD from ``x`` with the gradient offset ``c - c_i``; carries ``c_i``."""
        c_i = state.control if state is not None else zeros_like(msg.control)
        offset = {k: msg.control[k] - c_i[k] for k in ctx.param_names}
        return LocalPlan(start=msg.params, local=self.local, offset=offset, carry=c_i)

    def client_final(
        self,
        ctx: ClientContext,
        msg: ScaffoldMessage,
        plan: LocalPlan[Params],
        outcome: LocalOutcome,
    ) -> ClientResult[ScaffoldUpdate, ScaffoldClientState]:
        """Option II: ``c_i⁺ = c_i - c + (x - y) / (K η_l)``; send ``Δy`` and ``Δc``."""
        c_i = plan.carry
        assert c_i is not None
        delta = outcome.delta(msg.params)
        names = set(ctx.param_names)
        scale = 1.0 / (max(outcome.stats.steps, 1) * self.local.lr)
        new_c = {
            k: (c_i[k] - msg.control[k] - scale * delta[k]) if k in names else c_i[k] for k in c_i
        }
        n = outcome.num_examples
        return ClientResult(
            update=ScaffoldUpdate(delta=delta, control_delta={k: new_c[k] - c_i[k] for k in c_i}),
            weight=client_weight(self.weighting, n),
            num_examples=n,
            stats=outcome.stats,
            client_state=ScaffoldClientState(control=new_c),
        )

    def update_template(self, params: Params) -> ScaffoldUpdate:
        """Both deltas are shaped like the parameters."""
        return ScaffoldUpdate(delta=zeros_like(params), control_delta=zeros_like(params))

    def server_update(
        self, state: ScaffoldState, aggregate: ScaffoldUpdate, info: RoundInfo
    ) -> ScaffoldState:
        """``x`` by the server optimiser along ``-mean Δy``; ``c += |S|/N · mean Δc``.

        ``|S|`` is the number of clients that reported (``info.reported``; the planned cohort
        when the caller did not say).
        """
        params, opt = step_along_delta(self.server, state.params, aggregate.delta, state.opt)
        reported = info.cohort_size if info.reported is None else info.reported
        frac = reported / info.num_clients
        control = {
            k: c + (frac * aggregate.control_delta[k]).to(c.dtype) for k, c in state.control.items()
        }
        return ScaffoldState(params=params, control=control, opt=opt)

    def global_params(self, state: ScaffoldState) -> Params:
        """The global parameters."""
        return state.params

    def client_state_template(self, params: Params) -> ScaffoldClientState:
        """Client control variates are shaped like the parameters."""
        return ScaffoldClientState(control=zeros_like(params))

    def personal_params(
        self,
        global_params: Params,
        state: ScaffoldClientState | None,
        local: PersonalAccess | None = None,
    ) -> None:
        """No personal model: the control variate only steers training."""
        return None


__all__ = ["Scaffold", "ScaffoldClientState", "ScaffoldMessage", "ScaffoldState", "ScaffoldUpdate"]
