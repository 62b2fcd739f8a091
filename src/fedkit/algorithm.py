"""The algorithm contract: one object owns both halves of a federated method.

Server half: ``init_state`` → ``broadcast`` → (aggregate) → ``server_update``.
Client half: ``client_update`` — given the broadcast message, the client's data and its persistent
client state, train and return a typed update and a weight.

Payloads are frozen dataclasses of named tensors (see :mod:`fedkit.params` for tree helpers).
Client state (SCAFFOLD's control variate, personal layers) is returned by the client half and
kept by whoever holds the client (the :class:`~fedkit.data.store.ClientStore` in simulation, the
worker in deployment): it never enters server state and never crosses the wire.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor, nn

from fedkit.aggregate import Aggregator
from fedkit.local import GradHook, LocalStats, LocalTraining, train_local
from fedkit.params import Params, load_params

S = TypeVar("S")
M = TypeVar("M")
U = TypeVar("U")
C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class RoundInfo:
    """What every half knows about the current round."""

    round: int
    seed: int
    num_clients: int
    cohort_size: int


@dataclasses.dataclass(frozen=True)
class ClientData:
    """One client's local data, in memory."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor | None = None
    y_test: Tensor | None = None

    @property
    def num_examples(self) -> int:
        """Number of local training examples."""
        return int(self.y_train.shape[0])


@dataclasses.dataclass(frozen=True)
class ClientContext:
    """What the executor hands the client half besides data and state.

    Attributes:
        client_id: the client's id in the population.
        info: the round.
        model: the resident model of this executor/worker (reused for every client: load the
            broadcast parameters into it first).
        generator: the client's RNG, derived from ``(seed, round, client_id)``.
        work_fraction: share of the full local work to do (< 1 for stragglers doing partial work
            or slow workers given fewer steps).
    """

    client_id: int
    info: RoundInfo
    model: nn.Module
    generator: torch.Generator
    work_fraction: float = 1.0


@dataclasses.dataclass(frozen=True)
class ClientResult(Generic[U, C]):
    """The client half's output: the update, its aggregation weight, the new client state."""

    update: U
    weight: float
    num_examples: int
    stats: LocalStats
    client_state: C | None = None


class Algorithm(Protocol[S, M, U, C]):
    """Both halves of one federated method (see the module docstring)."""

    @property
    def name(self) -> str:
        """Short identifier used in results and checkpoints."""
        ...

    def init_state(self, params: Params) -> S:
        """Server state at round 0 from the initial global parameters."""
        ...

    def broadcast(self, state: S, info: RoundInfo) -> M:
        """The message every selected client receives this round."""
        ...

    def client_update(
        self, ctx: ClientContext, msg: M, data: ClientData, state: C | None
    ) -> ClientResult[U, C]:
        """Local work on one client; ``state`` is ``None`` the first time a client is seen."""
        ...

    def aggregator(self) -> Aggregator[U, Any, Any]:
        """How updates are combined (its ``result`` is what ``server_update`` receives)."""
        ...

    def server_update(self, state: S, aggregate: Any, info: RoundInfo) -> S:
        """New server state from the aggregate of this round's updates."""
        ...

    def global_params(self, state: S) -> Params:
        """The global model parameters held in ``state``."""
        ...

    def client_state_template(self, params: Params) -> C | None:
        """A client state shaped as this algorithm's (to restore checkpoints), or ``None``."""
        ...


def train_from(
    ctx: ClientContext,
    start: Params,
    data: ClientData,
    local: LocalTraining,
    *,
    grad_hook: GradHook | None = None,
) -> tuple[Params, LocalStats]:
    """The client step every model-delta algorithm shares.

    Loads ``start`` into the resident model, trains it on the client's data with
    :func:`fedkit.local.train_local` (batch order from ``ctx.generator``, partial work from
    ``ctx.work_fraction``) and returns ``trained - start`` for every entry of ``start``.
    """
    load_params(ctx.model, start)
    stats = train_local(
        ctx.model,
        data.x_train,
        data.y_train,
        local,
        generator=ctx.generator,
        grad_hook=grad_hook,
        work_fraction=ctx.work_fraction,
    )
    state = ctx.model.state_dict()
    return {k: state[k].detach() - v for k, v in start.items()}, stats
