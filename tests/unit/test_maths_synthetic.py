"""Synthetic(α, β) against the statistics of its definition (Li et al. 2020, FedProx, Appendix).

    n_k = floor(LogNormal(4, 2)) + 50                     (client sizes, a power law)
    u_k ~ N(0, α),  B_k ~ N(0, β)
    v_k ~ N(B_k, 1) in each of d coordinates,   Σ = diag(j^-1.2), j = 1..d
    W_k ~ N(u_k, 1) (d × C),  b_k ~ N(u_k, 1) (C),   x ~ N(v_k, Σ),   y = argmax softmax(W x + b)

As in the authors' generator (``np.random.normal(0, alpha)``), α and β are standard deviations.
Each test states the expected value of a statistic and a tolerance of about 4-5 standard errors;
the tolerance is far from what a wrong rule gives (named in each test).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedkit.data.datasets.synthetic import SyntheticOptions, generate_synthetic, load_synthetic


def _sizes(xs: list[np.ndarray]) -> np.ndarray:
    return np.array([len(x) for x in xs])


def test_feature_covariance_is_diag_j_to_the_minus_1_2() -> None:
    """Within a user, Var(x_j) = Σ_jj = j^-1.2.

    ~60k samples over 200 users: each coordinate's pooled within-user variance has a relative
    standard error of √(2/60000) ≈ 0.6%, so 5% is 8 standard errors. Wrong rules: exponent -1
    (ratio 60^0.2 = 2.3 at j = 60), j^-1.2 as the standard deviation (variance j^-2.4), j^-0.6.
    """
    xs, _ = generate_synthetic(SyntheticOptions(alpha=0.5, beta=0.5, num_users=200, seed=0))
    n = _sizes(xs)
    centred = np.concatenate([x - x.mean(axis=0) for x in xs])
    var = (centred**2).sum(axis=0) / (n.sum() - len(n))
    j = np.arange(1, 61)
    np.testing.assert_allclose(var, j**-1.2, rtol=0.05)
    slope = np.polyfit(np.log(j), np.log(var), 1)[0]
    assert slope == pytest.approx(-1.2, abs=0.02)


def test_user_feature_means_spread_by_beta_not_alpha() -> None:
    """The mean of user k's features over samples and coordinates estimates B_k ~ N(0, β²)
    (plus v_k's own spread, variance 1/d, and sampling noise, about 1/(d·n_k)).

    With β = 2, d = 10: Var_k = 4 + 0.1 = 4.1; over 1000 users the sample variance has standard
    error 4.1·√(2/999) = 0.18, so ±0.75 is 4 standard errors. Wrong rules: α and β swapped
    (Var_k = 0.1), β as a variance (Var_k = 2.1).
    """
    xs, _ = generate_synthetic(SyntheticOptions(alpha=0.0, beta=2.0, num_users=1000, dim=10))
    user_means = np.array([x.mean() for x in xs])
    assert user_means.var(ddof=1) == pytest.approx(4.1, abs=0.75)
    assert abs(user_means.mean()) < 4 * math.sqrt(4.1 / 1000)  # E B_k = 0
    swapped, _ = generate_synthetic(SyntheticOptions(alpha=2.0, beta=0.0, num_users=1000, dim=10))
    # β = 0: B_k = 0, only v_k's spread 1/d = 0.1 is left (standard error 0.1·√(2/999) = 0.0045)
    assert np.array([x.mean() for x in swapped]).var(ddof=1) == pytest.approx(0.1, abs=0.02)


def test_feature_means_scatter_around_b_k_with_unit_variance() -> None:
    """v_kj ~ N(B_k, 1): within a user, the coordinates' means vary with variance 1 around B_k.

    Averaged over 200 users of d - 1 = 59 degrees of freedom each: standard error √(2/59/200)
    = 0.013 (plus Σ_jj / n_k <= 1/50 from sampling), so ±0.07. Wrong rule: v_k ~ N(B_k, β)
    with β = 3 gives 9; the IID variant (v_k = B_k in every coordinate) gives ≈ 0.
    """
    for iid, expected, tol in ((False, 1.0, 0.07), (True, 0.0, 0.02)):
        xs, _ = generate_synthetic(SyntheticOptions(beta=3.0, iid=iid, num_users=200, seed=1))
        centre = np.stack([x.mean(axis=0) for x in xs])
        spread = ((centre - centre.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) / 59
        assert spread.mean() == pytest.approx(expected, abs=tol), iid


def test_iid_users_each_have_their_own_feature_mean() -> None:
    """IID variant: user k's features have mean B_k in every coordinate, B_k ~ N(0, β²) drawn per
    user. With β = 3, two users' means differ by less than 0.05 with probability about 0.01;
    a rule that gave several users the same B would make neighbours equal."""
    xs, _ = generate_synthetic(SyntheticOptions(beta=3.0, iid=True, num_users=40, seed=6))
    means = [float(x.mean()) for x in xs]
    close = sum(abs(a - b) < 0.05 for a, b in itertools.pairwise(means))
    assert close <= 2


def test_client_sizes_follow_the_lognormal_power_law() -> None:
    """n_k - 50 = floor(L), log L ~ N(4, 2²), over 4000 users (standard error of a fraction
    p: √(p(1-p)/4000) <= 0.008).

    P(n_k - 50 >= e^6 ≈ 403) = P(Z >= 1) = 0.1587;  P(n_k - 50 >= 8) = P(Z >= (ln 8 - 4)/2)
    = 0.8315;  P(n_k = 50) = P(L < 1) = P(Z < -2) = 0.0228;  median(n_k - 50) ≈ e^4 = 54.6.
    Wrong rules: σ = 1 (P(>= 403) = 0.023), no +50 offset, μ = 3.
    """
    xs, _ = generate_synthetic(SyntheticOptions(num_users=4000, dim=1, num_classes=2))
    extra = _sizes(xs) - 50
    assert extra.min() == 0
    assert (extra >= 403).mean() == pytest.approx(0.1587, abs=0.025)
    assert (extra >= 8).mean() == pytest.approx(0.8315, abs=0.025)
    assert (extra == 0).mean() == pytest.approx(0.0228, abs=0.01)
    assert math.log(np.median(extra)) == pytest.approx(4.0, abs=0.2)


def test_labels_do_not_depend_on_alpha() -> None:
    """u_k shifts every logit of user k by the same u_k (Σ_j x_j + 1), so argmax ignores it.

    With the draws in the same order (numpy's ``normal(loc, 1)`` is ``loc + N(0, 1)``), α = 0
    and α = 3 give the same samples and the same labels; only β and the noise shape the data. A
    rule that gave W_k's classes different means (e.g. N(u_k c, 1)) would change the labels.
    """
    a = generate_synthetic(SyntheticOptions(alpha=0.0, beta=1.0, num_users=20, seed=5))
    b = generate_synthetic(SyntheticOptions(alpha=3.0, beta=1.0, num_users=20, seed=5))
    for xa, ya, xb, yb in zip(*a, *b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_labels_are_a_users_linear_argmax() -> None:
    """y = argmax(W x + b) is a linear classifier per user: labels cover 0..C-1 over users, and
    within a user the classes are not balanced (a shared mean v_k picks a few winners). A rule
    drawing y uniformly would give each class about 10% of a user's samples."""
    xs, ys = generate_synthetic(SyntheticOptions(num_users=100, seed=2))
    assert set(np.concatenate(ys).tolist()) == set(range(10))
    top_share = [np.bincount(y, minlength=10).max() / len(y) for y in ys]
    assert np.median(top_share) > 0.3
    for x, y in zip(xs, ys, strict=True):
        assert x.shape == (len(y), 60) and y.dtype == np.int64


def test_load_splits_each_user_90_10(tmp_path: Path) -> None:
    ds = load_synthetic(tmp_path, num_users=5, seed=3)
    xs, _ = generate_synthetic(SyntheticOptions(num_users=5, seed=3))
    for k, n in enumerate(_sizes(xs)):
        n_train = int((ds.train.client == k).sum())
        n_test = int((ds.test.client == k).sum())
        assert (n_train, n_test) == (int(0.9 * n), n - int(0.9 * n))
    assert ds.train.x.shape[1] == 60 and ds.num_classes == 10 and ds.name == "synthetic"
    assert ds.client_names == ("f_00000", "f_00001", "f_00002", "f_00003", "f_00004")


def test_load_is_a_function_of_the_seed_and_shuffles_before_splitting(tmp_path: Path) -> None:
    a, b = (
        load_synthetic(tmp_path, num_users=3, seed=4),
        load_synthetic(tmp_path, num_users=3, seed=4),
    )
    for split in ("train", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert (
            torch.equal(sa.x, sb.x)
            and torch.equal(sa.y, sb.y)
            and torch.equal(sa.client, sb.client)
        )
        assert sa.x.dtype == torch.float32 and sa.y.dtype == sa.client.dtype == torch.int64
    xs, _ = generate_synthetic(SyntheticOptions(num_users=3, seed=4))
    n0 = len(xs[0])
    tail = torch.from_numpy(xs[0][int(0.9 * n0) :].astype(np.float32))
    assert not torch.equal(a.test.x[: len(tail)], tail)  # not simply the last 10% generated


def test_unknown_options_name_the_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"load_dataset\('synthetic'\): unknown option"):
        load_synthetic(tmp_path, bogus=1)


@pytest.mark.parametrize(
    ("key", "value"), [("alpha", -0.1), ("beta", -1.0), ("num_users", 0), ("dim", 0)]
)
def test_bad_options_are_refused(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        SyntheticOptions(**{key: value})  # type: ignore[arg-type]
