"""Bulyan (El Mhamdi et al. 2018): the recursive Krum selection and the β closest to the median
worked by hand, the bound on what f arbitrary updates can do to a coordinate, and refusals."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, EmptyAggregateError, aggregate
from fedkit.experiment.config import ConfigError
from fedkit.privacy import ClipNorm
from fedkit.registry import AGGREGATORS
from fedkit.robust import Bulyan, TooFewUpdatesError
from fedkit.robust.bulyan import closest_to_median_mean, recursive_krum
from fedkit.robust.krum import pairwise_sq_distances
from tests.unit.test_registry import cfg_of

CTX = AggContext(round=0, seed=0)


def _u(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def _bulyan(agg: Bulyan, ups: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    out: torch.Tensor = agg.result(aggregate(agg, [(u, 1.0) for u in ups]), CTX)["w"]
    return out


# n = 7, f = 1: θ = n − 2f = 5 selected, β = θ − 2f = 3 averaged per coordinate.
# values by arrival: 0, 1, 3, 4, 10, 1000, -1000. Krum on the remaining set R sums the
# max(|R| − f − 2, 1) smallest squared distances:
#   |R| = 7, 4 nearest:  0: 1+9+16+100 = 126  1: 1+4+9+81 = 95  3: 1+4+9+49 = 63
#                        4: 1+9+16+36 = 62    10: 36+49+81+100 = 266  ±1000: > 10^6   → 4
#   |R| = 6, 3 nearest:  0: 1+9+100 = 110  1: 1+4+81 = 86  3: 4+9+49 = 62  10: 49+81+100 = 230 → 3
#   |R| = 5, 2 nearest:  0: 1+100 = 101  1: 1+81 = 82  10: 81+100 = 181  1000: 990²+999² → 1
#   |R| = 4, 1 nearest:  0: 100  10: 100 (tie: 0 arrived first)  1000: 990²  -1000: 1000² → 0
#   |R| = 3, 1 nearest:  10: 990²  1000: 990² (tie: 10 first)  -1000: 1010²              → 10
# selected {0, 1, 3, 4, 10}: median 3, distances 3, 2, 0, 1, 7 → the 3 closest 3, 4, 1 → 8/3
SEVEN = [0.0, 1.0, 3.0, 4.0, 10.0, 1000.0, -1000.0]


def test_recursive_krum_then_the_beta_closest_to_the_median() -> None:
    d2 = pairwise_sq_distances(torch.tensor(SEVEN, dtype=torch.float64)[:, None])
    assert recursive_krum(d2, 1, 5) == [3, 2, 1, 0, 4]
    assert _bulyan(Bulyan(f=1), [_u(v) for v in SEVEN]).tolist() == [pytest.approx(8 / 3)]
    # the outliers first: the same steps, but at |R| = 3 the tie 1000 / 10 goes to 1000, which
    # arrived first; selected {4, 3, 1, 0, 1000}: median 3, distances 1, 0, 2, 3, 997 → 3, 4, 1
    first = SEVEN[5:] + SEVEN[:5]
    d2 = pairwise_sq_distances(torch.tensor(first, dtype=torch.float64)[:, None])
    assert recursive_krum(d2, 1, 5) == [5, 4, 3, 2, 0]
    assert _bulyan(Bulyan(f=1), [_u(v) for v in first]).tolist() == [pytest.approx(8 / 3)]
    # the second stage alone, per coordinate, on an even count:
    x = torch.tensor([[1.0, 0.0], [2.0, 10.0], [4.0, 11.0], [9.0, 30.0]])
    # col 0: median (2+4)/2 = 3, distances 2, 1, 1, 6 → 2 closest: 2, 4 (tie, row order) → 3
    # col 1: median (10+11)/2 = 10.5, distances 10.5, 0.5, 0.5, 19.5 → 10, 11 → 10.5
    assert closest_to_median_mean(x, 2).tolist() == [3.0, 10.5]
    # 3 closest: col 0 → 1, 2, 4 (distances 2, 1, 1) → 7/3; col 1 → 0, 10, 11 → 7
    assert closest_to_median_mean(x, 3).tolist() == [pytest.approx(7 / 3), 7.0]


def test_f_zero_is_the_plain_mean_and_every_leaf_keeps_its_dtype() -> None:
    # f = 0: θ = n, β = n — every update selected, every value averaged
    ups = [
        ({"s": torch.tensor(float(v)), "d": torch.tensor([v], dtype=torch.float64)}, 7.0)
        for v in (1.0, 2.0, 6.0)
    ]
    agg = Bulyan(f=0)
    got = agg.result(aggregate(agg, ups), CTX)
    assert got["s"].dtype == torch.float32 and float(got["s"]) == 3.0
    assert got["d"].dtype == torch.float64 and got["d"].tolist() == [3.0]


def test_refuses_bad_settings_too_small_rounds_and_empty_rounds() -> None:
    for bad in (-1, 0.5, True):
        with pytest.raises(ValueError, match=r"^f must be an int >= 0"):
            Bulyan(f=bad)  # type: ignore[arg-type]
    six = [_u(v) for v in SEVEN[:6]]
    with pytest.raises(
        TooFewUpdatesError, match=r"^Bulyan with f=1 needs at least 4f \+ 3 = 7 updates, got 6$"
    ):
        _bulyan(Bulyan(f=1), six)
    with pytest.raises(TooFewUpdatesError, match=r"4f \+ 3 = 11 updates, got 10$"):
        _bulyan(Bulyan(f=2), [_u(float(v)) for v in range(10)])
    with pytest.raises(TooFewUpdatesError, match=r"4f \+ 3 = 3 updates, got 2$"):
        _bulyan(Bulyan(f=0), six[:2])
    agg = Bulyan()
    with pytest.raises(EmptyAggregateError, match=r"^no client update to select$"):
        agg.result(agg.zero(_u(0.0)), CTX)
    assert AGGREGATORS.load("bulyan") is Bulyan


_HONEST = st.floats(-10, 10, allow_nan=False, width=32)
_FAR = st.floats(-(2.0**60), 2.0**60, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2),
    st.integers(0, 3),
    st.data(),
    st.randoms(use_true_random=False),
)
def test_f_arbitrary_updates_move_no_coordinate_beyond_the_honest_spread(
    f: int, extra: int, data: st.DataObject, rng: random.Random
) -> None:
    # At most f Byzantine among the θ selected and f < θ/2, so each coordinate's median lies in
    # the honest range [lo, hi]; a Byzantine value is among the β closest only if an honest value
    # is at least as far, so the average lies in [lo − (hi − lo), hi + (hi − lo)].
    n = 4 * f + 3 + extra
    honest = [data.draw(st.tuples(_HONEST, _HONEST)) for _ in range(n - f)]
    byz = [data.draw(st.tuples(_FAR, _FAR)) for _ in range(f)]
    ups = [_u(*v) for v in honest + byz]
    rng.shuffle(ups)
    got = _bulyan(Bulyan(f=f), ups)
    h = torch.tensor(honest, dtype=torch.float64)
    lo, hi = h.min(dim=0).values, h.max(dim=0).values
    slack = 1e-6 * (1 + hi.abs() + lo.abs())  # the float32 result's rounding
    got64 = got.double()
    assert bool((got64 >= 2 * lo - hi - slack).all()) and bool((got64 <= 2 * hi - lo + slack).all())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 3), st.integers(0, 3), st.data(), st.randoms(use_true_random=False))
def test_the_beta_closest_to_the_median_bound_f_arbitrary_rows_by_the_honest_spread(
    f: int, extra: int, data: st.DataObject, rng: random.Random
) -> None:
    # the second stage alone, on θ = 2f + 3 + extra rows of which f are arbitrary (whatever the
    # selection let through): the same bound as above, coordinate by coordinate
    theta = 2 * f + 3 + extra
    honest = [data.draw(st.tuples(_HONEST, _HONEST)) for _ in range(theta - f)]
    rows = honest + [data.draw(st.tuples(_FAR, _FAR)) for _ in range(f)]
    rng.shuffle(rows)
    got = closest_to_median_mean(torch.tensor(rows, dtype=torch.float32), theta - 2 * f)
    h = torch.tensor(honest, dtype=torch.float64)
    lo, hi = h.min(dim=0).values, h.max(dim=0).values
    slack = 1e-9 * (1 + hi.abs() + lo.abs())
    assert bool((got >= 2 * lo - hi - slack).all()) and bool((got <= 2 * hi - lo + slack).all())


def test_built_from_the_experiment_file_inside_a_chain() -> None:
    cfg = cfg_of(aggregator={"name": "clip", "max_norm": 1.0, "inner": {"name": "bulyan", "f": 2}})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm.aggregator == ClipNorm(max_norm=1.0, inner=Bulyan(f=2))
    with pytest.raises(ConfigError, match=r"aggregator\.f must be an int >= 0, got -1"):
        cfg_of(aggregator={"name": "bulyan", "f": -1})
