"""The Dirichlet label-skew partition against the spread the Dirichlet distribution predicts.

Hsu, Qi & Brown 2019: client i's label distribution is q_i ~ Dir(α p), p the global label mix, so
each component q_ic ~ Beta(α p_c, α (1 - p_c)) with

    E q_ic = p_c,     Var q_ic = p_c (1 - p_c) / (α + 1).

A client of n samples drawn from q_i holds a proportion X_c / n with X_c | q ~ Bin(n, q_ic), so

    Var(X_c / n) = Var q_ic (1 - 1/n) + p_c (1 - p_c) / n = p_c (1 - p_c) (α + n) / (n (α + 1)).

Yurochkin et al. 2019 (``method="per_class"``): the share of class c held by each of K clients is
Dir_K(α), one component Beta(α, α (K - 1)), with variance (1/K)(1 - 1/K) / (K α + 1).

Over 1000 clients the measured variances land within 8% of these (several seeds tried); the tests
allow 15%. Wrong rules give ratios far outside: α scaled by 1.5 (0.75 at α = 2, 0.68 at α = 20),
Dir(α·1) instead of Dir(α p) (0.26 for the 40% class at α = 2), no α at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkit.data.partition import dirichlet, label_histograms, mean_total_variation

P = np.array([0.4, 0.3, 0.2, 0.1])
CLIENTS, PER_CLIENT = 1000, 200


def _labels() -> torch.Tensor:
    counts = (P * CLIENTS * PER_CLIENT).astype(np.int64)  # 80000, 60000, 40000, 20000
    return torch.from_numpy(np.repeat(np.arange(4), counts))


@pytest.mark.parametrize(("alpha", "seed"), [(0.5, 0), (2.0, 1), (20.0, 2)])
def test_hsu_per_class_proportion_variance_is_the_dirichlet_one(alpha: float, seed: int) -> None:
    y = _labels()
    parts = dirichlet(y, CLIENTS, alpha, seed)
    h = label_histograms(y, parts, 4).numpy().astype(np.float64)
    assert (h.sum(axis=1) == PER_CLIENT).all()  # Hsu et al.: equal client sizes
    prop = h / PER_CLIENT
    n = PER_CLIENT
    expected = P * (1 - P) * (alpha + n) / (n * (alpha + 1))
    measured = ((prop - P) ** 2).mean(axis=0)
    np.testing.assert_allclose(measured / expected, 1.0, atol=0.15)
    np.testing.assert_allclose(prop.mean(axis=0), P, atol=1e-12)  # every sample is placed


def test_hsu_spread_concentrates_as_alpha_grows() -> None:
    """Var q = p(1-p)/(α+1) falls with α; mean total variation falls with it, towards IID."""
    y = _labels()
    tv = [
        mean_total_variation(label_histograms(y, dirichlet(y, CLIENTS, a, 0), 4))
        for a in (0.1, 1.0, 10.0, 1000.0)
    ]
    assert tv == sorted(tv, reverse=True)
    # α → 0: one class per client, TV = 1 - p_c for a client of class c, mean Σ p_c (1 - p_c)
    # = 0.70; α = 0.1 is close to that (measured 0.67)
    assert tv[0] > 0.6
    # α = 1000: only the multinomial spread of 200 draws is left, E|X/n - p| ≈ √(2 p(1-p)/(π n))
    # summed over classes and halved: 0.0465 (measured 0.050)
    assert tv[-1] < 0.06


@pytest.mark.parametrize(("alpha", "seed"), [(0.5, 0), (2.0, 3)])
def test_per_class_share_variance_is_the_dirichlet_one(alpha: float, seed: int) -> None:
    k, classes = 100, 50
    y = torch.arange(200_000) % classes  # 4000 samples of each class
    parts = dirichlet(y, k, alpha, seed, min_size=0, method="per_class")
    h = label_histograms(y, parts, classes).numpy().astype(np.float64)
    share = h / h.sum(axis=0, keepdims=True)  # share of class c held by client i
    expected = (1 / k) * (1 - 1 / k) / (k * alpha + 1)
    assert ((share - 1 / k) ** 2).mean() / expected == pytest.approx(1.0, abs=0.15)


def test_per_class_redraws_until_every_client_has_min_size() -> None:
    y = torch.arange(2000) % 10
    parts = dirichlet(y, 20, 0.5, 0, min_size=40, method="per_class")
    assert min(len(p) for p in parts) >= 40
    with pytest.raises(ValueError, match="max_tries=3"):
        dirichlet(y, 20, 0.01, 0, min_size=90, method="per_class", max_tries=3)
