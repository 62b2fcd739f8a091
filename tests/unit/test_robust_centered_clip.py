"""Centered clipping (Karimireddy et al. 2021) from the coordinate-wise median: steps worked by
hand, the bounded influence of fewer than half bad updates by Hypothesis, and refusals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, EmptyAggregateError, aggregate
from fedkit.experiment.config import ConfigError
from fedkit.robust import CenteredClip
from tests.helpers.robust import draw_honest_and_far, result_of
from tests.unit.test_registry import cfg_of

CTX = AggContext(round=0, seed=0)


def _cc(
    agg: CenteredClip, points: list[list[float]], weights: list[float] | None = None
) -> torch.Tensor:
    return result_of(agg, points, weights)


def test_steps_by_hand_towards_the_fixed_point() -> None:
    points = [[0.0], [0.5], [2.0], [3.0], [100.0]]
    # τ = 10, median v₀ = 2. Offsets −2, −1.5, 0, 1, 98 → clipped −2, −1.5, 0, 1, 10:
    # v₁ = 2 + 7.5/5 = 3.5; offsets −3.5, −3, −1.5, −0.5, 96.5 → sum −8.5 + 10 = 1.5: v₂ = 3.8;
    # offsets −3.8, −3.3, −1.8, −0.8, 96.2 → sum −9.7 + 10 = 0.3: v₃ = 3.86
    for iters, want in [(1, 3.5), (2, 3.8), (3, 3.86)]:
        assert _cc(CenteredClip(tau=10.0, iters=iters), points).item() == pytest.approx(want)
    # the fixed point: Σ_honest (h − v) + 10 = 0 → 5.5 − 4v + 10 = 0 → v = 3.875 (the mean: 21.1)
    assert _cc(CenteredClip(tau=10.0, iters=60), points).item() == pytest.approx(3.875)
    # a radius above every distance: one step from any center is the plain mean
    assert _cc(CenteredClip(tau=1e9, iters=1), points).item() == pytest.approx(21.1)


def test_the_clip_is_one_norm_over_every_leaf_and_weights_do_not_enter() -> None:
    # rows (0, 0), (0, 0), (6, 8) with x and y in different leaves; τ = 5, one step.
    # median (0, 0); the third offset has norm 10 → halved to (3, 4); v₁ = (3, 4)/3.
    # (Leaf by leaf, 6 and 8 would be clipped to 5 each.) Weights are ignored (unweighted rule).
    agg = CenteredClip(tau=5.0, iters=1)
    ups = [
        ({"x": torch.tensor([x]), "y": torch.tensor([[y]], dtype=torch.float64)}, w)
        for x, y, w in [(0.0, 0.0, 1.0), (0.0, 0.0, 7.0), (6.0, 8.0, 100.0)]
    ]
    got = agg.result(aggregate(agg, ups), CTX)
    assert got["x"].dtype == torch.float32 and got["y"].dtype == torch.float64
    assert got["x"].shape == (1,) and got["y"].shape == (1, 1)
    assert got["x"].item() == pytest.approx(1.0)
    assert got["y"].item() == pytest.approx(4.0 / 3.0)


def test_an_offset_of_zero_is_not_a_division_by_zero() -> None:
    # all updates equal: every offset from the median is 0 (τ/0 = inf, clamped to 1)
    got = _cc(CenteredClip(tau=0.5), [[2.0, -1.0]] * 4)
    assert got.tolist() == [2.0, -1.0]


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    dim=st.integers(1, 4),
    bad=st.integers(1, 3),
    extra_honest=st.integers(1, 4),
    scale=st.floats(1e4, 1e12),
    tau=st.floats(0.01, 10.0),
    iters=st.integers(1, 5),
)
def test_fewer_than_half_moved_arbitrarily_far_move_the_result_a_bounded_amount(
    data: st.DataObject,
    dim: int,
    bad: int,
    extra_honest: int,
    scale: float,
    tau: float,
    iters: int,
) -> None:
    """Honest updates h in [−1, 1]^d (H of them) and B < H bad ones anywhere far. The center v₀
    (coordinate-wise median) lies in the honest range in every coordinate, so
    ‖v₀‖ ≤ B₀ = ‖(max_h |h_j|)_j‖; each step adds an average of vectors of norm ≤ τ, so
    ‖v_L‖ ≤ B₀ + L τ, whatever the bad updates are."""
    honest_n = bad + extra_honest
    honest, points, shuffled = draw_honest_and_far(data, dim, bad, extra_honest, scale)

    got = _cc(CenteredClip(tau=tau, iters=iters), shuffled)
    b0 = math.hypot(*(max(abs(h[j]) for h in honest) for j in range(dim)))
    assert float(got.norm()) <= (b0 + iters * tau) * (1 + 1e-9)
    mean = torch.tensor(points, dtype=torch.float64).mean(dim=0)
    assert (
        float(mean.norm()) >= (bad * scale - honest_n * 2.0) / len(points) > 10 * (b0 + iters * tau)
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=1, max_size=8),
    st.permutations(range(8)),
    st.floats(0.1, 50.0),
)
def test_order_of_arrival_does_not_matter(
    pts: list[tuple[float, float]], perm: list[int], tau: float
) -> None:
    agg = CenteredClip(tau=tau)
    points = [list(p) for p in pts]
    got = _cc(agg, points)
    again = _cc(agg, [points[i] for i in perm if i < len(points)])
    assert torch.allclose(got, again, rtol=1e-9, atol=1e-9)


def test_refuses_bad_settings_and_empty_rounds() -> None:
    for tau in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^tau must be a finite number > 0, got "):
            CenteredClip(tau=tau)
    for iters in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"^iters must be an integer >= 1, got "):
            CenteredClip(iters=iters)  # type: ignore[arg-type]
    agg = CenteredClip()
    with pytest.raises(EmptyAggregateError, match=r"^no client update to clip around a center$"):
        agg.result(agg.zero({"w": torch.zeros(3)}), CTX)
    acc = agg.zero({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="aggregation weight must be >= 0"):
        agg.add(acc, {"w": torch.ones(3)}, -1.0)


def test_built_from_the_experiment_file_by_its_registry_name() -> None:
    cfg = cfg_of(aggregator={"name": "centered_clip", "tau": 0.5, "iters": 2})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm.aggregator == CenteredClip(tau=0.5, iters=2)
    with pytest.raises(ConfigError, match="tau"):
        cfg_of(aggregator={"name": "centered_clip", "tau": 0.0})
