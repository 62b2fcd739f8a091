"""The :class:`~fedkit.sampling.Population` of a simulated run: data sizes and the system
model's availability (what the experiment runner hands the run loop for its sampler)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedkit.algorithm import RoundInfo
from fedkit.local import LocalTraining
from fedkit.sampling import Population
from fedkit.sim.system import SystemModel, SystemParticipation

__all__ = ["simulated_population"]


def simulated_population(
    num_examples: Sequence[int],
    system: SystemModel | None = None,
    local: LocalTraining | None = None,
) -> Population:
    """A population of ``len(num_examples)`` clients; with a ``system`` model (and the clients'
    ``local`` settings it times), ``available`` is the model's own per-round reachability
    draw — the one the executor's participation hook makes, so both agree on who is up."""
    available: Callable[[int, RoundInfo], bool] | None = None
    if system is not None:
        if local is None:
            raise ValueError("a system model's availability needs the local-training settings")
        part = SystemParticipation(system, num_examples=num_examples, local=local)

        def available(client_id: int, info: RoundInfo) -> bool:
            return part.timing(client_id, info).reason != "unavailable"

    return Population(len(num_examples), tuple(int(n) for n in num_examples), available)
