"""Communication graphs and gossip mixing matrices for decentralised SGD.

A :class:`Graph` is an undirected simple graph on nodes ``0..n-1``, stored as sorted neighbour
tuples (no self loops). A *mixing matrix* ``W`` for it is symmetric, doubly stochastic, and
``W[i, j] > 0`` only when ``i == j`` or ``j`` is a neighbour of ``i``; one gossip step replaces
node ``i``'s model by ``Σ_j W[i, j] x_j`` (Lian et al. 2017, "Can Decentralized Algorithms
Outperform Centralized Algorithms?", Algorithm 1; Koloskova et al. 2020, "A Unified Theory of
Decentralized SGD", Assumption 1).

Weights:

* **Metropolis–Hastings** (Xiao & Boyd 2004, "Fast linear iterations for distributed averaging"):
  ``W[i, j] = 1 / (1 + max(d_i, d_j))`` for each edge, ``W[i, i] = 1 - Σ_{j≠i} W[i, j]``. Doubly
  stochastic on any graph.
* **Uniform** neighbour weights: ``W[i, j] = 1 / (d + 1)`` for ``j ∈ N(i) ∪ {i}``; doubly
  stochastic only on a ``d``-regular graph, so it is refused on others.

The mixing rate is ``ρ = max(|λ_2|, |λ_n|)`` of ``W`` (eigenvalues in decreasing order); the
spectral gap ``1 - ρ`` is positive exactly when the graph is connected (and ``W`` aperiodic).

Topologies: ring, 2-D torus, exponential graph (node ``i`` linked to ``i ± 2^k``; Assran et al.
2019, Ying et al. 2021), random ``d``-regular from a seed (configuration model with restarts),
fully connected, and the time-varying *one-peer exponential graph* of Ying et al. 2021
("Exponential Graph is Provably Efficient for Decentralized Deep Training"): in round ``t`` node
``i`` averages with ``i + 2^(t mod log2 n)`` only (a directed, doubly stochastic ``W_t``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = [
    "TOPOLOGIES",
    "WEIGHTINGS",
    "Graph",
    "Schedule",
    "complete",
    "exponential",
    "make_schedule",
    "metropolis_hastings",
    "mixing_rate",
    "one_peer_exponential",
    "random_regular",
    "ring",
    "torus",
    "uniform_weights",
]

TopologyName = Literal["ring", "torus", "exponential", "random_regular", "complete", "one_peer_exp"]
Weighting = Literal["metropolis_hastings", "uniform"]
TOPOLOGIES: tuple[str, ...] = get_args(TopologyName)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)

MAX_NODES = 4096
"""Largest graph built (the mixing matrix is dense, n × n)."""


@dataclasses.dataclass(frozen=True)
class Graph:
    """An undirected simple graph as neighbour tuples.

    Attributes:
        neighbours: ``neighbours[i]`` is the sorted tuple of ``i``'s neighbours (``i`` excluded).
    """

    neighbours: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        n = len(self.neighbours)
        if not 1 <= n <= MAX_NODES:
            raise ValueError(f"a graph needs 1 to {MAX_NODES} nodes, got {n}")
        for i, nb in enumerate(self.neighbours):
            if tuple(sorted(set(nb))) != nb or any(not 0 <= j < n or j == i for j in nb):
                raise ValueError(f"node {i}: neighbours must be sorted, distinct, not {i}: {nb}")
            if any(i not in self.neighbours[j] for j in nb):
                raise ValueError(f"node {i}: an edge is not symmetric ({nb})")

    @classmethod
    def from_edges(cls, n: int, edges: Sequence[tuple[int, int]]) -> Graph:
        """The graph on ``n`` nodes with these undirected edges (duplicates merged)."""
        sets: list[set[int]] = [set() for _ in range(n)]
        for a, b in edges:
            if a != b:
                sets[a].add(b)
                sets[b].add(a)
        return cls(tuple(tuple(sorted(s)) for s in sets))

    @property
    def n(self) -> int:
        """Number of nodes."""
        return len(self.neighbours)

    def degrees(self) -> list[int]:
        """Each node's degree."""
        return [len(nb) for nb in self.neighbours]

    def connected(self) -> bool:
        """Whether every node reaches node 0."""
        seen, stack = {0}, [0]
        while stack:
            for j in self.neighbours[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return len(seen) == self.n


def ring(n: int) -> Graph:
    """Node ``i`` linked to ``i ± 1 (mod n)``."""
    return Graph.from_edges(n, [(i, (i + 1) % n) for i in range(n)])


def torus(rows: int, cols: int) -> Graph:
    """A ``rows × cols`` grid with wrap-around; node ``r·cols + c`` links to its 4 neighbours."""
    if rows < 1 or cols < 1:
        raise ValueError(f"torus needs rows, cols >= 1, got {rows} x {cols}")
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            edges += [(i, r * cols + (c + 1) % cols), (i, ((r + 1) % rows) * cols + c)]
    return Graph.from_edges(rows * cols, edges)


def exponential(n: int) -> Graph:
    """Node ``i`` linked to ``i ± 2^k (mod n)`` for ``2^k < n`` (the static exponential graph)."""
    hops = [1 << k for k in range(max(1, math.ceil(math.log2(max(n, 2)))))]
    return Graph.from_edges(n, [(i, (i + h) % n) for i in range(n) for h in hops if h < n])


def complete(n: int) -> Graph:
    """Every pair of nodes linked."""
    return Graph.from_edges(n, [(i, j) for i in range(n) for j in range(i + 1, n)])


def random_regular(n: int, d: int, seed: int, *, tries: int = 1000) -> Graph:
    """A random simple ``d``-regular graph from ``seed`` (configuration model with restarts).

    Raises:
        ValueError: when ``n·d`` is odd, ``d >= n``, or no simple graph was drawn in ``tries``.
    """
    if not 0 <= d < n or (n * d) % 2:
        raise ValueError(f"no {d}-regular graph on {n} nodes (need d < n and n·d even)")
    rng = random.Random(seed)  # graph sampling, not a secret: a seeded stdlib stream is fine
    for _ in range(tries):
        stubs = [i for i in range(n) for _ in range(d)]
        rng.shuffle(stubs)
        pairs = list(zip(stubs[::2], stubs[1::2], strict=True))
        if all(a != b for a, b in pairs) and len({frozenset(p) for p in pairs}) == len(pairs):
            return Graph.from_edges(n, pairs)
    raise ValueError(f"no simple {d}-regular graph on {n} nodes found in {tries} draws")


def metropolis_hastings(g: Graph) -> Tensor:
    """Metropolis–Hastings weights (float64, n × n): ``1/(1+max(d_i, d_j))`` on edges."""
    deg = g.degrees()
    w = torch.zeros(g.n, g.n, dtype=torch.float64)
    for i, nb in enumerate(g.neighbours):
        for j in nb:
            w[i, j] = 1.0 / (1 + max(deg[i], deg[j]))
        w[i, i] = 1.0 - float(w[i].sum())
    return w


def uniform_weights(g: Graph) -> Tensor:
    """``1/(d+1)`` on ``N(i) ∪ {i}`` (float64); refused unless ``g`` is regular."""
    deg = g.degrees()
    if len(set(deg)) != 1:
        raise ValueError(
            "uniform neighbour weights are doubly stochastic only on a regular graph "
            f"(degrees here range {min(deg)}..{max(deg)}); use metropolis_hastings"
        )
    w = torch.zeros(g.n, g.n, dtype=torch.float64)
    for i, nb in enumerate(g.neighbours):
        w[i, [i, *nb]] = 1.0 / (deg[i] + 1)
    return w


def one_peer_exponential(n: int, t: int) -> Tensor:
    """Round ``t``'s matrix of the one-peer exponential graph: ``W[i,i] = W[i,(i+2^k)%n] = 1/2``
    with ``k = t mod ⌈log2 n⌉`` (doubly stochastic, not symmetric)."""
    w = torch.zeros(n, n, dtype=torch.float64)
    if n == 1:
        return w + 1.0
    k = t % max(1, math.ceil(math.log2(n)))
    for i in range(n):
        w[i, i] += 0.5
        w[i, (i + (1 << k)) % n] += 0.5
    return w


def mixing_rate(w: Tensor) -> float:
    """``ρ = max(|λ_2|, |λ_n|)`` of a symmetric mixing matrix (``1 - ρ`` is the spectral gap)."""
    eig = torch.linalg.eigvalsh(w.double())
    if eig.numel() < 2:
        return 0.0
    return float(max(abs(eig[-2]), abs(eig[0])))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The mixing matrix of each round: fixed, or the one-peer exponential graph's ``W_t``.

    Attributes:
        n: number of nodes.
        fixed: the matrix every round uses (``None`` for the time-varying one-peer graph).
    """

    n: int
    fixed: Tensor | None

    def matrix(self, t: int) -> Tensor:
        """Round ``t``'s mixing matrix."""
        return self.fixed if self.fixed is not None else one_peer_exponential(self.n, t)

    def peers(self, t: int, i: int) -> tuple[list[int], list[int]]:
        """Whom node ``i`` sends its model to and receives from in round ``t`` (ascending)."""
        w = self.matrix(t)
        send = [j for j in range(self.n) if j != i and w[j, i] > 0]
        recv = [j for j in range(self.n) if j != i and w[i, j] > 0]
        return send, recv


def make_schedule(
    topology: str, n: int, *, weights: str = "metropolis_hastings", degree: int = 4, seed: int = 0
) -> Schedule:
    """The schedule named by an experiment file's ``topology`` and ``weights``.

    Args:
        topology: one of :data:`TOPOLOGIES` (``torus`` needs a square ``n``).
        n: number of nodes.
        weights: one of :data:`WEIGHTINGS` (ignored by ``one_peer_exp``).
        degree: ``random_regular``'s ``d``.
        seed: ``random_regular``'s draw.

    Raises:
        ValueError: an unknown name, or a graph that cannot be built on ``n`` nodes.
    """
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}; got {topology!r}")
    if weights not in WEIGHTINGS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTINGS)}; got {weights!r}")
    if not 1 <= n <= MAX_NODES:
        raise ValueError(f"nodes must be in [1, {MAX_NODES}], got {n}")
    if topology == "one_peer_exp":
        return Schedule(n, None)
    if topology == "torus":
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"torus needs a square number of nodes, got {n}")
        g = torus(side, side)
    elif topology == "random_regular":
        g = random_regular(n, degree, seed)
    else:
        g = {"ring": ring, "exponential": exponential, "complete": complete}[topology](n)
    w = metropolis_hastings(g) if weights == "metropolis_hastings" else uniform_weights(g)
    return Schedule(n, w)
