"""Federated partitions: how the samples of one dataset split are divided among clients.

Every partitioner returns ``list[torch.Tensor]``: one int64 tensor of sample indices per client,
sorted ascending and pairwise disjoint. All randomness comes from a ``numpy.random.Generator``
seeded explicitly with ``seed``, so a partition is a pure function of its arguments. Impossible
requests raise ``ValueError`` naming the argument, its value and the allowed range.

Schemes (the papers that use them):

- :func:`iid` — a uniformly random split into near-equal parts (McMahan et al. 2017, "IID").
- :func:`dirichlet` — label skew. ``method="hsu"`` (default) follows Hsu, Qi & Brown 2019
  ("Measuring the effects of non-identical data distribution"): every client gets the same number
  of samples, and client *i*'s label distribution is ``q_i ~ Dir(alpha * p)`` with ``p`` the global
  label distribution. Clients are filled in order, each drawing its samples without replacement
  from what is left, a sample of class ``c`` with odds ``q_ic / p_c``: while the pool is full this
  is exactly label distribution ``q_i``; as it drains, classes are used up evenly instead of
  leaving the last clients an arbitrary remainder, and for ``alpha -> inf`` (``q_i = p``) it is
  IID sampling. (Hsu et al. only say samples are drawn from ``q_i``; this is how we make that
  well defined without replacement. When ``q_i`` has no mass left on the remaining classes it is
  redrawn from ``Dir(alpha * p_left)``, which is what renormalising it would give in law.)
  ``alpha -> 0`` gives one class per client. ``method="per_class"`` is the variant of
  Yurochkin et al. 2019 / Li et al. 2021 (NIID-Bench): for each class, the proportions over clients
  are drawn from ``Dir_K(alpha)``; client sizes then vary too, and the whole draw is repeated (up to
  ``max_tries`` times) until every client has at least ``min_size`` samples.
- :func:`shards` — McMahan et al. 2017: sort by label, cut into ``num_clients * shards_per_client``
  contiguous shards, give every client ``shards_per_client`` shards at random.
- :func:`one_class` — only positive labels (Yu et al. 2020, FedAwS): every client holds a single
  class; with more clients than classes a class is shared among several clients (clients are
  allotted to classes in proportion to class size).
- :func:`quantity_skew` — sizes proportional to lognormal(0, sigma) draws, samples IID.
- :func:`natural` — the dataset's own clients (a writer, a speaking role, a Synthetic user).

:func:`local_test_split` gives per-client local test sets for the non-natural schemes: the test
samples of each class are divided among clients in proportion to how many training samples of that
class each client holds, so a client's local test label distribution follows its training one
(disjoint, and covering every test sample whose class appears in training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "dirichlet",
    "iid",
    "label_histograms",
    "local_test_split",
    "mean_total_variation",
    "natural",
    "one_class",
    "quantity_skew",
    "shards",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
DirichletMethod = Literal["hsu", "per_class"]


# --------------------------------------------------------------------------------------------
# validation and small helpers
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")


def _labels_array(labels: torch.Tensor, name: str = "labels") -> IntArray:
    if labels.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D tensor of class labels, got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got dtype {labels.dtype}")
    arr = labels.detach().cpu().numpy().astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative class labels, got minimum {int(arr.min())}")
    return arr


def _rng(seed: int) -> np.random.Generator:
    _check_int("seed", seed, 0)
    return np.random.default_rng(seed)


def _to_parts(chunks: Sequence[IntArray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.sort(np.asarray(c, dtype=np.int64))) for c in chunks]


def _allocate(total: int, weights: FloatArray) -> IntArray:
    """Split the integer ``total`` in proportion to ``weights`` (largest remainder, exact sum)."""
    w = np.asarray(weights, dtype=np.float64)
    out = np.zeros(w.shape[0], dtype=np.int64)
    s = float(w.sum())
    if total <= 0 or s <= 0.0:
        return out
    quota = w / s * total
    out = np.floor(quota).astype(np.int64)
    short = int(total - out.sum())
    if short > 0:
        # Stable order on the remainders; ties go to the lower index, deterministically.
        order = np.argsort(-(quota - out), kind="stable")
        out[order[:short]] += 1
    return out


def _split_by_sizes(indices: IntArray, sizes: IntArray) -> list[IntArray]:
    if sizes.shape[0] == 0:  # no parts (np.split would still return the whole array as one)
        return []
    bounds = np.cumsum(sizes)[:-1]
    return list(np.split(indices, bounds))


def _dirichlet_draw(rng: np.random.Generator, concentration: FloatArray) -> FloatArray:
    """One draw of ``Dir(concentration)``, robust to tiny concentrations.

    For very small concentrations every gamma variate can underflow to zero; the limit of the
    Dirichlet distribution as its concentration goes to zero is a one-hot vector at class ``l``
    with probability ``concentration[l] / sum(concentration)``, which is what is returned then.
    """
    g = rng.standard_gamma(concentration)
    s = float(g.sum())
    if s > 0.0 and np.isfinite(s):
        return np.asarray(g / s, dtype=np.float64)
    onehot = np.zeros_like(concentration, dtype=np.float64)
    onehot[rng.choice(concentration.shape[0], p=concentration / concentration.sum())] = 1.0
    return onehot


def _assign_by_class(
    labels: IntArray, classes: IntArray, take: IntArray, rng: np.random.Generator
) -> list[IntArray]:
    """Give client ``i`` ``take[i, c]`` random samples of class ``classes[c]`` (disjoint)."""
    num_clients = take.shape[0]
    pieces: list[list[IntArray]] = [[] for _ in range(num_clients)]
    for c, cls in enumerate(classes):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        # Any samples beyond take[:, c].sum() (a class nobody is owed) form a dropped last piece.
        for i, chunk in enumerate(np.split(idx, np.cumsum(take[:, c]))[:num_clients]):
            pieces[i].append(chunk)
    return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in pieces]


# --------------------------------------------------------------------------------------------
# partitioners
# --------------------------------------------------------------------------------------------


def iid(n: int, num_clients: int, seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` uniformly at random into ``num_clients`` parts whose sizes differ by <= 1.

    Args:
        n: Number of samples in the split.
        num_clients: Number of clients, ``1 <= num_clients <= n``.
        seed: Seed of the random permutation (>= 0).

    Returns:
        One sorted int64 index tensor per client; together they cover ``range(n)`` exactly once.
    """
    _check_int("n", n, 1)
    _check_int("num_clients", num_clients, 1, n)
    perm = _rng(seed).permutation(n).astype(np.int64)
    return _to_parts(np.array_split(perm, num_clients))


