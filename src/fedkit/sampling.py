"""Client selection: which clients take part in a round.

Samplers draw from the server's stream of :mod:`fedkit.rng`, so the cohort of round ``t``
depends only on ``(seed, t)`` — the same under every executor, and after a resume.
"""

from __future__ import annotations

from typing import Protocol

import torch

from fedkit.algorithm import RoundInfo
from fedkit.rng import SERVER, generator


class ClientSampler(Protocol):
    """Chooses a round's cohort."""

    def sample(self, num_clients: int, k: int, info: RoundInfo) -> list[int]:
        """``k`` distinct client ids from ``range(num_clients)``."""
        ...


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
