"""Poisson client sampling: the cohort model of DP-FedAvg's accounting (McMahan et al. 2018).

Every client takes part in a round independently with probability ``q = k/N``, so the cohort's
size varies (its mean is ``k``; it may be empty, and the round then commits nothing). Under this
sampling the privacy accountant uses ``PoissonSampledDpEvent`` with add/remove-one neighbours
(:mod:`fedkit.privacy.accounting`), and the noise stage divides by the expected ``k``, never by
the realised size. Draws come from the server's stream ``(seed, round, "sample-poisson")``, so
the cohort of a round is the same under every executor and after a resume.
"""

from __future__ import annotations

import dataclasses

import torch

from fedkit.algorithm import RoundInfo
from fedkit.rng import SERVER, generator

__all__ = ["PoissonSampler"]


@dataclasses.dataclass(frozen=True)
class PoissonSampler:
    """Each client independently with probability ``k / N`` (see the module docstring)."""

    def sample(self, num_clients: int, k: int, info: RoundInfo) -> list[int]:
        """The ids whose uniform draw falls below ``q = k / num_clients``, sorted."""
        if not 1 <= k <= num_clients:
            raise ValueError(f"clients_per_round must be in [1, {num_clients}], got {k}")
        g = generator(info.seed, info.round, SERVER, "sample-poisson")
        u = torch.rand(num_clients, generator=g, dtype=torch.float64)
        return torch.nonzero(u < k / num_clients).flatten().tolist()
