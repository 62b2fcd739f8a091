"""FedSeq (Zaccone et al. 2022, "Speeding up Heterogeneous Federated Learning with Sequentially
Trained Superclients").

Clients are grouped into superclients of heterogeneous label distributions
(:mod:`fedkit.algorithms.superclients`), each client's distribution approximated by its label
histogram or, as the paper's privacy-preserving variant does, by the confidence vector of a
briefly pre-trained model on a small public set
(:mod:`fedkit.algorithms.superclient_profiles`). In round ``t`` the server samples superclients and
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
:class:`~fedkit.algorithms.superclients.SuperclientStore` (:meth:`FedSeq.superclients`, applied
by :func:`superclient_population`, which groups once and hands the other ranks the groups), so
the serial, vectorised-fallback and process executors run FedSeq unchanged. Under torchrun every
rank groups on its own; with ``profile = "confidence"`` the ranks agree when they run the same
torch build on the same kind of CPU (the pre-training is deterministic there). A real
deployment does not run FedSeq: the members of a superclient are different devices, and handing
the model from one to the next is a device-to-device relay the coordinator/worker protocol does
not have.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fedkit.algorithm import ClientContext, ClientData, ClientResult, LocalOutcome, LocalPlan
from fedkit.algorithms.fedavg import FedAvg, ModelDelta, ModelMessage
from fedkit.algorithms.superclient_profiles import (
    MAX_PUBLIC_PER_CLASS,
    confidence_profiles,
    public_set,
)
from fedkit.algorithms.superclients import (
    GROUPINGS,
    Grouping,
    SuperclientStore,
    group_clients,
    label_histograms,
)
from fedkit.client import train_plan
from fedkit.data.store import ClientStore
from fedkit.local import MAX_LOCAL_STEPS, LocalStats

Profile = Literal["labels", "confidence"]
PROFILES: tuple[str, ...] = ("labels", "confidence")

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
        grouping: ``"diverse"`` (greedy highest pooled entropy of the profiles), ``"kmeans"``
            (the paper's K-means clusters, dealt out round-robin) or ``"random"`` (no profile):
            see :mod:`fedkit.algorithms.superclients`.
        grouping_seed: the seed of the grouping (order, K-means seeding, public-set draw,
            pre-training streams).
        profile: what approximates each client's label distribution: ``"labels"``, its label
            histogram (the server learns label counts: see the privacy caveat of
            :mod:`fedkit.algorithms.superclients`), or ``"confidence"``, the confidence vector
            of a pre-trained model on a public set drawn from the test split
            (:mod:`fedkit.algorithms.superclient_profiles`).
        profile_epochs: pre-training epochs per client for ``"confidence"`` (the paper: 10).
        public_per_class: public-set examples of each class for ``"confidence"`` (the paper:
            10).
    """

    superclient_size: int = 2
    grouping: Grouping = "diverse"
    grouping_seed: int = 0
    profile: Profile = "labels"
    profile_epochs: int = 1
    public_per_class: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.superclient_size < 1:
            raise ValueError(f"superclient_size must be >= 1, got {self.superclient_size}")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if not 1 <= self.profile_epochs <= MAX_LOCAL_STEPS:
            raise ValueError(
                f"profile_epochs must be in [1, {MAX_LOCAL_STEPS}], got {self.profile_epochs!r}"
            )
        if not 1 <= self.public_per_class <= MAX_PUBLIC_PER_CLASS:
            raise ValueError(
                f"public_per_class must be in [1, {MAX_PUBLIC_PER_CLASS}], "
                f"got {self.public_per_class!r}"
            )
        if self.profile == "confidence" and self.local.dp is not None:
            raise ValueError(
                "profile = 'confidence' pre-trains every client outside the run's DP-SGD "
                "accounting; use profile = 'labels' or grouping = 'random' with local DP"
            )

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "fedseq"

    def superclients(
        self,
        store: ClientStore,
        num_classes: int,
        *,
        public: tuple[Tensor, Tensor] | None = None,
        model_fn: Callable[[], nn.Module] | None = None,
    ) -> SuperclientStore:
        """``store``'s clients grouped into this run's superclients (deterministic).

        Args:
            store: the per-client population.
            num_classes: number of classes.
            public: for ``profile = "confidence"``, the labelled pool the public set is drawn
                from (the dataset's test split).
            model_fn: for ``"confidence"``, builds the run's initial model.

        Raises:
            ValueError: ``"confidence"`` without ``public`` or ``model_fn``, or targets that
                are not class labels.
        """
        hist = self.profiles(store, num_classes, public=public, model_fn=model_fn)
        groups = group_clients(hist, self.superclient_size, self.grouping, self.grouping_seed)
        return SuperclientStore.grouped(store, groups)

    def profiles(
        self,
        store: ClientStore,
        num_classes: int,
        *,
        public: tuple[Tensor, Tensor] | None = None,
        model_fn: Callable[[], nn.Module] | None = None,
    ) -> Tensor:
        """``(N, C)`` each client's (estimated) label counts the grouping reads: the label
        histogram, or ``n_k`` times the confidence vector. None is computed where the grouping
        cannot use it (``"random"``, or superclients of one client): zeros then."""
        if self.grouping == "random" or self.superclient_size == 1:
            return torch.zeros(store.num_clients, 1, dtype=torch.float64)
        if self.profile == "labels":
            return label_histograms(store, num_classes)
        if public is None or model_fn is None:
            raise ValueError("profile = 'confidence' needs a public set and the initial model")
        exemplars = public_set(*public, num_classes, self.public_per_class, self.grouping_seed)
        conf = confidence_profiles(
            store,
            model_fn,
            exemplars,
            num_classes,
            local=self.local,
            epochs=self.profile_epochs,
            seed=self.grouping_seed,
        )
        sizes = torch.tensor([store.num_examples(k) for k in range(store.num_clients)])
        return conf * sizes.to(torch.float64)[:, None]

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


def _regrouped(store_fn: Callable[[], ClientStore], groups: Sequence[Sequence[int]]) -> ClientStore:
    return SuperclientStore.grouped(store_fn(), groups)


def superclient_population(
    algorithm: object,
    store: ClientStore,
    store_fn: Callable[[], ClientStore],
    num_classes: int,
    *,
    public: tuple[Tensor, Tensor] | None = None,
    model_fn: Callable[[], nn.Module] | None = None,
) -> tuple[ClientStore, Callable[[], ClientStore]]:
    """The run's client store and the (picklable) function other ranks rebuild it with: for
    FedSeq, both grouped into superclients (grouped here once; the function regroups the
    rebuilt store by the same groups); for any other algorithm, unchanged. ``public`` and
    ``model_fn`` are passed to :meth:`FedSeq.superclients`."""
    regroup = getattr(algorithm, "superclients", None)  # FedSeq's hook; others keep the store
    if not callable(regroup):
        return store, store_fn
    grouped: SuperclientStore = regroup(store, num_classes, public=public, model_fn=model_fn)
    return grouped, functools.partial(_regrouped, store_fn, grouped.groups)
