"""Partitioners: hand-checkable cases, the papers' settings, error messages, statistics."""

from __future__ import annotations

import pytest
import torch

from fedkit.data import partition as P


def balanced_labels(num_classes: int, per_class: int, seed: int = 0) -> torch.Tensor:
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def assert_exact_cover(parts: list[torch.Tensor], n: int) -> None:
    allidx = torch.cat(parts)
    assert allidx.dtype == torch.int64
    assert torch.equal(allidx.sort().values, torch.arange(n))
    for p in parts:
        assert torch.equal(p, p.sort().values)


def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = P.iid(103, 10, seed=1)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    assert_exact_cover(parts, 103)


def test_mcmahan_mnist_shards_are_300_sorted_samples_two_per_client() -> None:
    """100 clients x 2 shards of 300 on 60k samples: each client sees at most 2 labels
    (a shard can straddle a label boundary, so at most 4)."""
    y = balanced_labels(10, 6000)
    parts = P.shards(y, 100, 2, seed=0)
    assert_exact_cover(parts, 60_000)
    assert all(len(p) == 600 for p in parts)
    hist = P.label_histograms(y, parts, 10)
    classes = (hist > 0).sum(dim=1)
    # 6000 per class is a multiple of 300, so no shard straddles two labels here.
    assert int(classes.max()) <= 2
    assert float((classes == 2).float().mean()) > 0.7


def test_shards_with_uneven_sizes_cover_everything() -> None:
    y = torch.tensor([3, 1, 2, 0, 1, 2, 3, 0, 0, 1, 1])
    parts = P.shards(y, 2, 2, seed=5)
    assert_exact_cover(parts, 11)
    assert sorted(len(p) for p in parts) == [5, 6]


def test_one_class_each_client_single_label_and_split_classes() -> None:
    y = torch.tensor([0] * 30 + [1] * 10 + [2] * 20)
    parts = P.one_class(y, 6, seed=0)
    assert_exact_cover(parts, 60)
    labels = [set(y[p].tolist()) for p in parts]
    assert all(len(s) == 1 for s in labels)
    per_class = {c: sum(1 for s in labels if s == {c}) for c in range(3)}
    assert per_class == {0: 3, 1: 1, 2: 2}  # D'Hondt: 30/3 = 10, 10/1, 20/2 per client
    assert sorted(len(p) for p in parts) == [10] * 6


def test_one_class_with_as_many_clients_as_classes() -> None:
    y = balanced_labels(10, 50)
    parts = P.one_class(y, 10, seed=3)
    assert sorted(int(y[p][0]) for p in parts) == list(range(10))
    assert all(len(p) == 50 for p in parts)
    assert P.mean_total_variation(P.label_histograms(y, parts, 10)) == pytest.approx(0.9)


def test_quantity_skew_sizes_follow_sigma() -> None:
    equal = P.quantity_skew(1000, 10, sigma=0.0, seed=0)
    assert [len(p) for p in equal] == [100] * 10
    skewed = P.quantity_skew(10_000, 50, sigma=2.0, seed=0)
    sizes = sorted(len(p) for p in skewed)
    assert_exact_cover(skewed, 10_000)
    assert min(sizes) >= 1
    assert sizes[-1] > 10 * sizes[len(sizes) // 2]  # heavy tail


def test_natural_groups_by_client_index_and_keeps_empty_ids() -> None:
    c = torch.tensor([2, 0, 2, 1, 0, 2])
    parts = P.natural(c)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]
    padded = P.natural(c, num_clients=5)
    assert [len(p) for p in padded] == [2, 1, 3, 0, 0]
    with pytest.raises(ValueError, match="num_clients must be >= 3"):
        P.natural(c, num_clients=2)


def test_dirichlet_hsu_gives_equal_sizes() -> None:
    y = balanced_labels(10, 100)
    parts = P.dirichlet(y, 7, alpha=0.5, seed=0)
    assert_exact_cover(parts, 1000)
    assert sorted(len(p) for p in parts) == [142] + [143] * 6  # 1000 = 142 + 6 · 143


def test_dirichlet_per_class_respects_min_size() -> None:
    y = balanced_labels(10, 200)
    parts = P.dirichlet(y, 20, alpha=0.3, seed=0, min_size=10, method="per_class")
    assert_exact_cover(parts, 2000)
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_per_class_gives_up_with_a_clear_error() -> None:
    y = balanced_labels(2, 10)
    with pytest.raises(ValueError, match=r"max_tries=3.*min_size=5.*raise alpha"):
        P.dirichlet(y, 4, alpha=0.001, seed=0, min_size=5, method="per_class", max_tries=3)


