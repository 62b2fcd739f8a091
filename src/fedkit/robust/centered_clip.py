"""Centered clipping: Karimireddy, He, Jaggi 2021, "Learning from History for Byzantine Robust
Optimization".

Around a center ``v``, each update's offset is clipped to L2 norm ``τ`` (every leaf flattened
together into one vector) and the center moves by their plain average, ``L`` times::

    v ← v + (1/n) Σ_i (Δ_i − v) · min(1, τ / ‖Δ_i − v‖₂)

Unweighted, as in the paper (client weights are checked but do not enter the rule). With ``τ``
above every distance one step gives the plain mean.

The center (a deviation from the paper): the paper starts from the previous round's aggregate
(the server momentum) and takes ``L = 1`` step. An aggregator here holds no state across rounds,
so the steps start from the coordinate-wise median of this round's updates
(:func:`fedkit.robust.median.coordinate_median`) and take ``L = 3`` by default.

Tolerated bad inputs: fewer than half of them. The median lies within the honest updates' range
in every coordinate when fewer than half are bad, and each step moves ``v`` by at most ``τ`` (an
average of vectors of norm ``≤ τ``), of which the bad ones contribute at most ``τ · (bad / n)``.
So however far the bad updates are, the result is within ``L τ`` of a point inside the honest
range.

A buffering rule (:class:`fedkit.robust.buffer.Buffered`): the accumulator holds the cohort's
updates, and ``result`` works on one ``[m, D]`` float64 matrix of them. The rows are in client-id
order under every executor, so the result is the same under each.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from fedkit.aggregate import AggContext
from fedkit.robust.buffer import Buffered, StackAcc, flat_rows, row_tree, used_rows
from fedkit.robust.median import coordinate_median


@dataclasses.dataclass(frozen=True, kw_only=True)
class CenteredClip(Buffered):
    """Centered clipping from the coordinate-wise median (see module docstring).

    Attributes:
        tau: the clipping radius ``τ`` (> 0) around the center.
        iters: the number ``L`` of clipping steps (>= 1).
    """

    tau: float = 1.0
    iters: int = 3

    def __post_init__(self) -> None:
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a finite number > 0, got {self.tau!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"iters must be an integer >= 1, got {self.iters!r}")

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """``L`` centered-clipping steps from the coordinate-wise median, in float64."""
        m = used_rows(acc, "clip around a center")
        rows = flat_rows(acc)
        v = coordinate_median(rows)
        for _ in range(self.iters):
            offsets = rows - v
            # min(1, τ/‖·‖): a zero offset gives τ/0 = inf, clamped to 1
            scale = (self.tau / torch.linalg.vector_norm(offsets, dim=1)).clamp(max=1.0)
            v = v + scale @ offsets / m
        return row_tree(acc, v)
