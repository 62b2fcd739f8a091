"""Availability-aware selection: uniform among the clients reachable this round.

Under a system model (:mod:`fedkit.sim.system`) a selected client is reachable in round ``t``
only with the model's availability; a uniform sampler that ignores it loses the unreachable
share of its cohort (they are dropped). This sampler asks the system model first — the
:class:`~fedkit.sampling.Population`'s ``available(client_id, info)``, the very draw the
executor's participation hook makes — and picks ``k`` clients uniformly among the reachable
ones (all of them when fewer than ``k`` are). A real deployment gets the same from worker
check-ins; here the draw is the system model's, so the executor agrees exactly on who is
reachable. Every draw comes from the server stream ``(seed, round, "sample-available")``.

Dropout, stragglers and deadlines still act after selection: only reachability is known in
advance.
"""

from __future__ import annotations

import dataclasses

import torch

from fedkit.algorithm import RoundInfo
from fedkit.rng import SERVER, generator
from fedkit.sampling import Population, PopulationError, check_cohort_size

__all__ = ["AvailabilityAware"]


@dataclasses.dataclass(frozen=True)
class AvailabilityAware:
    """``k`` clients uniformly among those available this round (see the module docstring)."""

    def select(self, population: Population, k: int, info: RoundInfo) -> list[int]:
        """A uniform ``min(k, #available)``-subset of the available clients, sorted."""
        check_cohort_size(k, population.num_clients)
        if population.available is None:
            raise PopulationError(
                "the availability sampler needs the system model's availability: add a "
                "[system] section (or pass Population(available=...))"
            )
        up = [c for c in range(population.num_clients) if population.available(c, info)]
        g = generator(info.seed, info.round, SERVER, "sample-available")
        keep = torch.randperm(len(up), generator=g)[:k].tolist()
        return sorted(up[i] for i in keep)

    def sample(self, num_clients: int, k: int, info: RoundInfo) -> list[int]:
        """Refused: this sampler needs the system model (a run's population)."""
        return self.select(Population(num_clients), k, info)
