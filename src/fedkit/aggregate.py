"""Streaming aggregation of client updates.

An :class:`Aggregator` is a monoid over *accumulators*: ``zero`` is the identity, ``add`` folds
one client's update in, ``merge`` combines two partial accumulators and ``result`` finishes.
Memory is one model's worth whatever the cohort size, and ``merge`` is what lets the same round
run on one process, on N ranks (an all-reduce of partial sums), behind a coordinator or under
secure aggregation. ``prepare`` runs on the client before its update leaves (clipping,
quantisation, masking live there in the wrappers that need them).

:class:`WeightedMean` keeps its sums in float64, so the mean does not depend (beyond float64
rounding) on the order in which clients arrive; the result is cast back to each leaf's dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor

from fedkit.params import tree_map

U = TypeVar("U")
A = TypeVar("A")
R = TypeVar("R", covariant=True)


class Aggregator(Protocol[U, A, R]):
    """The streaming aggregation contract (see module docstring)."""

    def prepare(self, update: U, weight: float) -> U:
        """Client-side transformation applied before the update leaves the client."""
        ...

    def zero(self, like: U) -> A:
        """The identity accumulator for updates shaped like ``like``."""
        ...

    def add(self, acc: A, update: U, weight: float) -> A:
        """Fold one update with its weight into ``acc`` (may reuse ``acc``'s storage)."""
        ...

    def merge(self, a: A, b: A) -> A:
        """Combine two partial accumulators (associative and commutative)."""
        ...

    def result(self, acc: A) -> R:
        """Finish: the aggregate the server half consumes."""
        ...


@dataclasses.dataclass
class MeanAcc(Generic[U]):
    """Accumulator of :class:`WeightedMean`: float64 weighted sums, total weight, count.

    Every field is a tensor (or a tree of tensors), so partial accumulators on several ranks are
    combined by a plain all-reduce SUM.
    """

    total: U
    weight: Tensor
    count: Tensor


class EmptyAggregateError(RuntimeError):
    """Raised when a mean is requested over no updates (or zero total weight)."""


class WeightedMean(Generic[U]):
    """Weighted mean of updates (any tree of tensors): ``sum(w_i * u_i) / sum(w_i)``."""

    def prepare(self, update: U, weight: float) -> U:
        """Identity: the plain mean needs no client-side step."""
        return update

    def zero(self, like: U) -> MeanAcc[U]:
        """Zero sums in float64, shaped like ``like``."""
        return MeanAcc(
            total=tree_map(lambda t: torch.zeros_like(t, dtype=torch.float64), like),
            weight=torch.zeros((), dtype=torch.float64),
            count=torch.zeros((), dtype=torch.int64),
        )

    def add(self, acc: MeanAcc[U], update: U, weight: float) -> MeanAcc[U]:
        """Add ``weight * update`` in place into the float64 sums."""
        if not weight >= 0.0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        # in-place add promotes each element to float64 without materialising a float64 copy
        tree_map(lambda s, u: s.add_(u, alpha=weight), acc.total, update)
        acc.weight += weight
        acc.count += 1
        return acc

    def merge(self, a: MeanAcc[U], b: MeanAcc[U]) -> MeanAcc[U]:
        """Sum two partial accumulators (a new accumulator; inputs untouched)."""
        return MeanAcc(
            total=tree_map(torch.add, a.total, b.total),
            weight=a.weight + b.weight,
            count=a.count + b.count,
        )

    def result(self, acc: MeanAcc[U]) -> U:
        """The weighted mean; raises :class:`EmptyAggregateError` when no weight was added."""
        if float(acc.weight) <= 0.0:
            raise EmptyAggregateError(
                f"no client update to average ({int(acc.count)} updates, total weight "
                f"{float(acc.weight)})"
            )
        w = acc.weight
        return tree_map(lambda s: s / w, acc.total)

    def cast_like(self, mean: U, like: U) -> U:
        """Cast each leaf of ``mean`` to the dtype of the matching leaf of ``like``."""
        return tree_map(lambda m, t: m.to(t.dtype), mean, like)


def aggregate(agg: Aggregator[Any, A, Any], updates: list[tuple[Any, float]]) -> A:
    """Fold ``(update, weight)`` pairs in order into a fresh accumulator (for tests)."""
    if not updates:
        raise EmptyAggregateError("no updates to aggregate")
    acc = agg.zero(updates[0][0])
    for u, w in updates:
        acc = agg.add(acc, u, w)
    return acc
