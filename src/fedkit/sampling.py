"""Client selection: which clients take part in a round.

Samplers draw from the server's stream of :mod:`fedkit.rng`, so the cohort of round ``t``
depends only on ``(seed, t)`` — the same under every executor, and after a resume.

A sampler that needs to know more than the population's size (data sizes, the system model's
availability, candidates' losses on the current model: :mod:`fedkit.samplers`) also has
``select(population, k, info)``; the run loop hands it a :class:`Population` through
:func:`draw_cohort`. A sampler that knows its exact inclusion probabilities publishes them with
``inclusion(population, k, info)``, which the importance-corrected aggregate reads
(:mod:`fedkit.samplers.importance`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch

from fedkit.algorithm import RoundInfo
from fedkit.params import Params
from fedkit.rng import SERVER, generator

LossFn = Callable[[Params, Sequence[int]], Mapping[int, float]]
"""``(global params, client ids) -> {client id: local loss}`` (clients without a score absent)."""


class PopulationError(ValueError):
    """A sampler asked for something about the clients that this run does not provide."""


@dataclasses.dataclass(frozen=True)
class Population:
    """What a sampler may know about the clients in a round (built by the run loop).

    Attributes:
        num_clients: ``N``.
        num_examples: each client's number of training examples (index = client id), or
            empty where the run does not know them.
        available: ``(client_id, info) -> bool``, the system model's availability of a client
            in a round (``None``: no system model; every client is reachable).
        local_loss: the clients' local losses on ``params`` (``None``: not provided).
        params: the current global parameters (set by the run loop each round).
    """

    num_clients: int
    num_examples: tuple[int, ...] = ()
    available: Callable[[int, RoundInfo], bool] | None = None
    local_loss: LossFn | None = None
    params: Params | None = None

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {self.num_clients}")
        if self.num_examples and len(self.num_examples) != self.num_clients:
            raise ValueError(
                f"num_examples has {len(self.num_examples)} entries for {self.num_clients} clients"
            )

    def sizes(self, who: str) -> tuple[int, ...]:
        """The clients' data sizes; ``who`` names the sampler that needs them (for the error)."""
        if not self.num_examples:
            raise PopulationError(f"{who} needs the clients' data sizes, which this run lacks")
        return self.num_examples

    def losses(self, clients: Sequence[int], who: str) -> Mapping[int, float]:
        """The listed clients' local losses on the current global model."""
        if self.local_loss is None or self.params is None:
            raise PopulationError(f"{who} needs the clients' local losses, which this run lacks")
        return self.local_loss(self.params, clients)


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
        check_cohort_size(k, num_clients)
        if k == num_clients:
            return list(range(num_clients))
        g = generator(info.seed, info.round, SERVER, "sample")
        return sorted(torch.randperm(num_clients, generator=g)[:k].tolist())

    def inclusion(self, population: Population, k: int, info: RoundInfo) -> tuple[float, ...]:
        """Every client's inclusion probability, ``k / N``."""
        check_cohort_size(k, population.num_clients)
        return (k / population.num_clients,) * population.num_clients


class InformedSampler(ClientSampler, Protocol):
    """A sampler that reads the :class:`Population` (data sizes, availability, losses)."""

    def select(self, population: Population, k: int, info: RoundInfo) -> list[int]:
        """The round's cohort (sorted, distinct ids), at most ``k`` of them."""
        ...


def draw_cohort(
    sampler: ClientSampler, population: Population, k: int, info: RoundInfo
) -> list[int]:
    """The round's cohort: ``sampler.select(population, …)`` where the sampler has it, else
    ``sampler.sample(population.num_clients, …)``."""
    select = getattr(sampler, "select", None)
    if callable(select):
        cohort: list[int] = select(population, k, info)
        return cohort
    return sampler.sample(population.num_clients, k, info)


def check_cohort_size(k: int, num_clients: int) -> None:
    """Refuse a cohort size outside ``[1, num_clients]``."""
    if not 1 <= k <= num_clients:
        raise ValueError(f"clients_per_round must be in [1, {num_clients}], got {k}")


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
