"""Coordinate-wise trimmed mean: Yin et al. 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates".

For each coordinate, the ``m`` received values are sorted, the ``k = ⌊β m⌋`` largest and ``k``
smallest are removed and the remaining ``m - 2k`` are averaged (unweighted, as in the paper:
client weights are checked but do not enter the rule). With ``β = 0`` it is the plain
(unweighted) mean.

A buffering rule: the accumulator holds every update (``m`` × one model's memory), stacked along a
leading axis with room doubled as it fills. ``merge`` concatenates, and the cross-rank
``reduce`` gathers every rank's buffer to the root (:func:`fedkit.aggregate.gather_merge`), so it
runs under every executor and behind the coordinator. Sorting makes the result independent of
arrival order: bit-identical under any executor.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from fedkit.aggregate import AggContext, Collective, EmptyAggregateError, gather_merge
from fedkit.params import tree_map


@dataclasses.dataclass
class StackAcc:
    """Buffered updates: ``updates`` leaves are ``[capacity, ...]``, the first ``count`` used."""

    updates: Any
    count: Tensor


def _grow(t: Tensor, need: int) -> Tensor:
    if t.shape[0] >= need:
        return t
    cap = max(need, 2 * t.shape[0], 4)
    out = torch.zeros((cap, *t.shape[1:]), dtype=t.dtype)
    out[: t.shape[0]] = t
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrimmedMean:
    """Coordinate-wise β-trimmed mean (see module docstring).

    Attributes:
        beta: fraction trimmed at each end, in [0, 0.5).
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not (0.0 <= self.beta < 0.5 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be in [0, 0.5), got {self.beta!r}")

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        """Identity: trimming happens on the server."""
        return update

    def zero(self, like: Any) -> StackAcc:
        """An empty buffer for updates shaped like ``like``."""
        return StackAcc(
            updates=tree_map(lambda t: torch.zeros((0, *t.shape), dtype=t.dtype), like),
            count=torch.zeros((), dtype=torch.int64),
        )

    def add(self, acc: StackAcc, update: Any, weight: float) -> StackAcc:
        """Append ``update`` to the buffer (its weight is checked, not used)."""
        if not weight >= 0.0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        i = int(acc.count)

        def put(buf: Tensor, u: Tensor) -> Tensor:
            buf = _grow(buf, i + 1)
            buf[i] = u
            return buf

        return StackAcc(updates=tree_map(put, acc.updates, update), count=acc.count + 1)

    def merge(self, a: StackAcc, b: StackAcc) -> StackAcc:
        """Both buffers, ``a``'s first."""
        na, nb = int(a.count), int(b.count)
        return StackAcc(
            updates=tree_map(lambda x, y: torch.cat([x[:na], y[:nb]]), a.updates, b.updates),
            count=a.count + b.count,
        )

    def reduce(self, acc: StackAcc, comm: Collective) -> StackAcc:
        """Every rank's buffer, gathered to the root."""
        return gather_merge(self, acc, comm)

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """Per coordinate: sort, drop ``⌊β m⌋`` at each end, average the rest (in float64)."""
        m = int(acc.count)
        if m == 0:
            raise EmptyAggregateError("no client update to trim")
        k = math.floor(self.beta * m)

        def trim(buf: Tensor) -> Tensor:
            kept = buf[:m].double().sort(dim=0).values[k : m - k]
            return kept.mean(dim=0).to(buf.dtype)

        return tree_map(trim, acc.updates)
