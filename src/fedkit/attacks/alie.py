""" "A little is enough" (Baruch et al. 2019, "A Little Is Enough: Circumventing Defenses For
Distributed Learning").

With ``n`` clients in a round of which ``m`` are attackers, the attackers need
``s = ⌊n/2 + 1⌋ - m`` honest clients to side with them; the largest shift that keeps that many
honest updates farther from the mean than the attackers' is ``z = Φ⁻¹((n - s) / n)`` standard
deviations. Each attacker sends, coordinate by coordinate, ``μ_j - z · σ_j``: a small, coherent
shift inside the honest spread, which moves the median, trimmed mean and Krum's choice.

The paper's attackers estimate ``μ`` and ``σ`` from their own honest gradients. Here each attacker
takes ``μ`` as its own honest update and ``σ`` as the per-coordinate standard deviation (``K - 1``
in the denominator) of ``K`` honest updates trained on ``K`` disjoint random shards of its own
data — an estimate one attacker can make without talking to others. ``z`` is computed from the
cohort size and the attackers' expected share of it unless given.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Any

import torch

from fedkit.algorithm import ClientData
from fedkit.attacks.base import Attack, AttackContext
from fedkit.params import tree_map


def z_max(n: int, m: int) -> float:
    """Baruch et al.'s ``z = Φ⁻¹((n - s) / n)`` with ``s = ⌊n/2 + 1⌋ - m`` (probability kept
    inside (0, 1): ``m`` attackers who are a majority on their own get ``Φ⁻¹(1 - 1/(2n))``)."""
    if n < 1 or m < 0:
        raise ValueError(f"need n >= 1 and m >= 0, got n={n}, m={m}")
    s = math.floor(n / 2 + 1) - m
    p = min(max((n - s) / n, 1.0 / (2 * n)), 1.0 - 1.0 / (2 * n))
    return NormalDist().inv_cdf(p)


def shards(data: ClientData, k: int, stream: torch.Generator) -> list[ClientData]:
    """``k`` disjoint random shards of the training data, sizes differing by at most one."""
    perm = torch.randperm(data.num_examples, generator=stream)
    return [ClientData(data.x_train[idx], data.y_train[idx]) for idx in perm.chunk(k)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ALittleIsEnough(Attack):
    """Send ``μ - z · σ`` (module docstring).

    Attributes:
        z: the shift in standard deviations; ``None``: :func:`z_max` of the cohort size and the
            attackers expected in it.
        shards: ``K >= 2``, the number of shards the spread is estimated from.
    """

    z: float | None = None
    shards: int = 4

    def __post_init__(self) -> None:
        if self.z is not None and not math.isfinite(self.z):
            raise ValueError(f"z must be finite, got {self.z!r}")
        if self.shards < 2:
            raise ValueError(f"shards must be >= 2, got {self.shards!r}")

    def forge(self, actx: AttackContext) -> Any:
        """``μ - z σ`` from the honest update and ``K`` shard updates."""
        k = min(self.shards, actx.data.num_examples)
        if k < 2:  # too little data for a spread: the attacker sends its honest update
            return actx.honest
        parts = [actx.train(d) for d in shards(actx.data, k, actx.stream)]
        z = self.z
        if z is None:
            z = z_max(actx.client.info.cohort_size, actx.expected_attackers)
        sigma = tree_map(lambda *ts: torch.stack(ts).double().std(dim=0), parts[0], *parts[1:])

        def shift(mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
            if not mu.is_floating_point():
                return mu
            return (mu.double() - z * sd).to(mu.dtype)

        return tree_map(shift, actx.honest, sigma)
