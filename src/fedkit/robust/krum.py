"""Krum and Multi-Krum: Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent".

With ``f`` of the ``n`` updates assumed Byzantine, each update ``V_i`` gets the score

    s(i) = Σ_{i → j} ‖V_i − V_j‖²,

the sum of squared L2 distances to its ``n − f − 2`` nearest other updates (distances over the
whole update: every leaf flattened and concatenated, in float64). Krum returns the update with
the lowest score; Multi-Krum (``m > 1``) returns the plain, unweighted average of the ``m``
lowest-scored updates, as in the paper (client weights are checked but do not enter the rule);
``m = 1`` is Krum. Equal scores are broken by arrival index (the row in the buffer, which is
client-id order under every executor and behind the coordinator), so the rule is deterministic.

Robustness: the paper shows Krum (α, f)-Byzantine resilient for ``2f + 2 < n``; ``result``
refuses ``n <= 2f + 2`` (and ``m > n``) with :class:`~fedkit.robust.buffer.TooFewUpdatesError`.
If the honest updates lie within distance ``δ`` of each other and every Byzantine one lies
farther than ``δ·√(n − f − 2)`` from every honest one, every honest score is below every
Byzantine score, so Krum (and Multi-Krum with ``m <= n − f``) selects only honest updates.

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


def pairwise_sq_distances(rows: Tensor) -> Tensor:
    """``[n, n]`` squared L2 distances between the rows of ``rows`` (``[n, D]``), in float64;
    symmetric, zero on the diagonal."""
    n = rows.shape[0]
    rows = rows.double()
    out = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = (rows[i] - rows[j]).square().sum()
    return out


def krum_scores(d2: Tensor, neighbours: int) -> Tensor:
    """Krum's score of each of the ``n`` points whose squared distances are ``d2`` (``[n, n]``):
    the sum of its ``neighbours`` smallest distances to the other points (``neighbours < n``)."""
    n = d2.shape[0]
    others = d2.masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
    return others.sort(dim=1).values[:, :neighbours].sum(dim=1)


def lowest(scores: Tensor, count: int) -> list[int]:
    """The indices of the ``count`` lowest scores, equal scores in index order."""
    return [int(i) for i in torch.sort(scores, stable=True).indices[:count]]


def mean_of_rows(acc: StackAcc, rows: list[int]) -> Any:
    """The unweighted mean of the buffered updates ``rows`` (in float64, summed in row order),
    cast back to each leaf's dtype; one row is returned exactly."""
    index = torch.tensor(sorted(rows), dtype=torch.int64)
    return tree_map(lambda buf: buf[index].double().mean(dim=0).to(buf.dtype), acc.updates)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Krum(Buffered):
    """Krum (``m = 1``) and Multi-Krum (``m > 1``) (see module docstring).

    Attributes:
        f: the number of Byzantine updates assumed (>= 0); a round needs ``n > 2f + 2`` updates.
        m: the number of lowest-scored updates averaged (>= 1; 1 is Krum); at most ``n``.
    """

    f: int = 1
    m: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise ValueError(f"f must be an int >= 0, got {self.f!r}")
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1:
            raise ValueError(f"m must be an int >= 1, got {self.m!r}")

    def result(self, acc: StackAcc, ctx: AggContext) -> Any:
        """The lowest-scored update, or the mean of the ``m`` lowest-scored ones."""
        n = used_rows(acc, "score")
        if n <= 2 * self.f + 2:
            raise TooFewUpdatesError(
                f"Krum with f={self.f} needs more than 2f + 2 = {2 * self.f + 2} updates, got {n}"
            )
        if self.m > n:
            raise TooFewUpdatesError(f"Multi-Krum averages m={self.m} updates, got only {n}")
        scores = krum_scores(pairwise_sq_distances(flat_rows(acc)), n - self.f - 2)
        return mean_of_rows(acc, lowest(scores, self.m))
