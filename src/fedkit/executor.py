"""The executor contract: run one round's cohort and return the aggregate accumulator.

Serial, vectorised, ``torch.distributed`` and the remote coordinator are executors. Sampling,
deadlines, quorum and failure policy live in executors or in the run loop, never in algorithms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor

from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.evaluate import ClientEval
from fedkit.params import Params


@dataclasses.dataclass(frozen=True)
class ClientMetrics:
    """What one client did in a round (for progress, results and straggler policies)."""

    client_id: int
    num_examples: int
    steps: int
    train_loss: float
    work_fraction: float = 1.0
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class RoundOutput:
    """An executed round: the merged accumulator (``None`` if no client finished) and accounting.

    Attributes:
        accumulator: the aggregator accumulator over every completed client.
        clients: metrics of the clients whose updates are in the accumulator, in aggregation order.
        dropped: ids of selected clients whose updates are not in it (dropout, deadline, failure).
        bytes_down: bytes of messages sent to clients; ``bytes_up``: bytes of updates received.
        sim_seconds: simulated wall-clock duration of the round when a system model is used.
    """

    accumulator: Any | None
    clients: tuple[ClientMetrics, ...]
    dropped: tuple[int, ...] = ()
    bytes_down: int = 0
    bytes_up: int = 0
    sim_seconds: float | None = None


class Executor(Protocol):
    """Runs cohorts of the client half and evaluates clients."""

    @property
    def num_clients(self) -> int:
        """Size of the client population the executor can run."""
        ...

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Run the client half for every id in ``cohort`` and aggregate their updates."""
        ...

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Evaluate ``params`` on each listed client's local test data; with ``algorithm``, also
        each client's personal model (``algorithm.personal_params``) where it has one, built with
        the client's training data when ``info`` (the evaluated round) is given."""
        ...

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Client states to checkpoint (empty where clients keep their own, as in deployment)."""
        ...

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Restore what :meth:`client_state_tensors` returned."""
        ...


class ExecutorWrapper:
    """An executor that forwards everything to ``inner``: subclass it and override what changes.

    Wrappers add behaviour around a round without re-implementing the contract (the simulated
    clock stamps ``sim_seconds``; the experiment runner keeps per-client evaluations). ``close``
    is forwarded to executors that hold resources such as worker processes.
    """

    def __init__(self, inner: Executor) -> None:
        self.inner = inner

    @property
    def num_clients(self) -> int:
        """Population size of the wrapped executor."""
        return self.inner.num_clients

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Forwarded."""
        return self.inner.execute(algorithm, msg, cohort, info)

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Forwarded."""
        return self.inner.evaluate(params, clients, algorithm, info)

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Forwarded."""
        return self.inner.client_state_tensors()

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Forwarded."""
        self.inner.load_client_state_tensors(flat, template)

    def close(self) -> None:
        """Close the wrapped executor when it has resources (worker processes)."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