def dirichlet(
    labels: torch.Tensor,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    *,
    method: DirichletMethod = "hsu",
    max_tries: int = 1000,
) -> list[torch.Tensor]:
    """Dirichlet label skew with concentration ``alpha`` (both methods: see the module docstring).

    Args:
        labels: 1-D integer class labels of the split.
        num_clients: Number of clients (>= 1); ``num_clients * min_size <= len(labels)``.
        alpha: Dirichlet concentration, ``alpha > 0`` (small: skewed; large: close to IID).
        seed: Seed (>= 0).
        min_size: Every client gets at least this many samples (>= 0). With ``"hsu"`` all clients
            get ``len(labels) // num_clients`` or one more, so this is only checked; with
            ``"per_class"`` draws are repeated until it holds.
        method: ``"hsu"`` (Hsu et al. 2019, equal sizes) or ``"per_class"`` (Yurochkin et al. 2019).
        max_tries: Attempts for ``"per_class"`` before giving up with a ValueError.

    Returns:
        One sorted int64 index tensor per client; together they cover every sample exactly once.
    """
    y = _labels_array(labels)
    n = int(y.shape[0])
    _check_int("len(labels)", n, 1)
    _check_int("min_size", min_size, 0)
    _check_int("num_clients", num_clients, 1, n)
    if num_clients * min_size > n:
        raise ValueError(
            f"num_clients * min_size must be <= len(labels) = {n}, got "
            f"{num_clients} * {min_size} = {num_clients * min_size}"
        )
    if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if method not in ("hsu", "per_class"):
        raise ValueError(f"method must be one of 'hsu', 'per_class', got {method!r}")
    _check_int("max_tries", max_tries, 1)
    rng = _rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    counts = counts.astype(np.int64)
    if method == "hsu":
        take = _hsu_counts(counts, num_clients, float(alpha), rng)
    else:
        take = _per_class_counts(counts, num_clients, float(alpha), min_size, max_tries, rng)
    return _to_parts(_assign_by_class(y, classes, take, rng))


