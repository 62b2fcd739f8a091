"""Coordinate-wise trimmed mean: Yin et al. 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates".

For each coordinate, the ``m`` received values are sorted, the ``k = ⌊β m⌋`` largest and ``k``
smallest are removed and the remaining ``m - 2k`` are averaged (unweighted, as in the paper:
client weights are checked but do not enter the rule). With ``β = 0`` it is the plain
(unweighted) mean.

A buffering rule (:class:`fedkit.robust.buffer.Buffered`): the accumulator holds every update
(``m`` × one model's memory), and the cross-rank ``reduce`` gathers every rank's buffer to the
root, so it runs under every executor and behind the coordinator. Sorting makes the result
independent of arrival order: bit-identical under any executor.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from torch import Tensor

from fedkit.aggregate import AggContext
from fedkit.params import tree_map
from fedkit.robust.buffer import Buffered, StackAcc, used_rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrimmedMean(Buffered):
    """Coordinate-wise β-trimmed mean (see module docstring).

    Attributes:
        beta: fraction trimmed at each end, in [0, 0.5).
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not (0.0 <= self.beta < 0.5 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be in [0, 0.5), got {self.beta!r}")

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """Per coordinate: sort, drop ``⌊β m⌋`` at each end, average the rest (in float64)."""
        m = used_rows(acc, "trim")
        k = math.floor(self.beta * m)

        def trim(buf: Tensor) -> Tensor:
            kept = buf[:m].double().sort(dim=0).values[k : m - k]
            return kept.mean(dim=0).to(buf.dtype)

        return tree_map(trim, acc.updates)
