"""Client selection: which clients take part in a round.

Samplers draw from the server's stream of :mod:`fedkit.rng`, so the cohort of round ``t``
depends only on ``(seed, t)`` — the same under every executor, and after a resume.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import torch

from fedkit.algorithm import RoundInfo
from fedkit.rng import SERVER, generator


class ClientSampler(Protocol):
    """Chooses a round's cohort."""

    def sample(self, num_clients: int, k: int, info: RoundInfo) -> list[int]:
        """``k`` distinct client ids from ``range(num_clients)``."""
        ...


@dataclasses.dataclass(frozen=True)
class UniformSampler:
    """Uniformly at random without replacement (McMahan et al.'s ``C``-fraction selection)."""

    def sample(self, num_clients: int, k: int, info: RoundInfo) -> list[int]:
        """A uniform ``k``-subset, sorted."""
        if not 1 <= k <= num_clients:
            raise ValueError(f"clients_per_round must be in [1, {num_clients}], got {k}")
        if k == num_clients:
            return list(range(num_clients))
        g = generator(info.seed, info.round, SERVER, "sample")
        return sorted(torch.randperm(num_clients, generator=g)[:k].tolist())


def cohort_from_fraction(fraction: float, num_clients: int) -> int:
    """Clients per round for McMahan et al.'s fraction ``C`` of ``num_clients`` clients.

    The rule: ``C · N`` rounded to the nearest integer with halves rounded **up**, then clamped
    to ``[1, N]`` (McMahan et al. 2017, Algorithm 1: ``m = max(C · K, 1)``). So C = 0.1 of 25
    clients gives 3 (2.5 rounds up; Python's ``round`` would give 2). The product is first
    rounded to 9 decimals so float error cannot move it across a half: ``0.58 * 25`` is
    ``14.499999999999998`` in floats and gives 15, ``0.3 * 10 = 3.0000000000000004`` gives 3.

    Args:
        fraction: ``C`` in (0, 1].
        num_clients: ``N >= 1``.

    Raises:
        ValueError: ``fraction`` outside (0, 1] or ``num_clients < 1``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"client_fraction must be in (0, 1], got {fraction!r}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients!r}")
    nearest = math.floor(round(fraction * num_clients, 9) + 0.5)
    return max(1, min(num_clients, nearest))