def _hsu_counts(
    counts: IntArray, num_clients: int, alpha: float, rng: np.random.Generator
) -> IntArray:
    n = int(counts.sum())
    prior = counts / n
    sizes = _allocate(n, np.ones(num_clients))
    avail = counts.copy()
    take = np.zeros((num_clients, counts.shape[0]), dtype=np.int64)
    for i in range(num_clients):
        q = _dirichlet_draw(rng, alpha * prior)
        need = int(sizes[i])
        while need > 0:
            w = q * avail / counts
            if w.sum() <= 0.0:
                # q's classes are used up (or q underflowed to them). Renormalising a Dirichlet
                # vector over a subset of classes gives Dir(alpha * p_subset) (neutrality), so a
                # fresh draw over the classes left is the same renormalisation, computed safely.
                q = _dirichlet_draw(rng, alpha * prior * (avail > 0))
                w = q * avail / counts
            drawn = rng.multinomial(need, w / w.sum())
            got = np.minimum(drawn, avail)
            take[i] += got
            avail -= got
            need -= int(got.sum())
    return take


def _per_class_counts(
    counts: IntArray,
    num_clients: int,
    alpha: float,
    min_size: int,
    max_tries: int,
    rng: np.random.Generator,
) -> IntArray:
    conc = np.full(num_clients, alpha)
    for _ in range(max_tries):
        take = np.stack([_allocate(int(m), _dirichlet_draw(rng, conc)) for m in counts], axis=1)
        if int(take.sum(axis=1).min()) >= min_size:
            return take
    raise ValueError(
        f"dirichlet(method='per_class'): no draw in max_tries={max_tries} attempts gave every one "
        f"of num_clients={num_clients} clients at least min_size={min_size} samples with "
        f"alpha={alpha}; raise alpha, lower min_size or num_clients, or use method='hsu'"
    )


def shards(
    labels: torch.Tensor, num_clients: int, shards_per_client: int, seed: int
) -> list[torch.Tensor]:
    """McMahan et al. 2017 pathological non-IID: k label-sorted shards per client.

    Samples are sorted by label (ties in a seeded random order), cut into
    ``num_clients * shards_per_client`` contiguous shards of near-equal size (differing by <= 1),
    and each client receives ``shards_per_client`` shards chosen at random without replacement.
    MNIST with 100 clients and 2 shards each gives McMahan's 200 shards of 300 images.

    Args:
        labels: 1-D integer class labels of the split.
        num_clients: Number of clients (>= 1).
        shards_per_client: Shards per client (>= 1); ``num_clients * shards_per_client`` must not
            exceed ``len(labels)``.
        seed: Seed (>= 0).

    Returns:
        One sorted int64 index tensor per client; together they cover every sample exactly once.
    """
    y = _labels_array(labels)
    n = int(y.shape[0])
    _check_int("num_clients", num_clients, 1)
    _check_int("shards_per_client", shards_per_client, 1)
    num_shards = num_clients * shards_per_client
    if num_shards > n:
        raise ValueError(
            f"num_clients * shards_per_client must be <= len(labels) = {n}, got "
            f"{num_clients} * {shards_per_client} = {num_shards}"
        )
    rng = _rng(seed)
    perm = rng.permutation(n).astype(np.int64)
    order = perm[np.argsort(y[perm], kind="stable")]
    pieces = np.array_split(order, num_shards)
    owner = rng.permutation(num_shards)
    return _to_parts(
        [
            np.concatenate(
                [pieces[s] for s in owner[i * shards_per_client : (i + 1) * shards_per_client]]
            )
            for i in range(num_clients)
        ]
    )


