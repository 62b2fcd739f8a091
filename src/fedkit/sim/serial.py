"""The serial executor: every client of a cohort in turn, on one resident model, in one process.

Clients run in ascending id order and their updates are added to the aggregator in that order,
so a seeded round is bit-identical to any other executor that aggregates in the same order (the
coordinator does). A ``participation`` policy may drop clients or give them partial work — the
hook through which system-heterogeneity models act.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from fedkit.algorithm import Algorithm, ClientContext, RoundInfo
from fedkit.data.store import ClientStore
from fedkit.evaluate import ClientEval, evaluate
from fedkit.executor import ClientMetrics, RoundOutput
from fedkit.params import Params, load_params, tree_nbytes
from fedkit.rng import generator

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
    ) -> tuple[Any, float, ClientMetrics]:
        """Run one client's half on the resident model; store its new state.

        Returns the prepared update, its weight and the client's metrics.
        """
        start = time.perf_counter()
        ctx = ClientContext(
            client_id=client_id,
            info=info,
            model=self.model,
            generator=generator(info.seed, info.round, client_id, "client"),
            work_fraction=work_fraction,
        )
        res = algorithm.client_update(
            ctx, msg, self.store.data(client_id), self.store.get_state(client_id)
        )
        self.store.set_state(client_id, res.client_state)
        update = algorithm.aggregator().prepare(res.update, res.weight)
        metrics = ClientMetrics(
            client_id=client_id,
            num_examples=res.num_examples,
            steps=res.stats.steps,
            train_loss=res.stats.mean_loss,
            work_fraction=work_fraction,
            seconds=time.perf_counter() - start,
        )
        return update, res.weight, metrics

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Run every client of ``cohort`` in ascending id order and aggregate their updates."""
        agg = algorithm.aggregator()
        acc: Any = None
        done: list[ClientMetrics] = []
        dropped: list[int] = []
        bytes_up = 0
        for cid in sorted(cohort):
            frac = self.participation(cid, info)
            if frac is None:
                dropped.append(cid)
                continue
            update, weight, metrics = self.run_client(algorithm, msg, cid, info, frac)
            acc = agg.add(agg.zero(update) if acc is None else acc, update, weight)
            bytes_up += tree_nbytes(update)
            done.append(metrics)
        return RoundOutput(
            accumulator=acc,
            clients=tuple(done),
            dropped=tuple(dropped),
            bytes_down=tree_nbytes(msg) * len(cohort),
            bytes_up=bytes_up,
        )

    def evaluate(self, params: Params, clients: Sequence[int]) -> list[ClientEval]:
        """Evaluate ``params`` on each client's local test data (clients without it are skipped)."""
        load_params(self.model, params)
        out: list[ClientEval] = []
        for cid in clients:
            d = self.store.data(cid)
            if d.x_test is None or d.y_test is None or d.y_test.shape[0] == 0:
                continue
            r = evaluate(self.model, d.x_test, d.y_test, batch_size=self.eval_batch_size)
            out.append(ClientEval(client_id=cid, result=r))
        return out

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Every client's persistent state, flattened."""
        return self.store.state_tensors()

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Restore client states from a checkpoint."""
        self.store.load_state_tensors(flat, template)
