"""D-PSGD with local steps: many nodes on one process, no server.

Decentralised parallel SGD (Lian et al. 2017, "Can Decentralized Algorithms Outperform
Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient Descent") in
the local-steps form of Koloskova et al. 2020 ("A Unified Theory of Decentralized SGD with
Changing Topology and Local Updates"). Each round ``t`` every node ``i``

1. trains its own model for the local steps of :class:`~fedkit.local.LocalTraining` with
   fedkit's one training helper (:func:`fedkit.local.train_local`), batch order from
   ``(seed, t, i)``: ``x_i^{t+½} = x_i^t − γ Σ_k ∇F_i(·)``;
2. gossips: ``x_i^{t+1} = Σ_j W_t[i, j] x_j^{t+½}``, receiving only from its neighbours.

With one local step this is ``X^{t+1} = W (X^t − γ G(X^t))``, the order of D-PSGD analysed by
Koloskova et al. (Lian et al. mix and step from the same iterate; the fixed point is the same).
``topology = "allreduce"`` replaces gossip by the exact average ``x̄`` (all-reduce Local SGD,
Stich 2019), the baseline: with full participation and equal weights that is FedAvg.

Metrics per round: the *consensus distance* ``Ξ_t = sqrt((1/n) Σ_i ||x_i − x̄||²)`` (Kong et al.
2021, "Consensus Control for Decentralized Deep Learning"), and the bytes each node sends: its
model to each out-neighbour, or ``2 (n − 1)/n`` models for a ring all-reduce (Patarasuk & Yuan
2009), the cheapest all-reduce in bandwidth. The averaged model ``x̄`` is what is evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fedkit.algorithm import ClientData
from fedkit.client import CLIENT_STREAM
from fedkit.decentral.topology import TOPOLOGIES, WEIGHTINGS, Schedule, make_schedule
from fedkit.evaluate import EvalResult
from fedkit.local import LocalStats, LocalTraining, train_local
from fedkit.params import Params, load_params, model_params, nbytes
from fedkit.rng import generator

__all__ = [
    "ALLREDUCE",
    "DecentralResult",
    "DecentralSpec",
    "RoundMetrics",
    "average",
    "consensus_distance",
    "local_round",
    "mix",
    "run_dpsgd",
]

ALLREDUCE = "allreduce"
"""The baseline's topology name: exact averaging each round (all-reduce Local SGD)."""

MAX_ROUNDS = 10**6


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecentralSpec:
    """A decentralised run (the ``[decentral]`` table of an experiment file).

    Attributes:
        topology: a name from :data:`fedkit.decentral.topology.TOPOLOGIES`, or ``"allreduce"``.
        weights: ``"metropolis_hastings"`` or ``"uniform"`` (regular graphs only).
        degree: ``random_regular``'s degree.
        graph_seed: ``random_regular``'s draw.
        rounds: gossip rounds (>= 1).
        local: each node's local training between gossip rounds.
        seed: root of every node's batch order.
        eval_every: evaluate the averaged model every k rounds and after the last (0: never).
        asynchronous: randomised pairwise gossip without a global round
            (:mod:`fedkit.decentral.async_gossip`; simulator only, fixed graphs).
    """

    topology: str = "ring"
    weights: str = "metropolis_hastings"
    degree: int = 4
    graph_seed: int = 0
    rounds: int = 10
    local: LocalTraining = dataclasses.field(default_factory=LocalTraining)
    seed: int = 0
    eval_every: int = 1
    asynchronous: bool = False

    def __post_init__(self) -> None:
        names = (*TOPOLOGIES, ALLREDUCE)
        if self.topology not in names:
            raise ValueError(f"topology must be one of {', '.join(names)}; got {self.topology!r}")
        if self.weights not in WEIGHTINGS:
            raise ValueError(
                f"weights must be one of {', '.join(WEIGHTINGS)}; got {self.weights!r}"
            )
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ValueError(f"rounds must be in [1, {MAX_ROUNDS}], got {self.rounds!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every!r}")
        if self.asynchronous and self.topology in ("one_peer_exp", ALLREDUCE):
            raise ValueError(
                f"asynchronous gossip needs a fixed graph; topology {self.topology!r} has none"
            )
        if self.local.dp is not None:
            raise ValueError("decentral: local DP-SGD is not supported")

    def schedule(self, n: int) -> Schedule:
        """The mixing matrices for ``n`` nodes (the all-reduce baseline: ``11ᵀ/n``)."""
        if self.topology == ALLREDUCE:
            return Schedule(n, torch.full((n, n), 1.0 / n, dtype=torch.float64))
        return make_schedule(
            self.topology, n, weights=self.weights, degree=self.degree, seed=self.graph_seed
        )

    def bytes_sent(self, schedule: Schedule, t: int, i: int, model_bytes: int) -> int:
        """Bytes node ``i`` sends in round ``t``."""
        if self.topology == ALLREDUCE:
            return round(2 * (schedule.n - 1) / schedule.n * model_bytes)
        return len(schedule.peers(t, i)[0]) * model_bytes

    def due(self, t: int) -> bool:
        """Whether round ``t`` (0-based) is evaluated."""
        last = t == self.rounds - 1
        return self.eval_every > 0 and ((t + 1) % self.eval_every == 0 or last)


