"""Asynchronous gossip SGD: nodes wake on their own clocks, no global round.

Randomised pairwise gossip (Boyd, Ghosh, Prabhakar & Shah 2006, "Randomized Gossip
Algorithms") with local SGD between exchanges, the asynchronous setting of Lian et al. 2018
("Asynchronous Decentralized Parallel Stochastic Gradient Descent", AD-PSGD). Every node has a
rate-1 Poisson clock; the superposition of ``n`` such clocks is a sequence of *ticks*, each
waking one node chosen uniformly. When node ``i`` wakes:

1. it runs its local steps from its current model (its ``k``-th wake uses the batch stream of
   ``(seed, k, i)``);
2. it picks a neighbour ``j`` uniformly and both replace their model by ``(x_i + x_j) / 2``
   (``W = I − (e_i − e_j)(e_i − e_j)ᵀ / 2``, doubly stochastic: the average is kept).

Nobody waits for anybody: between two of its wakes a node's model may have been averaged by
others. ``n`` ticks make one *round* (each node wakes once on average), the unit of the metrics
(consensus distance, bytes: each wake moves one model each way, so 2 models per node per round
on average). Simulator only; the wake order and neighbours come from ``(seed, tick)``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch
from torch import nn

from fedkit.algorithm import ClientData
from fedkit.decentral.dpsgd import (
    Callback,
    DecentralResult,
    DecentralSpec,
    Evaluator,
    RoundMetrics,
    average,
    consensus_distance,
    local_round,
)
from fedkit.params import Params, nbytes
from fedkit.rng import SERVER, generator

__all__ = ["pairwise_average", "run_async_gossip"]


def pairwise_average(xs: list[Params], i: int, j: int) -> None:
    """``x_i, x_j ← (x_i + x_j) / 2`` in place (float64 sum, cast back)."""
    mean = {k: ((xs[i][k].double() + xs[j][k].double()) / 2).to(v.dtype) for k, v in xs[i].items()}
    xs[i] = mean
    xs[j] = {k: v.clone() for k, v in mean.items()}


def run_async_gossip(
    spec: DecentralSpec,
    model: nn.Module,
    init: Params,
    nodes: Sequence[ClientData],
    *,
    evaluator: Evaluator | None = None,
    callback: Callback | None = None,
) -> DecentralResult:
    """``spec.rounds × n`` ticks of asynchronous pairwise gossip SGD (see module docstring).

    Raises:
        ValueError: a topology without a fixed graph (``one_peer_exp``, ``allreduce``), or a
            node without neighbours.
    """
    n = len(nodes)
    schedule = spec.schedule(n)
    if schedule.fixed is None or spec.topology == "allreduce":
        raise ValueError("asynchronous gossip needs a fixed graph topology")
    neighbours = [schedule.peers(0, i)[1] for i in range(n)]
    if n > 1 and any(not nb for nb in neighbours):
        raise ValueError("asynchronous gossip: every node needs a neighbour")
    xs: list[Params] = [dict(init) for _ in range(n)]
    wakes = [0] * n
    model_bytes = nbytes(init)
    history: list[RoundMetrics] = []
    for t in range(spec.rounds):
        t0 = time.perf_counter()
        losses: list[float] = []
        for tick in range(t * n, (t + 1) * n):
            g = generator(spec.seed, tick, SERVER, "async-gossip")
            i = int(torch.randint(n, (1,), generator=g))
            xs[i], stats = local_round(model, xs[i], nodes[i], spec.local, spec.seed, wakes[i], i)
            wakes[i] += 1
            losses.append(stats.mean_loss)
            if n > 1:
                nb = neighbours[i]
                pairwise_average(xs, i, nb[int(torch.randint(len(nb), (1,), generator=g))])
        rec = RoundMetrics(
            round=t,
            train_loss=sum(losses) / len(losses),
            consensus_distance=consensus_distance(xs),
            bytes_per_node=2.0 * model_bytes if n > 1 else 0.0,
        )
        if evaluator is not None and spec.due(t):
            ev = evaluator(average(xs))
            rec = dataclasses.replace(rec, test_loss=ev.loss, test_accuracy=ev.accuracy)
        rec = dataclasses.replace(rec, wall_seconds=time.perf_counter() - t0)
        history.append(rec)
        if callback is not None:
            callback(rec)
    return DecentralResult(nodes=tuple(xs), history=tuple(history), model_bytes=model_bytes)