def test_dirichlet_tiny_alpha_does_not_produce_nan() -> None:
    y = balanced_labels(10, 60)
    parts = P.dirichlet(y, 10, alpha=1e-6, seed=0)
    assert_exact_cover(parts, 600)
    hist = P.label_histograms(y, parts, 10)
    # 60 per class and 60 per client: with alpha -> 0 every client takes one whole class
    assert (hist > 0).sum(dim=1).tolist() == [1] * 10


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: P.iid(10, 0, 0), "num_clients must be >= 1 and <= 10, got 0"),
        (lambda: P.iid(10, 11, 0), "num_clients must be >= 1 and <= 10, got 11"),
        (lambda: P.iid(10, 2, -1), "seed must be >= 0"),
        (lambda: P.iid(10, 2.5, 0), "num_clients must be an int"),  # type: ignore[arg-type]
        (lambda: P.dirichlet(torch.zeros(10, dtype=torch.long), 2, 0.0, 0), "alpha must be"),
        (lambda: P.dirichlet(torch.zeros(10, dtype=torch.long), 2, -1.0, 0), "alpha must be"),
        (
            lambda: P.dirichlet(torch.zeros(10, dtype=torch.long), 2, 1.0, 0, method="x"),  # type: ignore[arg-type]
            "method must be one of",
        ),
        (
            lambda: P.dirichlet(torch.zeros(10, dtype=torch.long), 3, 1.0, 0, min_size=4),
            r"num_clients \* min_size must be <= len\(labels\) = 10, got 3 \* 4 = 12",
        ),
        (
            lambda: P.shards(torch.zeros(10, dtype=torch.long), 4, 3, 0),
            r"num_clients \* shards_per_client must be <= len\(labels\) = 10, got 4 \* 3 = 12",
        ),
        (lambda: P.shards(torch.zeros(10, dtype=torch.long), 2, 0, 0), "shards_per_client"),
        (
            lambda: P.one_class(torch.tensor([0, 1, 2]), 2, 0),
            r"num_clients must be >= the number of classes present \(3\)",
        ),
        (lambda: P.quantity_skew(10, 3, -0.5, 0), "sigma must be"),
        (lambda: P.shards(torch.zeros(4, 2, dtype=torch.long), 2, 1, 0), "1-D tensor"),
        (lambda: P.shards(torch.rand(10), 2, 1, 0), "integer class labels"),
        (lambda: P.shards(torch.tensor([0, -1]), 1, 1, 0), "non-negative"),
    ],
)
def test_impossible_requests_name_the_argument(call: object, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        call()  # type: ignore[operator]


def test_local_test_split_follows_train_distribution() -> None:
    y_train = balanced_labels(4, 100)
    parts = P.one_class(y_train, 4, seed=0)
    y_test = balanced_labels(4, 20, seed=1)
    tparts = P.local_test_split(y_train, parts, y_test, seed=0)
    assert_exact_cover(tparts, 80)
    for p, t in zip(parts, tparts, strict=True):
        assert set(y_test[t].tolist()) == set(y_train[p].tolist())


def test_local_test_split_is_proportional_per_class() -> None:
    y_train = balanced_labels(10, 600)
    parts = P.dirichlet(y_train, 10, alpha=0.3, seed=4)
    y_test = balanced_labels(10, 100, seed=2)
    tparts = P.local_test_split(y_train, parts, y_test, seed=0)
    assert_exact_cover(tparts, 1000)
    h_train = P.label_histograms(y_train, parts, 10).double()
    h_test = P.label_histograms(y_test, tparts, 10).double()
    # test count of class c at client i = round(100 * share of class c's training samples)
    expected = h_train / h_train.sum(dim=0) * 100
    assert float((h_test - expected).abs().max()) < 1.0


def test_local_test_split_sequence_targets_by_size() -> None:
    train = torch.zeros(100, 5, dtype=torch.long)
    parts = P.quantity_skew(100, 4, sigma=1.0, seed=0)
    tparts = P.local_test_split(train, parts, torch.zeros(20, 5, dtype=torch.long), seed=0)
    assert_exact_cover(tparts, 20)
    for p, t in zip(parts, tparts, strict=True):
        assert abs(len(t) - 20 * len(p) / 100) < 1.0


def test_label_histograms_and_total_variation() -> None:
    y = torch.tensor([0, 0, 1, 1])
    parts = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    hist = P.label_histograms(y, parts, 3)
    assert hist.tolist() == [[2, 0, 0], [0, 2, 0]]
    assert P.mean_total_variation(hist) == pytest.approx(0.5)
    assert P.mean_total_variation(torch.tensor([[1, 1], [2, 2]])) == pytest.approx(0.0)
    tokens = torch.tensor([[0, 2, -100], [1, 1, 2]])
    assert P.label_histograms(tokens, [torch.tensor([0, 1])], 3).tolist() == [[1, 2, 2]]
    with pytest.raises(ValueError, match="num_classes is 2"):
        P.label_histograms(y + 1, parts, 2)
