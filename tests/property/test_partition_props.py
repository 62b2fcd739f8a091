"""Hypothesis properties of the partitioners: coverage, disjointness, determinism, sizes."""

from __future__ import annotations

import itertools

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkit.data import partition as P

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labels_and_clients(draw: st.DrawFn, min_per_client: int = 1) -> tuple[torch.Tensor, int]:
    num_classes = draw(st.integers(1, 12))
    n = draw(st.integers(min_per_client, 400))
    values = draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    k = draw(st.integers(1, max(1, n // min_per_client)))
    return torch.tensor(values, dtype=torch.int64), k


seeds = st.integers(0, 2**32 - 1)


def assert_partition(parts: list[torch.Tensor], n: int, *, exact: bool = True) -> None:
    """Disjoint, sorted int64 indices within range(n); with exact, covering it."""
    allidx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    assert allidx.dtype == torch.int64
    assert len(allidx.unique()) == len(allidx), "a sample is used twice"
    assert all(torch.equal(p, p.sort().values) for p in parts)
    if len(allidx):
        assert int(allidx.min()) >= 0 and int(allidx.max()) < n
    if exact:
        assert len(allidx) == n


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@SETTINGS
@given(n=st.integers(1, 500), data=st.data(), seed=seeds)
def test_iid(n: int, data: st.DataObject, seed: int) -> None:
    k = data.draw(st.integers(1, n))
    parts = P.iid(n, k, seed)
    assert len(parts) == k
    assert_partition(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert same(parts, P.iid(n, k, seed))


@SETTINGS
@given(
    lk=labels_and_clients(),
    alpha=st.floats(1e-4, 1e4),
    seed=seeds,
    method=st.sampled_from(["hsu", "per_class"]),
)
def test_dirichlet(lk: tuple[torch.Tensor, int], alpha: float, seed: int, method: str) -> None:
    y, k = lk
    parts = P.dirichlet(y, k, alpha, seed, min_size=0, method=method)  # type: ignore[arg-type]
    assert len(parts) == k
    assert_partition(parts, len(y))
    if method == "hsu":
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
    assert same(parts, P.dirichlet(y, k, alpha, seed, min_size=0, method=method))  # type: ignore[arg-type]


@SETTINGS
@given(lk=labels_and_clients(min_per_client=3), alpha=st.floats(0.5, 100.0), seed=seeds)
def test_dirichlet_hsu_min_size_holds(
    lk: tuple[torch.Tensor, int], alpha: float, seed: int
) -> None:
    y, k = lk
    parts = P.dirichlet(y, k, alpha, seed, min_size=3)
    assert min(len(p) for p in parts) >= 3


@SETTINGS
@given(data=st.data(), seed=seeds)
def test_shards(data: st.DataObject, seed: int) -> None:
    y, _ = data.draw(labels_and_clients())
    n = len(y)
    s = data.draw(st.integers(1, min(5, n)))
    k = data.draw(st.integers(1, n // s))
    parts = P.shards(y, k, s, seed)
    assert len(parts) == k
    assert_partition(parts, n)
    lo, hi = n // (k * s), -(-n // (k * s))
    assert all(s * lo <= len(p) <= s * hi for p in parts)
    assert same(parts, P.shards(y, k, s, seed))


@SETTINGS
@given(data=st.data(), seed=seeds)
def test_shards_are_label_contiguous(data: st.DataObject, seed: int) -> None:
    """With one shard per client, every shard is a run of the label-sorted order: the
    clients' label ranges overlap only at their end points."""
    y, _ = data.draw(labels_and_clients())
    k = data.draw(st.integers(1, len(y)))
    parts = P.shards(y, k, 1, seed)
    ranges = sorted((int(y[p].min()), int(y[p].max())) for p in parts)
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert hi <= lo


@SETTINGS
@given(data=st.data(), seed=seeds)
def test_one_class(data: st.DataObject, seed: int) -> None:
    y, _ = data.draw(labels_and_clients())
    c = len(y.unique())
    k = data.draw(st.integers(c, len(y)))
    parts = P.one_class(y, k, seed)
    assert len(parts) == k
    assert_partition(parts, len(y))
    assert all(len(p) >= 1 and len(y[p].unique()) == 1 for p in parts)
    assert same(parts, P.one_class(y, k, seed))


@SETTINGS
@given(n=st.integers(1, 500), data=st.data(), sigma=st.floats(0.0, 4.0), seed=seeds)
def test_quantity_skew(n: int, data: st.DataObject, sigma: float, seed: int) -> None:
    k = data.draw(st.integers(1, n))
    parts = P.quantity_skew(n, k, sigma, seed)
    assert len(parts) == k
    assert_partition(parts, n)
    assert min(len(p) for p in parts) >= 1
    assert same(parts, P.quantity_skew(n, k, sigma, seed))


@SETTINGS
@given(ids=st.lists(st.integers(0, 30), min_size=1, max_size=300), extra=st.integers(0, 5))
def test_natural(ids: list[int], extra: int) -> None:
    c = torch.tensor(ids)
    k = max(ids) + 1 + extra
    parts = P.natural(c, k)
    assert len(parts) == k
    assert_partition(parts, len(ids))
    for cid, p in enumerate(parts):
        assert torch.equal(p, torch.nonzero(c == cid).flatten())


@SETTINGS
@given(
    lk=labels_and_clients(),
    test=st.lists(st.integers(0, 11), min_size=1, max_size=200),
    seed=seeds,
)
def test_local_test_split(lk: tuple[torch.Tensor, int], test: list[int], seed: int) -> None:
    y, k = lk
    parts = P.iid(len(y), k, seed)
    y_test = torch.tensor(test)
    tparts = P.local_test_split(y, parts, y_test, seed)
    assert len(tparts) == k
    trained = set(y.tolist())
    covered = sum(1 for t in test if t in trained)
    assert_partition(tparts, len(test), exact=False)
    assert sum(len(t) for t in tparts) == covered  # every test sample of a trained class
    size = max(max(test), int(y.max())) + 1
    h_train = P.label_histograms(y, parts, size).double()
    h_test = P.label_histograms(y_test, tparts, size).double()
    share = h_train / h_train.sum(dim=0).clamp(min=1)
    expected = share * h_test.sum(dim=0)
    assert float((h_test - expected).abs().max()) < 1.0  # largest-remainder rounding
    assert same(tparts, P.local_test_split(y, parts, y_test, seed))
