"""A client whose update holds a NaN or an infinity is refused before any aggregator sees it:
dropped from the round under every executor, its previous state kept, the model unpoisoned."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
import torch

from fedkit.aggregate import NonFiniteUpdateError, check_finite
from fedkit.algorithm import ClientResult, LocalOutcome, LocalPlan, RoundInfo
from fedkit.algorithms import FedAvg, Scaffold
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, run
from fedkit.sim.processes import ProcessExecutor
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=1, batch_size=8)
CONFIG = RunConfig(rounds=2, clients_per_round=5, seed=3, eval_every=0)


def test_check_finite_names_the_tensor_and_the_client() -> None:
    check_finite({"a": torch.ones(2), "n": torch.tensor([3])}, 1)
    with pytest.raises(NonFiniteUpdateError, match=r"^client 4: update tensor 'b' has a NaN"):
        check_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}, 4)
    with pytest.raises(NonFiniteUpdateError, match=r"^update tensor 'a' has"):
        check_finite({"a": torch.tensor(float("nan"))})


def _poison(res: ClientResult[Any, Any]) -> ClientResult[Any, Any]:
    def nan_first(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[0] = float("nan")
        return t

    delta = {k: nan_first(v) for k, v in res.update.delta.items()}
    return dataclasses.replace(res, update=dataclasses.replace(res.update, delta=delta))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoisonedFedAvg(FedAvg):
    """FedAvg whose client ``bad`` sends a NaN (a diverged or hostile client)."""

    bad: int = 2

    def client_final(
        self, ctx: Any, msg: Any, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[Any, Any]:
        res = super().client_final(ctx, msg, plan, outcome)
        return _poison(res) if ctx.client_id == self.bad else res


def _without_client_2(cid: int, info: RoundInfo) -> float | None:
    return None if cid == 2 else 1.0


def _reference() -> Any:
    """The honest clients alone: client 2 simply drops out."""
    ex = SerialExecutor(toy_store(5), toy_model(), participation=_without_client_2)
    return run(FedAvg(local=LOCAL), ex, model_params(toy_model()), CONFIG)


def _check(got: Any, ref: Any) -> None:
    assert all(bool(torch.isfinite(v).all()) for v in got.params.values())
    for k in ref.params:
        torch.testing.assert_close(got.params[k], ref.params[k], rtol=1e-5, atol=1e-7)
    assert [r.dropped for r in got.history] == [(2,), (2,)]
    assert [[c.client_id for c in r.clients] for r in got.history] == [[0, 1, 3, 4]] * 2


def test_serial_and_vectorized_drop_the_poisoned_client_and_match_its_absence() -> None:
    ref = _reference()
    alg = PoisonedFedAvg(local=LOCAL)
    serial = run(alg, SerialExecutor(toy_store(5), toy_model()), model_params(toy_model()), CONFIG)
    _check(serial, ref)
    assert all(torch.equal(serial.params[k], ref.params[k]) for k in ref.params)
    vec = VectorizedExecutor(toy_store(5), toy_model(), chunk_size=3)
    _check(run(alg, vec, model_params(toy_model()), CONFIG), ref)


@pytest.mark.dist
def test_two_gloo_ranks_drop_the_poisoned_client() -> None:
    with ProcessExecutor(
        store=toy_store(5),
        model_fn=toy_model,
        store_fn=functools.partial(toy_store, 5),
        world_size=2,
    ) as ex:
        got = run(PoisonedFedAvg(local=LOCAL), ex, model_params(toy_model()), CONFIG)
    _check(got, _reference())


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoisonedScaffold(Scaffold):
    def client_final(
        self, ctx: Any, msg: Any, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[Any, Any]:
        res = super().client_final(ctx, msg, plan, outcome)
        return _poison(res) if ctx.client_id == 2 else res


def test_a_refused_client_keeps_its_previous_state() -> None:
    store = toy_store(5)
    res = run(PoisonedScaffold(local=LOCAL), SerialExecutor(store, toy_model()),
              model_params(toy_model()), CONFIG)  # fmt: skip
    assert store.get_state(2) is None  # never stored: its refused rounds left no trace
    assert store.get_state(1) is not None
    assert all(bool(torch.isfinite(v).all()) for v in res.state.control.values())


def test_the_refusal_is_logged_with_round_client_and_tensor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alg = PoisonedFedAvg(local=LOCAL)
    with caplog.at_level("WARNING", logger="fedkit.client"):
        run(alg, SerialExecutor(toy_store(5), toy_model()), model_params(toy_model()),
            dataclasses.replace(CONFIG, rounds=1))  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        "round 0: client 2: update tensor 'delta/0.bias' has a NaN or infinite value; "
        "the client is dropped from the round"
    ]
