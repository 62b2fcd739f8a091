"""Personal evaluation: every executor scores each client's personal model (global parameters
plus that client's state) beside the global one, and they agree."""

from __future__ import annotations

import functools

import pytest
import torch

from fedkit.evaluate import evaluate
from fedkit.local import LocalTraining
from fedkit.params import load_params, model_params
from fedkit.run import RunConfig, run
from fedkit.sim.processes import ProcessExecutor
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor
from tests.helpers.personal import LocalHead
from tests.helpers.toy import toy_model, toy_store

ALG = LocalHead(local=LocalTraining(lr=0.1, epochs=2, batch_size=8))
CONFIG = RunConfig(rounds=3, clients_per_round=6, seed=5, eval_every=0, federated_eval_every=3)


def test_serial_personal_accuracy_is_the_personal_models_own_score() -> None:
    store = toy_store(6)
    ex = SerialExecutor(store, toy_model())
    res = run(ALG, ex, model_params(toy_model()), CONFIG)
    evals = ex.evaluate(res.params, range(6), ALG)
    assert len(evals) == 6 and all(e.personal is not None for e in evals)
    m = toy_model()
    for e in evals:
        own = ALG.personal_params(res.params, store.get_state(e.client_id))
        assert own is not None
        load_params(m, own)
        d = store.data(e.client_id)
        assert d.x_test is not None and d.y_test is not None
        want = evaluate(m, d.x_test, d.y_test)
        assert e.personal == want
    # heads differ per client and the personal models beat the shared head on their own data
    fed = res.history[-1].federated
    assert fed is not None and fed.personal_mean > fed.mean
    # without the algorithm only the global model is scored
    assert all(e.personal is None for e in ex.evaluate(res.params, range(6)))


@pytest.mark.dist
def test_personal_evaluation_agrees_across_serial_vectorized_and_two_ranks() -> None:
    ref = run(ALG, SerialExecutor(toy_store(6), toy_model()), model_params(toy_model()), CONFIG)
    vec = run(
        ALG,
        VectorizedExecutor(toy_store(6), toy_model(), chunk_size=4),
        model_params(toy_model()),
        CONFIG,
    )
    with ProcessExecutor(
        store=toy_store(6),
        model_fn=toy_model,
        store_fn=functools.partial(toy_store, 6),
        world_size=2,
    ) as ex:
        dist_res = run(ALG, ex, model_params(toy_model()), CONFIG)
    for got in (vec, dist_res):
        for k in ref.params:
            torch.testing.assert_close(got.params[k], ref.params[k], rtol=1e-5, atol=1e-6)
        a, b = ref.history[-1].federated, got.history[-1].federated
        assert a is not None and b is not None
        assert b.personal_mean == pytest.approx(a.personal_mean, abs=1e-6)
        assert b.mean == pytest.approx(a.mean, abs=1e-6)
