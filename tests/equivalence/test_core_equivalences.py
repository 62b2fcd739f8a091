"""The equivalences of issue 2: algorithms that must coincide do, through the public run loop."""

from __future__ import annotations

import copy

import torch

from fedkit.algorithms import FedAvg, FedProx, FedSGD, Scaffold
from fedkit.local import LocalTraining, classification_loss
from fedkit.params import Params, model_params
from fedkit.run import RunConfig, run
from fedkit.server_opt import SGD
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_clients, toy_model, toy_store


def _run(alg: object, rounds: int = 3, clients_per_round: int = 4, equal: bool = False) -> Params:
    store = toy_store(6, equal=equal)
    model = toy_model()
    res = run(
        alg,  # type: ignore[arg-type]
        SerialExecutor(store, model),
        model_params(toy_model()),
        RunConfig(rounds=rounds, clients_per_round=clients_per_round, seed=7),
    )
    return res.params


def _bit_equal(a: Params, b: Params) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


LOCAL = LocalTraining(lr=0.05, epochs=2, batch_size=8, momentum=0.5, weight_decay=1e-3)


def test_fedprox_mu0_equals_fedavg_bitwise() -> None:
    assert _bit_equal(_run(FedProx(local=LOCAL, mu=0.0)), _run(FedAvg(local=LOCAL)))


def test_fedprox_mu_positive_differs_and_pulls_towards_global() -> None:
    avg = _run(FedAvg(local=LOCAL), rounds=1)
    prox = _run(FedProx(local=LOCAL, mu=5.0), rounds=1)
    start = model_params(toy_model())
    dist = lambda p: sum(float((p[k] - start[k]).norm() ** 2) for k in p)  # noqa: E731
    assert dist(prox) < dist(avg)


def test_fedavgm_zero_momentum_unit_lr_equals_fedavg_bitwise() -> None:
    assert _bit_equal(
        _run(FedAvg(local=LOCAL, server=SGD(lr=1.0, momentum=0.0))), _run(FedAvg(local=LOCAL))
    )
    # and a real momentum changes the trajectory
    assert not _bit_equal(
        _run(FedAvg(local=LOCAL, server=SGD(momentum=0.9))), _run(FedAvg(local=LOCAL))
    )


def _assert_equals_full_batch_gd(alg: object, num_clients: int, lr: float, rounds: int) -> None:
    """``alg`` with every client each round == plain full-batch GD on the union of their data."""
    clients = toy_clients(num_clients)
    fed = run(
        alg,  # type: ignore[arg-type]
        SerialExecutor(toy_store(num_clients), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=rounds, clients_per_round=num_clients, seed=1),
    ).params
    model = toy_model()
    x = torch.cat([c.x_train for c in clients])
    y = torch.cat([c.y_train for c in clients])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(rounds):
        opt.zero_grad()
        classification_loss(model(x), y).backward()
        opt.step()
    for k, v in model_params(model).items():
        assert torch.allclose(fed[k], v, rtol=1e-5, atol=1e-6), k


def test_one_full_batch_step_equals_centralised_gradient_descent() -> None:
    """FedAvg, every client, one full-batch local step == GD on the union (example weighting)."""
    local = LocalTraining(lr=0.3, steps=1, batch_size=0)
    _assert_equals_full_batch_gd(FedAvg(local=local), num_clients=5, lr=0.3, rounds=4)


def test_fedsgd_equals_centralised_gradient_descent() -> None:
    _assert_equals_full_batch_gd(FedSGD(server=SGD(lr=0.2)), num_clients=4, lr=0.2, rounds=3)


def test_scaffold_first_round_equals_fedavg_first_round() -> None:
    local = LocalTraining(lr=0.05, epochs=1, batch_size=8)
    for weighting in ("uniform", "examples"):
        s = _run(Scaffold(local=local, weighting=weighting), rounds=1)
        a = _run(FedAvg(local=local, weighting=weighting), rounds=1)
        assert _bit_equal(s, a), weighting
    # later rounds differ once control variates are non-zero
    assert not _bit_equal(
        _run(Scaffold(local=local), rounds=3),
        _run(FedAvg(local=local, weighting="uniform"), rounds=3),
    )


def test_scaffold_control_variates_stay_client_side() -> None:
    store = toy_store(6)
    alg = Scaffold(local=LocalTraining(lr=0.05))
    res = run(
        alg,
        SerialExecutor(store, toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=2, clients_per_round=3, seed=0),
    )
    assert set(vars(res.state)) == {"params", "control", "opt"}
    cohort = set(res.history[0].cohort) | set(res.history[1].cohort)
    held = {cid for cid in range(6) if store.get_state(cid) is not None}
    assert held == cohort
    # server control = (|S|/N) * sum of client-control means == mean over all clients' c_i here
    c_sum = {k: sum(store.get_state(c).control[k] for c in held) for k in res.state.control}
    for k, v in res.state.control.items():
        assert torch.allclose(v, c_sum[k] / 6, atol=1e-6)


def test_initial_params_are_not_mutated_by_a_run() -> None:
    m = toy_model()
    p0 = model_params(m)
    snapshot = copy.deepcopy(p0)
    res = run(
        FedAvg(local=LOCAL),
        SerialExecutor(toy_store(3), m),
        p0,
        RunConfig(rounds=1, clients_per_round=3),
    )
    assert _bit_equal(p0, snapshot)
    assert not _bit_equal(res.params, snapshot)
