"""Geometric median (RFA): Pillutla, Kakade, Harchaoui 2022, "Robust Aggregation for Federated
Learning".

The aggregate is the weighted geometric median of the ``m`` updates ``w_i`` (every leaf flattened
together into one vector), with the client weights ``α_i``::

    z* = argmin_z Σ_i α_i ‖z − w_i‖₂

approximated by ``T`` steps of the smoothed Weiszfeld algorithm (the paper uses ``T = 3``)::

    β_i = α_i / max(ν, ‖z − w_i‖₂),        z ← Σ_i β_i w_i / Σ_i β_i

where ``ν > 0`` smooths the objective (``z`` landing on an input divides by ``ν``, not by 0).

Tolerated bad inputs: any set holding less than half the total weight (breakdown point 1/2). If
the honest updates (weight ``W_H``) lie within ``r`` of a point ``c`` and the bad ones hold
``W_B < W_H``, the exact median lies within ``2 r W_H / (W_H − W_B)`` of ``c`` wherever the bad
ones are.

Where the steps start (a deviation from the authors' code): by default at the weighted
coordinate-wise median, not at the weighted mean (``start="mean"`` gives the authors' start). A
fixed number of steps from the mean is not robust: a step shrinks the bad inputs' pull by a factor
of only about ``W_B / W_H``, so an attacker at distance ``R`` still moves ``z`` by about
``(W_B / W_H)^T R`` (two honest updates at 0, one at ``R``: the mean ``R/3``, then ``R/5``,
``R/9``, ``R/17``). The weighted coordinate-wise median lies in the honest updates' range in every
coordinate when ``W_B < W/2``; from there (``ν ≤ r``), in the limit of far bad inputs, every
step keeps ``‖z − c‖ ≤ max(‖z_0 − c‖, r (W_H + W_B) / (W_H − W_B))``: bounded for every ``T``.

A buffering rule (:class:`fedkit.robust.buffer.Buffered`): the accumulator holds the cohort's
updates and weights, and ``result`` works on one ``[m, D]`` float64 matrix of them. The rows are
in client-id order under every executor, so the result is the same under each.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from fedkit.aggregate import AggContext, EmptyAggregateError
from fedkit.robust.buffer import Buffered, StackAcc, flat_rows, row_tree, used_rows

STARTS = ("median", "mean")
"""Where the Weiszfeld steps start: the weighted coordinate-wise median or the weighted mean."""


def weighted_coordinate_median(rows: Tensor, weights: Tensor) -> Tensor:
    """Per column of ``rows`` (``[m, D]``), the smallest value whose cumulative weight (values in
    ascending order) reaches half the total: the lower weighted median.

    Independent of the rows' order, to the last bit: the rows are first put in ascending order of
    weight (so equal values are summed in one order, whatever order they arrived in) and the total
    is summed in that order. Otherwise, where a prefix's weight is exactly half the total, float
    rounding of sums taken in arrival order picks either side of the tie.
    """
    by_weight = weights.sort(stable=True).indices
    w = weights[by_weight]
    values, order = rows[by_weight].sort(dim=0, stable=True)
    cumulative = w[order].cumsum(dim=0)
    first = (cumulative < 0.5 * w.sum()).sum(dim=0, keepdim=True)
    return values.gather(0, first).squeeze(0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeometricMedian(Buffered):
    """Weighted geometric median by smoothed Weiszfeld steps (see module docstring).

    Attributes:
        iters: the number ``T`` of Weiszfeld steps (>= 1).
        nu: the smoothing ``ν`` (> 0): distances below it count as ``ν``.
        start: ``"median"`` (weighted coordinate-wise median; robust for every ``T``) or
            ``"mean"`` (weighted mean, as the authors' code).
    """

    iters: int = 3
    nu: float = 1e-6
    start: str = "median"

    def __post_init__(self) -> None:
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"iters must be an integer >= 1, got {self.iters!r}")
        if not (self.nu > 0 and math.isfinite(self.nu)):
            raise ValueError(f"nu must be a finite number > 0, got {self.nu!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {self.start!r}")

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """``T`` smoothed Weiszfeld steps from the start point, in float64."""
        m = used_rows(acc, "take the geometric median of")
        alpha = acc.weights[:m]
        if not float(alpha.sum()) > 0.0:
            raise EmptyAggregateError(f"geometric median of {m} updates with total weight 0")
        rows = flat_rows(acc)
        if self.start == "median":
            z = weighted_coordinate_median(rows, alpha)
        else:
            z = alpha @ rows / alpha.sum()
        for _ in range(self.iters):
            beta = alpha / torch.linalg.vector_norm(rows - z, dim=1).clamp_min(self.nu)
            z = beta @ rows / beta.sum()
        return row_tree(acc, z)
