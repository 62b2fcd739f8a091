"""Asynchronous pairwise gossip (fedkit.decentral.async_gossip)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.decentral.async_gossip import pairwise_average, run_async_gossip
from fedkit.decentral.dpsgd import DecentralSpec, average, consensus_distance, run_dpsgd
from fedkit.local import LocalTraining
from fedkit.params import model_params
from tests.helpers.toy import toy_clients, toy_model

LOCAL = LocalTraining(lr=0.05, steps=2, batch_size=8)


def test_pairwise_average_by_hand() -> None:
    xs = [
        {"w": torch.tensor([0.0, 4.0])},
        {"w": torch.tensor([2.0, 0.0])},
        {"w": torch.tensor([9.0, 9.0])},
    ]
    pairwise_average(xs, 0, 1)
    # (0 + 2)/2 = 1, (4 + 0)/2 = 2 on both nodes; node 2 untouched
    assert xs[0]["w"].tolist() == xs[1]["w"].tolist() == [1.0, 2.0]
    assert xs[2]["w"].tolist() == [9.0, 9.0]
    xs[0]["w"].add_(1.0)  # the two nodes hold separate tensors afterwards
    assert xs[1]["w"].tolist() == [1.0, 2.0]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=4, max_size=4),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30),
)
def test_pairwise_gossip_keeps_the_mean_and_never_adds_disagreement(
    values: list[float], pairs: list[tuple[int, int]]
) -> None:
    xs = [{"w": torch.tensor([v], dtype=torch.float64)} for v in values]
    mean = average(xs)["w"].item()
    before = consensus_distance(xs)
    for i, j in pairs:
        if i != j:
            pairwise_average(xs, i, j)
            assert average(xs)["w"].item() == pytest.approx(mean, abs=1e-9)
            after = consensus_distance(xs)
            assert after <= before + 1e-9
            before = after


def test_async_run_is_seeded_and_differs_from_synchronous() -> None:
    spec = DecentralSpec(topology="ring", rounds=3, local=LOCAL, seed=2, asynchronous=True)
    nodes, init = toy_clients(6), model_params(toy_model())
    a = run_async_gossip(spec, toy_model(), init, nodes)
    b = run_async_gossip(spec, toy_model(), init, nodes)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a.nodes, b.nodes, strict=True) for k in x)
    assert [r.bytes_per_node for r in a.history] == [2 * a.model_bytes] * 3
    sync = run_dpsgd(spec, toy_model(), init, nodes)
    assert any(not torch.allclose(a.averaged[k], sync.averaged[k]) for k in init)
    assert all(r.consensus_distance > 0 for r in a.history)


def test_async_refusals() -> None:
    with pytest.raises(ValueError, match="fixed graph"):
        DecentralSpec(topology="one_peer_exp", asynchronous=True)
    with pytest.raises(ValueError, match="fixed graph"):
        DecentralSpec(topology="allreduce", asynchronous=True)
