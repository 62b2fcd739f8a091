"""The personalised and fair methods give the same global model and the same personal accuracy
under the serial executor, two processes (client state held in the ranks) and, for those whose
plans are linear, the vectorised executor."""

from __future__ import annotations

import functools

import pytest
import torch

from fedkit.algorithms.ditto import Ditto
from fedkit.algorithms.fedper import FedPer
from fedkit.algorithms.finetune import FineTune
from fedkit.algorithms.perfedavg import PerFedAvg
from fedkit.algorithms.qfedavg import QFedAvg
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.processes import ProcessExecutor
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.1, epochs=1, batch_size=8)
CONFIG = RunConfig(rounds=2, clients_per_round=6, seed=4, eval_every=0, federated_eval_every=2)
ALGORITHMS = [
    Ditto(local=LOCAL, lam=0.5),
    FineTune(local=LOCAL),
    FedPer(local=LOCAL),
    PerFedAvg(local=LOCAL, alpha=0.05, variant="hf"),
    QFedAvg(local=LOCAL, q=2.0),
]


def _serial(alg: object) -> object:
    return run(alg, SerialExecutor(toy_store(6), toy_model()), model_params(toy_model()), CONFIG)  # type: ignore[arg-type]


def _same(ref: object, got: object, tol: float) -> None:
    for k in ref.params:  # type: ignore[attr-defined]
        torch.testing.assert_close(got.params[k], ref.params[k], rtol=tol, atol=tol)  # type: ignore[attr-defined]
    a, b = ref.history[-1].federated, got.history[-1].federated  # type: ignore[attr-defined]
    assert a is not None and b is not None
    assert b.mean == pytest.approx(a.mean, abs=1e-6)
    assert b.personal_mean == pytest.approx(a.personal_mean, abs=1e-6, nan_ok=True)


@pytest.mark.parametrize("alg", ALGORITHMS, ids=lambda a: a.name)
def test_vectorized_equals_serial(alg: object) -> None:
    vec = run(
        alg,  # type: ignore[arg-type]
        VectorizedExecutor(toy_store(6), toy_model(), chunk_size=4),
        model_params(toy_model()),
        CONFIG,
    )
    _same(_serial(alg), vec, 1e-5)


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("alg", ALGORITHMS, ids=lambda a: a.name)
def test_two_processes_equal_serial(alg: object) -> None:
    with ProcessExecutor(
        store=toy_store(6),
        model_fn=toy_model,
        store_fn=functools.partial(toy_store, 6),
        world_size=2,
    ) as ex:
        got = run(alg, ex, model_params(toy_model()), CONFIG)  # type: ignore[arg-type]
    _same(_serial(alg), got, 0.0)
