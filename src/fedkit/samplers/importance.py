"""The importance-corrected (Horvitz–Thompson) aggregate for unequal-probability sampling.

A sampler that picks client ``k`` with probability ``π_k`` makes the plain weighted mean of the
cohort's updates a biased estimate of the full-participation mean
``μ = Σ_k w_k Δ_k / W`` (all ``N`` clients, ``W = Σ_k w_k``; ``w_k`` is the client's weight:
its example count, or 1 under uniform weighting). The Horvitz–Thompson estimator (Horvitz &
Thompson 1952)

    μ̂ = Σ_{k ∈ S} w_k Δ_k / (π_k · W)

is unbiased: ``E[μ̂] = Σ_k P(k ∈ S) · w_k Δ_k / (π_k W) = μ`` whenever every ``π_k > 0``. With
uniform weights it is the ``1 / (N p_k)`` correction of the FL sampling literature
(``π_k = m p_k``; e.g. Chen, Horváth & Richtárik 2020, "Optimal Client Sampling"), averaged
over the ``m`` draws.

:class:`ImportanceWeighted` is that estimator as an aggregator: ``prepare`` (on the client)
scales the update by ``w_k / (π_k W)``, the server sums. The sampler publishes its exact
inclusion probabilities (``inclusion(population, k, info)``, see
:mod:`fedkit.samplers.probability`), and the run loop fills them and ``W`` in before the first
round (:func:`with_inclusion`), so an experiment file names only ``[aggregator] name =
"importance"``. The estimator is unbiased for the *sampled* cohort: clients the system model
then drops are missing from the sum (their share of the mean is lost, not reweighted).

**In deployment** the factor stays on the client (under secure aggregation the server could not
scale a masked update): the coordinator's resolved aggregator gives each client's ``π_k`` and
``W`` (:meth:`ImportanceWeighted.client_values`), they travel with the client's task, and the
worker resolves its own aggregator with them (:meth:`ImportanceWeighted.with_client_values`,
which holds only that client's probability) before the client runs; see "Values per client" in
:mod:`fedkit.aggregate`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Generic, TypeVar

import torch

from fedkit.aggregate import (
    AggContext,
    AggState,
    Collective,
    EmptyAggregateError,
    MeanAcc,
    WeightedMean,
    map_chain,
    state_value,
)
from fedkit.algorithm import RoundInfo
from fedkit.params import tree_map
from fedkit.sampling import ClientSampler, Population

__all__ = ["INCLUSION", "TOTAL_WEIGHT", "ImportanceWeighted", "InclusionError", "with_inclusion"]

INCLUSION = "importance.inclusion"
"""The name of a client's inclusion probability ``π_k`` among its per-client values."""
TOTAL_WEIGHT = "importance.total_weight"
"""The name of the population's total weight ``W`` among a client's per-client values."""

U = TypeVar("U")


