"""The algorithm contract: one object owns both halves of a federated method.

Server half: ``init_state`` → ``broadcast`` → (aggregate with ``aggregator``) → ``server_update``.

Client half, split as FedJAX's ``for_each_client`` splits it (init / step / final):

* ``client_init(ctx, msg, data, state) -> LocalPlan``: where local training starts and how it is
  steered — the starting parameters, the optimiser settings, a *linear gradient term*
  ``g += μ (w - anchor) + offset`` (FedProx's proximal gradient, SCAFFOLD's correction, Ditto's
  pull to the global model), frozen parameter names (FedBN, FedPer) and anything the final step
  needs (``carry``);
* the local step(s): the one local-training helper (:func:`fedkit.local.train_local`) run by
  :func:`fedkit.client.train_plan` — or, vectorised, by the vectorised executor, which reads the
  same plan and holds no algorithm code;
* ``client_final(ctx, msg, plan, outcome) -> ClientResult``: the update, its weight and the new
  client state from the trained parameters.

:func:`fedkit.client.run_client` runs a client (context, random stream, init, step, final,
the aggregator's ``prepare``, storing the new state); every executor and the deployment worker
call it.

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

from fedkit.aggregate import Aggregator, AggState
from fedkit.local import GradHook, LocalStats, LocalTraining, LossFn, LossHook
from fedkit.params import Params

S = TypeVar("S")
M = TypeVar("M")
U = TypeVar("U")
C = TypeVar("C")
X = TypeVar("X")


@dataclasses.dataclass(frozen=True)
class RoundInfo:
    """What every half knows about the current round.

    Attributes:
        round: the round index (from 0).
        seed: the run's seed.
        num_clients: the population size ``N``.
        cohort_size: the number of clients selected this round.
        reported: the number of clients whose updates are in the aggregate; set by the run loop
            for ``server_update`` (``None`` before the round has run).
        agg_state: the aggregator's state for this round (:data:`fedkit.aggregate.AggState`,
            e.g. adaptive clipping's clip norm), held by the run loop; every aggregation step of
            the round sees it as ``AggContext.state``. Empty for a stateless aggregator.
        cohort: the clients sampled this round (set by the run loop after sampling; empty
            before, and where an executor does not carry it); every aggregation step of the
            round sees it as ``AggContext.cohort`` (secure aggregation's peers).
    """

    round: int
    seed: int
    num_clients: int
    cohort_size: int
    reported: int | None = None
    agg_state: AggState = ()
    cohort: tuple[int, ...] = ()


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
        model: the resident model of this executor/worker (its architecture and parameter
            names; local training loads the plan's start into it).
        generator: the client's RNG, derived from ``(seed, round, client_id, "client")``.
        work_fraction: share of the full local work to do (< 1 for stragglers doing partial work
            or slow workers given fewer steps).
    """

    client_id: int
    info: RoundInfo
    model: nn.Module
    generator: torch.Generator
    work_fraction: float = 1.0

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the model's trainable parameters (what local training updates)."""
        return tuple(k for k, _ in self.model.named_parameters())


@dataclasses.dataclass(frozen=True)
class PersonalAccess:
    """What personal evaluation lends a method to build the client's personal model with.

    Given to ``personal_params`` when the evaluation knows its round, so that a method whose
    personal model is *trained* from the current global model (local fine-tuning of the final
    model; Ditto's ``v_k`` pulled toward the current ``w``; Per-FedAvg's adaptation step) can
    train it there with :func:`fedkit.client.train_plan`. Nothing trained here is stored.

    Attributes:
        ctx: the client's context in the evaluated round; its generator is the personal-evaluation
            stream ``(seed, round, client_id, "personal-eval")``, so the model is the same under
            every executor and the deployment worker.
        data: the client's training split (the test split it is scored on is left out).
    """

    ctx: ClientContext
    data: ClientData


@dataclasses.dataclass(frozen=True)
class LocalPlan(Generic[X]):
    """How one client's local training starts and is steered (made by ``client_init``).

    Local SGD runs from ``start`` with ``local``'s settings; before every step each trainable
    parameter's gradient gets ``prox_mu · (w - anchor) + offset`` (the linear term: FedProx's
    proximal gradient, SCAFFOLD's correction ``c - c_i``); parameters named in ``frozen`` are
    not trained. ``grad_hook`` / ``loss_hook`` are general escapes for terms that are not linear
    in ``w``: a plan that uses them runs client by client even under the vectorised executor.

    Attributes:
        start: the parameters (and float buffers) training starts from.
        local: the client optimiser settings.
        prox_mu: coefficient of ``w - anchor`` (>= 0).
        anchor: the point the proximal term pulls to (``start`` when ``None``).
        offset: a constant added to the gradient of each named parameter.
        frozen: parameter names local training leaves unchanged.
        carry: anything ``client_final`` needs (e.g. the client's previous state).
        data: the data local training runs on, when not the client's own (an attack's flipped
            labels or backdoor-triggered examples, see :mod:`fedkit.attacks`).
        grad_hook: an extra in-place gradient edit (not vectorisable).
        loss_hook: an extra loss term (not vectorisable).
        loss_fn: the batch loss ``(outputs, targets) -> scalar`` in place of cross-entropy
            (FedAwS's positive-only loss; not vectorisable).
    """

    start: Params
    local: LocalTraining
    prox_mu: float = 0.0
    anchor: Params | None = None
    offset: Params | None = None
    frozen: frozenset[str] = frozenset()
    carry: X | None = None
    data: ClientData | None = None
    grad_hook: GradHook | None = None
    loss_hook: LossHook | None = None
    loss_fn: LossFn | None = None

    def __post_init__(self) -> None:
        if not self.prox_mu >= 0.0:
            raise ValueError(f"prox_mu must be >= 0, got {self.prox_mu!r}")

    @property
    def vectorizable(self) -> bool:
        """True when the plan's steering is the linear term only (no general hooks) and its
        local training is plain SGD (sample-level DP-SGD clips per example: client by client)."""
        return (
            self.grad_hook is None
            and self.loss_hook is None
            and self.loss_fn is None
            and self.local.dp is None
        )


@dataclasses.dataclass(frozen=True)
class LocalOutcome:
    """What local training produced: the trained parameters (copies), stats, the client's size."""

    trained: Params
    stats: LocalStats
    num_examples: int

    def delta(self, start: Params) -> Params:
        """``trained - start`` for every entry of ``start``."""
        return {k: self.trained[k] - v for k, v in start.items()}


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

    @property
    def aggregator(self) -> Aggregator[U, Any, Any]:
        """How updates are combined (its ``result`` is what ``server_update`` receives)."""
        ...

    def init_state(self, params: Params) -> S:
        """Server state at round 0 from the initial global parameters."""
        ...

    def broadcast(self, state: S, info: RoundInfo) -> M:
        """The message every selected client receives this round."""
        ...

    def client_init(
        self, ctx: ClientContext, msg: M, data: ClientData, state: C | None
    ) -> LocalPlan[Any]:
        """Plan one client's local training; ``state`` is ``None`` the first time it is seen."""
        ...

    def client_final(
        self, ctx: ClientContext, msg: M, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[U, C]:
        """The update, weight and new client state from the trained parameters."""
        ...

    def update_template(self, params: Params) -> U:
        """A zero update shaped as the client half produces it (no training needed)."""
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

    def personal_params(
        self, global_params: Params, state: C | None, local: PersonalAccess | None = None
    ) -> Params | None:
        """The client's personal model from the global one and its state, or ``None`` when the
        method has none (then only the global model is evaluated). ``local`` (the client's
        training data and a context with its personal-evaluation stream) is given when the
        evaluation knows its round; a method may train its personal model with it."""
        ...
