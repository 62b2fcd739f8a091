"""Bulyan: El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in
Byzantium".

With ``f`` of the ``n`` updates assumed Byzantine and ``n >= 4f + 3``:

1. Selection: ``θ = n − 2f`` updates are chosen by Krum applied recursively — Krum (the scores
   of :func:`fedkit.robust.krum.krum_scores`, over the whole update) picks one update from the
   remaining set ``R``, which is removed from ``R`` and added to the selection, until ``θ`` are
   selected. On ``R`` Krum sums the ``|R| − f − 2`` nearest distances; the paper does not say
   what to do in the last steps, where ``|R| − f − 2 < 1`` (``f <= 1``), and here the score is
   then the single nearest distance (``max(|R| − f − 2, 1)`` neighbours). Equal scores go to the
   earlier arrival (client-id order under every executor).
2. Aggregation: per coordinate, the ``β = θ − 2f`` selected values closest to the selected
   values' median (:func:`fedkit.robust.median.coordinate_median`; for even ``θ`` the mean of the
   two middle values) are averaged (unweighted, in float64; equal distances go to the earlier
   arrival).

Robustness: at most ``f`` Byzantine updates among the selection, and fewer than ``θ/2``, so each
coordinate's median lies within the honest values' range ``[lo, hi]``; a Byzantine value is among
the ``β`` closest only if some honest value is at least as far from the median, so each
coordinate of the result lies within ``[lo − (hi − lo), hi + (hi − lo)]`` however far the
Byzantine updates are moved. ``result`` refuses ``n < 4f + 3`` with
:class:`~fedkit.robust.buffer.TooFewUpdatesError`.

A buffering rule (:class:`fedkit.robust.buffer.Buffered`): the accumulator holds every update
(``n`` × one model's memory); scoring adds an ``n × D`` float64 copy and the ``n × n`` distances.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from fedkit.aggregate import AggContext
from fedkit.params import tree_map
from fedkit.robust.buffer import Buffered, StackAcc, TooFewUpdatesError, flat_rows, used_rows
from fedkit.robust.krum import krum_scores, lowest, pairwise_sq_distances
from fedkit.robust.median import coordinate_median


def recursive_krum(d2: Tensor, f: int, count: int) -> list[int]:
    """The indices chosen by ``count`` rounds of Krum on the points whose squared distances are
    ``d2``, each chosen point removed before the next round (in the order chosen)."""
    remaining = list(range(d2.shape[0]))
    chosen: list[int] = []
    for _ in range(count):
        index = torch.tensor(remaining, dtype=torch.int64)
        sub = d2[index][:, index]
        best = remaining[lowest(krum_scores(sub, max(len(remaining) - f - 2, 1)), 1)[0]]
        chosen.append(best)
        remaining.remove(best)
    return chosen


def closest_to_median_mean(x: Tensor, beta: int) -> Tensor:
    """Per coordinate (dim 0 of ``x``), the float64 mean of the ``beta`` values closest to the
    median, equal distances in row order."""
    x = x.double()
    order = (x - coordinate_median(x)).abs().argsort(dim=0, stable=True)[:beta]
    return x.gather(0, order).mean(dim=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Bulyan(Buffered):
    """Bulyan over Krum (see module docstring).

    Attributes:
        f: the number of Byzantine updates assumed (>= 0); a round needs ``n >= 4f + 3`` updates.
    """

    f: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise ValueError(f"f must be an int >= 0, got {self.f!r}")

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """Select ``n − 2f`` updates by recursive Krum, then average per coordinate the
        ``n − 4f`` selected values closest to their median."""
        n = used_rows(acc, "select")
        if n < 4 * self.f + 3:
            raise TooFewUpdatesError(
                f"Bulyan with f={self.f} needs at least 4f + 3 = {4 * self.f + 3} updates, got {n}"
            )
        theta = n - 2 * self.f
        chosen = recursive_krum(pairwise_sq_distances(flat_rows(acc)), self.f, theta)
        index = torch.tensor(sorted(chosen), dtype=torch.int64)
        beta = theta - 2 * self.f
        return tree_map(
            lambda buf: closest_to_median_mean(buf[index], beta).to(buf.dtype), acc.updates
        )
