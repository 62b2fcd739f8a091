"""Superclients for FedSeq: clients grouped so that each group's pooled labels are diverse.

Zaccone et al. 2022 ("Speeding up Heterogeneous Federated Learning with Sequentially Trained
Superclients", ICPR) group clients into *superclients* whose members, trained one after the
other, together see a label distribution close to the global one. Each client's distribution is
approximated on the server by a non-negative vector over the classes, its *profile*: here either
its **label histogram** (the count of each class among its training examples) or the estimate
:mod:`fedkit.algorithms.superclient_profiles` makes from a model's outputs on a public set (the
paper's privacy-preserving variant), scaled to the client's example count.

**Privacy caveat.** Grouping by label histograms means the server learns every client's label
counts — information that plain FedAvg never reveals (it can also single out clients with rare
classes). The output-based profile avoids handing over counts, though it still reveals roughly
which classes a client holds (that is what the grouping needs). ``"random"`` grouping uses no
profile at all.

Grouping methods, each deterministic from ``seed``:

* ``"random"``: a seeded permutation of the clients cut into groups of ``size``;
* ``"diverse"``: greedy. Visit the clients in a seeded order; each not yet grouped starts a new
  group, which then repeatedly adds the ungrouped client that makes the group's pooled profile
  of highest Shannon entropy (ties: the earlier client in the seeded order), until it has
  ``size`` members. (The paper's greedy rule scores a candidate by ``1 - KL(m || uniform)`` of
  the mean ``m`` of the group's and the candidate's normalised vectors; ``KL(m || u) = log C -
  H(m)``, so it too maximises an entropy. Ours pools by example count, which is the
  distribution the superclient trains on, and starts each group from the seeded order instead
  of the most uniform client.)
* ``"kmeans"``: the paper's K-means variant. Cluster the clients' normalised profiles into ``k =
  min(C, N)`` clusters (``C`` classes, :func:`kmeans`: k-means++ seeding from the stream
  ``(seed, 0, SERVER, "superclients/kmeans")``, then Lloyd's iterations), so that each cluster
  holds clients of similar distributions; then deal the clients out round-robin, one from each
  non-empty cluster in turn, into consecutive groups of ``size``. Clusters are visited in the
  order their first member appears in the seeded order, members within a cluster in that order;
  a group's members train in the seeded order (dealt order would put the same clusters' clients
  first in every group).

The last group may be smaller. Superclient ids follow the smallest member id of each group,
so with ``size = 1`` superclient ``s`` is client ``s`` (FedSeq then equals FedAvg).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast

import torch
from torch import Tensor

from fedkit.algorithm import ClientData
from fedkit.data.store import ClientStore
from fedkit.rng import SERVER, generator

__all__ = [
    "GROUPINGS",
    "Superclient",
    "SuperclientStore",
    "entropy_of_groups",
    "group_clients",
    "kmeans",
    "kmeans_plus_plus",
    "label_histograms",
    "lloyd",
    "pooled_entropy",
]

Grouping = Literal["random", "diverse", "kmeans"]
GROUPINGS: tuple[str, ...] = ("random", "diverse", "kmeans")
MAX_KMEANS_ITERATIONS = 100
"""Lloyd's iterations stop here if the assignment has not settled before."""


def label_histograms(store: ClientStore, num_classes: int) -> Tensor:
    """``(N, num_classes)`` float64: each client's count of every training label (see the
    privacy caveat in the module docstring).

    Raises:
        ValueError: a label outside ``[0, num_classes)`` (e.g. sequence targets: grouping by
            label histograms needs one class label per example).
    """
    rows = []
    for c in range(store.num_clients):
        y = store.data(c).y_train
        if y.dim() != 1 or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
            raise ValueError(
                f"client {c}: grouping by label histograms needs one class label in "
                f"[0, {num_classes}) per example"
            )
        rows.append(torch.bincount(y.to(torch.int64), minlength=num_classes))
    return torch.stack(rows).to(torch.float64)


def pooled_entropy(counts: Tensor) -> float:
    """Shannon entropy (nats) of the label distribution of summed ``counts`` (0 when empty)."""
    total = float(counts.sum())
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * p.log()).sum())


