"""Huber down-weighting around the coordinate-wise median (noisy-client down-weighting): weights
and results worked by hand, its bounded influence by Hypothesis, and refusals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, EmptyAggregateError, aggregate
from fedkit.robust.reweight import HuberReweight
from tests.helpers.robust import draw_honest_and_far, result_of
from tests.unit.test_registry import cfg_of

CTX = AggContext(round=0, seed=0)
SQUARE = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]]


def _scores(agg: HuberReweight, points: list[list[float]], weights: list[float]) -> list[float]:
    ups = [
        ({"w": torch.tensor(p, dtype=torch.float64)}, w)
        for p, w in zip(points, weights, strict=True)
    ]
    return agg.scores(aggregate(agg, ups)).tolist()


def test_weights_and_result_by_hand() -> None:
    # median c = (0.5, 0.5); distances √0.5 (three times) and √(2 · 9.5²) = 13.435;
    # s = median = (√0.5 + √0.5)/2 = 0.70711; κ s = 1.06066 with κ = 1.5:
    # h = (1, 1, 1, 1.06066/13.435 = 0.078947)
    agg = HuberReweight(kappa=1.5)
    h4 = 1.5 * math.sqrt(0.5) / math.sqrt(2 * 9.5**2)
    assert _scores(agg, SQUARE, [1.0] * 4) == pytest.approx([1.0, 1.0, 1.0, h4])
    # result = (0 + 1 + 0 + 10 h4, 0 + 0 + 1 + 10 h4) / (3 + h4) = 0.58120 each
    want = (1 + 10 * h4) / (3 + h4)
    assert result_of(agg, SQUARE).tolist() == pytest.approx([want, want])
    # client weights n_i multiply the scores: n = (1, 2, 1, 1) → x = (2 + 10 h4)/(4 + h4)
    got = result_of(agg, SQUARE, [1.0, 2.0, 1.0, 1.0])
    assert got.tolist() == pytest.approx([(2 + 10 * h4) / (4 + h4), (1 + 10 * h4) / (4 + h4)])
    # the plain mean (2.75, 2.75) is what FedAvg would take
    assert float(torch.tensor(SQUARE).mean(0)[0]) == 2.75


def test_weights_do_not_depend_on_the_updates_scale() -> None:
    # distances below 1 (a late round's small updates): the same weights, the result scaled
    agg = HuberReweight(kappa=1.5)
    tiny = [[0.01 * v for v in p] for p in SQUARE]
    assert _scores(agg, tiny, [1.0] * 4) == pytest.approx(_scores(agg, SQUARE, [1.0] * 4))
    assert result_of(agg, tiny).tolist() == pytest.approx((0.01 * result_of(agg, SQUARE)).tolist())


def test_a_second_step_recentres_on_the_first_result() -> None:
    agg = HuberReweight(kappa=1.5, iters=2)
    h4 = 1.5 * math.sqrt(0.5) / math.sqrt(2 * 9.5**2)
    c1 = (1 + 10 * h4) / (3 + h4)
    pts = torch.tensor(SQUARE, dtype=torch.float64)
    d = torch.linalg.vector_norm(pts - c1, dim=1)
    s = float(d.sort().values[1:3].mean())  # the median of four distances
    h = [min(1.0, 1.5 * s / float(di)) for di in d]
    want = sum(hi * p for hi, p in zip(h, pts, strict=True)) / sum(h)
    assert result_of(agg, SQUARE).tolist() == pytest.approx(want.tolist())
    assert _scores(agg, SQUARE, [1.0] * 4) == pytest.approx(h)


def test_clean_rounds_are_the_weighted_mean_and_equal_updates_are_not_a_division_by_zero() -> None:
    pts = [[0.0], [1.0], [2.0]]  # median 1, distances 1, 0, 1, s = 1: all within κ s = 1.5
    assert result_of(HuberReweight(), pts, [1.0, 1.0, 2.0]).item() == pytest.approx(1.25)
    assert result_of(HuberReweight(), [[3.0, -1.0]] * 3).tolist() == [3.0, -1.0]


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    dim=st.integers(1, 4),
    bad=st.integers(1, 3),
    extra_honest=st.integers(1, 4),
    scale=st.floats(1e4, 1e12),
    kappa=st.floats(1.0, 5.0),
)
def test_fewer_than_half_moved_arbitrarily_far_move_the_result_a_bounded_amount(
    data: st.DataObject, dim: int, bad: int, extra_honest: int, scale: float, kappa: float
) -> None:
    """H honest updates in [−1, 1]^d, B < H bad ones anywhere. The median c is in the honest
    range (‖c‖ ≤ B₀, B₀ the norm of the honest max-|coordinate| vector), more than half the
    distances are honest ones (≤ 2 B₀), so s ≤ 2 B₀. A bad term h_b x_b has norm ≤ h_b d_b + ‖c‖
    ≤ κ s + B₀ ≤ (2κ + 1) B₀, and with κ ≥ 1 at least half the updates (d ≤ s) keep h = 1, so
    Σ h ≥ 1: ‖result‖ ≤ B₀ + B (2κ + 1) B₀ — whatever the bad updates are."""
    honest, points, shuffled = draw_honest_and_far(data, dim, bad, extra_honest, scale)
    got = result_of(HuberReweight(kappa=kappa), shuffled)
    b0 = math.hypot(*(max(abs(h[j]) for h in honest) for j in range(dim)))
    bound = b0 * (1 + bad * (2 * kappa + 1))
    assert float(got.norm()) <= bound * (1 + 1e-9) + 1e-12
    mean = torch.tensor(points, dtype=torch.float64).mean(dim=0)
    assert float(mean.norm()) > 10 * bound


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=1, max_size=8),
    st.permutations(range(8)),
)
def test_order_of_arrival_does_not_matter(pts: list[tuple[float, float]], perm: list[int]) -> None:
    points = [list(p) for p in pts]
    got = result_of(HuberReweight(), points)
    again = result_of(HuberReweight(), [points[i] for i in perm if i < len(points)])
    assert torch.allclose(got, again, rtol=1e-9, atol=1e-9)


def test_noisy_updates_score_lower_than_clean_ones() -> None:
    g = torch.Generator().manual_seed(0)
    clean = [(torch.randn(50, generator=g) * 0.1 + 1.0).tolist() for _ in range(8)]
    noisy = [(torch.randn(50, generator=g) * 1.0 + 1.0).tolist() for _ in range(3)]
    h = _scores(HuberReweight(), clean + noisy, [1.0] * 11)
    assert max(h[8:]) < min(h[:8]) and min(h[:8]) == 1.0
    # so the result is nearer the clean centre (1, …, 1) than the plain mean is
    got = result_of(HuberReweight(), clean + noisy)
    mean = torch.tensor(clean + noisy, dtype=torch.float64).mean(0)
    assert float((got - 1).norm()) < float((mean - 1).norm())


def test_refuses_bad_settings_and_empty_or_weightless_rounds() -> None:
    for kappa in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^kappa must be a finite number > 0, got "):
            HuberReweight(kappa=kappa)
    for iters in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"^iters must be an integer >= 1, got "):
            HuberReweight(iters=iters)  # type: ignore[arg-type]
    agg = HuberReweight()
    with pytest.raises(EmptyAggregateError, match=r"^no client update to reweight$"):
        agg.result(agg.zero({"w": torch.zeros(2)}), CTX)
    with pytest.raises(
        EmptyAggregateError, match=r"^every update has weight 0: nothing to average$"
    ):
        result_of(agg, [[1.0], [2.0]], [0.0, 0.0])


def test_registered_as_reweight() -> None:
    cfg = cfg_of(aggregator={"name": "reweight", "kappa": 2.0})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm.aggregator == HuberReweight(kappa=2.0)