class InclusionError(ValueError):
    """The importance correction cannot be made unbiased (or was not resolved for the run)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportanceWeighted(Generic[U]):
    """``Σ_{k∈S} w_k Δ_k / (π_k W)`` (see the module docstring).

    Attributes:
        inclusion: the inclusion probabilities ``π_k`` of clients ``first_client``,
            ``first_client + 1``, …: every client's (from 0) when the run loop fills them in
            from the sampler (:func:`with_inclusion`), one client's on a deployment worker
            (:meth:`with_client_values`).
        total_weight: ``W``, the sum of every client's weight (filled in likewise).
        first_client: the client id of ``inclusion[0]``.
    """

    client_value_names: ClassVar[tuple[str, ...]] = (INCLUSION, TOTAL_WEIGHT)
    weight_in_prepare: ClassVar[bool] = True
    """``prepare`` applies the weight (``add`` sums as it is): a ``secagg`` stage may hold it as
    its inner and sums the prepared updates with weight 1."""

    inclusion: tuple[float, ...] = ()
    total_weight: float = 0.0
    first_client: int = 0

    def __post_init__(self) -> None:
        w = self.total_weight
        if not (math.isfinite(w) and w >= 0):
            raise InclusionError(f"total_weight must be a finite number >= 0, got {w}")
        if any(not (0.0 < p <= 1.0) for p in self.inclusion):
            raise InclusionError(
                "every inclusion probability must be in (0, 1]: a client that can never be "
                f"selected makes the importance-corrected mean biased (got {self.inclusion[:8]})"
            )
        if self.inclusion and w == 0:
            raise InclusionError("total_weight must be > 0 beside inclusion probabilities")

    def factor(self, client_id: int, weight: float) -> float:
        """``w_k / (π_k W)`` for ``client_id``."""
        if not self.inclusion or self.total_weight <= 0:
            raise InclusionError(
                "the importance aggregator was not given the sampler's inclusion probabilities "
                "(the run loop fills them in: fedkit.samplers.importance.with_inclusion)"
            )
        i = client_id - self.first_client
        if not 0 <= i < len(self.inclusion):
            raise InclusionError(f"client {client_id} has no inclusion probability")
        return weight / (self.inclusion[i] * self.total_weight)

    def client_values(self, client_id: int) -> AggState:
        """``π_k`` and ``W`` of ``client_id`` (server side: sent with the client's task).

        Raises:
            InclusionError: the aggregator is not resolved, or holds no ``π_k`` for the client.
        """
        self.factor(client_id, 1.0)
        pi = self.inclusion[client_id - self.first_client]
        return ((INCLUSION, pi), (TOTAL_WEIGHT, self.total_weight))

    def with_client_values(self, client_id: int, values: AggState) -> ImportanceWeighted[U]:
        """This aggregator holding only ``client_id``'s ``π_k``, and ``W`` (client side).

        Raises:
            InclusionError: ``π_k`` outside ``(0, 1]`` (NaN included), ``W`` not finite and
                ``> 0``.
            AggStateError: a value is missing.
        """
        return dataclasses.replace(
            self,
            inclusion=(state_value(values, INCLUSION),),
            total_weight=state_value(values, TOTAL_WEIGHT),
            first_client=client_id,
        )

    def prepare(self, update: U, weight: float, ctx: AggContext) -> U:
        """The update scaled by ``w_k / (π_k W)`` (float64)."""
        f = self.factor(ctx.client_id, weight)
        return tree_map(lambda t: t.to(torch.float64) * f, update)

    def zero(self, like: U) -> MeanAcc[U]:
        """Zero float64 sums shaped like ``like``."""
        return WeightedMean[U]().zero(like)

    def add(self, acc: MeanAcc[U], update: U, weight: float) -> MeanAcc[U]:
        """Add the (already scaled) update; ``weight`` is only tallied."""
        tree_map(lambda s, u: s.add_(u), acc.total, update)
        acc.weight += weight
        acc.count += 1
        return acc

    def merge(self, a: MeanAcc[U], b: MeanAcc[U]) -> MeanAcc[U]:
        """Sum two partial accumulators."""
        return WeightedMean[U]().merge(a, b)

    def reduce(self, acc: MeanAcc[U], comm: Collective) -> MeanAcc[U]:
        """One all-reduce SUM."""
        return comm.all_sum(acc)

    def result(self, acc: MeanAcc[U], ctx: AggContext) -> U:
        """The Horvitz–Thompson sum (no division: the factors already hold ``1 / W``)."""
        if int(acc.count) == 0:
            raise EmptyAggregateError("no client update in the importance-weighted sum")
        return acc.total


def _resolve(agg: Any, inclusion: tuple[float, ...], total: float) -> Any:
    """``agg`` with every :class:`ImportanceWeighted` in its chain (``inner``) filled in, or
    ``agg`` itself when it holds none."""

    def fill(stage: Any) -> Any:
        if isinstance(stage, ImportanceWeighted):
            return dataclasses.replace(stage, inclusion=inclusion, total_weight=total)
        return stage

    return map_chain(agg, fill)


def with_inclusion(
    algorithm: Any, sampler: ClientSampler, population: Population, k: int, info: RoundInfo
) -> Any:
    """``algorithm`` with its :class:`ImportanceWeighted` aggregator (anywhere in the chain)
    given the sampler's inclusion probabilities for ``k`` clients and the population's total
    weight (``algorithm.weighting``: ``"uniform"`` → ``N``, else the total example count).
    An algorithm without one is returned as it is.

    Raises:
        InclusionError: the sampler publishes no inclusion probabilities, or one is 0.
    """
    probe = _resolve(algorithm.aggregator, (1.0,), 1.0)
    if probe is algorithm.aggregator:
        return algorithm
    inclusion = getattr(sampler, "inclusion", None)
    if not callable(inclusion):
        raise InclusionError(
            f"aggregator 'importance' needs a sampler that publishes its inclusion "
            f"probabilities; {type(sampler).__name__} does not (use 'uniform', 'proportional' "
            "or 'probability')"
        )
    pi = tuple(float(p) for p in inclusion(population, k, info))
    if getattr(algorithm, "weighting", "examples") == "uniform":
        total = float(population.num_clients)
    else:
        total = float(sum(population.sizes("aggregator 'importance' (weighting by examples)")))
    return dataclasses.replace(algorithm, aggregator=_resolve(algorithm.aggregator, pi, total))
