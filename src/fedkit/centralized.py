"""The centralised baseline: the same model and data, trained by ordinary mini-batch SGD on the
pooled training set, reported round by round like a federated run.

An "epoch" of the baseline plays the role of a round: after each one the model is evaluated on the
same test set with the same metrics (and, when clients carry local test data, with the same
per-client accuracy distribution), and callbacks receive a :class:`~fedkit.run.RoundRecord`, so
FL-vs-centralised comparisons in the results store and reports are like for like.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from torch import nn

from fedkit.data.store import ClientStore
from fedkit.evaluate import ClientEval, Distribution, evaluate
from fedkit.executor import ClientMetrics
from fedkit.local import LocalTraining, train_local
from fedkit.params import Params, load_params, model_params
from fedkit.rng import SERVER, generator
from fedkit.run import Callback, Evaluator, RoundRecord


@dataclasses.dataclass(frozen=True)
class CentralizedResult:
    """Final parameters and the per-epoch history."""

    params: Params
    history: list[RoundRecord]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Centralized:
    """The baseline as an experiment-file choice (``[algorithm] name = "centralized"``): the
    runner calls :func:`train_centralized` with ``local`` (its lr, batch size, momentum and weight
    decay; one epoch per round) instead of running a federated algorithm.

    Attributes:
        local: the SGD settings on the pooled data.
    """

    local: LocalTraining = dataclasses.field(default_factory=LocalTraining)

    @property
    def name(self) -> str:
        """Identifier."""
        return "centralized"


def train_centralized(
    model: nn.Module,
    store: ClientStore,
    local: LocalTraining,
    *,
    epochs: int,
    seed: int = 0,
    evaluator: Evaluator | None = None,
    eval_every: int = 1,
    federated_eval: bool = False,
    callbacks: Sequence[Callback] = (),
) -> CentralizedResult:
    """Train ``model`` (in place) on the union of all clients' training data.

    Args:
        model: the model, holding its initial parameters.
        store: the federated data; its clients' training sets are pooled.
        local: optimiser settings (``epochs``/``steps`` are per call; one epoch per "round").
        epochs: number of passes over the pooled data.
        seed: batch order derives from ``(seed, epoch)``.
        evaluator: centralised test evaluation, every ``eval_every`` epochs and after the last.
        federated_eval: also score every client's local test data after each evaluated epoch.
        callbacks: receive one :class:`RoundRecord` per epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    x, y = store.pooled_train()
    one_epoch = dataclasses.replace(local, epochs=1, steps=None)
    history: list[RoundRecord] = []
    for e in range(epochs):
        t0 = time.perf_counter()
        stats = train_local(model, x, y, one_epoch, generator=generator(seed, e, SERVER, "central"))
        params = model_params(model)
        due = eval_every > 0 and ((e + 1) % eval_every == 0 or e + 1 == epochs)
        central = evaluator(params) if evaluator is not None and due else None
        federated = _federated(model, store, params) if federated_eval and due else None
        record = RoundRecord(
            round=e,
            cohort=(),
            clients=(ClientMetrics(-1, int(y.shape[0]), stats.steps, stats.mean_loss),),
            dropped=(),
            committed=True,
            train_loss=stats.mean_loss,
            central=central,
            federated=federated,
            bytes_up=0,
            bytes_down=0,
            wall_seconds=time.perf_counter() - t0,
            sim_seconds=None,
        )
        history.append(record)
        for cb in callbacks:
            cb(record, params)
    return CentralizedResult(params=model_params(model), history=history)


def _federated(model: nn.Module, store: ClientStore, params: Params) -> Distribution:
    """Per-client accuracy of the centralised model on each client's local test data."""
    load_params(model, params)
    evals: list[ClientEval] = []
    for cid in range(store.num_clients):
        d = store.data(cid)
        if d.x_test is not None and d.y_test is not None and d.y_test.shape[0] > 0:
            evals.append(ClientEval(cid, evaluate(model, d.x_test, d.y_test)))
    return Distribution.of(evals)
