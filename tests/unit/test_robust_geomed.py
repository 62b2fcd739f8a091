"""Geometric median (RFA, Pillutla et al. 2022) by smoothed Weiszfeld steps: values worked by
hand, the exact median on simple cases, the breakdown point 1/2 by Hypothesis, and refusals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, EmptyAggregateError, aggregate
from fedkit.experiment.config import ConfigError
from fedkit.robust import GeometricMedian
from fedkit.robust.geomed import weighted_coordinate_median
from tests.helpers.robust import draw_honest_and_far, result_of
from tests.unit.test_registry import cfg_of

CTX = AggContext(round=0, seed=0)
NU = 1e-6


def _gm(
    agg: GeometricMedian, points: list[list[float]], weights: list[float] | None = None
) -> torch.Tensor:
    return result_of(agg, points, weights)


def test_one_weiszfeld_step_from_the_mean_by_hand() -> None:
    # points 0, 1, 10 (equal weights); start z₀ = mean = 11/3
    # distances 11/3, 8/3, 19/3 → β = 3/11, 3/8, 3/19
    # z₁ = (3/8 · 1 + 3/19 · 10) / (3/11 + 3/8 + 3/19) = (99/152) / (449/1672) = 1089/449
    got = _gm(GeometricMedian(iters=1, start="mean"), [[0.0], [1.0], [10.0]])
    assert got.item() == pytest.approx(1089 / 449, rel=1e-12)
    # from the coordinate-wise median (1) the step stays there: at z = 1, β = (1, 1/ν, 1/9) and
    # the other two pull by −1 and +1 (unit vectors times α), so z₁ = (1/ν + 10/9) / (1/ν + 10/9)
    assert _gm(GeometricMedian(iters=1), [[0.0], [1.0], [10.0]]).item() == pytest.approx(1.0)


def test_from_the_mean_a_fixed_number_of_steps_follows_a_far_attacker() -> None:
    # two honest updates at 0 and one at R: from z = qR, β = (1/(qR), 1/(qR), 1/((1−q)R)) so
    # q ← q / (2 − q): 1/3 → 1/5 → 1/9 → 1/17 — the result grows with R
    for r in (1e3, 1e9):
        got = _gm(GeometricMedian(start="mean"), [[0.0], [0.0], [r]])
        assert got.item() == pytest.approx(r / 17, rel=1e-9)
    # from the coordinate-wise median (0): β = (1/ν, 1/ν, 1/R), so z₁ = 1 / (2/ν + 1/R) ≈ ν/2,
    # and then the same again (both honest distances ν/2 count as ν): independent of R
    for r in (1e3, 1e9):
        got = _gm(GeometricMedian(nu=NU), [[0.0], [0.0], [r]])
        assert got.item() == pytest.approx(NU / 2, rel=1e-3)


@pytest.mark.parametrize("start", ["median", "mean"])
def test_collinear_points_give_the_weighted_median_point(start: str) -> None:
    u = [0.6, 0.8]  # a unit direction: the points 0·u, 1·u, 10·u
    points = [[t * c for c in u] for t in (0.0, 1.0, 10.0)]
    agg = GeometricMedian(iters=100, start=start)
    # equal weights: the middle point; weights (1, 1, 3): 3 > 5/2, so the heavy point itself
    assert _gm(agg, points).tolist() == pytest.approx(u, abs=1e-5)
    assert _gm(agg, points, [1.0, 1.0, 3.0]).tolist() == pytest.approx([6.0, 8.0], abs=1e-5)


@pytest.mark.parametrize("start", ["median", "mean"])
def test_triangles_give_the_fermat_point(start: str) -> None:
    agg = GeometricMedian(iters=100, start=start)
    # an angle of 120° or more at a vertex: the median is that vertex (here ≈ 174° at the origin)
    assert _gm(agg, [[0.0, 0.0], [10.0, 0.0], [-10.0, 1.0]]).tolist() == pytest.approx(
        [0.0, 0.0], abs=1e-5
    )
    # an equilateral triangle: the centroid (1, √3/3)
    got = _gm(agg, [[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]])
    assert got.tolist() == pytest.approx([1.0, math.sqrt(3.0) / 3], abs=1e-5)


def test_the_median_is_of_the_whole_update_not_of_each_leaf() -> None:
    # the equilateral triangle split into two leaves: x and y. Leaf by leaf the median of y
    # (0, 0, √3) would be 0; the joint median is the centroid, y = √3/3. Leaf dtypes are kept.
    agg = GeometricMedian(iters=100)
    ups = [
        ({"x": torch.tensor(x), "y": torch.tensor([[y]], dtype=torch.float64)}, 1.0)
        for x, y in [(0.0, 0.0), (2.0, 0.0), (1.0, math.sqrt(3.0))]
    ]
    got = agg.result(aggregate(agg, ups), CTX)
    assert got["x"].dtype == torch.float32 and got["x"].shape == ()
    assert got["y"].dtype == torch.float64 and got["y"].shape == (1, 1)
    assert got["x"].item() == pytest.approx(1.0, abs=1e-5)
    assert got["y"].item() == pytest.approx(math.sqrt(3.0) / 3, abs=1e-5)


def test_weighted_coordinate_median_by_hand() -> None:
    rows = torch.tensor([[3.0, -1.0], [1.0, 5.0], [2.0, 0.0], [10.0, 7.0]], dtype=torch.float64)
    # equal weights, total 4, half 2: column 0 sorted 1, 2, 3, 10 → cumulative 1, 2 → 2;
    # column 1 sorted −1, 0, 5, 7 → 0 (the lower median)
    assert weighted_coordinate_median(rows, torch.ones(4, dtype=torch.float64)).tolist() == [
        2.0,
        0.0,
    ]
    # weights (1, 1, 1, 4), half 3.5: column 0 cumulative 1, 2, 3, 7 → 10; column 1 (order
    # −1, 0, 5, 7 has weights 1, 1, 1, 4) → 7; a zero weight is never picked
    w = torch.tensor([1.0, 1.0, 1.0, 4.0], dtype=torch.float64)
    assert weighted_coordinate_median(rows, w).tolist() == [10.0, 7.0]
    z = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    assert weighted_coordinate_median(rows, z).tolist() == [1.0, 0.0]


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    dim=st.integers(1, 4),
    bad=st.integers(1, 3),
    extra_honest=st.integers(1, 4),
    scale=st.floats(1e6, 1e12),
)
def test_fewer_than_half_moved_arbitrarily_far_move_the_median_a_bounded_amount(
    data: st.DataObject, dim: int, bad: int, extra_honest: int, scale: float
) -> None:
    """Breakdown point 1/2 with equal weights. Honest updates h (H of them, in [−1, 1]^d, so within
    r = max ‖h‖ of c = 0) and B < H bad ones, all at distance ≥ 10⁶ along one direction.

    The start (coordinate-wise median) lies in the honest range in every coordinate, so
    ‖z₀‖ ≤ B₀ = ‖(max_h |h_j|)_j‖. One step: z' = Σβ_i w_i / Σβ_i, so
    ‖z'‖ ≤ r + Σ_bad β_b ‖w_b‖ / Σ_honest β_h, where β_h ≥ 1 / max(ν, ‖z‖ + r) and
    β_b ‖w_b‖ ≤ ‖w_b‖ / (‖w_b‖ − ‖z‖) ≤ 1 + 10⁻³ (as ‖z‖ ≪ 10⁶): ‖z'‖ ≤ r + ρ'(‖z‖ + r) with
    ρ' = (B/H)(1 + 10⁻³) < 1. So ‖z‖ never exceeds max(B₀, r (1 + ρ') / (1 − ρ')).
    """
    honest_n = bad + extra_honest
    honest, points, shuffled = draw_honest_and_far(data, dim, bad, extra_honest, scale)
    shuffled = shuffled

    got = _gm(GeometricMedian(nu=NU), shuffled)
    r = max(NU, max(math.hypot(*h) for h in honest))
    b0 = math.hypot(*(max(abs(h[j]) for h in honest) for j in range(dim)))
    rho = bad / honest_n * (1 + 1e-3)
    bound = max(b0, r * (1 + rho) / (1 - rho))
    assert float(got.norm()) <= bound * (1 + 1e-9) + 1e-12
    # the mean moves with the attackers: ‖mean‖ ≥ (B · 10⁶ − H r) / n (up to the rounding of
    # each attacker's length, which can fall 1 ulp short of scale · s)
    mean = torch.tensor(points, dtype=torch.float64).mean(dim=0)
    floor = (bad * scale * (1 - 1e-12) - honest_n * r) / len(points)
    assert float(mean.norm()) >= floor > 1e4 * bound


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-100, 100), st.floats(-100, 100), st.floats(0.0, 10.0)),
        min_size=1,
        max_size=8,
    ).filter(lambda ps: sum(w for *_, w in ps) > 0.1),
    st.permutations(range(8)),
)
# two points holding exactly half the weight each: every point between them is a median, and the
# start must not depend on which arrived first (found by Hypothesis)
@example(
    pts=[(0.0, 0.0, 0.0), (0.0, 1.0, 4.0), (0.0, 0.0, 1.8154226665201147),
         (0.0, 1.0, 1.8154226665201147), (0.0, 0.0, 4.0)],
    perm=[0, 1, 2, 4, 3, 5, 6, 7],
)  # fmt: skip
def test_order_of_arrival_does_not_matter_and_the_result_is_in_the_hull(
    pts: list[tuple[float, float, float]], perm: list[int]
) -> None:
    agg = GeometricMedian()
    points = [[x, y] for x, y, _ in pts]
    weights = [w for *_, w in pts]
    idx = [i for i in perm if i < len(pts)]
    got = _gm(agg, points, weights)
    again = _gm(agg, [points[i] for i in idx], [weights[i] for i in idx])
    assert torch.allclose(got, again, rtol=1e-9, atol=1e-9)
    # Σβ_i w_i / Σβ_i with β_i ≥ 0: inside the bounding box of the inputs
    for j in range(2):
        lo = min(p[j] for p in points)
        hi = max(p[j] for p in points)
        assert lo - 1e-9 <= float(got[j]) <= hi + 1e-9


def test_refuses_bad_settings_empty_rounds_and_zero_total_weight() -> None:
    for iters in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"^iters must be an integer >= 1, got "):
            GeometricMedian(iters=iters)  # type: ignore[arg-type]
    for nu in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^nu must be a finite number > 0, got "):
            GeometricMedian(nu=nu)
    with pytest.raises(ValueError, match=r"^start must be one of \('median', 'mean'\), got 'x'$"):
        GeometricMedian(start="x")
    agg = GeometricMedian()
    like = {"w": torch.zeros(2)}
    with pytest.raises(EmptyAggregateError, match="no client update to take the geometric median"):
        agg.result(agg.zero(like), CTX)
    acc = aggregate(agg, [(like, 0.0), ({"w": torch.ones(2)}, 0.0)])
    with pytest.raises(EmptyAggregateError, match=r"^geometric median of 2 updates with total "):
        agg.result(acc, CTX)


def test_built_from_the_experiment_file_by_its_registry_name() -> None:
    cfg = cfg_of(aggregator={"name": "geomed", "iters": 5, "nu": 1e-5})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm.aggregator == GeometricMedian(iters=5, nu=1e-5)
    with pytest.raises(ConfigError, match="start"):
        cfg_of(aggregator={"name": "geomed", "start": "zero"})


def test_a_total_weight_below_one_is_a_valid_weighting() -> None:
    # weights 0.125 and 0.375 (sum 0.5): the weighted median of 0 and 4 on a line is the heavy 4
    got = _gm(GeometricMedian(iters=50, nu=1e-9), [[0.0], [4.0]], [0.125, 0.375])
    assert float(got[0]) == pytest.approx(4.0, abs=1e-6)
