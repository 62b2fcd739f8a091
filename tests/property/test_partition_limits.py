"""Dirichlet label skew between its limits: large alpha -> IID, alpha -> 0 -> one class each.

The skew is measured as the mean total-variation distance between each client's label
distribution and the global one (0 for identical distributions).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from fedkit.data import partition as P

NUM_CLASSES, PER_CLASS, CLIENTS = 10, 1000, 20


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    y = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]


def tv(labels: torch.Tensor, parts: list[torch.Tensor]) -> float:
    return P.mean_total_variation(P.label_histograms(labels, parts, NUM_CLASSES))


def mean_tv(labels: torch.Tensor, alpha: float, method: str = "hsu") -> float:
    return statistics.fmean(
        tv(labels, P.dirichlet(labels, CLIENTS, alpha, seed, method=method))  # type: ignore[arg-type]
        for seed in range(5)
    )


def test_large_alpha_approaches_iid(labels: torch.Tensor) -> None:
    iid = statistics.fmean(tv(labels, P.iid(len(labels), CLIENTS, s)) for s in range(5))
    # IID sampling alone leaves ~0.05 of TV with 500 samples per client
    assert iid < 0.08
    assert mean_tv(labels, 1e4) < iid + 0.01
    assert mean_tv(labels, 1e4, "per_class") < iid + 0.01


def test_small_alpha_approaches_one_class_per_client(labels: torch.Tensor) -> None:
    one = tv(labels, P.one_class(labels, CLIENTS, 0))
    assert one == pytest.approx(1 - 1 / NUM_CLASSES)
    assert mean_tv(labels, 1e-4) > one - 0.02
    parts = P.dirichlet(labels, CLIENTS, 1e-4, 0)
    classes = (P.label_histograms(labels, parts, NUM_CLASSES) > 0).sum(dim=1)
    assert float(classes.float().mean()) < 1.2


def test_skew_decreases_monotonically_with_alpha(labels: torch.Tensor) -> None:
    values = [mean_tv(labels, a) for a in (0.01, 0.1, 1.0, 10.0, 100.0, 1e4)]
    assert values == sorted(values, reverse=True), values
