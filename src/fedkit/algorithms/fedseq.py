"""FedSeq (Zaccone et al. 2022, "Speeding up Heterogeneous Federated Learning with Sequentially
Trained Superclients").

Clients are grouped into superclients of heterogeneous label distributions
(:mod:`fedkit.algorithms.superclients`). In round ``t`` the server samples superclients and
broadcasts ``x_t``; inside a selected superclient with members ``k_1, …, k_S`` training is
*sequential*: member ``k_1`` runs local SGD from ``x_t``, member ``k_{j+1}`` starts from the model
member ``k_j`` ended with, each for the usual local epochs on its own data. The superclient's
update is ``Δ_s = y_{k_S} - x_t`` with weight ``n_s = Σ_j n_{k_j}``, and the server aggregates
across superclients exactly as FedAvg does (``x_{t+1} = x_t + Σ_s n_s Δ_s / Σ_s n_s`` with the
plain server optimiser; any server optimiser of :class:`~fedkit.algorithms.fedavg.FedAvg`).

Every member trains through the one local-training helper (:func:`fedkit.client.train_plan`),
with the superclient's random stream continuing from one member to the next. A superclient of
one client trains exactly as a FedAvg client (bit for bit), so FedSeq with ``superclient_size =
1`` is FedAvg.

Where it runs: the grouping turns the client store into a
:class:`~fedkit.algorithms.superclients.SuperclientStore` (:meth:`FedSeq.superclients`; the
experiment runner applies it on every rank), so the serial, vectorised-fallback, process and
torchrun executors run FedSeq unchanged. A real deployment does not: the members of a
superclient are different devices, and handing the model from one to the next is a
device-to-device relay the coordinator/worker protocol does not have.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from fedkit.algorithm import ClientContext, ClientData, ClientResult, LocalOutcome, LocalPlan
from fedkit.algorithms.fedavg import FedAvg, ModelDelta, ModelMessage
from fedkit.algorithms.superclients import (
    GROUPINGS,
    Grouping,
    SuperclientStore,
    group_clients,
    label_histograms,
)
from fedkit.client import train_plan
from fedkit.data.store import ClientStore
from fedkit.local import LocalStats

__all__ = ["FedSeq", "superclient_population"]


def _combined(stats: list[LocalStats]) -> LocalStats:
    """Steps and examples summed; the mean loss weighted by examples."""
    seen = sum(s.examples for s in stats)
    mean = sum(s.mean_loss * s.examples for s in stats if s.examples) / max(seen, 1)
    return LocalStats(steps=sum(s.steps for s in stats), examples=seen, mean_loss=mean)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedSeq(FedAvg):
    """FedAvg across superclients trained sequentially within (see the module docstring).

    Attributes:
        superclient_size: members per superclient (``1``: FedAvg).
        grouping: ``"diverse"`` (greedy highest pooled label entropy, from label histograms:
            see the privacy caveat of :mod:`fedkit.algorithms.superclients`) or ``"random"``.
        grouping_seed: the seed of the grouping's order.
    """

    superclient_size: int = 2
    grouping: Grouping = "diverse"
    grouping_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.superclient_size < 1:
            raise ValueError(f"superclient_size must be >= 1, got {self.superclient_size}")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "fedseq"

    def superclients(self, store: ClientStore, num_classes: int) -> SuperclientStore:
        """``store``'s clients grouped into this run's superclients (deterministic)."""
        hist = label_histograms(store, num_classes)
        groups = group_clients(hist, self.superclient_size, self.grouping, self.grouping_seed)
        return SuperclientStore.grouped(store, groups)

    def client_init(
        self, ctx: ClientContext, msg: ModelMessage, data: ClientData, state: None
    ) -> LocalPlan[Any]:
        """The first member's training from the global model; the others wait in ``carry``."""
        split = getattr(data, "member_data", None)  # a Superclient; a plain client is one member
        parts = split() if callable(split) else [data]
        if len(parts) <= 1:
            return LocalPlan(start=msg.params, local=self.local, carry=())
        first, *rest = parts
        return LocalPlan(start=msg.params, local=self.local, data=first, carry=tuple(rest))

    def client_final(
        self, ctx: ClientContext, msg: ModelMessage, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[ModelDelta, None]:
        """The remaining members in turn, each from the previous one's model; then FedAvg's
        update ``y_{k_S} - x_t`` with the superclient's total examples."""
        stats, n = [outcome.stats], outcome.num_examples
        for member in plan.carry or ():
            start = {k: outcome.trained[k] for k in msg.params}
            step = dataclasses.replace(plan, start=start, data=member, carry=())
            outcome = train_plan(ctx, step, member)
            stats.append(outcome.stats)
            n += outcome.num_examples
        done = LocalOutcome(trained=outcome.trained, stats=_combined(stats), num_examples=n)
        return super().client_final(ctx, msg, plan, done)


def _regrouped(
    regroup: Callable[[ClientStore, int], ClientStore],
    store_fn: Callable[[], ClientStore],
    num_classes: int,
) -> ClientStore:
    return regroup(store_fn(), num_classes)


def superclient_population(
    algorithm: object,
    store: ClientStore,
    store_fn: Callable[[], ClientStore],
    num_classes: int,
) -> tuple[ClientStore, Callable[[], ClientStore]]:
    """The run's client store and the (picklable) function other ranks rebuild it with: for
    FedSeq, both grouped into superclients; for any other algorithm, unchanged."""
    regroup = getattr(algorithm, "superclients", None)  # FedSeq's hook; others keep the store
    if not callable(regroup):
        return store, store_fn
    grouped = regroup(store, num_classes)
    return grouped, functools.partial(_regrouped, regroup, store_fn, num_classes)