def one_class(labels: torch.Tensor, num_clients: int, seed: int) -> list[torch.Tensor]:
    """Only positive labels (Yu et al. 2020, FedAwS): every client holds samples of one class.

    With ``C`` classes present and ``num_clients >= C``, every class gets at least one client and
    the remaining clients go, one at a time, to the class whose clients currently hold the most
    samples each (D'Hondt apportionment), so clients of large classes are not overloaded. A class's
    samples are shuffled and cut into near-equal parts for its clients; which client id gets which
    (class, part) is a seeded random permutation.

    Args:
        labels: 1-D integer class labels of the split.
        num_clients: Number of clients, ``C <= num_clients <= len(labels)`` (every sample is used,
            so there must be at least one client per class present).
        seed: Seed (>= 0).

    Returns:
        One sorted int64 index tensor per client, each holding a single label.
    """
    y = _labels_array(labels)
    n = int(y.shape[0])
    classes, counts = np.unique(y, return_counts=True)
    num_classes = int(classes.shape[0])
    _check_int("num_clients", num_clients, 1)
    if not num_classes <= num_clients <= n:
        raise ValueError(
            f"num_clients must be >= the number of classes present ({num_classes}) and "
            f"<= len(labels) ({n}) for one_class, got {num_clients}"
        )
    rng = _rng(seed)
    per_class = np.ones(num_classes, dtype=np.int64)
    for _ in range(num_clients - num_classes):
        per_class[int(np.argmax(counts / per_class))] += 1
    chunks: list[IntArray] = []
    for cls, k in zip(classes, per_class, strict=True):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        chunks.extend(np.array_split(idx, int(k)))
    owner = rng.permutation(num_clients)
    return _to_parts([chunks[int(j)] for j in owner])


def quantity_skew(n: int, num_clients: int, sigma: float, seed: int) -> list[torch.Tensor]:
    """Quantity skew: client sizes proportional to lognormal(0, sigma) draws, samples IID.

    Every client first gets one sample; the other ``n - num_clients`` are apportioned in
    proportion to ``exp(N(0, sigma^2))`` weights (largest remainder). ``sigma = 0`` gives equal
    sizes; Li et al. 2020 (FedProx, Synthetic) use ``sigma = 2`` for client sizes.

    Args:
        n: Number of samples in the split (>= 1).
        num_clients: Number of clients, ``1 <= num_clients <= n``.
        sigma: Standard deviation of the log-sizes, ``sigma >= 0``.
        seed: Seed (>= 0).

    Returns:
        One sorted int64 index tensor per client; together they cover ``range(n)`` exactly once.
    """
    _check_int("n", n, 1)
    _check_int("num_clients", num_clients, 1, n)
    if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    rng = _rng(seed)
    weights = rng.lognormal(0.0, float(sigma), size=num_clients)
    sizes = 1 + _allocate(n - num_clients, weights)
    perm = rng.permutation(n).astype(np.int64)
    return _to_parts(_split_by_sizes(perm, sizes))


def natural(client_index: torch.Tensor, num_clients: int | None = None) -> list[torch.Tensor]:
    """The dataset's own clients: part ``c`` holds the samples whose ``client_index`` is ``c``.

    Args:
        client_index: 1-D non-negative int64 natural client id per sample (``Split.client``).
        num_clients: Number of clients (ids ``0 .. num_clients - 1``); defaults to
            ``max(client_index) + 1``. Ids without samples give empty parts, so the train and test
            parts of a natural dataset stay aligned by client id.

    Returns:
        One sorted int64 index tensor per client id.
    """
    c = _labels_array(client_index, "client_index")
    top = int(c.max()) + 1 if c.size else 0
    if num_clients is None:
        num_clients = top
    _check_int("num_clients", num_clients, top)
    order = np.argsort(c, kind="stable").astype(np.int64)
    sizes = np.bincount(c, minlength=num_clients).astype(np.int64)
    return _to_parts(_split_by_sizes(order, sizes))


