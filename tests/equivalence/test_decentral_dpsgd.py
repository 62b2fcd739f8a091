"""D-PSGD in the simulator: complete graph + uniform weights == all-reduce == FedAvg."""

from __future__ import annotations

import math

import pytest
import torch

from fedkit.algorithms import FedAvg
from fedkit.decentral.dpsgd import (
    DecentralResult,
    DecentralSpec,
    average,
    consensus_distance,
    mix,
    run_dpsgd,
)
from fedkit.local import LocalTraining
from fedkit.params import model_params
from fedkit.run import RunConfig, central_evaluator, run
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_clients, toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=1, batch_size=8, momentum=0.5)
N = 6


def _dpsgd(topology: str, weights: str = "uniform", rounds: int = 3) -> DecentralResult:
    spec = DecentralSpec(topology=topology, weights=weights, rounds=rounds, local=LOCAL, seed=7)
    return run_dpsgd(spec, toy_model(), model_params(toy_model()), toy_clients(N, equal=True))


def test_complete_uniform_equals_allreduce_equals_fedavg() -> None:
    complete = _dpsgd("complete")
    allreduce = _dpsgd("allreduce")
    fed = run(
        FedAvg(local=LOCAL, weighting="uniform"),
        SerialExecutor(toy_store(N, equal=True), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=3, clients_per_round=N, seed=7),
    ).params
    for res in (complete, allreduce):
        for node in res.nodes:
            for k, v in fed.items():
                torch.testing.assert_close(node[k], v, rtol=0, atol=1e-6)
    # every node holds the same model: consensus distance 0 after each exact average
    assert all(r.consensus_distance < 1e-6 for r in complete.history)
    # bytes: complete graph sends to n-1 = 5 peers; ring all-reduce 2(n-1)/n = 5/3 models
    mb = complete.model_bytes
    assert mb == (12 * 16 + 16 + 16 * 3 + 3) * 4
    assert complete.history[0].bytes_per_node == 5 * mb
    assert allreduce.history[0].bytes_per_node == round(10 / 6 * mb)


def test_ring_keeps_nodes_apart_and_sends_two_models() -> None:
    ring = _dpsgd("ring", "metropolis_hastings")
    hist = ring.history
    assert all(r.consensus_distance > 1e-4 for r in hist)
    assert hist[0].bytes_per_node == 2 * ring.model_bytes
    fed = run(
        FedAvg(local=LOCAL, weighting="uniform"),
        SerialExecutor(toy_store(N, equal=True), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=3, clients_per_round=N, seed=7),
    ).params
    avg = ring.averaged
    assert any(not torch.allclose(avg[k], fed[k], atol=1e-5) for k in fed)


def test_one_gossip_step_by_hand() -> None:
    # ring of 4 with MH: W_i,i±1 = 1/3, W_ii = 1/3; x = (0, 3, 6, 9) -> node 0: (0 + 3 + 9)/3 = 4
    xs = {j: {"w": torch.tensor([float(3 * j)])} for j in range(4)}
    out = mix({0: 1 / 3, 1: 1 / 3, 3: 1 / 3}, xs)
    assert out["w"].item() == pytest.approx(4.0)
    # consensus distance of (0, 3, 6, 9): mean 4.5, squares 20.25+2.25+2.25+20.25 = 45 -> √(45/4)
    assert consensus_distance(list(xs.values())) == pytest.approx(math.sqrt(45 / 4))
    assert average(list(xs.values()))["w"].item() == pytest.approx(4.5)


def test_evaluator_scores_the_average_at_due_rounds() -> None:
    clients = toy_clients(4, equal=True)
    x = torch.cat([c.x_test for c in clients if c.x_test is not None])
    y = torch.cat([c.y_test for c in clients if c.y_test is not None])
    spec = DecentralSpec(topology="ring", rounds=4, local=LOCAL, eval_every=3)
    res = run_dpsgd(
        spec,
        toy_model(),
        model_params(toy_model()),
        clients,
        evaluator=central_evaluator(toy_model(), x, y),
    )
    evaluated = [r.round for r in res.history if not math.isnan(r.test_accuracy)]
    assert evaluated == [2, 3]


def test_spec_refusals() -> None:
    with pytest.raises(ValueError, match="topology must be one of"):
        DecentralSpec(topology="star")
    with pytest.raises(ValueError, match="rounds"):
        DecentralSpec(rounds=0)
    with pytest.raises(ValueError, match="regular"):
        DecentralSpec(topology="random_regular", weights="uniform", degree=3).schedule(5)