def group_clients(
    histograms: Tensor, size: int, method: Grouping = "diverse", seed: int = 0
) -> tuple[tuple[int, ...], ...]:
    """Superclients (member ids in training order) of ``size`` clients each (see module
    docstring), sorted by smallest member id.

    Args:
        histograms: ``(N, C)`` non-negative profiles: label counts, or estimated counts.
        size: members per superclient.
        method: ``"random"``, ``"diverse"`` or ``"kmeans"``.
        seed: the seed of the visiting order (and of K-means' initialisation).

    Raises:
        ValueError: ``size < 1`` or an unknown method.
    """
    if size < 1:
        raise ValueError(f"superclient size must be >= 1, got {size}")
    if method not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {method!r}")
    n = int(histograms.shape[0])
    order = torch.randperm(n, generator=generator(seed, 0, SERVER, "superclients")).tolist()
    if method == "random":
        groups = [tuple(order[i : i + size]) for i in range(0, n, size)]
    elif method == "kmeans":
        dealt = _dealt_from_clusters(histograms, order, seed)
        rank = {c: i for i, c in enumerate(order)}  # members train in the seeded order
        groups = [
            tuple(sorted(dealt[i : i + size], key=rank.__getitem__)) for i in range(0, n, size)
        ]
    else:
        groups = _greedy_diverse(histograms, size, order)
    return tuple(sorted(groups, key=min))


def _greedy_diverse(histograms: Tensor, size: int, order: list[int]) -> list[tuple[int, ...]]:
    """The ``"diverse"`` groups (module docstring), in the order they were formed."""
    rank = {c: i for i, c in enumerate(order)}
    left = list(order)
    groups: list[tuple[int, ...]] = []
    while left:
        group = [left.pop(0)]
        pooled = histograms[group[0]].clone()
        while len(group) < size and left:
            best = max(left, key=lambda c: (pooled_entropy(pooled + histograms[c]), -rank[c]))
            left.remove(best)
            group.append(best)
            pooled += histograms[best]
        groups.append(tuple(group))
    return groups


def _dealt_from_clusters(histograms: Tensor, order: list[int], seed: int) -> list[int]:
    """The clients in ``"kmeans"`` dealing order: clustered by their normalised profiles, then
    one from each non-empty cluster in turn (module docstring)."""
    n, num_classes = int(histograms.shape[0]), int(histograms.shape[1])
    if n == 0:
        return []
    totals = histograms.sum(1, keepdim=True)
    points = torch.where(totals > 0, histograms / totals.clamp_min(1e-300), 0.0)
    labels, _ = kmeans(
        points.to(torch.float64),
        min(num_classes, n),
        generator(seed, 0, SERVER, "superclients/kmeans"),
    )
    clusters: dict[int, list[int]] = {}  # insertion order: first appearance in ``order``
    for c in order:
        clusters.setdefault(int(labels[c]), []).append(c)
    queues = list(clusters.values())
    dealt: list[int] = []
    while len(dealt) < n:
        for q in queues:
            if q:
                dealt.append(q.pop(0))
    return dealt


