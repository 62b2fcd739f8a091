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
