"""Build a simulation executor by name — the one entry point the experiment runner uses.

``build_executor(kind, store=…, model_fn=…)`` looks ``kind`` up in
:data:`fedkit.registry.EXECUTORS` (``serial``, ``processes``, ``vectorized``, ``torchrun``, or
an import path)
and calls that factory with an :class:`ExecutorRecipe`; the factory returns an object satisfying
:class:`fedkit.executor.Executor`. A new executor is its own module with a factory
``(ExecutorRecipe) -> Executor`` plus one registry line. Executors that start other processes
need to rebuild the client data and the model there; the recipe carries small typed recipes
(``data_spec``, ``model_spec``, ``store_fn``) instead of tensors, so nothing large is serialised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from fedkit.data.store import ClientStore
from fedkit.executor import Executor
from fedkit.local import LocalTraining
from fedkit.models.spec import ModelSpec
from fedkit.registry import EXECUTORS
from fedkit.sim.serial import Participation, SerialExecutor, full_participation
from fedkit.sim.system import SimulatedClock, SystemModel, SystemParticipation

if TYPE_CHECKING:
    from fedkit.data.spec import DataSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutorRecipe:
    """Everything an executor factory may use (see :func:`build_executor` for the fields)."""

    store: ClientStore
    model_fn: Callable[[], nn.Module]
    participation: Participation = full_participation
    processes: int = 2
    threads: int = 1
    data_spec: DataSpec | None = None
    model_spec: ModelSpec | None = None
    store_fn: Callable[[], ClientStore] | None = None
    eval_batch_size: int = 1000


ExecutorFactory = Callable[[ExecutorRecipe], Executor]
"""What :data:`fedkit.registry.EXECUTORS` maps a name to."""


def serial_executor(r: ExecutorRecipe) -> Executor:
    """``serial``: one process, clients one after another."""
    return SerialExecutor(
        r.store, r.model_fn(), participation=r.participation, eval_batch_size=r.eval_batch_size
    )


def process_executor(r: ExecutorRecipe) -> Executor:
    """``processes``: ``r.processes`` ranks on ``torch.distributed`` (this process is rank 0)."""
    from fedkit.sim.processes import ProcessExecutor, store_recipe

    return ProcessExecutor(
        store=r.store,
        model_fn=r.model_spec if r.model_spec is not None else r.model_fn,
        store_fn=store_recipe(data_spec=r.data_spec, store_fn=r.store_fn),
        world_size=r.processes,
        threads=r.threads,
        participation=r.participation,
        eval_batch_size=r.eval_batch_size,
    )


def torchrun_executor(r: ExecutorRecipe) -> Executor:
    """``torchrun``: the ranks of the process group this process joined under ``torchrun``
    (``fedkit run`` under torchrun uses it for every arm; this process must be rank 0, the
    others :meth:`~fedkit.sim.distributed.DistributedExecutor.serve`)."""
    from fedkit.sim.distributed import DistributedExecutor

    return DistributedExecutor(
        r.store, r.model_fn(), participation=r.participation, eval_batch_size=r.eval_batch_size
    )


def vectorized_executor(r: ExecutorRecipe) -> Executor:
    """``vectorized``: clients of a round trained together with ``torch.func.vmap``."""
    from fedkit.sim.vectorized import VectorizedExecutor

    return VectorizedExecutor(
        r.store, r.model_fn(), participation=r.participation, eval_batch_size=r.eval_batch_size
    )


def build_executor(
    kind: str,
    *,
    store: ClientStore,
    model_fn: Callable[[], nn.Module],
    processes: int = 2,
    threads: int = 1,
    participation: Participation | None = None,
    data_spec: DataSpec | None = None,
    model_spec: ModelSpec | None = None,
    store_fn: Callable[[], ClientStore] | None = None,
    eval_batch_size: int = 1000,
    system: SystemModel | None = None,
    local: LocalTraining | None = None,
) -> Executor:
    """Build the executor ``kind`` for a population held in ``store``.

    Args:
        kind: a name of :data:`fedkit.registry.EXECUTORS` or an import path of a factory.
        store: the clients' data and state (used in this process).
        model_fn: builds the resident model (called once per process).
        processes: number of ranks for ``"processes"`` (>= 1; this process is rank 0).
        threads: torch intra-op threads per rank for ``"processes"``.
        participation: the system-heterogeneity hook ``(client_id, info) -> work | None``.
        data_spec: how other ranks rebuild ``store`` (``"processes"``); alternatively ``store_fn``.
        model_spec: how other ranks build the model; defaults to ``model_fn`` when it is picklable.
        store_fn: a picklable zero-argument function rebuilding ``store`` on other ranks.
        eval_batch_size: batch size of federated evaluation.
        system: a system-heterogeneity model; the executor then drops or cuts clients as it
            says and reports ``sim_seconds`` (needs ``local``; excludes ``participation``).
        local: the clients' local-training settings (how much work a client's round is).

    Raises:
        ValueError: unknown ``kind`` (the message lists the allowed ones) or bad settings.
    """
    if system is not None:
        if participation is not None:
            raise ValueError("give either participation or system, not both")
        if local is None:
            raise ValueError("system needs local (the LocalTraining settings) to time clients")
        sys_part = SystemParticipation(
            system,
            num_examples=[store.num_examples(c) for c in range(store.num_clients)],
            local=local,
        )
        inner = build_executor(
            kind,
            store=store,
            model_fn=model_fn,
            processes=processes,
            threads=threads,
            participation=sys_part,
            data_spec=data_spec,
            model_spec=model_spec,
            store_fn=store_fn,
            eval_batch_size=eval_batch_size,
        )
        return SimulatedClock(inner, sys_part)
    factory: ExecutorFactory = EXECUTORS.load(kind)  # UnknownNameError lists the allowed
    return factory(
        ExecutorRecipe(
            store=store,
            model_fn=model_fn,
            participation=participation if participation is not None else full_participation,
            processes=processes,
            threads=threads,
            data_spec=data_spec,
            model_spec=model_spec,
            store_fn=store_fn,
            eval_batch_size=eval_batch_size,
        )
    )
