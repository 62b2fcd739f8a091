"""The serial executor: every client of a cohort in turn, on one resident model, in one process.

Clients run in ascending id order and their updates are added to the aggregator in that order,
so a seeded round is bit-identical to any other executor that aggregates in the same order (the
coordinator does). A ``participation`` policy may drop clients or give them partial work — the
hook through which system-heterogeneity models act. A client whose update has a NaN or
infinite value is dropped from the round (and keeps its previous state), like a client that
failed: one diverged client never poisons the global model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from fedkit.aggregate import fold
from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.client import PreparedUpdate, evaluate_clients, run_client
from fedkit.data.store import ClientStore
from fedkit.evaluate import ClientEval
from fedkit.executor import ClientMetrics, RoundOutput
from fedkit.params import Params, tree_nbytes

Participation = Callable[[int, RoundInfo], "float | None"]
"""``(client_id, info) -> work fraction in (0, 1]``, or ``None`` when the client drops out."""


def full_participation(client_id: int, info: RoundInfo) -> float | None:
    """Every selected client completes all its work."""
    return 1.0


class SerialExecutor:
    """Runs a cohort client after client (see module docstring)."""

    def __init__(
        self,
        store: ClientStore,
        model: nn.Module,
        *,
        participation: Participation = full_participation,
        eval_batch_size: int = 1000,
    ) -> None:
        self.store = store
        self.model = model
        self.participation = participation
        self.eval_batch_size = eval_batch_size

    @property
    def num_clients(self) -> int:
        """Population size."""
        return self.store.num_clients

    def run_client(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        client_id: int,
        info: RoundInfo,
        work_fraction: float,
    ) -> PreparedUpdate | None:
        """Run one client's half on the resident model (:func:`fedkit.client.run_client`)."""
        return run_client(algorithm, self.store, self.model, msg, client_id, info, work_fraction)

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Run every client of ``cohort`` in ascending id order and aggregate their updates."""
        agg = algorithm.aggregator
        acc: Any = None
        done: list[ClientMetrics] = []
        dropped: list[int] = []
        bytes_up = 0
        for cid in sorted(cohort):
            frac = self.participation(cid, info)
            if frac is None:
                dropped.append(cid)
                continue
            p = self.run_client(algorithm, msg, cid, info, frac)
            if p is None:  # refused: a NaN or infinite update
                dropped.append(cid)
                continue
            acc = fold(agg, acc, p.update, p.weight)
            bytes_up += tree_nbytes(p.update)
            done.append(p.metrics)
        return RoundOutput(
            accumulator=acc,
            clients=tuple(done),
            dropped=tuple(dropped),
            bytes_down=tree_nbytes(msg) * len(cohort),
            bytes_up=bytes_up,
        )

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Evaluate ``params`` (and, with ``algorithm``, each client's personal model) on each
        client's local test data; clients without test data are skipped."""
        found = evaluate_clients(
            self.model,
            self.store,
            clients,
            params,
            algorithm,
            batch_size=self.eval_batch_size,
            info=info,
        )
        return [e for _, e in found]

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Every client's persistent state, flattened."""
        return self.store.state_tensors()

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Restore client states from a checkpoint."""
        self.store.load_state_tensors(flat, template)
