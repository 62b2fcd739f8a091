"""A federated run from Python with one's own ``nn.Module`` and data, in one call.

:func:`federate` is a thin layer over :func:`fedkit.run.run`: it puts the clients' data in a
:class:`~fedkit.data.store.ClientStore` (in memory, or lazily for a
:class:`~fedkit.data.lazy.LazyClients`), runs the serial executor and returns the run's
:class:`~fedkit.run.RunResult` (final parameters, per-round records)::

    from fedkit.api import federate
    from fedkit.algorithms import FedAvg
    from fedkit.local import LocalTraining

    result = federate(
        Net(),                                   # any nn.Module
        [(x0, y0), (x1, y1), torch_dataset2],    # per client: tensors or a torch Dataset
        algorithm=FedAvg(local=LocalTraining(lr=0.05, epochs=1, batch_size=32)),
        rounds=20, clients_per_round=2, test=(x_test, y_test),
    )
    load_params(model, result.params)

For the other executors, results databases and reports, name the same model and data by import
path in an experiment file (docs/plugins.md).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fedkit.algorithm import Algorithm, ClientData
from fedkit.algorithms import FedAvg
from fedkit.data.lazy import LazyClients
from fedkit.data.store import ClientStore
from fedkit.params import model_params
from fedkit.run import Callback, RunConfig, RunResult, central_evaluator, run
from fedkit.sampling import ClientSampler
from fedkit.sim.serial import SerialExecutor

__all__ = ["ClientInput", "federate", "to_client_data"]

ClientInput = ClientData | tuple[Tensor, Tensor] | Dataset[Any]
"""One client's data: ``ClientData``, an ``(x, y)`` pair, or a map-style torch ``Dataset`` of
``(x, y)`` samples."""


def to_client_data(item: ClientInput) -> ClientData:
    """One client's data as :class:`ClientData` (a ``Dataset`` is read once and stacked)."""
    if isinstance(item, ClientData):
        return item
    if isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, Tensor) for t in item):
        return ClientData(item[0], item[1])
    if isinstance(item, Dataset):
        n = len(item)  # type: ignore[arg-type]
        if n < 1:
            raise ValueError("a client's Dataset is empty")
        xs, ys = zip(*(item[i] for i in range(n)), strict=True)
        return ClientData(torch.stack(list(xs)), torch.as_tensor(ys))
    raise TypeError(f"client data must be ClientData, (x, y) or a torch Dataset; got {item!r}")


def federate(
    model: nn.Module,
    clients: Sequence[ClientInput] | LazyClients,
    *,
    algorithm: Algorithm[Any, Any, Any, Any] | None = None,
    rounds: int,
    clients_per_round: int | None = None,
    seed: int = 0,
    test: tuple[Tensor, Tensor] | None = None,
    eval_every: int = 1,
    sampler: ClientSampler | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult[Any]:
    """Train ``model`` federatedly on ``clients`` (see module docstring).

    Args:
        model: The initial model (its current weights are round 0's; it is not modified).
        clients: Each client's data, or a :class:`LazyClients` population.
        algorithm: Any fedkit algorithm; default ``FedAvg()`` (McMahan et al. 2017).
        rounds: Rounds to run (>= 1).
        clients_per_round: Cohort size; ``None`` means every client.
        seed: Root of every random draw (sampling, batch order).
        test: Central test tensors ``(x, y)``, evaluated every ``eval_every`` rounds.
        eval_every: Central evaluation period (0: never).
        sampler: Client sampler (default: uniform without replacement).
        callbacks: Run callbacks (e.g. :class:`fedkit.tensorboard.TensorBoardCallback`).

    Returns:
        The run's result: final parameters and server state, and one record per round.
    """
    if isinstance(clients, LazyClients):
        store = ClientStore.from_lazy(clients)
    else:
        if len(clients) == 0:
            raise ValueError("federate needs at least one client")
        store = ClientStore.from_clients([to_client_data(c) for c in clients])
    evaluator = None
    if test is not None:
        evaluator = central_evaluator(copy.deepcopy(model), test[0], test[1])
    return run(
        algorithm if algorithm is not None else FedAvg(),
        SerialExecutor(store, copy.deepcopy(model)),
        model_params(model),
        RunConfig(
            rounds=rounds,
            clients_per_round=clients_per_round or store.num_clients,
            seed=seed,
            eval_every=eval_every if test is not None else 0,
        ),
        evaluator=evaluator,
        sampler=sampler,
        callbacks=callbacks,
    )
