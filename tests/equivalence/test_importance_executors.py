"""The importance-corrected mean under a power-law sampler gives the same model under the serial,
vectorised and two-gloo-rank executors: every executor's clients scale their updates by
w_k / (π_k W) from the chain the run loop resolved (fedkit.samplers.importance), and the
cohorts come from the server's stream of (seed, round) whatever the executor."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from fedkit.algorithms import FedAvg
from fedkit.params import model_params
from fedkit.run import RunResult, run
from fedkit.samplers.importance import ImportanceWeighted
from fedkit.samplers.probability import ProbabilitySampler
from fedkit.sampling import Population
from fedkit.sim.processes import ProcessExecutor
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor
from tests.equivalence.test_executors import CONFIG, LOCAL, _close, _partial
from tests.helpers.toy import toy_model, toy_store

ALG: Any = FedAvg(local=LOCAL, aggregator=ImportanceWeighted())
SAMPLER = ProbabilitySampler(law="power", exponent=1.0)


def _population() -> Population:
    store = toy_store(8)
    return Population(8, tuple(store.num_examples(k) for k in range(8)))


def _run(executor: Any) -> RunResult[Any]:
    init = model_params(toy_model())
    return run(ALG, executor, init, CONFIG, sampler=SAMPLER, population=_population())


def _serial() -> RunResult[Any]:
    return _run(SerialExecutor(toy_store(8), toy_model(), participation=_partial))


def test_vectorized_equals_serial_with_the_importance_correction() -> None:
    ref = _serial()
    got = _run(VectorizedExecutor(toy_store(8), toy_model(), participation=_partial, chunk_size=3))
    assert _close(ref.params, got.params)
    assert [r.cohort for r in got.history] == [r.cohort for r in ref.history]
    # the correction is applied: the plain weighted mean of the same cohorts is another model
    plain = run(
        FedAvg(local=LOCAL), SerialExecutor(toy_store(8), toy_model(), participation=_partial),
        model_params(toy_model()), CONFIG, sampler=SAMPLER, population=_population(),
    )  # fmt: skip
    assert not _close(plain.params, ref.params)


@pytest.mark.dist
def test_two_gloo_ranks_equal_serial_with_the_importance_correction() -> None:
    ref = _serial()
    with ProcessExecutor(
        store=toy_store(8),
        model_fn=toy_model,
        store_fn=functools.partial(toy_store, 8),
        world_size=2,
        participation=_partial,
    ) as ex:
        got = _run(ex)
    assert _close(ref.params, got.params)
    assert [r.cohort for r in got.history] == [r.cohort for r in ref.history]
