"""SCAFFOLD: Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning" (Algorithm 1, option II).

Server state: global model ``x`` and server control variate ``c``. Client ``i`` keeps its own
control variate ``c_i`` (in the client store / on the worker — never in server state).

Client: ``y ← x``; ``K`` local steps ``y ← y - η_l (g_i(y) - c_i + c)`` (a gradient hook); then
``c_i⁺ = c_i - c + (x - y) / (K η_l)``; send ``Δy = y - x`` and ``Δc = c_i⁺ - c_i``.
Server: ``x ← x + η_g · mean Δy`` (through the server optimiser, SGD with ``lr = η_g`` in the
paper) and ``c ← c + (|S| / N) · mean Δc``.

The paper averages uniformly over the cohort (``weighting="uniform"``, the default here); with
``weighting="examples"`` both means are weighted by client size, as FedAvg is.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from fedkit.aggregate import WeightedMean
from fedkit.algorithm import (
    ClientContext,
    ClientData,
    ClientResult,
    RoundInfo,
    train_from,
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

    def client_update(
        self,
        ctx: ClientContext,
        msg: ScaffoldMessage,
        data: ClientData,
        state: ScaffoldClientState | None,
    ) -> ClientResult[ScaffoldUpdate, ScaffoldClientState]:
        """Corrected local SGD, then the option-II control-variate update."""
        c_i = state.control if state is not None else zeros_like(msg.control)
        names = {k for k, _ in ctx.model.named_parameters()}
        correction = {k: msg.control[k] - c_i[k] for k in names}

        def corrected(model: nn.Module) -> None:
            for k, p in model.named_parameters():
                if p.grad is not None:
                    p.grad.add_(correction[k])

        delta, stats = train_from(ctx, msg.params, data, self.local, grad_hook=corrected)
        scale = 1.0 / (max(stats.steps, 1) * self.local.lr)
        new_c = {
            k: (c_i[k] - msg.control[k] - scale * delta[k]) if k in names else c_i[k] for k in c_i
        }
        n = data.num_examples
        return ClientResult(
            update=ScaffoldUpdate(delta=delta, control_delta={k: new_c[k] - c_i[k] for k in c_i}),
            weight=client_weight(self.weighting, n),
            num_examples=n,
            stats=stats,
            client_state=ScaffoldClientState(control=new_c),
        )

    def aggregator(self) -> WeightedMean[ScaffoldUpdate]:
        """Mean of both deltas."""
        return WeightedMean()

    def server_update(
        self, state: ScaffoldState, aggregate: ScaffoldUpdate, info: RoundInfo
    ) -> ScaffoldState:
        """``x`` by the server optimiser along ``-mean Δy``; ``c += |S|/N · mean Δc``."""
        params, opt = step_along_delta(self.server, state.params, aggregate.delta, state.opt)
        frac = info.cohort_size / info.num_clients
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


__all__ = ["Scaffold", "ScaffoldClientState", "ScaffoldMessage", "ScaffoldState", "ScaffoldUpdate"]