@dataclasses.dataclass(frozen=True)
class RoundMetrics:
    """One gossip round.

    Attributes:
        round: 0-based round.
        train_loss: mean local training loss over nodes.
        consensus_distance: ``Ξ`` after gossip.
        bytes_per_node: mean bytes a node sent this round.
        test_loss: the averaged model's test loss (NaN when not evaluated).
        test_accuracy: the averaged model's test accuracy (NaN when not evaluated).
        wall_seconds: the round's wall time.
    """

    round: int
    train_loss: float
    consensus_distance: float
    bytes_per_node: float
    test_loss: float = math.nan
    test_accuracy: float = math.nan
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for JSON)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DecentralResult:
    """A finished run: each node's model and the per-round metrics."""

    nodes: tuple[Params, ...]
    history: tuple[RoundMetrics, ...]
    model_bytes: int

    @property
    def averaged(self) -> Params:
        """``x̄``, the nodes' mean model."""
        return average(self.nodes)


def mix(row: Mapping[int, float], models: Mapping[int, Params]) -> Params:
    """``Σ_j row[j] · models[j]``, summed in ascending ``j`` in float64, cast back.

    Both the simulator and the gloo ranks call this, so they agree bit for bit.
    """
    order = sorted(row)
    first = models[order[0]]
    out: Params = {}
    for k, v in first.items():
        acc = torch.zeros(v.shape, dtype=torch.float64)
        for j in order:
            acc.add_(models[j][k].double(), alpha=row[j])
        out[k] = acc.to(v.dtype)
    return out


def average(models: Sequence[Params]) -> Params:
    """The plain mean of ``models`` (float64 sum in order, cast back)."""
    n = len(models)
    return mix({j: 1.0 / n for j in range(n)}, dict(enumerate(models)))


def consensus_distance(models: Sequence[Params]) -> float:
    """``sqrt((1/n) Σ_i ||x_i − x̄||²)`` over every tensor (float64)."""
    mean = average(models)
    total = 0.0
    for m in models:
        total += sum(float((m[k].double() - mean[k].double()).square().sum()) for k in mean)
    return math.sqrt(total / len(models))


def local_round(
    model: nn.Module,
    start: Params,
    data: ClientData,
    local: LocalTraining,
    seed: int,
    t: int,
    i: int,
) -> tuple[Params, LocalStats]:
    """Node ``i``'s local steps of round ``t`` from ``start`` (the FedAvg client's stream)."""
    load_params(model, start)
    stats = train_local(
        model, data.x_train, data.y_train, local, generator=generator(seed, t, i, CLIENT_STREAM)
    )
    return model_params(model), stats


def gossip_row(schedule: Schedule, t: int, i: int) -> dict[int, float]:
    """Node ``i``'s nonzero mixing weights in round ``t`` (itself included)."""
    w = schedule.matrix(t)[i]
    return {j: float(w[j]) for j in range(schedule.n) if w[j] > 0 or j == i}


Evaluator = Callable[[Params], EvalResult]
Callback = Callable[[RoundMetrics], None]


def run_dpsgd(
    spec: DecentralSpec,
    model: nn.Module,
    init: Params,
    nodes: Sequence[ClientData],
    *,
    evaluator: Evaluator | None = None,
    callback: Callback | None = None,
) -> DecentralResult:
    """Run ``spec.rounds`` rounds of D-PSGD on ``len(nodes)`` simulated nodes.

    Args:
        spec: topology, weights, rounds, local training, seed.
        model: a resident model (its parameters are overwritten).
        init: every node's starting parameters.
        nodes: each node's local data.
        evaluator: scores the averaged model ``x̄`` on held-out data.
        callback: called with each round's metrics.
    """
    n = len(nodes)
    schedule = spec.schedule(n)
    xs: list[Params] = [dict(init) for _ in range(n)]
    model_bytes = nbytes(init)
    history: list[RoundMetrics] = []
    for t in range(spec.rounds):
        t0 = time.perf_counter()
        trained, losses = [], []
        for i in range(n):
            x, stats = local_round(model, xs[i], nodes[i], spec.local, spec.seed, t, i)
            trained.append(x)
            losses.append(stats.mean_loss)
        half = dict(enumerate(trained))
        xs = [mix(gossip_row(schedule, t, i), half) for i in range(n)]
        sent = [spec.bytes_sent(schedule, t, i, model_bytes) for i in range(n)]
        rec = RoundMetrics(
            round=t,
            train_loss=sum(losses) / n,
            consensus_distance=consensus_distance(xs),
            bytes_per_node=sum(sent) / n,
        )
        if evaluator is not None and spec.due(t):
            ev = evaluator(average(xs))
            rec = dataclasses.replace(rec, test_loss=ev.loss, test_accuracy=ev.accuracy)
        rec = dataclasses.replace(rec, wall_seconds=time.perf_counter() - t0)
        history.append(rec)
        if callback is not None:
            callback(rec)
    return DecentralResult(nodes=tuple(xs), history=tuple(history), model_bytes=model_bytes)
