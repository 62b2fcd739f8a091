"""Noisy-client down-weighting: Huber weights around the robust centre.

A client whose data are corrupted (noisy labels, a broken sensor) sends an update that lies far
from where the other clients agree. This rule scores each update by its distance to the
coordinate-wise median ``c`` of the round (every leaf flattened into one vector) and keeps its
weight while it is near, shrinking it in proportion to the distance when it is far — the weights
of Huber's M-estimator of location (Huber 1964, "Robust Estimation of a Location Parameter"),
one iteratively-reweighted step from the median, as in robust regression::

    d_i = ‖Δ_i − c‖₂,    s = median_i d_i,    h_i = min(1, κ s / d_i)
    result = Σ_i n_i h_i Δ_i / Σ_i n_i h_i

``n_i`` are the client weights (example counts). Updates within ``κ s`` of the centre keep their
full weight, so on clean rounds the rule is the weighted mean of the clients near the centre; an
update ``k`` times farther than ``κ s`` counts ``1/k`` of its weight. With ``iters > 1`` the centre
becomes the last result and the step repeats. ``κ`` trades efficiency on clean data (large
``κ``: the mean) for protection (small ``κ``: every update shrinks towards equal influence per
unit distance, like the geometric median's Weiszfeld step).

Tolerated bad inputs: the median and the scale ``s`` stay bounded while fewer than half the
updates are bad; a bad update's influence on the result is at most ``n_i κ s`` in norm, however
far it is sent.

A buffering rule (:class:`fedkit.robust.buffer.Buffered`): the cohort's updates are held.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from fedkit.aggregate import AggContext, EmptyAggregateError
from fedkit.robust.buffer import Buffered, StackAcc, flat_rows, row_tree, used_rows
from fedkit.robust.median import coordinate_median


def huber_weights(rows: Tensor, center: Tensor, kappa: float) -> Tensor:
    """``h_i = min(1, κ s / d_i)`` for the ``[m, D]`` rows around ``center`` (module docstring);
    ``h_i = 1`` when ``d_i = 0``."""
    d = torch.linalg.vector_norm(rows - center, dim=1)
    s = coordinate_median(d.unsqueeze(1)).squeeze(0)
    return torch.where(d > kappa * s, kappa * s / d.clamp_min(1e-300), torch.ones_like(d))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HuberReweight(Buffered):
    """Huber down-weighting around the coordinate-wise median (see module docstring).

    Attributes:
        kappa: ``κ > 0``, the radius in units of the median distance within which an update keeps
            its full weight.
        iters: IRLS steps (>= 1); the first is centred on the median.
    """

    kappa: float = 1.5
    iters: int = 1

    def __post_init__(self) -> None:
        if not (self.kappa > 0 and math.isfinite(self.kappa)):
            raise ValueError(f"kappa must be a finite number > 0, got {self.kappa!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"iters must be an integer >= 1, got {self.iters!r}")

    def scores(self, acc: StackAcc) -> Tensor:
        """The last step's ``h_i`` of each buffered update (what the rule down-weighted)."""
        return self._solve(acc)[1]

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """The Huber-weighted mean, in float64, cast back to each leaf's dtype."""
        return row_tree(acc, self._solve(acc)[0])

    def _solve(self, acc: StackAcc) -> tuple[Tensor, Tensor]:
        m = used_rows(acc, "reweight")
        x = flat_rows(acc)
        n = acc.weights[:m]
        center = coordinate_median(x)
        h = torch.ones(m, dtype=torch.float64)
        for _ in range(self.iters):
            h = huber_weights(x, center, self.kappa)
            w = n * h
            total = float(w.sum())
            if not total > 0:
                raise EmptyAggregateError("every update has weight 0: nothing to average")
            center = (w.unsqueeze(1) * x).sum(dim=0) / total
        return center, h