def local_test_split(
    train_targets: torch.Tensor,
    train_parts: Sequence[torch.Tensor],
    test_targets: torch.Tensor,
    seed: int,
) -> list[torch.Tensor]:
    """Disjoint per-client local test sets that follow each client's training distribution.

    With 1-D class labels, the test samples of class ``c`` are shuffled and apportioned among the
    clients in proportion to the number of training samples of class ``c`` each holds (largest
    remainder), so a client's local test label distribution follows its training one; test samples
    of a class no client trains on are left out. With per-position targets (text, shape ``(N, T)``)
    the shuffled test set is apportioned in proportion to the clients' training sizes.

    Args:
        train_targets: Targets of the training split (``(N,)`` labels or ``(N, T)``).
        train_parts: The clients' training index tensors.
        test_targets: Targets of the test split, same kind as ``train_targets``.
        seed: Seed (>= 0).

    Returns:
        One sorted int64 index tensor into the test split per client.
    """
    rng = _rng(seed)
    num_clients = len(train_parts)
    _check_int("len(train_parts)", num_clients, 1)
    if train_targets.dim() == 1 and test_targets.dim() == 1:
        y_train = _labels_array(train_targets, "train_targets")
        y_test = _labels_array(test_targets, "test_targets")
        size = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
        hist = label_histograms(torch.from_numpy(y_train), train_parts, size).numpy()
        classes = np.arange(size, dtype=np.int64)
        take = np.stack(
            [_allocate(int((y_test == c).sum()), hist[:, c].astype(np.float64)) for c in classes],
            axis=1,
        )
        return _to_parts(_assign_by_class(y_test, classes, take, rng))
    n_test = int(test_targets.shape[0])
    sizes = _allocate(n_test, np.array([len(p) for p in train_parts], dtype=np.float64))
    return _to_parts(_split_by_sizes(rng.permutation(n_test).astype(np.int64), sizes))


# --------------------------------------------------------------------------------------------
# statistics of a partition
# --------------------------------------------------------------------------------------------


def label_histograms(
    targets: torch.Tensor, parts: Sequence[torch.Tensor], num_classes: int
) -> torch.Tensor:
    """Per-client label counts, shape ``(len(parts), num_classes)`` (int64).

    For per-position targets ``(N, T)`` every position counts (token histograms); negative targets
    (padding / ignore markers) are not counted.
    """
    _check_int("num_classes", num_classes, 1)
    rows = []
    for p in parts:
        t = targets[p].reshape(-1).to(torch.int64)
        t = t[t >= 0]
        if t.numel() and int(t.max()) >= num_classes:
            raise ValueError(f"targets hold class {int(t.max())} but num_classes is {num_classes}")
        rows.append(torch.bincount(t, minlength=num_classes))
    if not rows:
        return torch.zeros(0, num_classes, dtype=torch.int64)
    return torch.stack(rows)


def mean_total_variation(histograms: torch.Tensor) -> float:
    """Mean total-variation distance between each client's label distribution and the pooled one.

    0 means every client has the global label mix (IID); values near ``1 - max_c p_c`` mean each
    client holds essentially one class. Clients without samples are ignored.
    """
    h = histograms.to(torch.float64)
    sizes = h.sum(dim=1)
    keep = sizes > 0
    if not bool(keep.any()):
        return 0.0
    h, sizes = h[keep], sizes[keep]
    glob = h.sum(dim=0) / h.sum()
    local = h / sizes[:, None]
    return float(0.5 * (local - glob).abs().sum(dim=1).mean())
