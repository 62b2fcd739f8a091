"""The buffer that buffering robust rules share: every update of the round, stacked.

A robust rule whose ``result`` needs all the cohort's updates at once (trimmed mean, median,
Krum, Bulyan, geometric median) subclasses :class:`Buffered` and defines only its settings and
``result``. Memory is the cohort's updates (``m`` × one model) plus ``m`` weights.

``add`` appends one update (and its float64 weight) to buffers whose room doubles as they fill;
``merge`` concatenates two buffers, ``a``'s first; the cross-rank ``reduce`` gathers every rank's
buffer to the root in rank order (:func:`fedkit.aggregate.gather_merge`). Executors and the
coordinator add updates in client-id order, so row ``i`` of the buffer is the ``i``-th client of
the cohort by id under every executor — rules that break ties by row are deterministic.

Everything happens on the server: ``prepare`` (which runs on the client, which an attacker
controls) is the identity.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from fedkit.aggregate import AggContext, Collective, EmptyAggregateError, gather_merge
from fedkit.params import tree_leaves, tree_map, tree_unflatten


@dataclasses.dataclass
class StackAcc:
    """Buffered updates: ``updates`` leaves are ``[capacity, ...]`` and ``weights`` is
    ``[capacity]`` float64; the first ``count`` rows are used."""

    updates: Any
    weights: Tensor
    count: Tensor


class TooFewUpdatesError(EmptyAggregateError):
    """Raised by ``result`` when a rule's precondition on the number of updates fails (Krum needs
    ``n > 2f + 2``, Bulyan ``n >= 4f + 3``)."""


def _grow(t: Tensor, need: int) -> Tensor:
    """``t`` with room for at least ``need`` rows (doubling; the used rows copied)."""
    if t.shape[0] >= need:
        return t
    cap = max(need, 2 * t.shape[0], 4)
    out = torch.zeros((cap, *t.shape[1:]), dtype=t.dtype)
    out[: t.shape[0]] = t
    return out


def used_rows(acc: StackAcc, what: str) -> int:
    """The number of buffered updates; raises :class:`EmptyAggregateError` ("no client update to
    ``what``") when there is none."""
    m = int(acc.count)
    if m == 0:
        raise EmptyAggregateError(f"no client update to {what}")
    return m


def flat_rows(acc: StackAcc) -> Tensor:
    """The buffered updates as an ``[m, D]`` float64 matrix: row ``i`` is update ``i`` with every
    leaf flattened and concatenated (leaves in :func:`fedkit.params.tree_leaves` order)."""
    m = int(acc.count)
    parts = [buf[:m].reshape(m, -1).double() for _, buf in tree_leaves(acc.updates)]
    if not parts:
        return torch.zeros((m, 0), dtype=torch.float64)
    return torch.cat(parts, dim=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Buffered:
    """Base of the buffering rules: ``prepare`` is the identity and ``zero/add/merge/reduce``
    keep every update with its weight (see module docstring). Subclasses define ``result``."""

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        """Identity: robust rules run on the server."""
        return update

    def zero(self, like: Any) -> StackAcc:
        """An empty buffer for updates shaped like ``like``."""
        return StackAcc(
            updates=tree_map(lambda t: torch.zeros((0, *t.shape), dtype=t.dtype), like),
            weights=torch.zeros((0,), dtype=torch.float64),
            count=torch.zeros((), dtype=torch.int64),
        )

    def add(self, acc: StackAcc, update: Any, weight: float) -> StackAcc:
        """Append ``update`` and its weight (which must be >= 0) to the buffer."""
        if not weight >= 0.0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        i = int(acc.count)

        def put(buf: Tensor, u: Tensor) -> Tensor:
            buf = _grow(buf, i + 1)
            buf[i] = u
            return buf

        weights = _grow(acc.weights, i + 1)
        weights[i] = weight
        return StackAcc(
            updates=tree_map(put, acc.updates, update), weights=weights, count=acc.count + 1
        )

    def merge(self, a: StackAcc, b: StackAcc) -> StackAcc:
        """Both buffers, ``a``'s first."""
        na, nb = int(a.count), int(b.count)
        return StackAcc(
            updates=tree_map(lambda x, y: torch.cat([x[:na], y[:nb]]), a.updates, b.updates),
            weights=torch.cat([a.weights[:na], b.weights[:nb]]),
            count=a.count + b.count,
        )

    def reduce(self, acc: StackAcc, comm: Collective) -> StackAcc:
        """Every rank's buffer, gathered to the root."""
        return gather_merge(self, acc, comm)

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """The rule itself: subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} defines no result")


def row_tree(acc: StackAcc, row: Tensor) -> Any:
    """One ``[D]`` row laid out as :func:`flat_rows` lays out an update,
    back into the updates' tree, each leaf in its own shape and dtype."""
    flat: dict[str, Tensor] = {}
    offset = 0
    for path, buf in tree_leaves(acc.updates):
        size = math.prod(buf.shape[1:])
        flat[path] = row[offset : offset + size].reshape(buf.shape[1:]).to(buf.dtype)
        offset += size
    return tree_unflatten(tree_map(lambda buf: buf[0], acc.updates), flat)
