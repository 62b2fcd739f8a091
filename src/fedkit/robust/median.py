"""Coordinate-wise median: Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates".

For each coordinate, the aggregate is the median of the ``m`` received values. For odd ``m`` it
is the middle value of the sorted values; for even ``m`` it is the mean of the two middle values
(``(v_(m/2) + v_(m/2+1)) / 2``, computed in float64). Unweighted, as in the paper: client weights
are checked but do not enter the rule.

Robustness: with fewer than ``m/2`` arbitrary (Byzantine) inputs, every coordinate of the result
lies between the smallest and largest honest value of that coordinate, however far the bad inputs
are moved.

A buffering rule (:class:`fedkit.robust.buffer.Buffered`): the accumulator holds every update
(``m`` × one model's memory); the cross-rank ``reduce`` gathers every rank's buffer to the root,
so it runs under every executor and behind the coordinator. Sorting makes the result independent
of arrival order: bit-identical under any executor.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from fedkit.aggregate import AggContext
from fedkit.params import tree_map
from fedkit.robust.buffer import Buffered, StackAcc, used_rows


def coordinate_median(x: Tensor) -> Tensor:
    """The median along dim 0 of ``x`` (``m >= 1`` rows) in float64; for even ``m`` the mean of
    the two middle values."""
    m = x.shape[0]
    s = x.double().sort(dim=0).values
    return (s[(m - 1) // 2] + s[m // 2]) / 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class CoordinateMedian(Buffered):
    """Coordinate-wise median of the updates (see module docstring); it has no settings."""

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """Per coordinate, the median of the ``m`` values, cast back to the leaf's dtype."""
        m = used_rows(acc, "take the median of")
        return tree_map(lambda buf: coordinate_median(buf[:m]).to(buf.dtype), acc.updates)