def kmeans_plus_plus(points: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre a uniformly drawn
    point, each next one a point drawn with probability ``D(x)^2 / sum D^2`` (``D`` the
    distance to the nearest centre chosen so far); uniform again when every point already
    coincides with a centre.

    Returns:
        ``(k, d)`` initial centres (copies of rows of ``points``).

    Raises:
        ValueError: ``k`` not in ``[1, N]``.
    """
    n = int(points.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} points, got k={k}")
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    d2 = ((points - points[chosen[0]]) ** 2).sum(1)
    while len(chosen) < k:
        if float(d2.sum()) > 0:  # multinomial normalises the weights itself
            nxt = int(torch.multinomial(d2, 1, generator=gen))
        else:
            nxt = int(torch.randint(n, (1,), generator=gen))
        chosen.append(nxt)
        d2 = torch.minimum(d2, ((points - points[nxt]) ** 2).sum(1))
    return points[chosen].clone()


def lloyd(
    points: Tensor, centres: Tensor, max_iter: int = MAX_KMEANS_ITERATIONS
) -> tuple[Tensor, Tensor]:
    """Lloyd's iterations from ``centres``: assign each point to its nearest centre (squared
    Euclidean distance; ties to the lower index), move each centre to the mean of its points
    (a centre left without points stays where it is); stop when the assignment repeats or
    after ``max_iter`` assignments.

    Returns:
        ``(labels, centres)``: ``(N,)`` int64 cluster of each point, ``(k, d)`` final centres
        (the means of the final clusters).

    Raises:
        ValueError: ``max_iter < 1``.
    """
    if max_iter < 1:
        raise ValueError(f"k-means needs max_iter >= 1, got {max_iter}")
    centres = centres.clone()
    labels: Tensor | None = None
    for _ in range(max_iter):
        new = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1).argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        for j in range(int(centres.shape[0])):
            members = points[labels == j]
            if members.shape[0]:
                centres[j] = members.mean(0)
    assert labels is not None  # at least one assignment ran
    return labels, centres


def kmeans(
    points: Tensor, k: int, gen: torch.Generator, max_iter: int = MAX_KMEANS_ITERATIONS
) -> tuple[Tensor, Tensor]:
    """K-means: :func:`kmeans_plus_plus` seeding from ``gen``, then :func:`lloyd`.

    Returns:
        ``(labels, centres)`` as :func:`lloyd` does.
    """
    return lloyd(points, kmeans_plus_plus(points, k, gen), max_iter)


class Superclient(ClientData):
    """A superclient's data: its members' examples concatenated in training order, and each
    member's example count (``members``), so that training can visit them one by one."""

    members: tuple[int, ...]

    def __init__(
        self,
        x_train: Tensor,
        y_train: Tensor,
        x_test: Tensor | None,
        y_test: Tensor | None,
        members: Sequence[int],
    ) -> None:
        super().__init__(x_train, y_train, x_test, y_test)
        if sum(members) != int(y_train.shape[0]) or any(m < 0 for m in members):
            raise ValueError(f"member sizes {tuple(members)} do not add up to {y_train.shape[0]}")
        object.__setattr__(self, "members", tuple(int(m) for m in members))

    def member_data(self) -> list[ClientData]:
        """Each member's training examples, in training order."""
        out, at = [], 0
        for m in self.members:
            out.append(ClientData(self.x_train[at : at + m], self.y_train[at : at + m]))
            at += m
        return out


class SuperclientStore(ClientStore):
    """The population as superclients: client ``s`` of this store is group ``s`` (its data a
    :class:`Superclient`), built from a per-client ``base`` store."""

    groups: tuple[tuple[int, ...], ...]

    @classmethod
    def grouped(cls, base: ClientStore, groups: Sequence[Sequence[int]]) -> SuperclientStore:
        """The superclients of ``groups`` (every client of ``base`` in exactly one group).

        Raises:
            ValueError: ``groups`` is not a partition of ``base``'s clients, or ``base`` is
                lazy (its data is read on demand).
        """
        if base.lazy:
            raise ValueError("superclients need a store held in memory (not a lazy dataset)")
        flat = sorted(c for g in groups for c in g)
        if flat != list(range(base.num_clients)) or any(not g for g in groups):
            raise ValueError("superclient groups must split the clients: each in exactly one")
        datas = []
        for g in groups:
            parts = [base.data(c) for c in g]
            tests = [p for p in parts if p.x_test is not None and p.y_test is not None]
            both = len(tests) == len(parts)
            datas.append(
                ClientData(
                    torch.cat([p.x_train for p in parts]),
                    torch.cat([p.y_train for p in parts]),
                    torch.cat([p.x_test for p in tests]) if both else None,  # type: ignore[misc]
                    torch.cat([p.y_test for p in tests]) if both else None,  # type: ignore[misc]
                )
            )
        store = cast(SuperclientStore, cls.from_clients(datas))
        store.groups = tuple(tuple(int(c) for c in g) for g in groups)
        store._member_sizes = [tuple(base.num_examples(c) for c in g) for g in groups]
        return store

    _member_sizes: list[tuple[int, ...]]

    def data(self, client_id: int) -> Superclient:
        """Superclient ``client_id``'s data, with its members' sizes."""
        d = super().data(client_id)
        return Superclient(d.x_train, d.y_train, d.x_test, d.y_test, self._member_sizes[client_id])


def entropy_of_groups(histograms: Tensor, groups: Sequence[Sequence[int]]) -> float:
    """Mean pooled label entropy of ``groups`` (what ``"diverse"`` grouping raises), in nats;
    ``log(num_classes)`` is the most possible."""
    if not groups:
        return math.nan
    return sum(pooled_entropy(histograms[list(g)].sum(0)) for g in groups) / len(groups)
