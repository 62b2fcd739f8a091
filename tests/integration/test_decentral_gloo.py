"""D-PSGD on real gloo ranks (127.0.0.1) gives the simulator's models, round for round."""

from __future__ import annotations

import pytest
import torch

from fedkit.decentral.dpsgd import DecentralSpec, run_dpsgd
from fedkit.decentral.ranks import flatten, run_gloo, unflatten
from fedkit.local import LocalTraining
from fedkit.params import model_params
from tests.helpers.toy import toy_clients, toy_model

pytestmark = [pytest.mark.dist, pytest.mark.timeout(120)]

LOCAL = LocalTraining(lr=0.05, steps=3, batch_size=8, momentum=0.5)


def _compare(spec: DecentralSpec, n: int) -> None:
    nodes = toy_clients(n, equal=False)
    init = model_params(toy_model())
    sim = run_dpsgd(spec, toy_model(), init, nodes)
    gloo = run_gloo(spec, toy_model, init, nodes)
    for a, b in zip(sim.nodes, gloo.nodes, strict=True):
        for k, v in a.items():
            torch.testing.assert_close(b[k], v, rtol=0, atol=1e-6)
    # the nodes really differ (a gossip topology does not reach consensus in 3 rounds)
    assert sim.history[-1].consensus_distance > 1e-4
    for s, g in zip(sim.history, gloo.history, strict=True):
        assert g.bytes_per_node == s.bytes_per_node
        assert g.consensus_distance == pytest.approx(s.consensus_distance, rel=1e-5)
        assert g.train_loss == pytest.approx(s.train_loss, rel=1e-5)


def test_ring_ranks_equal_simulator() -> None:
    _compare(DecentralSpec(topology="ring", rounds=3, local=LOCAL, seed=3), 4)


@pytest.mark.slow  # a second spawn of 4 ranks (~10 s on a loaded 2-core machine)
def test_time_varying_ranks_equal_simulator() -> None:
    _compare(DecentralSpec(topology="one_peer_exp", rounds=3, local=LOCAL, seed=3), 4)


def test_flatten_round_trip_and_refusals() -> None:
    p = model_params(toy_model())
    back = unflatten(flatten(p), p)
    assert all(torch.equal(back[k], p[k]) for k in p)
    with pytest.raises(ValueError, match="for 259 parameters"):
        unflatten(torch.zeros(10), p)
    with pytest.raises(ValueError, match="one floating dtype"):
        flatten({"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.float64)})
