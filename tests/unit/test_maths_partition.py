"""Partition edge cases and statistics by hand (written to kill mutation-testing survivors)."""

from __future__ import annotations

import pytest
import torch

from fedkit.data import partition as P


def test_mean_total_variation_by_hand() -> None:
    # client 1: 1 sample of class 0, client 2: 3 of class 1, client 3: none (ignored)
    # pooled p = (1/4, 3/4); TV_1 = ½(|1 - ¼| + |0 - ¾|) = 0.75, TV_2 = ½(¼ + ¼) = 0.25; mean 0.5
    h = torch.tensor([[1, 0], [0, 3], [0, 0]])
    assert P.mean_total_variation(h) == pytest.approx(0.5, abs=1e-15)
    assert P.mean_total_variation(torch.zeros(2, 3, dtype=torch.int64)) == 0.0


def test_natural_with_no_samples() -> None:
    empty = torch.zeros(0, dtype=torch.int64)
    assert P.natural(empty) == []
    assert [len(p) for p in P.natural(empty, 3)] == [0, 0, 0]


def test_natural_names_its_argument() -> None:
    with pytest.raises(ValueError, match=r"^client_index must be non-negative"):
        P.natural(torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"^num_clients must be >= 3"):
        P.natural(torch.tensor([0, 2]), 2)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 1, 1.0, 0), r"^n must be >= 1, got 0"),
        ((5, 6, 1.0, 0), r"^num_clients must be >= 1 and <= 5, got 6"),
        ((5, 0, 1.0, 0), r"^num_clients must be >= 1 and <= 5, got 0"),
        ((5, 2, -1.0, 0), r"^sigma must be a finite number >= 0"),
    ],
)
def test_quantity_skew_names_the_bad_argument(
    args: tuple[int, int, float, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        P.quantity_skew(*args)


def test_quantity_skew_all_clients_one_sample_when_n_equals_clients() -> None:
    assert [len(p) for p in P.quantity_skew(4, 4, 3.0, 0)] == [1, 1, 1, 1]


Y4 = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: P.iid(0, 1, 0), "n must be >= 1, got 0"),
        (lambda: P.iid(3, 4, 0), "num_clients must be >= 1 and <= 3, got 4"),
        (lambda: P.iid(3, 1.5, 0), "num_clients must be an int, got float (1.5)"),
        (lambda: P.dirichlet(Y4[:0], 1, 1.0, 0), "len(labels) must be >= 1, got 0"),
        (lambda: P.dirichlet(Y4, 2, 1.0, 0, -1), "min_size must be >= 0, got -1"),
        (lambda: P.dirichlet(Y4, 0, 1.0, 0), "num_clients must be >= 1 and <= 4, got 0"),
        (lambda: P.dirichlet(Y4, 5, 1.0, 0), "num_clients must be >= 1 and <= 4, got 5"),
        (lambda: P.dirichlet(Y4, 2, 1.0, 0, max_tries=0), "max_tries must be >= 1, got 0"),
        (lambda: P.dirichlet(Y4 > 0, 2, 1.0, 0), "labels must hold integer class labels"),
        (lambda: P.shards(Y4, 0, 1, 0), "num_clients must be >= 1, got 0"),
        (lambda: P.shards(Y4, 1, 0, 0), "shards_per_client must be >= 1, got 0"),
        (lambda: P.one_class(Y4, 0, 0), "num_clients must be >= 1, got 0"),
        (lambda: P.label_histograms(Y4, [], 0), "num_classes must be >= 1, got 0"),
        (lambda: P.local_test_split(Y4, [], Y4, 0), "len(train_parts) must be >= 1, got 0"),
        (lambda: P.local_test_split(-Y4, [Y4], Y4, 0), "train_targets must be non-negative"),
        (lambda: P.local_test_split(Y4, [Y4], -Y4, 0), "test_targets must be non-negative"),
    ],
)
def test_errors_name_the_argument_exactly(call: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as e:
        call()  # type: ignore[operator]
    assert str(e.value).startswith(message)


def test_label_histograms_of_no_parts() -> None:
    h = P.label_histograms(Y4, [], 3)
    assert h.shape == (0, 3) and h.dtype == torch.int64


def test_dirichlet_defaults_allow_one_sample_per_client_and_one_try() -> None:
    parts = P.dirichlet(Y4, 4, 1.0, 0)  # default min_size = 1
    assert sorted(len(p) for p in parts) == [1, 1, 1, 1]
    parts = P.dirichlet(Y4, 2, 1.0, 0, min_size=0, method="per_class", max_tries=1)
    assert sum(len(p) for p in parts) == 4


def test_largest_remainder_ties_go_to_the_lower_index() -> None:
    # σ = 0: equal weights; 100 clients share 150 samples: 1 each, then 50 left with equal
    # remainders 0.5, given to clients 0..49 (documented tie rule, also for long arrays)
    sizes = [len(p) for p in P.quantity_skew(150, 100, 0.0, 0)]
    assert sizes == [2] * 50 + [1] * 50
