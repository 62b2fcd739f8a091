"""Topologies and mixing matrices (fedkit.decentral.topology)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.decentral import topology as tp


def _check_mixing(w: torch.Tensor, g: tp.Graph) -> None:
    n = g.n
    assert torch.allclose(w.sum(0), torch.ones(n, dtype=torch.float64))
    assert torch.allclose(w.sum(1), torch.ones(n, dtype=torch.float64))
    assert torch.equal(w, w.T)
    assert bool((w >= 0).all())
    for i in range(n):
        for j in range(n):
            if i != j and j not in g.neighbours[i]:
                assert w[i, j] == 0


def test_metropolis_hastings_by_hand() -> None:
    # path 0-1-2 plus a pendant 3 on node 1: degrees d0=1, d1=3, d2=1, d3=1
    g = tp.Graph.from_edges(4, [(0, 1), (1, 2), (1, 3)])
    w = tp.metropolis_hastings(g)
    # W01 = 1/(1+max(1,3)) = 1/4, same for W12, W13; W00 = 1 - 1/4 = 3/4; W11 = 1 - 3/4 = 1/4
    expected = torch.tensor(
        [
            [0.75, 0.25, 0.0, 0.0],
            [0.25, 0.25, 0.25, 0.25],
            [0.0, 0.25, 0.75, 0.0],
            [0.0, 0.25, 0.0, 0.75],
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(w, expected)


def test_ring_mixing_rate_by_hand() -> None:
    # ring of 4 with uniform weights 1/3: W = (I + P + P^-1)/3, eigenvalues (1 + 2cos(2πk/4))/3
    # = 1, 1/3, -1/3, 1/3 -> ρ = 1/3
    w = tp.uniform_weights(tp.ring(4))
    assert tp.mixing_rate(w) == pytest.approx(1 / 3)
    # complete graph with uniform weights: W = 11^T/n, ρ = 0
    assert tp.mixing_rate(tp.uniform_weights(tp.complete(5))) == pytest.approx(0.0, abs=1e-12)


def test_shapes_of_named_topologies() -> None:
    assert tp.ring(5).degrees() == [2] * 5
    assert tp.torus(3, 4).degrees() == [4] * 12
    assert tp.complete(6).degrees() == [5] * 6
    # exponential on 8: hops 1, 2, 4 -> neighbours i±1, i±2, i+4 (= i-4): degree 5
    assert tp.exponential(8).neighbours[0] == (1, 2, 4, 6, 7)
    g = tp.random_regular(10, 3, seed=1)
    assert g.degrees() == [3] * 10
    assert tp.random_regular(10, 3, seed=1) == g  # same seed, same graph


def test_disconnected_graph_has_no_gap() -> None:
    g = tp.Graph.from_edges(4, [(0, 1), (2, 3)])
    assert not g.connected()
    assert tp.mixing_rate(tp.metropolis_hastings(g)) == pytest.approx(1.0)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="regular"):
        tp.uniform_weights(tp.Graph.from_edges(3, [(0, 1), (1, 2)]))
    with pytest.raises(ValueError, match="n·d even"):
        tp.random_regular(5, 3, seed=0)
    with pytest.raises(ValueError, match="square"):
        tp.make_schedule("torus", 8)
    with pytest.raises(ValueError, match="topology must be one of"):
        tp.make_schedule("star", 8)
    with pytest.raises(ValueError, match="symmetric"):
        tp.Graph(((1,), ()))


def test_one_peer_exponential_cycles_through_hops() -> None:
    s = tp.make_schedule("one_peer_exp", 8)
    # log2 8 = 3 hops: round 0 -> +1, round 1 -> +2, round 2 -> +4, round 3 -> +1 again
    assert [s.peers(t, 0) for t in range(4)] == [([7], [1]), ([6], [2]), ([4], [4]), ([7], [1])]
    w = s.matrix(1)
    assert torch.allclose(w.sum(0), torch.ones(8, dtype=torch.float64))
    assert torch.allclose(w.sum(1), torch.ones(8, dtype=torch.float64))
    # product of one period = exact average (Ying et al. 2021, n a power of two)
    prod = s.matrix(0) @ s.matrix(1) @ s.matrix(2)
    assert torch.allclose(prod, torch.full((8, 8), 1 / 8, dtype=torch.float64))


@st.composite
def graphs(draw: st.DrawFn) -> tp.Graph:
    n = draw(st.integers(2, 12))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = draw(st.lists(st.sampled_from(pairs), max_size=len(pairs)))
    return tp.Graph.from_edges(n, edges)


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_metropolis_hastings_is_doubly_stochastic(g: tp.Graph) -> None:
    w = tp.metropolis_hastings(g)
    _check_mixing(w, g)
    rho = tp.mixing_rate(w)
    if g.connected():
        assert rho < 1 - 1e-9
    else:
        assert rho == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["ring", "torus", "exponential", "random_regular", "complete"]),
    st.sampled_from(["metropolis_hastings", "uniform"]),
    st.sampled_from([4, 9, 16]),
    st.integers(0, 100),
)
def test_named_schedules_mix(topology: str, weights: str, n: int, seed: int) -> None:
    degree = 2 if n == 9 else 3
    s = tp.make_schedule(topology, n, weights=weights, degree=degree, seed=seed)
    assert s.fixed is not None
    g = tp.Graph(
        tuple(tuple(j for j in range(n) if j != i and s.fixed[i, j] > 0) for i in range(n))
    )
    _check_mixing(s.fixed, g)
    if g.connected():
        assert tp.mixing_rate(s.fixed) < 1 - 1e-9
